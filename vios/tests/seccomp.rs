//! The VIOS's syscall filters and least privilege (docs/security.md): each
//! role's filter kills the process that breaks it and nothing else; the
//! real `vios` runs every thread filtered and dies of SIGSYS when one makes
//! a forbidden call (injected with ptrace); and it serves a guest's disk
//! I/O as `nobody`, given only its image and socket directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use parvm_sandbox::test_support::child_calls;
use parvm_sandbox::Role as _;
use parvm_tests::guests::guest_path;
use parvm_tests::sandbox::{
    chown_tree, inject_syscall, is_root, private_device_node, threads, wait_for_threads, NOBODY,
};
use parvm_tests::{run, scratch_dir};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vios::seccomp::{Role, SeccompMode};

#[test]
fn a_forbidden_call_kills_only_the_process_that_makes_it() {
    let inet = [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0];
    for &role in Role::ALL {
        for (nr, args) in [
            (libc::SYS_socket, inet),
            (libc::SYS_fork, [0; 3]),
            (libc::SYS_execve, [c"/bin/true".as_ptr() as u64, 0, 0]),
        ] {
            let status = child_calls(role, SeccompMode::Kill, nr, args);
            assert!(
                libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
                "{} role: syscall {nr} status {status:#x}",
                role.name()
            );
        }
        let status = child_calls(role, SeccompMode::Kill, libc::SYS_getpid, [0; 3]);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
    // A worker cannot open files or dial sockets; the server can do the
    // latter only for Unix sockets.
    let worker = vios::seccomp::syscalls(Role::Worker);
    for nr in [
        libc::SYS_openat,
        libc::SYS_socket,
        libc::SYS_connect,
        libc::SYS_clone,
    ] {
        assert!(!worker.contains(&nr), "worker allows syscall {nr}");
    }
}

struct Vios(Child);

impl Drop for Vios {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_vios(socket: &Path, disk: &Path, uid: Option<u32>) -> Vios {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vios"));
    cmd.arg("--listen")
        .arg(socket)
        .arg("--disk")
        .arg(disk)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let child = cmd.spawn().unwrap();
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "vios never listened"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Vios(child)
}

#[test]
fn every_vios_thread_runs_filtered_and_a_forbidden_call_is_fatal() {
    if !is_root() {
        eprintln!("skipped: injecting a system call with ptrace needs root");
        return;
    }
    let dir = scratch_dir("seccomp-vios");
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let socket = dir.join("vios.sock");
    let mut vios = start_vios(&socket, &img, None);
    let pid = vios.0.id();
    // The accept loop has prepared the first connection's daemon (its
    // queue worker waits already).
    let all = wait_for_threads(pid, &["vios", "vios-accept"], Duration::from_secs(10))
        .unwrap_or_else(|| panic!("vios threads: {:?}", threads(pid)));
    for t in &all {
        assert_eq!(t.seccomp, 2, "thread {} unfiltered: {all:?}", t.name);
    }
    let main = all.iter().find(|t| t.tid == pid as i32).unwrap().tid;
    let inet = [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0];
    assert!(inject_syscall(
        main,
        libc::SYS_socket,
        inet,
        Duration::from_secs(10)
    ));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = vios.0.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "vios survived");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_vios_serves_a_guest_as_nobody() {
    if !is_root() {
        eprintln!("skipped: changing to another user needs root");
        return;
    }
    let dir = scratch_dir("unprivileged-vios");
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let kernel = dir.join("tiny.elf");
    std::fs::copy(guest_path("tiny.elf"), &kernel).unwrap();
    chown_tree(&dir, NOBODY).unwrap();
    let kvm = dir.join("kvm");
    private_device_node(Path::new("/dev/kvm"), &kvm, NOBODY).unwrap();
    let socket = dir.join("vios.sock");
    let _vios = start_vios(&socket, &img, Some(NOBODY));

    // The client VMM runs as nobody too (built beside this test's vios).
    let vmm = Path::new(env!("CARGO_BIN_EXE_vios")).with_file_name("vmm");
    if !vmm.exists() {
        eprintln!("skipped: no vmm binary beside vios (cargo build -p vmm)");
        return;
    }
    let mut cmd = Command::new(&vmm);
    cmd.arg("--kernel")
        .arg(&kernel)
        .args(["--memory-mib", "32", "--cmdline", "parvm.test=blk"])
        .arg("--disk")
        .arg(format!("vhost-user:{},id=data", socket.display()))
        .arg("--kvm-device")
        .arg(&kvm)
        .uid(NOBODY)
        .gid(NOBODY);
    let f = run(cmd, Duration::from_secs(60));
    assert_eq!(f.code(), Some(0), "{}\n{}", f.stdout, f.stderr);
    assert!(f.stdout.contains("match=yes"), "{}", f.stdout);
    let on_host = std::fs::read(&img).unwrap();
    assert!(on_host[..512].iter().any(|&b| b != 0), "nothing written");
    let _ = std::fs::remove_dir_all(&dir);
}
