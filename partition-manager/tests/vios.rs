//! VIOS partitions under the real daemon (docs/vios.md): a partition of
//! kind `vios` run with the `vios` binary, a client partition whose disk is
//! `vios:vios1/data` booting the tiny guest's virtio-blk test through a
//! brokered socketpair, the grant check, and a stopped VIOS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use parvm_tests::guests::{fnv1a64, guest_path};
use std::path::Path;
use std::time::Duration;

mod common;
use common::*;

const PATTERN_BYTES: usize = 64 * 512;

fn pattern() -> Vec<u8> {
    (0..PATTERN_BYTES)
        .map(|o| ((o / 512) * 31 + (o % 512) * 7) as u8)
        .collect()
}

fn write_json(dir: &Path, name: &str, v: serde_json::Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p.display().to_string()
}

/// `parctl grant RESOURCE --to TO --rights RIGHTS`: the cookie.
fn grant(env: &Env, resource: &str, to: &str, rights: &str) -> String {
    let cookie = env
        .ok(&["grant", resource, "--to", to, "--rights", rights])
        .trim()
        .to_string();
    assert!(cookie.starts_with("pvg1-"), "{cookie}");
    cookie
}

/// Grant and accept: what an operator does before a client's first start.
fn grant_accept(env: &Env, resource: &str, to: &str, rights: &str) -> String {
    let cookie = grant(env, resource, to, rights);
    let out = env.ok(&["accept", &cookie, "--as", to]);
    assert!(
        out.contains(&format!("{resource} accepted by {to} ({rights})")),
        "{out}"
    );
    cookie
}

/// A one-line error (parctl's `error:` line) containing `want`.
fn one_line(e: &str, want: &str) {
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains(want), "want `{want}` in: {e}");
}

