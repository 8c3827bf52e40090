//! Grant cookies through the real manager, `parctl`, `vmm` and tiny guests
//! (tests/guests/grant.S, all bulk work at CPL3): share, regrant read-only,
//! revoke with acknowledgements, every refusal with its own error, hcalls
//! from inside the guests, and a VMM crash releasing its grants.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use partition_manager::client::{Client, ClientError};
use partition_manager::protocol::{ErrorKind, Request, Response};
use parvm_tests::guests::guest_path;
use serde_json::Value;
use std::time::{Duration, Instant};

const GW: u64 = 0xe000_0000;

/// A partition running a grant.S role, optionally owning segment `buf`.
fn define(env: &Env, name: &str, role: &str, segment_kib: Option<u64>) {
    let mut def = serde_json::json!({
        "name": name,
        "vcpus": 1,
        "memory_mib": 16,
        "kernel": guest_path("tiny.elf"),
        "cmdline": format!("console=ttyS0 parvm.grant={role}"),
    });
    if let Some(kib) = segment_kib {
        def["segments"] = serde_json::json!([{"id": "buf", "size_kib": kib, "gpa": GW}]);
    }
    let p = env.dir.join(format!("{name}.json"));
    std::fs::write(&p, def.to_string()).unwrap();
    env.ok(&["define", p.to_str().unwrap()]);
}

fn grants(env: &Env) -> Value {
    serde_json::from_str(&env.ok(&["grants", "--json"])).unwrap()
}

fn grant(env: &Env, id: u64) -> Value {
    grants(env)["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no grant {id}"))
}

