//! The real daemon, `parctl` and `vmm` in a scratch directory: every
//! lifecycle transition, the faults of a VMM or manager killed with SIGKILL,
//! and bad input from operators and peers.
//!
//! Long-running partitions boot the tiny guest with `parvm.test=hang`
//! (prints ready, then spins): tests stop them promptly, and the scratch
//! environment kills any VMM it left behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use parvm_tests::guests::guest_path;
use parvm_tests::{repo_root, run, scratch_dir};
use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

#[test]
fn lifecycle_define_start_pause_resume_stop_restart_kill_undefine() {
    let env = Env::new("lifecycle");
    let def = env.hang_definition("p1", "never");
    assert_eq!(env.ok(&["define", &def]).trim(), "defined p1");
    let s = env.status("p1");
    assert_eq!(s["state"], "defined");
    assert_eq!(s["pid"], Value::Null);

    let out = env.ok(&["start", "p1"]);
    assert!(out.starts_with("p1: running (pid "), "{out}");
    let s = env.status("p1");
    assert_eq!(s["state"], "running");
    assert_eq!(s["attached"], true);
    let pid = pid_of(&s);
    assert!(alive(pid));
    env.wait_log("p1", "parvm-guest: hanging");

    assert!(env.ok(&["pause", "p1"]).starts_with("p1: paused"));
    assert_eq!(env.status("p1")["state"], "paused");
    assert!(env.ok(&["resume", "p1"]).starts_with("p1: running"));

    // A paused partition stops too.
    env.ok(&["pause", "p1"]);
    let out = env.ok(&["stop", "p1"]);
    assert_eq!(out.trim(), "p1: stopped (stopped)");
    assert!(!alive(pid));
    assert_eq!(env.status("p1")["last_exit"], "stopped");

    env.ok(&["start", "p1"]);
    let pid2 = pid_of(&env.status("p1"));
    assert_ne!(pid, pid2);
    env.ok(&["restart", "p1"]);
    let s = env.status("p1");
    assert_eq!(s["state"], "running");
    let pid3 = pid_of(&s);
    assert_ne!(pid3, pid2);
    assert!(!alive(pid2));

    let out = env.ok(&["kill", "p1"]);
    assert_eq!(out.trim(), "p1: stopped (killed by the operator)");
    assert!(!alive(pid3));

    let table = env.ok(&["list"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("p1") && table.contains("stopped"), "{table}");
    assert_eq!(env.ok(&["undefine", "p1"]).trim(), "undefined p1");
    let list: Value = serde_json::from_str(&env.ok(&["list", "--json"])).unwrap();
    assert_eq!(list, serde_json::json!({"partitions": []}));
}

#[test]
fn a_guest_that_powers_off_ends_stopped_and_its_console_is_logged() {
    let env = Env::new("poweroff");
    let cfg = repo_root().join("configs/tiny.json");
    env.ok(&["define", cfg.to_str().unwrap()]);
    env.ok(&["start", "tiny"]);
    let s = env.wait_state("tiny", "stopped", Duration::from_secs(10));
    assert_eq!(s["last_exit"], "guest reset");
    assert_eq!(s["vcpus"], 2);
    let logs = env.ok(&["logs", "tiny"]);
    assert!(logs.contains("parvm-guest: ready\n"), "{logs}");
    assert!(logs.contains("parvm-guest: smp online=2/2\n"), "{logs}");
    assert!(logs.contains("parvm-guest: poweroff\n"), "{logs}");
}

#[test]
fn console_follows_a_running_partition_until_it_stops() {
    let env = Env::new("console");
    let cfg = repo_root().join("configs/hang.json");
    env.ok(&["define", cfg.to_str().unwrap()]);
    assert!(env.fails(&["console", "hang"]).contains("not running"));
    env.ok(&["start", "hang"]);
    env.wait_log("hang", "parvm-guest: hanging");
    let console = Command::new(PARCTL)
        .args(["console", "hang"])
        .env("PARVM_SOCKET", &env.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Input reaches the VMM (the tiny guest ignores it).
    console
        .stdin
        .as_ref()
        .unwrap()
        .write_all(b"hello\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    env.ok(&["stop", "hang"]);
    let f = parvm_tests::wait(console, Duration::from_secs(10));
    assert_eq!(f.code(), Some(0), "{}{}", f.stdout, f.stderr);
    assert!(f.stdout.contains("parvm-guest: hanging"), "{}", f.stdout);
    assert!(f.stderr.contains("hang stopped: stopped"), "{}", f.stderr);
}

#[test]
fn starting_and_stopping_are_visible_and_a_stuck_vmm_is_killed() {
    // A "vmm" that never reports ready and ignores SIGTERM.
    let dir = scratch_dir("pm-fake-vmm");
    let fake = dir.join("stuck-vmm");
    std::fs::write(&fake, "#!/bin/sh\ntrap '' TERM\nexec sleep 30\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let env = Env::with(
        "stuck",
        fake,
        &["--ready-timeout", "20", "--stop-timeout", "1"],
    );
    env.ok(&["define", &env.hang_definition("s1", "on-failure")]);
    let start = {
        let mut cmd = Command::new(PARCTL);
        cmd.args(["start", "s1"]).env("PARVM_SOCKET", &env.socket);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let s = env.wait_state("s1", "starting", Duration::from_secs(5));
    let pid = pid_of(&s);
    let stop = {
        let mut cmd = Command::new(PARCTL);
        cmd.args(["stop", "s1"]).env("PARVM_SOCKET", &env.socket);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    env.wait_state("s1", "stopping", Duration::from_secs(5));
    let f = parvm_tests::wait(stop, Duration::from_secs(10));
    assert_eq!(f.code(), Some(0), "{}{}", f.stdout, f.stderr);
    assert_eq!(
        f.stdout.trim(),
        "s1: stopped (stopped (killed after the stop timeout))"
    );
    assert!(!alive(pid));
    let f = parvm_tests::wait(start, Duration::from_secs(10));
    // start_failed
    assert_eq!(f.code(), Some(16), "{}{}", f.stdout, f.stderr);
    assert!(f.stderr.contains("did not start"), "{}", f.stderr);
    // An operator stop is not a failure: no restart.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.status("s1")["state"], "stopped");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_vmm_that_never_gets_ready_is_killed_at_the_ready_timeout() {
    let dir = scratch_dir("pm-silent-vmm");
    let fake = dir.join("silent-vmm");
    std::fs::write(&fake, "#!/bin/sh\nexec sleep 30\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let env = Env::with("silent", fake, &["--ready-timeout", "1"]);
    env.ok(&["define", &env.hang_definition("q", "never")]);
    let e = env.fails(&["start", "q"]);
    assert!(e.contains("did not report ready within 1000 ms"), "{e}");
    let s = env.wait_state("q", "crashed", Duration::from_secs(5));
    assert_eq!(s["last_exit"], "did not report ready within 1000 ms");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_vmm_that_cannot_start_reports_why() {
    let env = Env::new("badkernel");
    let bad = env.dir.join("not-a-kernel");
    std::fs::write(&bad, b"garbage").unwrap();
    let def = env.dir.join("bad.json");
    std::fs::write(
        &def,
        serde_json::json!({"name": "bad", "kernel": bad, "memory_mib": 16}).to_string(),
    )
    .unwrap();
    env.ok(&["define", def.to_str().unwrap()]);
    let e = env.fails(&["start", "bad"]);
    assert!(
        e.contains("partition `bad` did not start: vmm: error:"),
        "{e}"
    );
    assert_eq!(env.status("bad")["state"], "crashed");
}

#[test]
fn kill_9_of_a_vmm_is_a_crash_within_a_second_and_never_is_not_restarted() {
    let env = Env::new("crash-never");
    env.ok(&["define", &env.hang_definition("c1", "never")]);
    env.ok(&["start", "c1"]);
    let pid = pid_of(&env.status("c1"));
    let t = Instant::now();
    kill9(pid);
    let s = env.wait_state("c1", "crashed", Duration::from_secs(1));
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(s["last_exit"], "vmm killed by signal 9");
    std::thread::sleep(Duration::from_millis(500));
    let s = env.status("c1");
    assert_eq!(s["state"], "crashed");
    assert_eq!(s["restarts"], 0);
}

#[test]
fn kill_9_with_on_failure_restarts_with_growing_backoff() {
    let env = Env::new("crash-restart");
    env.ok(&["define", &env.hang_definition("r1", "on-failure")]);
    env.ok(&["start", "r1"]);
    let mut pid = pid_of(&env.status("r1"));
    let mut delays = Vec::new();
    for round in 1..=3u64 {
        kill9(pid);
        let t = Instant::now();
        let old = pid;
        let s = env.wait_for("r1", Duration::from_secs(1), "crashed", |s| {
            s["state"] == "crashed" || (s["state"] == "running" && s["pid"] != old)
        });
        if s["state"] == "crashed" {
            assert_eq!(s["last_exit"], "vmm killed by signal 9");
        }
        let s = env.wait_for("r1", Duration::from_secs(5), "restarted", |s| {
            s["state"] == "running" && s["pid"] != old && s["restarts"] == round
        });
        delays.push(t.elapsed());
        pid = pid_of(&s);
        assert!(alive(pid));
    }
    // 100 ms, 200 ms, 400 ms: each wait longer than the one before.
    assert!(delays[0] >= Duration::from_millis(100), "{delays:?}");
    assert!(delays[2] >= Duration::from_millis(400), "{delays:?}");
    assert!(delays[2] > delays[0], "{delays:?}");
    // An operator start resets the series.
    env.ok(&["stop", "r1"]);
    env.ok(&["start", "r1"]);
    assert_eq!(env.status("r1")["restarts"], 0);
    env.ok(&["stop", "r1"]);
}

#[test]
fn kill_9_of_the_manager_leaves_partitions_running_and_they_reattach() {
    let mut env = Env::new("manager-crash");
    env.ok(&["define", &env.hang_definition("keep", "never")]);
    env.ok(&["define", &env.hang_definition("dies", "never")]);
    env.ok(&["define", &env.hang_definition("comeback", "on-failure")]);
    for p in ["keep", "dies", "comeback"] {
        env.ok(&["start", p]);
    }
    let keep = pid_of(&env.status("keep"));
    let dies = pid_of(&env.status("dies"));
    let comeback = pid_of(&env.status("comeback"));

    env.kill_manager();
    // The manager cannot be reached: exit status 3.
    assert_eq!(env.parctl(&["list"]).code(), Some(3));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        alive(keep) && alive(dies) && alive(comeback),
        "VMMs died with the manager"
    );
    kill9(dies);
    kill9(comeback);
    std::thread::sleep(Duration::from_millis(100));

    env.start_manager();
    let s = env.wait_for("keep", Duration::from_secs(3), "re-attached", |s| {
        s["attached"] == true
    });
    assert_eq!(s["state"], "running");
    assert_eq!(pid_of(&s), keep);
    let s = env.status("dies");
    assert_eq!(s["state"], "crashed");
    assert_eq!(s["last_exit"], "vmm exited while the manager was down");
    // The restart policy applies to what died meanwhile.
    let s = env.wait_for("comeback", Duration::from_secs(5), "restarted", |s| {
        s["state"] == "running" && s["pid"] != comeback
    });
    assert_eq!(s["restarts"], 1);

    // The re-attached VMM is fully controllable again.
    assert!(env.ok(&["pause", "keep"]).starts_with("keep: paused"));
    assert!(env.ok(&["resume", "keep"]).starts_with("keep: running"));
    // And a crash of a re-attached VMM (not our child) is still seen.
    kill9(keep);
    let s = env.wait_state("keep", "crashed", Duration::from_secs(1));
    assert_eq!(
        s["last_exit"],
        "vmm closed its control channel without an exit status"
    );
    env.ok(&["stop", "comeback"]);
}

#[test]
fn bad_operator_input_gets_one_line_errors() {
    let env = Env::new("bad-input");
    let write = |name: &str, text: &str| {
        let p = env.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let e = env.fails(&["define", &write("broken.json", "{\"name\": \"x\",")]);
    assert!(e.contains("broken.json") && e.contains("line 1"), "{e}");
    let kernel = guest_path("tiny.elf").display().to_string();
    let unknown = format!(r#"{{"name":"x","kernel":"{kernel}","memroy":16}}"#);
    let e = env.fails(&["define", &write("unknown.json", &unknown)]);
    assert!(e.contains("unknown field `memroy`"), "{e}");
    let e = env.fails(&[
        "define",
        &write(
            "restart.json",
            &format!(r#"{{"name":"x","kernel":"{kernel}","restart":"always"}}"#),
        ),
    ]);
    assert!(e.contains("unknown restart policy `always`"), "{e}");
    let e = env.fails(&[
        "define",
        &env.dir.join("missing.json").display().to_string(),
    ]);
    assert!(e.contains("missing.json"), "{e}");

    let def = env.hang_definition("dup", "never");
    env.ok(&["define", &def]);
    let e = env.fails(&["define", &def]);
    assert!(
        e.contains("a partition named `dup` is already defined"),
        "{e}"
    );

    env.ok(&["start", "dup"]);
    let e = env.fails(&["start", "dup"]);
    assert!(
        e.contains("partition `dup` is running: it is already running"),
        "{e}"
    );
    let e = env.fails(&["undefine", "dup"]);
    assert!(e.contains("stop it before undefining it"), "{e}");
    let e = env.fails(&["resume", "dup"]);
    assert!(e.contains("only a paused partition can be resumed"), "{e}");
    env.ok(&["stop", "dup"]);
    // Stopping a stopped partition is not an error (it stays stopped).
    assert_eq!(env.ok(&["stop", "dup"]).trim(), "dup: stopped (stopped)");
    let e = env.fails_with(&["pause", "dup"], 13);
    assert!(
        e.contains("partition `dup` is stopped: it is not running"),
        "{e}"
    );

    for cmd in [
        "stop", "start", "kill", "status", "logs", "undefine", "restart", "show",
    ] {
        // not_found
        let e = env.fails_with(&[cmd, "ghost"], 11);
        assert!(e.contains("no partition named `ghost`"), "{cmd}: {e}");
    }
    let e = env.fails(&[
        "list",
        "--socket",
        &env.dir.join("nowhere.sock").display().to_string(),
    ]);
    assert!(e.contains("cannot connect to the partition manager"), "{e}");
    // clap usage errors exit 2.
    assert_eq!(env.parctl(&["frobnicate"]).code(), Some(2));
}

#[test]
fn help_names_every_command() {
    let f = run(
        {
            let mut c = Command::new(PARCTL);
            c.arg("--help");
            c
        },
        Duration::from_secs(10),
    );
    assert_eq!(f.code(), Some(0));
    for cmd in [
        "define",
        "undefine",
        "start",
        "stop",
        "restart",
        "kill",
        "list",
        "status",
        "console",
        "logs",
        "pause",
        "resume",
        "--socket",
        "PARVM_SOCKET",
    ] {
        assert!(f.stdout.contains(cmd), "--help lacks {cmd}: {}", f.stdout);
    }
}

#[test]
fn the_socket_is_private_and_other_uids_are_refused() {
    let env = Env::new("perm");
    let mode = std::fs::metadata(&env.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot run parctl as another uid; skipping the rest");
        return;
    }
    let as_nobody = |env: &Env| {
        let mut cmd = Command::new(PARCTL);
        cmd.args(["list"])
            .env("PARVM_SOCKET", &env.socket)
            .uid(65534)
            .gid(65534);
        run(cmd, Duration::from_secs(10))
    };
    // The scratch directory must be searchable to reach the socket at all.
    std::fs::set_permissions(&env.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let f = as_nobody(&env);
    // unreachable: the socket's mode keeps it out
    assert_eq!(f.code(), Some(3), "{}{}", f.stdout, f.stderr);
    assert!(f.stderr.contains("Permission denied"), "{}", f.stderr);
    // With the file mode opened up, SO_PEERCRED still refuses the uid.
    std::fs::set_permissions(&env.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let f = as_nobody(&env);
    // permission_denied
    assert_eq!(f.code(), Some(14), "{}{}", f.stdout, f.stderr);
    assert!(
        f.stderr
            .contains("uid 65534 may not use this partition manager"),
        "{}",
        f.stderr
    );
    assert!(env
        .manager_log()
        .contains("connection refused: uid not allowed"));
    env.ok(&["list"]);
}

/// A raw connection to the manager.
fn raw(env: &Env) -> UnixStream {
    let s = UnixStream::connect(&env.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn read_answer(s: &UnixStream) -> Value {
    use std::io::Read;
    let mut head = [0u8; 12];
    (&*s).read_exact(&mut head).unwrap();
    assert_eq!(&head[..4], b"PRVM");
    let len = u32::from_le_bytes(head[8..12].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len];
    (&*s).read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

fn frame(version: u16, body: &[u8]) -> Vec<u8> {
    let mut f = b"PRVM".to_vec();
    f.extend_from_slice(&version.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(&(body.len() as u32).to_le_bytes());
    f.extend_from_slice(body);
    f
}

#[test]
fn garbage_partial_frames_and_other_versions_do_not_disturb_other_clients() {
    let env = Env::new("garbage");
    env.ok(&["define", &env.hang_definition("g", "never")]);

    // A peer that stops in the middle of a frame and stays connected.
    let mut half = raw(&env);
    half.write_all(&frame(1, br#"{"op":"list"}"#)[..9]).unwrap();

    // Garbage: an error answer, then the connection is closed.
    let mut g = raw(&env);
    g.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let a = read_answer(&g);
    assert_eq!(a["result"], "error");
    assert_eq!(a["kind"], "bad_request");
    assert!(
        a["message"]
            .as_str()
            .unwrap()
            .contains("not a parvm protocol peer"),
        "{a}"
    );

    // Another version: named in the answer, no hang.
    let mut v = raw(&env);
    v.write_all(&frame(7, br#"{"op":"list"}"#)).unwrap();
    let a = read_answer(&v);
    assert_eq!(a["kind"], "version_mismatch");
    assert!(a["message"].as_str().unwrap().contains("version 7"), "{a}");

    // Bad JSON and unknown requests: an error, and the connection stays usable.
    let mut j = raw(&env);
    j.write_all(&frame(1, b"{\"op\":")).unwrap();
    assert_eq!(read_answer(&j)["kind"], "bad_request");
    j.write_all(&frame(1, br#"{"op":"launch_missiles"}"#))
        .unwrap();
    assert_eq!(read_answer(&j)["kind"], "bad_request");
    j.write_all(&frame(1, br#"{"op":"status","name":"g"}"#))
        .unwrap();
    let a = read_answer(&j);
    assert_eq!(a["result"], "status");
    assert_eq!(a["status"]["state"], "defined");

    // An oversized frame header is refused before anything is read.
    let mut big = raw(&env);
    let mut h = frame(1, b"");
    h[8..12].copy_from_slice(&(64u32 << 20).to_le_bytes());
    big.write_all(&h).unwrap();
    assert!(read_answer(&big)["message"]
        .as_str()
        .unwrap()
        .contains("exceeds the limit"));

    // A forged attach is refused.
    let mut f = raw(&env);
    f.write_all(&frame(
        1,
        br#"{"op":"attach","name":"g","pid":1,"token":"00","paused":false}"#,
    ))
    .unwrap();
    assert_eq!(read_answer(&f)["kind"], "permission_denied");

    // Meanwhile everyone else is served, and a partition still starts.
    env.ok(&["list"]);
    env.ok(&["start", "g"]);
    // The half frame's sender leaves mid-message.
    drop(half);
    env.ok(&["stop", "g"]);
    assert!(env.manager_log().contains("bad peer"));
}

#[test]
fn the_registry_survives_a_manager_restart() {
    let mut env = Env::new("persist");
    env.ok(&["define", &env.hang_definition("a", "on-failure")]);
    env.ok(&["define", &env.hang_definition("b", "never")]);
    env.ok(&["start", "b"]);
    env.ok(&["stop", "b"]);
    env.kill_manager();
    env.start_manager();
    let list: Value = serde_json::from_str(&env.ok(&["list", "--json"])).unwrap();
    let parts = list["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["name"], "a");
    assert_eq!(parts[0]["state"], "defined");
    assert_eq!(parts[0]["restart"], "on-failure");
    assert_eq!(parts[1]["state"], "stopped");
    assert_eq!(parts[1]["last_exit"], "stopped");
    // A second manager on the same state directory is refused.
    let f = run(
        {
            let mut c = Command::new(MANAGER);
            c.arg("--socket")
                .arg(env.dir.join("other.sock"))
                .arg("--state-dir")
                .arg(&env.state);
            c
        },
        Duration::from_secs(10),
    );
    assert_eq!(f.code(), Some(1));
    assert!(
        f.stderr
            .contains("another partition manager uses the state directory"),
        "{}",
        f.stderr
    );
}

#[test]
fn an_overlong_command_line_is_refused_at_define_in_one_short_line() {
    let env = Env::new("long-cmdline");
    let kernel = guest_path("tiny.elf").display().to_string();
    let p = env.dir.join("long.json");
    let cmdline = "z".repeat(200 * 1024);
    std::fs::write(
        &p,
        format!(r#"{{"name":"long","kernel":"{kernel}","cmdline":"{cmdline}"}}"#),
    )
    .unwrap();
    let e = env.fails(&["define", &p.display().to_string()]);
    assert!(e.contains("cmdline is 204800 bytes; at most 4095"), "{e}");
    assert!(e.len() < 300, "{} bytes of error", e.len());
    // Nothing was defined.
    assert!(!env.ok(&["list"]).contains("long"));
}