#[test]
fn client_partition_uses_a_vios_disk_through_the_manager() {
    let env = Env::new("vios-main");
    ensure_vios(&env.vmm);
    let img = env.dir.join("data.img");
    std::fs::write(&img, vec![0x5au8; 1 << 20]).unwrap();
    let vios_def = write_json(
        &env.dir,
        "vios1.json",
        serde_json::json!({
            "kind": "vios", "name": "vios1",
            "disks": [{"id": "data", "path": "data.img"}],
        }),
    );
    assert_eq!(env.ok(&["define", &vios_def]).trim(), "defined vios1");
    let s = env.status("vios1");
    assert_eq!(s["kind"], "vios");
    assert_eq!(s["exports"], serde_json::json!(["data"]));
    assert_eq!(
        (s["vcpus"].as_u64(), s["memory_mib"].as_u64()),
        (Some(0), Some(0))
    );
    let list = env.ok(&["list"]);
    assert!(list.lines().any(|l| l.starts_with("vios1 ")), "{list}");
    let client = |name: &str| {
        serde_json::json!({
            "name": name, "kernel": guest_path("tiny.elf"), "memory_mib": 64,
            "cmdline": "parvm.test=blk",
            "disks": [{"id": "data", "path": "vios:vios1/data"}],
        })
    };
    let web = write_json(&env.dir, "web.json", client("web"));
    env.ok(&["define", &web]);

    // No grant of vios1/data to web: a clear one-line start error.
    let e = env.fails(&["start", "web"]);
    one_line(
        &e,
        "partition `web` did not start: VIOS `vios1` has not granted disk `data` to partition `web`",
    );
    assert_ne!(env.status("web")["state"], "running");
    // Granted but not accepted: still refused.
    let cookie = grant(&env, "vios1/data", "web", "rw");
    let e = env.fails(&["start", "web"]);
    one_line(
        &e,
        "the grant of VIOS disk `vios1/data` to partition `web` is not accepted yet",
    );
    // A forged cookie and a cookie for another partition are refused.
    let forged = format!("pvg1-{}", "0123456789abcdef".repeat(2));
    let e = env.fails(&["accept", &forged, "--as", "web"]);
    one_line(&e, "this manager never issued it");
    let other = write_json(&env.dir, "other.json", client("other"));
    env.ok(&["define", &other]);
    let e = env.fails(&["accept", &cookie, "--as", "other"]);
    one_line(&e, "is for partition `web`, not `other`");
    // Only the VIOS grants its disks; an unknown export is not a resource.
    let e = env.fails(&["grant", "vios1/nope", "--to", "web"]);
    one_line(&e, "no segment or VIOS disk `vios1/nope`");
    let out = env.ok(&["accept", &cookie, "--as", "web"]);
    assert!(out.contains("vios1/data accepted by web (rw)"), "{out}");
    let e = env.fails(&["accept", &cookie, "--as", "web"]);
    one_line(&e, "a cookie is accepted once");
    let table = env.ok(&["grants"]);
    assert!(table.contains("vios1/data (VIOS disk)"), "{table}");
    assert!(table.contains("vios1 -> web"), "{table}");

    // The VIOS is not running yet: a clear start error.
    let e = env.fails(&["start", "web"]);
    assert!(e.contains("VIOS `vios1` is defined, not running"), "{e}");

    let out = env.ok(&["start", "vios1"]);
    assert!(out.starts_with("vios1: running (pid "), "{out}");
    assert_eq!(env.status("vios1")["attached"], true);

    // The client boots, writes, flushes and reads back through the VIOS,
    // then powers off.
    env.ok(&["start", "web"]);
    env.wait_state("web", "stopped", Duration::from_secs(30));
    let log = env.log_of("web");
    assert!(
        log.contains("parvm-guest: blk capacity=2048 ro=0 serial=data\n"),
        "{log}"
    );
    let on_host = std::fs::read(&img).unwrap();
    assert_eq!(&on_host[..PATTERN_BYTES], &pattern()[..]);
    let want = format!(
        "parvm-guest: blk write=0 flush=0 read=0 match=yes fnv1a64={:016x}\n",
        fnv1a64(&on_host[..PATTERN_BYTES])
    );
    assert!(log.contains(&want), "want {want} in:\n{log}");

    // What the VIOS served is in /metrics (reported every 2 s), parsed by
    // Prometheus's own parser: the pattern written, and read back.
    let disk = serde_json::json!({"vios": "vios1", "disk": "data"});
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let families = loop {
        let (_, families) = scrape(&env);
        if sample(&families, "parvm_vios_disk_requests", disk.clone()).unwrap_or(0.0) > 0.0 {
            break families;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no disk figures: {families:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let written = sample(&families, "parvm_vios_disk_written_bytes", disk.clone()).unwrap();
    let read = sample(&families, "parvm_vios_disk_read_bytes", disk.clone()).unwrap();
    assert!(written >= PATTERN_BYTES as f64, "{written}");
    assert!(read >= PATTERN_BYTES as f64, "{read}");
    assert_eq!(
        families["parvm_vios_disk_request_duration_seconds"]["type"],
        "histogram"
    );
    let count = families["parvm_vios_disk_request_duration_seconds"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s[0] == "parvm_vios_disk_request_duration_seconds_count" && s[1]["disk"] == "data"
        })
        .unwrap()[2]
        .as_f64()
        .unwrap();
    let requests = sample(&families, "parvm_vios_disk_requests", disk).unwrap();
    assert_eq!(count, requests);

    // Again: a second connection to the same running VIOS.
    env.ok(&["start", "web"]);
    env.wait_state("web", "stopped", Duration::from_secs(30));
    assert_eq!(env.log_of("web").matches("match=yes").count(), 2);

    // A partition the VIOS did not grant the disk to cannot start (web's
    // cookie did not work for it).
    let e = env.fails(&["start", "other"]);
    one_line(
        &e,
        "VIOS `vios1` has not granted disk `data` to partition `other`",
    );
    assert_ne!(env.status("other")["state"], "running");

    // A read-only grant: the client is served read-only (its guest's
    // write fails) though the export is writable.
    let before = std::fs::read(&img).unwrap();
    std::fs::write(&img, vec![0x11u8; 1 << 20]).unwrap();
    grant_accept(&env, "vios1/data", "other", "ro");
    env.ok(&["start", "other"]);
    env.wait_state("other", "stopped", Duration::from_secs(30));
    let log = env.log_of("other");
    assert!(
        log.contains("parvm-guest: blk capacity=2048 ro=1 serial=data\n"),
        "{log}"
    );
    assert!(log.contains("parvm-guest: blk write=1 "), "{log}");
    assert_eq!(std::fs::read(&img).unwrap(), vec![0x11u8; 1 << 20]);
    std::fs::write(&img, &before).unwrap();

    // Revoked: the client's next start is refused.
    let out = env.ok(&["revoke", &cookie]);
    assert!(out.starts_with("revoked 1 grant(s)"), "{out}");
    let e = env.fails(&["start", "web"]);
    one_line(
        &e,
        "partition `web` did not start: VIOS `vios1` has not granted disk `data` to partition `web`",
    );
    let e = env.fails(&["accept", &cookie, "--as", "web"]);
    one_line(&e, "the cookie no longer works");

    // A disk the VIOS does not export.
    let bad = write_json(
        &env.dir,
        "bad.json",
        serde_json::json!({
            "name": "bad", "kernel": guest_path("tiny.elf"),
            "disks": [{"id": "d", "path": "vios:vios1/nope"}],
        }),
    );
    env.ok(&["define", &bad]);
    let e = env.fails(&["start", "bad"]);
    assert!(e.contains("exports no disk `nope`"), "{e}");

    // Stopping the VIOS: an orderly exit.
    grant_accept(&env, "vios1/data", "web", "rw");
    let out = env.ok(&["stop", "vios1"]);
    assert_eq!(out.trim(), "vios1: stopped (stopped)");
    let e = env.fails(&["start", "web"]);
    assert!(e.contains("VIOS `vios1` is stopped, not running"), "{e}");
}

#[test]
fn bad_vios_definitions_are_refused() {
    let env = Env::new("vios-bad");
    let cases = [
        (
            serde_json::json!({"kind": "vios", "name": "v", "disks": [{"id": "d", "path": "missing.img"}]}),
            "missing.img",
        ),
        (
            serde_json::json!({"kind": "vios", "name": "v", "kernel": "/k"}),
            "unknown field `kernel`",
        ),
        (
            serde_json::json!({"kind": "vios", "name": "v", "disks": [{"id": "a/b", "path": "x"}]}),
            "invalid disk id",
        ),
    ];
    for (i, (def, want)) in cases.into_iter().enumerate() {
        let f = write_json(&env.dir, &format!("bad{i}.json"), def);
        let e = env.fails(&["define", &f]);
        assert!(e.contains(want), "{e}");
    }
}

/// Issue item 5 through the manager: the VIOS is killed with SIGKILL while
/// a client partition's guest writes (1 MiB requests); the manager restarts the
/// VIOS (restart on-failure) and brokers a new connection to the running
/// client, whose VMM replays its in-flight requests. The client never
/// stops, and its guest's benchmark completes with no I/O error.
#[test]
fn vios_killed_under_load_is_restarted_and_the_client_carries_on() {
    let env = Env::new("vios-kill");
    ensure_vios(&env.vmm);
    let img = env.dir.join("data.img");
    std::fs::write(&img, vec![0x33u8; 16 << 20]).unwrap();
    let vios_def = write_json(
        &env.dir,
        "vios1.json",
        serde_json::json!({
            "kind": "vios", "name": "vios1", "restart": "on-failure",
            "disks": [{"id": "data", "path": "data.img"}],
        }),
    );
    env.ok(&["define", &vios_def]);
    env.ok(&["start", "vios1"]);
    let vios_pid = pid_of(&env.status("vios1"));
    let web = write_json(
        &env.dir,
        "web.json",
        serde_json::json!({
            "name": "web", "kernel": guest_path("tiny.elf"), "memory_mib": 64,
            "cmdline": "parvm.test=blkbench parvm.bench=50000 parvm.benchmib=2048",
            "disks": [{"id": "data", "path": "vios:vios1/data"}],
        }),
    );
    env.ok(&["define", &web]);
    grant_accept(&env, "vios1/data", "web", "rw");
    env.ok(&["start", "web"]);
    let web_pid = pid_of(&env.status("web"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !env
        .log_of("web")
        .contains("parvm-guest: blkbench start seqwrite")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            env.log_of("web")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    kill9(vios_pid);
    // Restarted by the manager, with a new pid.
    let s = env.wait_for("vios1", Duration::from_secs(10), "restarted", |s| {
        s["state"] == "running" && s["pid"].as_u64().is_some_and(|p| p as u32 != vios_pid)
    });
    assert_eq!(s["restarts"], 1, "{s}");
    // The event stream shows the crash, the restart and the reconnect.
    let events: Vec<serde_json::Value> = env
        .ok(&["events", "--no-follow", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = |want: &dyn Fn(&serde_json::Value) -> bool| {
        events
            .iter()
            .position(want)
            .unwrap_or_else(|| panic!("{events:#?}"))
    };
    let crash = at(&|e| e["partition"] == "vios1" && e["to"] == "crashed");
    let restart = at(&|e| e["type"] == "restart_scheduled" && e["partition"] == "vios1");
    let reconnect =
        at(&|e| e["type"] == "vios_reconnect" && e["vios"] == "vios1" && e["client"] == "web");
    assert!(crash < restart && restart < reconnect, "{events:#?}");
    // The client ran on and finished its benchmark without an error.
    let s = env.wait_state("web", "stopped", Duration::from_secs(60));
    // The tiny guest ends with an i8042 reset after `poweroff`.
    assert_eq!(s["last_exit"], "guest reset", "{s}");
    assert!(env.log_of("web").contains("parvm-guest: poweroff"));
    let log = env.log_of("web");
    for phase in ["randread", "seqread", "seqwrite"] {
        let line = log
            .lines()
            .find(|l| l.starts_with(&format!("parvm-guest: blkbench done {phase} ")))
            .unwrap_or_else(|| panic!("no `done {phase}` in:\n{log}"));
        assert!(
            line.ends_with("errors=0") || line.contains(" errors=0 "),
            "{line}"
        );
    }
    assert!(
        env.manager_log()
            .contains("VIOS disk re-brokered after the VIOS came back"),
        "{}",
        env.manager_log()
    );
    let vmm_log = std::fs::read_to_string(env.state.join("logs/web.vmm.log")).unwrap_or_default();
    assert!(vmm_log.contains("in-flight requests replayed"), "{vmm_log}");
    let _ = web_pid;
}

/// A VIOS outlives a manager killed with SIGKILL and re-attaches to the
/// restarted one (like a VMM), which can then broker its disk again.
#[test]
fn vios_reattaches_to_a_restarted_manager() {
    let mut env = Env::new("vios-reattach");
    ensure_vios(&env.vmm);
    std::fs::write(env.dir.join("data.img"), vec![0u8; 1 << 20]).unwrap();
    let vios_def = write_json(
        &env.dir,
        "vios1.json",
        serde_json::json!({
            "kind": "vios", "name": "vios1",
            "disks": [{"id": "data", "path": "data.img"}],
        }),
    );
    env.ok(&["define", &vios_def]);
    env.ok(&["start", "vios1"]);
    let pid = pid_of(&env.status("vios1"));
    env.kill_manager();
    assert!(alive(pid), "the VIOS died with the manager");
    env.start_manager();
    let s = env.wait_for("vios1", Duration::from_secs(10), "re-attached", |s| {
        s["attached"] == true
    });
    assert_eq!(s["state"], "running");
    assert_eq!(pid_of(&s), pid);
    // The re-attached channel brokers a client's disk.
    let web = write_json(
        &env.dir,
        "web.json",
        serde_json::json!({
            "name": "web", "kernel": guest_path("tiny.elf"), "memory_mib": 64,
            "cmdline": "parvm.test=blk",
            "disks": [{"id": "data", "path": "vios:vios1/data"}],
        }),
    );
    env.ok(&["define", &web]);
    grant_accept(&env, "vios1/data", "web", "rw");
    env.ok(&["start", "web"]);
    env.wait_state("web", "stopped", Duration::from_secs(30));
    assert!(
        env.log_of("web").contains("match=yes"),
        "{}",
        env.log_of("web")
    );
    assert_eq!(
        env.ok(&["stop", "vios1"]).trim(),
        "vios1: stopped (stopped)"
    );
}

/// Revoking the grant of a running client's disk: the manager tells the
/// VIOS, which closes that client's vhost-user connection at once; the
/// client's next start is refused.
#[test]
fn revoking_a_running_clients_grant_disconnects_it() {
    let env = Env::new("vios-revoke");
    ensure_vios(&env.vmm);
    std::fs::write(env.dir.join("data.img"), vec![0x33u8; 16 << 20]).unwrap();
    let vios_def = write_json(
        &env.dir,
        "vios1.json",
        serde_json::json!({
            "kind": "vios", "name": "vios1",
            "disks": [{"id": "data", "path": "data.img"}],
        }),
    );
    env.ok(&["define", &vios_def]);
    env.ok(&["start", "vios1"]);
    let web = write_json(
        &env.dir,
        "web.json",
        serde_json::json!({
            "name": "web", "kernel": guest_path("tiny.elf"), "memory_mib": 64,
            "cmdline": "parvm.test=blkbench parvm.bench=50000 parvm.benchmib=2048",
            "disks": [{"id": "data", "path": "vios:vios1/data"}],
        }),
    );
    env.ok(&["define", &web]);
    let cookie = grant_accept(&env, "vios1/data", "web", "rw");
    env.ok(&["start", "web"]);
    env.wait_log("web", "parvm-guest: blkbench start");
    let out = env.ok(&["revoke", &cookie]);
    assert!(out.starts_with("revoked 1 grant(s)"), "{out}");
    let vios_log = env.state.join("logs/vios1.vmm.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&vios_log).unwrap_or_default();
        if log.contains("grant revoked; connections closed")
            && log.contains("connections=1")
            && log.contains("vios: client disconnected")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        env.manager_log()
            .contains("grant revoked: VIOS told to disconnect the client"),
        "{}",
        env.manager_log()
    );
    // The VIOS goes on serving (and runs).
    assert_eq!(env.status("vios1")["state"], "running");
    env.ok(&["kill", "web"]);
    env.wait_for("web", Duration::from_secs(10), "not running", |s| {
        s["state"] != "running"
    });
    let e = env.fails(&["start", "web"]);
    one_line(
        &e,
        "VIOS `vios1` has not granted disk `data` to partition `web`",
    );
}

/// configs/vios1.json as an operator would use it: beside its images
/// (made here; the repository holds none), defined, started, listed as a
/// VIOS, its log readable, a client granted one of its disks.
#[test]
fn the_vios_example_of_configs_exports_its_disks() {
    let env = Env::new("vios-example");
    ensure_vios(&env.vmm);
    let example = parvm_tests::repo_root().join("configs/vios1.json");
    let def = env.dir.join("vios1.json");
    std::fs::copy(&example, &def).unwrap();
    for img in ["vios1-data.img", "vios1-base.img"] {
        std::fs::write(env.dir.join(img), vec![0u8; 1 << 20]).unwrap();
    }
    let def = def.display().to_string();
    let v = env.ok(&["validate", &def]);
    assert!(v.contains("a valid vios definition of `vios1`"), "{v}");
    env.ok(&["define", &def]);
    let s = env.status("vios1");
    assert_eq!(s["restart"], "on-failure");
    assert_eq!(s["exports"], serde_json::json!(["data", "base:ro"]));
    env.ok(&["start", "vios1"]);
    let list = env.ok(&["list"]);
    let row = list.lines().find(|l| l.starts_with("vios1 ")).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[..3], ["vios1", "vios", "running"], "{list}");
    assert_eq!(&cells[4..6], ["-", "-"], "{list}");
    // `logs` of a VIOS is its own output, not "never started".
    env.ok(&["logs", "vios1"]);
    env.ok(&["define", &env.hang_definition("c", "never")]);
    let cookie = env.ok(&["grant", "vios1/base", "--to", "c"]);
    let g = env.ok(&["accept", cookie.trim(), "--as", "c"]);
    assert!(g.contains("vios1/base accepted by c (ro)"), "{g}");
    env.ok(&["stop", "vios1"]);
}
