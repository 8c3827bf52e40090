//! Attacks on the real `partition-manager` that once worked: a state
//! directory others could read, unbounded idle and trickling clients, and
//! a connection flood that flooded the log, a timed-out pause that a stopped
//! VMM carried out later.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use parvm_tests::run;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// Whether uid 65534 can read `path` (as `cat` run under that uid).
fn nobody_reads(path: &std::path::Path) -> bool {
    let mut cmd = Command::new("cat");
    cmd.arg(path).uid(65534).gid(65534);
    run(cmd, Duration::from_secs(10)).code() == Some(0)
}

#[test]
fn an_existing_open_state_directory_is_made_private() {
    let mut env = Env::new("state-open");
    env.kill_manager();
    // As an operator might have left it: world-readable, a readable log.
    let logs = env.state.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("old.log"), "secret console output").unwrap();
    for (p, m) in [(&env.state, 0o755), (&logs, 0o755)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    std::fs::set_permissions(logs.join("old.log"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&env.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    if is_root() {
        assert!(nobody_reads(&logs.join("old.log")), "setup: readable");
    }
    env.start_manager();
    let def = env.hang_definition("p", "never");
    env.ok(&["define", &def]);
    env.ok(&["start", "p"]);
    env.wait_state("p", "running", Duration::from_secs(20));
    assert_eq!(mode(&env.state), 0o700);
    assert_eq!(mode(&logs), 0o700);
    assert_eq!(mode(&logs.join("old.log")), 0o600);
    for entry in std::fs::read_dir(&env.state).unwrap() {
        let p = entry.unwrap().path();
        assert_eq!(mode(&p) & 0o077, 0, "{} is {:o}", p.display(), mode(&p));
    }
    for entry in std::fs::read_dir(&logs).unwrap() {
        let p = entry.unwrap().path();
        assert_eq!(mode(&p) & 0o077, 0, "{} is {:o}", p.display(), mode(&p));
    }
    assert!(env.manager_log().contains("group/other access"));
    if is_root() {
        assert!(!nobody_reads(&logs.join("old.log")));
        assert!(!nobody_reads(&env.state.join("partitions.db")));
        assert!(!nobody_reads(&logs.join("p.log")));
    }
    env.ok(&["stop", "p"]);
}

#[test]
fn a_state_directory_of_another_user_is_refused() {
    if !is_root() {
        eprintln!("not root: cannot give the directory to another uid; skipping");
        return;
    }
    let mut env = Env::new("state-other");
    env.kill_manager();
    std::os::unix::fs::chown(&env.state, Some(65534), Some(65534)).unwrap();
    assert_eq!(std::fs::metadata(&env.state).unwrap().uid(), 65534);
    let mut cmd = Command::new(MANAGER);
    cmd.arg("--socket")
        .arg(env.dir.join("other.sock"))
        .arg("--state-dir")
        .arg(&env.state);
    let f = run(cmd, Duration::from_secs(10));
    assert_eq!(f.code(), Some(1), "{}{}", f.stdout, f.stderr);
    assert!(f.stderr.contains("belongs to uid 65534"), "{}", f.stderr);
    assert!(
        f.stderr.contains(&env.state.display().to_string()),
        "{}",
        f.stderr
    );
    assert_eq!(f.stderr.trim_end().lines().count(), 1, "{}", f.stderr);
}

#[test]
fn idle_clients_are_bounded_and_the_operator_still_gets_through() {
    let env = Env::with(
        "bounded",
        vmm_binary(),
        &["--max-clients", "4", "--client-timeout", "600"],
    );
    // Four idle clients the manager holds (a connection that still counted
    // from start-up may have one refused at first: that one is retried).
    let start = Instant::now();
    let mut idle = Vec::new();
    while idle.len() < 4 {
        assert!(start.elapsed() < Duration::from_secs(10), "no 4 slots");
        let s = UnixStream::connect(&env.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match (&s).read(&mut [0u8; 1]) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => idle.push(s),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    // Once the manager has accepted the four (it may lag on a busy
    // machine), a fifth client is refused with a clear answer.
    let start = Instant::now();
    let f = loop {
        let f = env.parctl(&["list"]);
        if f.code() != Some(0) || start.elapsed() > Duration::from_secs(10) {
            break f;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // busy
    assert_eq!(f.code(), Some(24), "{}{}", f.stdout, f.stderr);
    assert!(f.stderr.contains("4 clients at once"), "{}", f.stderr);
    drop(idle);
    let start = Instant::now();
    loop {
        let f = env.parctl(&["list"]);
        if f.code() == Some(0) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{}", f.stderr);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(env.manager_log().contains("too many clients"));
}

#[test]
fn a_trickling_or_silent_client_is_cut_at_the_client_timeout() {
    let env = Env::with("trickle", vmm_binary(), &["--client-timeout", "2"]);
    // One byte of a valid `list` request every 300 ms: the whole frame
    // would take over 10 s.
    let body = br#"{"op":"list"}"#;
    let mut frame = b"PRVM".to_vec();
    frame.extend_from_slice(&1u16.to_le_bytes());
    frame.extend_from_slice(&0u16.to_le_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(body);
    let mut s = UnixStream::connect(&env.socket).unwrap();
    let start = Instant::now();
    let mut closed_after = None;
    for b in &frame {
        if s.write_all(&[*b]).is_err() {
            closed_after = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let closed_after = closed_after.unwrap_or_else(|| start.elapsed());
    assert!(
        closed_after < Duration::from_secs(6),
        "still connected after {closed_after:?}"
    );
    // A silent client is closed too (it reads an answer, then end of file).
    let mut quiet = UnixStream::connect(&env.socket).unwrap();
    quiet
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let start = Instant::now();
    let mut all = Vec::new();
    let _ = quiet.read_to_end(&mut all);
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
    assert!(
        String::from_utf8_lossy(&all).contains("no whole request within 2 s"),
        "{}",
        String::from_utf8_lossy(&all)
    );
    env.ok(&["list"]);
}

#[test]
fn a_connection_flood_does_not_flood_the_log() {
    let env = Env::new("flood");
    let before = env.manager_log().lines().count();
    for _ in 0..3000 {
        drop(UnixStream::connect(&env.socket).unwrap());
    }
    // The next connection logged after the one-second window reports how
    // many were left out.
    std::thread::sleep(Duration::from_millis(1100));
    env.ok(&["list"]);
    let log = env.manager_log();
    let lines = log.lines().count() - before;
    // 20 connection lines a second at most (plus a few others).
    assert!(lines < 400, "{lines} log lines for 3000 connections");
    let counted = log
        .lines()
        .filter_map(|l| l.split("suppressed=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum::<u64>();
    assert!(
        counted > 1000,
        "only {counted} connections counted as suppressed"
    );
}

#[test]
fn a_pause_that_timed_out_does_not_take_effect_later() {
    let env = Env::new("pause-timeout");
    let def = env.hang_definition("p", "never");
    env.ok(&["define", &def]);
    env.ok(&["start", "p"]);
    let pid = pid_of(&env.wait_state("p", "running", Duration::from_secs(20)));
    // A stopped VMM cannot answer: the pause times out.
    // SAFETY: kill(2) on the test's own VMM.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let e = env.fails(&["pause", "p"]);
    assert!(e.contains("did not answer"), "{e}");
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    // Woken, the VMM must not end up paused behind the operator's back,
    // and what the manager reports is what the VMM does.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(env.status("p")["state"], "running");
    env.ok(&["pause", "p"]);
    assert_eq!(env.status("p")["state"], "paused");
    env.ok(&["resume", "p"]);
    assert_eq!(env.status("p")["state"], "running");
    env.ok(&["stop", "p"]);
}

/// The reconnect tokens of running partitions, from the manager's store.
fn stored_tokens(env: &Env) -> Vec<(String, String)> {
    let db = rusqlite::Connection::open_with_flags(
        env.state.join("partitions.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut q = db
        .prepare("SELECT name, token FROM partitions WHERE token IS NOT NULL")
        .unwrap();
    let rows = q
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<(String, String)>, _>>()
        .unwrap();
    rows
}

/// Every 32-hex-digit word of `bytes` (a token's shape).
fn hex32_words(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| !b.is_ascii_hexdigit())
        .filter(|w| w.len() == 32)
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
}

/// The reconnect token once sat in `PARVM_CONTROL_TOKEN`, readable in
/// `/proc/PID/environ` for the process's lifetime (removing it from Rust's
/// environment does not change that page). It now travels on the control
/// channel: neither a VMM's nor a VIOS's environment or command line holds
/// it, and both still re-attach to a restarted manager with it.
#[test]
fn the_reconnect_token_is_not_in_the_environment() {
    let mut env = Env::new("token-env");
    ensure_vios(&env.vmm);
    std::fs::write(env.dir.join("data.img"), vec![0u8; 1 << 20]).unwrap();
    let vios_def = env.dir.join("vios1.json");
    let def = serde_json::json!({
        "kind": "vios", "name": "vios1",
        "disks": [{"id": "data", "path": "data.img"}],
    });
    std::fs::write(&vios_def, def.to_string()).unwrap();
    env.ok(&["define", &vios_def.display().to_string()]);
    env.ok(&["start", "vios1"]);
    let def = env.hang_definition("p", "never");
    env.ok(&["define", &def]);
    env.ok(&["start", "p"]);
    env.wait_state("p", "running", Duration::from_secs(20));
    env.wait_state("vios1", "running", Duration::from_secs(20));
    let tokens = stored_tokens(&env);
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    for name in ["p", "vios1"] {
        let token = &tokens.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(token.len(), 32, "{token}");
        let pid = pid_of(&env.status(name));
        for file in ["environ", "cmdline"] {
            let bytes = std::fs::read(format!("/proc/{pid}/{file}")).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains("PARVM_CONTROL_TOKEN"),
                "{name} {file}: {text}"
            );
            assert!(
                !text.contains(token.as_str()),
                "{name} {file} holds the token"
            );
            let words = hex32_words(&bytes);
            assert!(words.is_empty(), "{name} {file}: token-like {words:?}");
        }
    }
    // The token came on the channel: both re-attach with it.
    let pids = [pid_of(&env.status("p")), pid_of(&env.status("vios1"))];
    env.kill_manager();
    env.start_manager();
    for (name, pid) in ["p", "vios1"].into_iter().zip(pids) {
        let s = env.wait_for(name, Duration::from_secs(10), "re-attached", |s| {
            s["attached"] == true
        });
        assert_eq!(pid_of(&s), pid);
        assert_eq!(s["state"], "running");
    }
    env.ok(&["stop", "p"]);
    env.ok(&["stop", "vios1"]);
}

/// Guessing grant cookies once went unnoticed: a forged cookie got a quiet
/// `unknown_cookie`. Failed guesses are now counted per caller and logged
/// at a bounded rate, each line carrying the count so far.
#[test]
fn failed_cookie_guesses_are_counted_and_logged_at_a_bounded_rate() {
    use partition_manager::client::{Client, ClientError};
    use partition_manager::protocol::{ErrorKind, GrantCookie, Request};
    let env = Env::new("guesses");
    let def = env.hang_definition("web", "never");
    env.ok(&["define", &def]);
    let before = env.manager_log().lines().count();
    let client = Client::connect(&env.socket).unwrap();
    let started = Instant::now();
    for i in 0..2000u32 {
        let cookie: GrantCookie = format!("pvg1-{:032x}", 0xdead_0000_u64 + u64::from(i))
            .parse()
            .unwrap();
        let request = match i % 4 {
            0 => Request::Accept {
                cookie,
                partition: "web".into(),
                gpa: None,
            },
            1 => Request::Revoke {
                cookie,
                partition: Some("web".into()),
            },
            2 => Request::Regrant {
                cookie,
                partition: "web".into(),
                grantee: "web".into(),
                rights: "ro".parse().unwrap(),
            },
            _ => Request::Copy {
                partition: "web".into(),
                src: cookie,
                src_offset: 0,
                dst: cookie,
                dst_offset: 0,
                len: 1,
            },
        };
        match client.call(&request) {
            Err(ClientError::Manager { kind, .. }) => {
                assert_eq!(kind, ErrorKind::UnknownCookie, "{i}")
            }
            other => panic!("a forged cookie answered {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    // The next guess after the window reports the total.
    std::thread::sleep(Duration::from_millis(1100));
    let f = env.parctl(&[
        "accept",
        "pvg1-0123456789abcdef0123456789abcdef",
        "--as",
        "web",
    ]);
    // unknown_cookie
    assert_eq!(f.code(), Some(18), "{}{}", f.stdout, f.stderr);
    let log = env.manager_log();
    let new: Vec<&str> = log.lines().skip(before).collect();
    let guesses: Vec<&str> = new
        .iter()
        .copied()
        .filter(|l| l.contains("failed grant cookie guess"))
        .collect();
    // 3 lines a second at most, per caller.
    let bound = 3 * (elapsed.as_secs() as usize + 3);
    assert!(
        !guesses.is_empty() && guesses.len() <= bound,
        "{} guess lines in {elapsed:?} (bound {bound})",
        guesses.len()
    );
    assert!(new.len() < 100, "{} log lines for 2001 guesses", new.len());
    let counts: Vec<u64> = guesses
        .iter()
        .filter_map(|l| l.split("failed_guesses=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(counts.len(), guesses.len(), "{guesses:?}");
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "{counts:?}");
    assert_eq!(counts.last(), Some(&2001), "{guesses:?}");
    assert!(
        guesses.iter().all(|l| l.contains("caller=operator")),
        "{guesses:?}"
    );
    let last = guesses.last().unwrap();
    assert!(last.contains("suppressed="), "{last}");
}
