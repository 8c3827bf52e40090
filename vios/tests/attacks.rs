//! Attacks on the real `vios` binary that once worked: a client swapping in
//! a short memory table under its running queue (SIGBUS killed the VIOS
//! and every other client), and a second `vios --listen` stealing a live
//! socket path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use vhost::VhostBackend;

struct Vios {
    child: Child,
}

impl Vios {
    fn spawn(socket: &std::path::Path, image: &std::path::Path) -> Vios {
        let child = Command::new(env!("CARGO_BIN_EXE_vios"))
            .arg("--listen")
            .arg(socket)
            .arg("--disk")
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(socket);
        Vios { child }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Vios {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn image(dir: &TempDir) -> std::path::PathBuf {
    let image = dir.path("disk.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    image
}

/// A client keeps kicking a valid queue while it replaces its memory table
/// with one whose 4 MiB region is backed by a 4 KiB memfd (the rings at
/// 0x1000 and 0x2000 lie past its end), on a fresh connection each time.
/// The VIOS refuses the table before any queue worker can touch it: it
/// stays alive and serves another client. (Before the fix the VIOS died of
/// SIGBUS within some tens of attempts.)
#[test]
fn a_short_memory_table_under_a_running_queue_is_refused_not_fatal() {
    let dir = TempDir::new("short-table");
    let socket = dir.path("vios.sock");
    let mut vios = Vios::spawn(&socket, &image(&dir));
    let bystander = Client::setup(&socket, 1, 0);

    for attempt in 0..100 {
        let attacker = Client::setup(&socket, 1, 0);
        let good = region_info(&attacker.mem);
        let short = memfd("short", 0x1000);
        let mut bad = good;
        bad.mmap_handle = short.as_raw_fd();
        let kick = attacker.queues[0].kick.try_clone().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let kicker = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = kick.write(1);
                    std::thread::yield_now();
                }
            })
        };
        // Refused with an error reply; the VIOS then drops the connection.
        std::thread::sleep(Duration::from_millis(2));
        assert!(attacker.frontend.set_mem_table(&[bad]).is_err());
        stop.store(true, Ordering::Relaxed);
        kicker.join().unwrap();
        assert!(vios.alive(), "the VIOS died on attempt {attempt}");
    }

    // The bystander's connection still gets answers, and so does a new one.
    let mut bystander = bystander;
    let p = pattern(7, 512);
    assert_eq!(bystander.write(0, 8, &p), S_OK);
    assert_eq!(bystander.read(0, 8, 512).1, p);
    let mut fresh = Client::setup(&socket, 1, 0);
    assert_eq!(fresh.read(0, 8, 512).1, p);
    assert!(vios.alive());
}

/// A second `vios --listen` on the socket path a live VIOS listens on
/// fails with one line naming the path; the first keeps its socket.
#[test]
fn a_second_vios_does_not_steal_a_live_socket() {
    let dir = TempDir::new("steal");
    let socket = dir.path("vios.sock");
    let img = image(&dir);
    let mut first = Vios::spawn(&socket, &img);
    let out = Command::new(env!("CARGO_BIN_EXE_vios"))
        .arg("--listen")
        .arg(&socket)
        .arg("--disk")
        .arg(&img)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(stderr.contains(&socket.display().to_string()), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    // The first VIOS is still reachable at its path.
    let start = Instant::now();
    let mut c = Client::setup(&socket, 1, 0);
    assert_eq!(c.flush(0), S_OK);
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(first.alive());
}

/// A stale socket (no one listening) is still replaced, as before.
#[test]
fn a_stale_socket_is_replaced() {
    let dir = TempDir::new("stale");
    let socket = dir.path("vios.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let mut vios = Vios::spawn(&socket, &image(&dir));
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut c = Client::setup(&socket, 1, 0);
    assert_eq!(c.flush(0), S_OK);
    assert!(vios.alive());
}