fn wait_grant(env: &Env, id: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let g = grant(env, id);
        if pred(&g) {
            return g;
        }
        assert!(
            Instant::now() < deadline,
            "grant {id}: {what} not reached: {g}\n{}",
            env.manager_log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn client(env: &Env) -> Client {
    Client::connect(&env.socket).unwrap()
}

/// The error kind and message the manager answers `req` with.
fn refused(env: &Env, req: Request) -> (ErrorKind, String) {
    match client(env).call(&req) {
        Err(ClientError::Manager { kind, message }) => (kind, message),
        other => panic!("{req:?} was not refused: {other:?}"),
    }
}

#[test]
fn share_regrant_read_only_and_revoke_cascades_before_it_returns() {
    let env = Env::new("grant-share");
    define(&env, "a", "owner", Some(128));
    define(&env, "b", "peer", None);
    define(&env, "c", "reader", None);
    for n in ["a", "b", "c"] {
        env.ok(&["start", n]);
    }
    // A's own segment is mapped at start; it writes the pattern.
    env.wait_log("a", "grant owner wrote pattern");

    let cookie = env
        .ok(&["grant", "a/buf", "--to", "b", "--rights", "rw"])
        .trim()
        .to_string();
    assert!(
        cookie.starts_with("pvg1-") && cookie.len() == 37,
        "{cookie}"
    );
    let out = env.ok(&["accept", &cookie, "--as", "b", "--gpa", "0xe0000000"]);
    assert!(out.contains("mapped in b at 0xe0000000"), "{out}");
    env.wait_log("b", "grant pattern ok");
    env.wait_log("b", "grant peer wrote reply");
    env.wait_log("a", "grant owner saw reply");

    // B passes it on read-only to C; C reads, and its write is refused.
    let c_cookie = env
        .ok(&[
            "regrant", &cookie, "--as", "b", "--to", "c", "--rights", "ro",
        ])
        .trim()
        .to_string();
    env.ok(&["accept", &c_cookie, "--as", "c", "--gpa", "0xe0000000"]);
    env.wait_log("c", "grant pattern ok");
    env.wait_log("c", "grant write refused");
    assert!(!env.log_of("c").contains("write landed"));
    let g2 = wait_grant(&env, 2, "a reported write", |g| {
        g["faults"].as_u64() >= Some(1)
    });
    assert_eq!(g2["rights"], "ro");
    assert_eq!(g2["parent"], cookie.as_str());
    // The fault is an event too (parctl events).
    let events = env.ok(&["events", "--no-follow", "--json"]);
    let fault: serde_json::Value = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["type"] == "grant_fault")
        .unwrap_or_else(|| panic!("no grant_fault in {events}"));
    assert_eq!(
        (fault["id"].as_u64(), fault["grantee"].as_str()),
        (Some(2), Some("c"))
    );
    assert_eq!(fault["write"], true);
    assert!(
        g2["last_fault"]
            .as_str()
            .unwrap()
            .contains("write to a read-only grant refused"),
        "{g2}"
    );

    // The tree as operators see it.
    let table = env.ok(&["grants"]);
    assert!(table.contains("a/buf (128 KiB at 0xe0000000)"), "{table}");
    assert!(table.contains("#1 a -> b"), "{table}");
    assert!(table.contains("    #2 b -> c"), "{table}");

    // A (the owner) revokes B's cookie: B's and C's slots are gone before
    // the revoke returns (each VMM logs the unmap before acknowledging).
    let t = Instant::now();
    let out = env.ok(&["revoke", &cookie, "--as", "a"]);
    let took = t.elapsed();
    assert!(out.contains("revoked 2 grant(s): #1 #2"), "{out}");
    for n in ["b", "c"] {
        let vmm_log = std::fs::read_to_string(env.state.join(format!("logs/{n}.vmm.log"))).unwrap();
        assert!(vmm_log.contains("grant unmapped"), "{n}: {vmm_log}");
    }
    let j = grants(&env);
    for g in j["grants"].as_array().unwrap() {
        assert_eq!(g["state"], "revoked", "{g}");
    }
    // Their next access is an unmapped-address exit: 0xff bytes, never the
    // old data, and reported.
    env.wait_log("b", "grant window gone value=0x00000000ffffffff");
    env.wait_log("c", "grant window gone value=0x00000000ffffffff");
    for id in [1, 2] {
        wait_grant(&env, id, "a reported access after revoke", |g| {
            g["last_fault"]
                .as_str()
                .is_some_and(|f| f.contains("unmapped (revoked)"))
        });
    }
    // The revoked cookie never works again.
    let e = env.fails(&["accept", &cookie, "--as", "b"]);
    assert!(e.contains("revoked"), "{e}");
    let e = env.fails(&["regrant", &cookie, "--as", "b", "--to", "c"]);
    assert!(e.contains("revoked"), "{e}");
    eprintln!("revoke of 2 grants took {took:?}");
}

#[test]
fn bad_cookies_rights_addresses_and_sizes_are_refused_each_with_its_own_error() {
    let env = Env::new("grant-refusals");
    define(&env, "a", "owner", Some(128));
    define(&env, "b", "peer", None);
    define(&env, "c", "reader", None);
    for n in ["a", "b", "c"] {
        env.ok(&["start", n]);
    }
    let cookie: partition_manager::protocol::GrantCookie = env
        .ok(&["grant", "a/buf", "--to", "b", "--rights", "ro"])
        .trim()
        .parse()
        .unwrap();

    // A forged cookie: one bit off.
    let mut forged = cookie;
    forged.0[7] ^= 0x10;
    let (kind, msg) = refused(
        &env,
        Request::Accept {
            cookie: forged,
            partition: "b".into(),
            gpa: None,
        },
    );
    assert_eq!(kind, ErrorKind::UnknownCookie, "{msg}");
    assert!(msg.contains("never issued"), "{msg}");

    // The right cookie, presented by the wrong partition.
    let (kind, msg) = refused(
        &env,
        Request::Accept {
            cookie,
            partition: "c".into(),
            gpa: None,
        },
    );
    assert_eq!(kind, ErrorKind::WrongPartition, "{msg}");
    assert!(msg.contains("is for partition `b`, not `c`"), "{msg}");

    // An address overlapping RAM, a device, or outside the windows.
    for gpa in [0x10_0000u64, 0xfec0_0000, 0xd000_0000] {
        let (kind, msg) = refused(
            &env,
            Request::Accept {
                cookie,
                partition: "b".into(),
                gpa: Some(gpa),
            },
        );
        assert_eq!(kind, ErrorKind::GpaConflict, "{gpa:#x}: {msg}");
        assert!(msg.contains("outside the grant windows"), "{msg}");
    }
    // A failed accept leaves the cookie usable.
    env.ok(&[
        "accept",
        &cookie.to_string(),
        "--as",
        "b",
        "--gpa",
        "0xe0000000",
    ]);
    // Accepted once: a second accept is refused.
    let (kind, msg) = refused(
        &env,
        Request::Accept {
            cookie,
            partition: "b".into(),
            gpa: None,
        },
    );
    assert_eq!(kind, ErrorKind::CookieUsed, "{msg}");
    assert!(msg.contains("accepted once"), "{msg}");

    // Another grant of the same segment at an address B already uses.
    let second: partition_manager::protocol::GrantCookie = env
        .ok(&["grant", "a/buf", "--to", "b", "--rights", "ro"])
        .trim()
        .parse()
        .unwrap();
    let (kind, msg) = refused(
        &env,
        Request::Accept {
            cookie: second,
            partition: "b".into(),
            gpa: Some(GW + 0x8000),
        },
    );
    assert_eq!(kind, ErrorKind::GpaConflict, "{msg}");
    assert!(msg.contains("overlaps mapping `grant:1`"), "{msg}");

    // Rights escalation on regrant: B holds ro.
    let (kind, msg) = refused(
        &env,
        Request::Regrant {
            cookie,
            partition: "b".into(),
            grantee: "c".into(),
            rights: partition_manager::protocol::Rights::Rw,
        },
    );
    assert_eq!(kind, ErrorKind::RightsEscalation, "{msg}");
    assert!(msg.contains("cannot give rw"), "{msg}");

    // Only the owner grants; only grantor or owner revoke.
    let (kind, _) = refused(
        &env,
        Request::Revoke {
            cookie,
            partition: Some("c".into()),
        },
    );
    assert_eq!(kind, ErrorKind::WrongPartition);

    // A segment larger than allowed, from parctl and from a definition.
    let (kind, msg) = refused(
        &env,
        Request::SegmentCreate {
            owner: "a".into(),
            id: "huge".into(),
            size: (1 << 30) + 4096,
            gpa: None,
        },
    );
    assert_eq!(kind, ErrorKind::TooLarge, "{msg}");
    let e = env.fails(&["segment", "create", "a/huge", "--size", "2G"]);
    assert!(e.contains("exceeds the largest segment"), "{e}");
    let e = env.fails(&["segment", "create", "a/odd", "--size", "1000"]);
    assert!(e.contains("multiple of 4 KiB"), "{e}");
    env.ok(&["segment", "create", "a/small", "--size", "8K"]);

    // A revoked cookie.
    env.ok(&["revoke", &cookie.to_string()]);
    let (kind, msg) = refused(
        &env,
        Request::Regrant {
            cookie,
            partition: "b".into(),
            grantee: "c".into(),
            rights: partition_manager::protocol::Rights::Ro,
        },
    );
    assert_eq!(kind, ErrorKind::CookieUsed, "{msg}");
    assert!(msg.contains("revoked"), "{msg}");

    // Malformed cookie text never reaches the manager.
    for bad in [
        "pvg1-123",
        "cookie",
        "pvg1-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
    ] {
        let e = env.fails(&["accept", bad, "--as", "b"]);
        assert!(e.contains("malformed grant cookie"), "{e}");
    }
    // Malformed cookies inside a protocol message are a bad request.
    let raw = serde_json::json!({"op": "accept", "cookie": "pvg1-xyz", "partition": "b"});
    let chan = partition_manager::protocol::Channel::new(
        std::os::unix::net::UnixStream::connect(&env.socket).unwrap(),
    );
    let frame = partition_manager::protocol::frame::encode(&raw, 0).unwrap();
    std::io::Write::write_all(&mut chan.stream(), &frame).unwrap();
    match chan.recv::<Response>().unwrap().0 {
        Response::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::BadRequest);
            assert!(message.contains("malformed grant cookie"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn guests_grant_accept_and_revoke_through_the_hcall_page() {
    let env = Env::new("grant-hcall");
    define(&env, "a", "hcall-owner", Some(128));
    define(&env, "peer", "hcall-peer", None);
    define(&env, "third", "peer", None);
    env.ok(&["start", "a"]);
    env.ok(&["start", "peer"]);
    env.wait_log("a", "grant hcall grant status=0");
    // The whole line (the guest prints it a byte at a time).
    let deadline = Instant::now() + Duration::from_secs(10);
    let cookie = loop {
        let log = env.log_of("a");
        let found = log.split_inclusive('\n').find_map(|l| {
            let c = l.strip_prefix("parvm-guest: grant cookie=")?;
            c.ends_with('\n').then(|| c.trim().to_string())
        });
        if let Some(c) = found {
            break c;
        }
        assert!(Instant::now() < deadline, "no cookie line: {log}");
        std::thread::sleep(Duration::from_millis(10));
    };
    // The guest's cookie is the one in the grant table.
    assert_eq!(grant(&env, 1)["cookie"], cookie.as_str());
    assert_eq!(grant(&env, 1)["grantee"], "peer");

    // Out of band, the cookie reaches the peer's guest on its console.
    let c = client(&env);
    c.channel()
        .send(
            &Request::Console {
                name: "peer".into(),
            },
            &[],
        )
        .unwrap();
    assert!(matches!(c.receive().unwrap().0, Response::LogFile { .. }));
    c.channel()
        .send(
            &Request::ConsoleInput {
                data: format!("{cookie}\n").into_bytes(),
            },
            &[],
        )
        .unwrap();

    env.wait_log("peer", "grant hcall forged accept status=3");
    env.wait_log("peer", "grant hcall accept status=0 gpa=0x00000000e0000000");
    env.wait_log("peer", "grant pattern ok");
    env.wait_log("peer", "grant hcall second accept status=5");
    env.wait_log("peer", "grant hcall regrant status=0");
    env.wait_log("peer", "grant hcall copy status=0 bytes=16");
    env.wait_log("peer", "grant copy landed");
    env.wait_log("peer", "grant peer wrote reply");
    let g2 = grant(&env, 2);
    assert_eq!(g2["grantor"], "peer");
    assert_eq!(g2["grantee"], "third");
    assert_eq!(g2["rights"], "ro");
    env.wait_log("a", "grant owner saw reply");
    env.wait_log("a", "grant hcall revoke status=0 count=2");
    // A segment made from inside the guest.
    env.wait_log(
        "a",
        "grant hcall segment status=0 number=1 gpa=0x00000000e0100000",
    );
    env.wait_log("a", "grant own segment works");
    let j = grants(&env);
    assert_eq!(j["segments"][1]["name"], "a/made");
    assert_eq!(j["segments"][1]["size"], 8192);
    env.wait_log("peer", "grant window gone value=0x00000000ffffffff");
    assert_eq!(grant(&env, 1)["state"], "revoked");
    // The revoke took the regrant with it.
    assert_eq!(grant(&env, 2)["state"], "revoked");
}

#[test]
fn a_vmm_crash_releases_its_grants_and_the_segment_survives_with_its_owner() {
    let mut env = Env::new("grant-crash");
    define(&env, "a", "owner", Some(128));
    define(&env, "b", "peer", None);
    define(&env, "c", "reader", None);
    for n in ["a", "b", "c"] {
        env.ok(&["start", n]);
    }
    let cookie = env
        .ok(&["grant", "a/buf", "--to", "b", "--rights", "rw"])
        .trim()
        .to_string();
    env.ok(&["accept", &cookie, "--as", "b"]);
    let c_cookie = env
        .ok(&["regrant", &cookie, "--as", "b", "--to", "c"])
        .trim()
        .to_string();
    env.ok(&["accept", &c_cookie, "--as", "c"]);
    env.wait_log("c", "grant pattern ok");

    // The grant table survives a manager restart.
    env.kill_manager();
    env.start_manager();
    env.wait_for("b", Duration::from_secs(10), "re-attached", |s| {
        s["attached"] == true
    });
    env.wait_for("c", Duration::from_secs(10), "re-attached", |s| {
        s["attached"] == true
    });
    wait_grant(&env, 2, "accepted after the restart", |g| {
        g["state"] == "accepted"
    });

    // B dies: its grant and C's (granted on by B) are released, C is told
    // to unmap; A and its segment live on.
    kill9(pid_of(&env.status("b")));
    env.wait_state("b", "crashed", Duration::from_secs(5));
    wait_grant(&env, 1, "released", |g| g["state"] == "released");
    wait_grant(&env, 2, "released", |g| g["state"] == "released");
    env.wait_log("c", "grant window gone value=0x00000000ffffffff");
    assert_eq!(env.status("a")["state"], "running");
    let j = grants(&env);
    assert_eq!(j["segments"][0]["name"], "a/buf");
    // The owner grants again: a new partition sees the very memory A wrote
    // before the manager restarted (taken back from A's VMM).
    define(&env, "d", "peer", None);
    env.ok(&["start", "d"]);
    let again = env
        .ok(&["grant", "a/buf", "--to", "d", "--rights", "rw"])
        .trim()
        .to_string();
    let out = env.ok(&["accept", &again, "--as", "d"]);
    assert!(out.contains("mapped in d"), "{out}");
    env.wait_log("d", "grant pattern ok");
    env.wait_log("d", "grant peer wrote reply");
}

#[test]
fn a_shared_configuration_maps_segments_at_start_and_doorbells_ping_pong() {
    let mut env = Env::new("grant-doorbell");
    let configs = parvm_tests::repo_root().join("configs");
    env.ok(&["define", configs.join("ping.json").to_str().unwrap()]);
    env.ok(&["define", configs.join("pong.json").to_str().unwrap()]);
    let shared = configs.join("pingpong.shared.json");
    let out = env.ok(&["share", shared.to_str().unwrap()]);
    assert!(out.contains("segment ping/ring (2048 KiB)"), "{out}");
    assert!(
        out.contains("grant #1 ping/ring -> pong rw granted"),
        "{out}"
    );
    assert!(
        out.contains("doorbell ping-to-pong: ping ring 0 -> pong gsi 22"),
        "{out}"
    );
    // Applying it again changes nothing.
    let again = env.ok(&["share", shared.to_str().unwrap()]);
    assert_eq!(out, again);
    env.ok(&["start", "pong"]);
    env.ok(&["start", "ping"]);
    // The standing grant is accepted at start, at the configured address.
    let g = wait_grant(&env, 1, "accepted at start", |g| g["state"] == "accepted");
    assert_eq!(g["gpa"], GW);
    assert_eq!(g["auto_gpa"], GW);
    env.wait_log("pong", "doorbell pong ready");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env
        .log_of("ping")
        .contains("doorbell ping rounds=1000 cycles=")
    {
        assert!(
            Instant::now() < deadline,
            "no ping-pong: {}",
            env.log_of("ping")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let j = grants(&env);
    assert_eq!(j["doorbells"].as_array().unwrap().len(), 2);
    assert_eq!(j["doorbells"][1]["vector"], 65);
    // After a manager restart the doorbells keep their eventfds (handed
    // back by the running VMMs): ping started again reaches the old pong.
    env.kill_manager();
    env.start_manager();
    env.wait_for("pong", Duration::from_secs(10), "re-attached", |s| {
        s["attached"] == true
    });
    env.wait_for("ping", Duration::from_secs(10), "re-attached", |s| {
        s["attached"] == true
    });
    env.ok(&["restart", "ping"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while env
        .log_of("ping")
        .matches("doorbell ping rounds=1000")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "no ping-pong after the restart: {}\n{}",
            env.log_of("ping"),
            env.manager_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A stop puts the standing grant back to `granted` for the next start.
    env.ok(&["stop", "pong"]);
    wait_grant(&env, 1, "granted again", |g| g["state"] == "granted");
    env.ok(&["start", "pong"]);
    wait_grant(&env, 1, "accepted again", |g| g["state"] == "accepted");

    // Broken configurations are refused before anything changes.
    let bad = env.dir.join("bad.json");
    for (text, want) in [
        (
            r#"{"segments":[{"owner":"nobody","id":"x","size_kib":4}]}"#,
            "nobody",
        ),
        (
            r#"{"doorbells":[{"id":"d","from":"ping","ring":512,"to":"pong","gsi":22}]}"#,
            "ring 512",
        ),
        (
            r#"{"doorbells":[{"id":"d","from":"ping","ring":0,"to":"ping","gsi":22}]}"#,
            "own partition",
        ),
        (
            r#"{"segments":[{"owner":"ping","id":"ring","size_kib":4}]}"#,
            "exists already",
        ),
        (
            r#"{"segments":[{"owner":"ping","id":"big","size_kib":2097152}]}"#,
            "exceeds",
        ),
        (
            r#"{"segments":[{"owner":"ping","id":"g","size_kib":4,"map":[{"partition":"pong","gpa":"e0000000","rights":"rw"}]}]}"#,
            "line 1",
        ),
        (r#"{"segment":[]}"#, "unknown field"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let e = env.fails(&["share", bad.to_str().unwrap()]);
        assert!(e.contains(want), "{text}: {e}");
    }
    assert_eq!(grants(&env)["segments"].as_array().unwrap().len(), 1);
}

#[test]
fn the_data_mover_copies_between_segments_without_mapping_them() {
    let env = Env::new("grant-copy");
    // a owns `buf` (mapped at GW, its guest writes the pattern there) and
    // `out` (mapped nowhere).
    let p = env.dir.join("a.json");
    let def = serde_json::json!({
        "name": "a", "vcpus": 1, "memory_mib": 16,
        "kernel": guest_path("tiny.elf"),
        "cmdline": "console=ttyS0 parvm.grant=owner",
        "segments": [
            {"id": "buf", "size_kib": 128, "gpa": GW},
            {"id": "out", "size_kib": 128}
        ],
    });
    std::fs::write(&p, def.to_string()).unwrap();
    env.ok(&["define", p.to_str().unwrap()]);
    define(&env, "b", "peer", None);
    define(&env, "c", "peer", None);
    env.ok(&["start", "a"]);
    env.ok(&["start", "c"]);
    env.wait_log("a", "grant owner wrote pattern");
    // b (not even running) holds a read-only cookie for `buf` and a
    // read-write one for `out`: the manager copies for it.
    let src = env.ok(&["grant", "a/buf", "--to", "b", "--rights", "ro"]);
    let dst = env.ok(&["grant", "a/out", "--to", "b", "--rights", "rw"]);
    let (src, dst) = (src.trim(), dst.trim());
    let e = env.fails(&[
        "copy", "--as", "b", "--src", dst, "--dst", src, "--len", "4096",
    ]);
    assert!(e.contains("cannot give rw"), "{e}");
    let e = env.fails(&[
        "copy", "--as", "c", "--src", src, "--dst", dst, "--len", "4096",
    ]);
    assert!(e.contains("not `c`"), "{e}");
    let e = env.fails(&[
        "copy",
        "--as",
        "b",
        "--src",
        src,
        "--dst",
        dst,
        "--len",
        "4096",
        "--dst-offset",
        "128K",
    ]);
    assert!(e.contains("outside segment"), "{e}");
    let out = env.ok(&[
        "copy", "--as", "b", "--src", src, "--dst", dst, "--len", "68K",
    ]);
    assert_eq!(out.trim(), "copied 69632 bytes");
    // c maps `out` and finds the pattern a wrote into `buf`.
    let c_cookie = env.ok(&["grant", "a/out", "--to", "c", "--rights", "rw"]);
    env.ok(&[
        "accept",
        c_cookie.trim(),
        "--as",
        "c",
        "--gpa",
        "0xe0000000",
    ]);
    env.wait_log("c", "grant pattern ok");
    // Cookies die with their grantee: undefining b ends them, so a b
    // defined again later does not inherit them.
    env.ok(&["undefine", "b"]);
    define(&env, "b", "peer", None);
    let e = env.fails(&[
        "copy", "--as", "b", "--src", src, "--dst", dst, "--len", "4096",
    ]);
    assert!(e.contains("revoked"), "{e}");
}
