//! The VMM's syscall filters (docs/security.md): each role's filter, built
//! by the very function the binary uses, kills the process that breaks it
//! and nothing else; the real `vmm` runs every thread filtered, and a
//! forbidden call made by one of its threads (injected with ptrace, as
//! code an attacker took over would make it) kills the VMM with SIGSYS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use parvm_sandbox::test_support::{child_calls, killed_by_sigsys};
use parvm_sandbox::Role as _;
use parvm_tests::guests::guest_path;
use parvm_tests::sandbox::{
    inject_syscall, is_root, threads, wait_for_threads, wait_until_filtered,
};
use parvm_tests::scratch_dir;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;
use vmm::seccomp::{build, Role, SeccompMode};

#[test]
fn a_forbidden_call_kills_only_the_process_that_makes_it() {
    let inet = [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0];
    let path = c"/bin/true";
    let execve = [path.as_ptr() as u64, 0, 0];
    for &role in Role::ALL {
        for (what, nr, args) in [
            ("socket(AF_INET)", libc::SYS_socket, inet),
            ("execve", libc::SYS_execve, execve),
            ("fork", libc::SYS_fork, [0; 3]),
            (
                "ptrace",
                libc::SYS_ptrace,
                [libc::PTRACE_TRACEME as u64, 0, 0],
            ),
        ] {
            let status = child_calls(role, SeccompMode::Kill, nr, args);
            assert!(
                killed_by_sigsys(status),
                "{} role: {what} did not kill the process (status {status:#x})",
                role.name()
            );
        }
        // An allowed call returns, and `log` lets a forbidden one through.
        let status = child_calls(role, SeccompMode::Kill, libc::SYS_getpid, [0; 3]);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        let status = child_calls(role, SeccompMode::Log, libc::SYS_socket, inet);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
    // The parent (standing in for the manager and the other partitions)
    // is untouched: it may still do what the filters forbid.
    // SAFETY: a plain socket call; the fd is closed right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0);
    // SAFETY: closing the fd just opened.
    unsafe { libc::close(fd) };
}

#[test]
fn the_filters_allow_only_what_the_roles_need() {
    for &role in Role::ALL {
        let calls = vmm::seccomp::syscalls(role);
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_ptrace,
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_kill,
            libc::SYS_mount,
            libc::SYS_setuid,
        ] {
            assert!(
                !calls.contains(&forbidden),
                "{} role allows syscall {forbidden}",
                role.name()
            );
        }
    }
    assert!(!vmm::seccomp::syscalls(Role::Device).contains(&libc::SYS_ioctl));
    assert!(build(Role::Vcpu, SeccompMode::None).unwrap().is_none());
}

/// Starts the real `vmm` on a tiny guest that spins at CPL3, with a disk.
fn start_hanging_vmm(dir: &std::path::Path) -> std::process::Child {
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    Command::new(env!("CARGO_BIN_EXE_vmm"))
        .arg("--kernel")
        .arg(guest_path("tiny.elf"))
        .args(["--memory-mib", "32", "--vcpus", "2"])
        .args(["--cmdline", "parvm.test=hang", "--console", "none"])
        .arg("--disk")
        .arg(&img)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn every_vmm_thread_runs_filtered_and_a_forbidden_call_is_fatal() {
    if !is_root() {
        eprintln!("skipped: injecting a system call with ptrace needs root");
        return;
    }
    let dir = scratch_dir("seccomp-vmm");
    // One run per role: the thread is made to call socket(AF_INET).
    for victim in ["vmm", "vcpu0", "virtio"] {
        let vmm = start_hanging_vmm(&dir);
        let pid = vmm.id();
        wait_for_threads(pid, &["vcpu0", "vcpu1", "virtio"], Duration::from_secs(20))
            .unwrap_or_else(|| panic!("vmm threads never started: {:?}", threads(pid)));
        // Each thread installs its filters as it starts (the main thread
        // after it started the others): every one of them, soon.
        let all = wait_until_filtered(pid, 2, Duration::from_secs(20));
        for t in &all {
            assert_eq!(t.seccomp, 2, "thread {} unfiltered: {all:?}", t.name);
            // The allow-list and the clone3 refusal.
            assert!(t.filters >= 2, "thread {}: {all:?}", t.name);
        }
        let tid = all.iter().find(|t| t.name == victim).unwrap().tid;
        let inet = [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0];
        assert!(
            inject_syscall(tid, libc::SYS_socket, inet, Duration::from_secs(10)),
            "could not make {victim} call socket"
        );
        let status = parvm_tests::wait(vmm, Duration::from_secs(10));
        assert!(!status.timed_out, "{victim}: vmm survived a forbidden call");
        assert_eq!(
            status.status.signal(),
            Some(libc::SIGSYS),
            "{victim}: {:?}\n{}",
            status.status,
            status.stderr
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
