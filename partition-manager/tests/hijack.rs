//! The control-channel hijack that once worked: while the manager is down,
//! another user binds the manager's socket path (in a directory others can
//! write, as `/tmp` is) and waits for the VMMs to re-attach to it with their
//! tokens. Now a VMM checks its peer before it sends anything, and the
//! manager does not replace a socket a live process holds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use parvm_tests::sandbox::{chown_tree, is_root, private_device_node, NOBODY};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IMPOSTOR_SOCKET: &str = "PARVM_TEST_IMPOSTOR_SOCKET";
const IMPOSTOR_OUT: &str = "PARVM_TEST_IMPOSTOR_OUT";

/// Not a test of its own: the impostor process (this test binary run again
/// as uid 65534 with the two variables set) binds the socket and records
/// every byte anyone sends it.
#[test]
#[ignore = "run by the hijack test as another uid"]
fn impostor() {
    let (Some(socket), Some(out)) = (
        std::env::var_os(IMPOSTOR_SOCKET),
        std::env::var_os(IMPOSTOR_OUT),
    ) else {
        return;
    };
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).unwrap();
    std::fs::write(&out, b"").unwrap();
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
        let mut got = Vec::new();
        let _ = conn.read_to_end(&mut got);
        // Appended, never rewritten: the test may read at any moment.
        let mut record = format!("[connection: {} bytes]", got.len()).into_bytes();
        record.extend_from_slice(&got);
        let mut f = std::fs::OpenOptions::new().append(true).open(&out).unwrap();
        std::io::Write::write_all(&mut f, &record).unwrap();
    }
}

#[test]
fn a_vmm_does_not_attach_to_another_user_on_the_manager_socket() {
    if !is_root() {
        eprintln!("not root: cannot run the impostor as another uid; skipping");
        return;
    }
    hijack(Env::new("hijack"));
}

/// The same impostor (uid 65534) against a VMM the manager started as
/// uid 65534 (`--run-as`): the VMM's own uid is not the manager's either.
#[test]
fn a_vmm_run_as_nobody_does_not_attach_to_its_own_uid_on_the_manager_socket() {
    if !is_root() || !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("not root or no /dev/kvm; skipping");
        return;
    }
    // A KVM node only nobody may open, in a directory only it reaches.
    let kvm_dir = parvm_tests::scratch_dir("hijack-kvm");
    chown_tree(&kvm_dir, NOBODY).unwrap();
    std::fs::set_permissions(&kvm_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let kvm = kvm_dir.join("kvm");
    private_device_node(std::path::Path::new("/dev/kvm"), &kvm, NOBODY).unwrap();
    let env = Env::with(
        "runas-hijack",
        vmm_binary(),
        &[
            "--run-as",
            "nobody",
            "--kvm-device",
            &kvm.display().to_string(),
        ],
    );
    hijack(env);
    let _ = std::fs::remove_dir_all(&kvm_dir);
}

/// Starts a VMM, stops the manager, lets the impostor bind its socket
/// path: the VMM sends it nothing and re-attaches to the real manager
/// once the impostor is gone.
fn hijack(mut env: Env) {
    env.ok(&["define", &env.hang_definition("victim", "never")]);
    env.ok(&["start", "victim"]);
    let pid = pid_of(&env.status("victim"));
    env.kill_manager();

    // The socket's directory is writable by everyone, like /tmp.
    std::fs::set_permissions(&env.dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = env.dir.join("impostor.out");
    let mut impostor = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "impostor", "--ignored", "--nocapture"])
        .env(IMPOSTOR_SOCKET, &env.socket)
        .env(IMPOSTOR_OUT, &out)
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !out.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "no impostor");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The VMM dials every 100 ms: give it many tries.
    std::thread::sleep(Duration::from_secs(2));
    let seen = std::fs::read(&out).unwrap();
    let seen = String::from_utf8_lossy(&seen);
    assert!(
        seen.contains("[connection: 0 bytes]"),
        "never dialled: {seen}"
    );
    assert!(!seen.contains("attach"), "the impostor got: {seen}");
    assert!(
        !seen.contains("bytes]{"),
        "the impostor got a frame: {seen}"
    );
    let vmm_log = std::fs::read_to_string(env.state.join("logs").join("victim.vmm.log")).unwrap();
    assert!(vmm_log.contains("65534"), "{vmm_log}");
    assert!(alive(pid));

    // The real manager does not take over a socket a live process holds.
    let mut cmd = Command::new(MANAGER);
    cmd.arg("--socket")
        .arg(&env.socket)
        .arg("--state-dir")
        .arg(&env.state)
        .arg("--vmm")
        .arg(&env.vmm)
        .args(&env.extra);
    let f = parvm_tests::run(cmd, Duration::from_secs(10));
    assert_eq!(f.code(), Some(1), "{}", f.stderr);
    assert!(f.stderr.contains("already listens"), "{}", f.stderr);

    // With the impostor gone, the manager comes back and the VMM re-attaches.
    let _ = impostor.kill();
    let _ = impostor.wait();
    env.start_manager();
    let s = env.wait_for("victim", Duration::from_secs(5), "re-attached", |s| {
        s["attached"] == true
    });
    assert_eq!(pid_of(&s), pid);
    env.ok(&["stop", "victim"]);
}
