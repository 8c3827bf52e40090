//! The `vios` binary in managed mode, with this test as its partition
//! manager: the control channel on fd 3 (Hello, Exports, Ready), brokered
//! socketpairs handed over with `ViosConnect`, refusals, `Stop`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use parvm_protocol::{Channel, ExitStatus, ManagerToVios, ToManager};
use vhost::VhostBackend;

fn spawn_vios(def: &std::path::Path, theirs: &UnixStream) -> std::process::Child {
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vios"));
    cmd.arg("--config")
        .arg(def)
        .args(["--control-fd", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: only dup2/fcntl (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

#[test]
fn managed_vios_serves_brokered_clients() {
    let dir = TempDir::new("managed");
    let image = dir.path("data.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let def = dir.path("vios1.json");
    std::fs::write(
        &def,
        r#"{"kind":"vios","name":"vios1","disks":[{"id":"data","path":"data.raw"}]}"#,
    )
    .unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut child = spawn_vios(&def, &theirs);
    drop(theirs);
    let mgr = Channel::new(ours);
    let (hello, _) = mgr.recv::<ToManager>().unwrap();
    assert!(
        matches!(&hello, ToManager::Hello { name, pid, .. } if name == "vios1" && *pid == child.id()),
        "{hello:?}"
    );
    // The exports and their sizes, then ready.
    assert_eq!(
        mgr.recv::<ToManager>().unwrap().0,
        ToManager::Exports {
            exports: vec![parvm_protocol::ExportInfo {
                id: "data".into(),
                size: 1 << 20,
                read_only: false,
            }]
        }
    );
    assert_eq!(mgr.recv::<ToManager>().unwrap().0, ToManager::Ready);

    // Two brokered clients of the same export.
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (client_end, vios_end) = UnixStream::pair().unwrap();
        mgr.send(
            &ManagerToVios::ViosConnect {
                disk: "data".into(),
                client: "web".into(),
                read_only: false,
            },
            &[vios_end.as_fd()],
        )
        .unwrap();
        drop(vios_end);
        clients.push(Client::setup_stream(client_end, 1));
    }
    for (n, c) in clients.iter_mut().enumerate() {
        let p = pattern(n as u8 + 1, 4096);
        assert_eq!(c.write(0, 16 * n as u64, &p), S_OK);
        assert_eq!(c.read(0, 16 * n as u64, 4096).1, p);
        assert_eq!(&c.get_id(0).1[..4], b"data");
    }

    // A client granted the disk read-only: served read-only, though the
    // export is writable.
    let (client_end, vios_end) = UnixStream::pair().unwrap();
    mgr.send(
        &ManagerToVios::ViosConnect {
            disk: "data".into(),
            client: "reader".into(),
            read_only: true,
        },
        &[vios_end.as_fd()],
    )
    .unwrap();
    drop(vios_end);
    let mut reader = Client::setup_stream(client_end, 1);
    assert_eq!(reader.read(0, 0, 4096).1, pattern(1, 4096));
    assert_eq!(reader.write(0, 0, &[0xaa; 512]), S_IOERR);
    assert_eq!(reader.read(0, 0, 4096).1, pattern(1, 4096));

    // The grant of `web` is revoked: both its connections are closed, the
    // reader's is not.
    mgr.send(
        &ManagerToVios::ViosDisconnect {
            disk: "data".into(),
            client: "web".into(),
        },
        &[],
    )
    .unwrap();
    for c in &clients {
        let start = Instant::now();
        while c.frontend.get_features().is_ok() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "a revoked client is still served"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert!(reader.frontend.get_features().is_ok());
    assert_eq!(reader.read(0, 0, 4096).1, pattern(1, 4096));

    // An export it does not have, and a request without a socket.
    let (_c, vios_end) = UnixStream::pair().unwrap();
    mgr.send(
        &ManagerToVios::ViosConnect {
            disk: "nope".into(),
            client: "web".into(),
            read_only: false,
        },
        &[vios_end.as_fd()],
    )
    .unwrap();
    match mgr.recv::<ToManager>().unwrap().0 {
        ToManager::Failed { message } => assert!(message.contains("no disk `nope`"), "{message}"),
        other => panic!("{other:?}"),
    }
    // Channel::send refuses to send it: write the frame as a peer that
    // does not check would.
    let frame = parvm_protocol::frame::encode(
        &ManagerToVios::ViosConnect {
            disk: "data".into(),
            client: "web".into(),
            read_only: false,
        },
        0,
    )
    .unwrap();
    std::io::Write::write_all(&mut mgr.stream(), &frame).unwrap();
    match mgr.recv::<ToManager>().unwrap().0 {
        ToManager::Failed { message } => {
            assert!(message.contains("exactly one socket"), "{message}")
        }
        other => panic!("{other:?}"),
    }

    // Stop: Exit, then the process ends with 0.
    mgr.send(&ManagerToVios::Stop, &[]).unwrap();
    assert_eq!(
        mgr.recv::<ToManager>().unwrap().0,
        ToManager::Exit {
            status: ExitStatus::Stopped,
            code: 0
        }
    );
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "vios did not exit"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn bad_definition_is_one_line_and_exit_1() {
    let dir = TempDir::new("managed-bad");
    let def = dir.path("bad.json");
    std::fs::write(
        &def,
        r#"{"kind":"vios","name":"v","disks":[{"id":"d","path":"missing.raw"}]}"#,
    )
    .unwrap();
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let out = {
        let child = spawn_vios(&def, &theirs);
        child.wait_with_output().unwrap()
    };
    assert_eq!(out.status.code(), Some(1));
}
