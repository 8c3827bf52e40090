//! Firmware-assisted dump under the real daemon (docs/dump.md): a VIOS
//! partition exports a dump disk, a client partition with
//! `"on_crash": {"dump": "vios:vios1/dumps", "then": ...}` runs the tiny
//! guest's dump switches (tests/guests/dump.S). `parctl dumps` lists the
//! dumps, `parctl dump-get` extracts them, readelf and batch gdb read them;
//! `then: reboot` starts the partition again, `then: stop` leaves it
//! crashed; `parctl dump` dumps a running partition that keeps running.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use parvm_tests::dumps::{
    self, DUMP_COUNT_A, DUMP_COUNT_B, DUMP_PATTERN, DUMP_QWORDS, DUMP_R14, DUMP_R15,
};
use parvm_tests::guests::guest_path;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::*;

fn write_json(dir: &Path, name: &str, v: serde_json::Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p.display().to_string()
}

fn one_line(e: &str, want: &str) {
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains(want), "want `{want}` in: {e}");
}

/// A running VIOS `vios1` exporting `dumps` (a sparse image of
/// `disk_mib`); returns the image.
fn vios(env: &Env, disk_mib: u64) -> PathBuf {
    vios_with(env, disk_mib, "never")
}

fn vios_with(env: &Env, disk_mib: u64, restart: &str) -> PathBuf {
    ensure_vios(&env.vmm);
    let img = env.dir.join("dumps.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(disk_mib << 20)
        .unwrap();
    let def = write_json(
        &env.dir,
        "vios1.json",
        serde_json::json!({"kind": "vios", "name": "vios1",
            "disks": [{"id": "dumps", "path": "dumps.img"}]}),
    );
    env.ok(&["define", &def, "--restart", restart]);
    env.ok(&["start", "vios1"]);
    env.wait_state("vios1", "running", Duration::from_secs(20));
    img
}

fn grant_dumps(env: &Env, to: &str, rights: &str) {
    let cookie = env
        .ok(&["grant", "vios1/dumps", "--to", to, "--rights", rights])
        .trim()
        .to_string();
    env.ok(&["accept", &cookie, "--as", to]);
}

fn client(env: &Env, name: &str, test: &str, then: &str) -> String {
    client_mib(env, name, test, then, 32)
}

fn client_mib(env: &Env, name: &str, test: &str, then: &str, memory_mib: u64) -> String {
    write_json(
        &env.dir,
        &format!("{name}.json"),
        serde_json::json!({
            "name": name, "kernel": guest_path("tiny.elf"), "memory_mib": memory_mib,
            "cmdline": format!("parvm.test={test}"),
            "on_crash": {"dump": "vios:vios1/dumps", "then": then},
        }),
    )
}

fn dumps_json(env: &Env, name: &str) -> serde_json::Value {
    serde_json::from_str(&env.ok(&["dumps", name, "--json"])).unwrap()
}

fn wait_dumps(env: &Env, name: &str, complete: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = dumps_json(env, name);
        let n = d["dumps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["state"] == "complete")
            .count();
        if n >= complete {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "{complete} complete dumps not listed: {d}\n{}",
            env.manager_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `parctl dump-get NAME ID FILE`, then readelf and gdb on FILE.
fn get_and_read(env: &Env, name: &str, id: u64, extra: &[&str]) -> String {
    let core = env.dir.join(format!("{name}.core.{id}"));
    let out = env.ok(&["dump-get", name, &id.to_string(), core.to_str().unwrap()]);
    assert!(out.contains("ELF core) written to"), "{out}");
    let elf = dumps::readelf(&core);
    assert!(
        elf.contains("CORE (Core file)") && elf.contains("NT_PRSTATUS"),
        "{elf}"
    );
    let mut cmds = vec!["info registers".to_string()];
    cmds.extend(extra.iter().map(|s| s.to_string()));
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    dumps::gdb(&core, &cmds)
}

#[test]
fn a_triple_fault_is_dumped_and_the_partition_reboots() {
    let env = Env::new("dump-reboot");
    vios(&env, 128);
    env.ok(&["define", &client(&env, "c", "dumpfault", "reboot")]);
    grant_dumps(&env, "c", "rw");
    env.ok(&["start", "c"]);
    let d = wait_dumps(&env, "c", 2);
    assert_eq!(d["disk"], "vios:vios1/dumps");
    let first = &d["dumps"][0];
    assert_eq!(first["id"], 1);
    assert_eq!(first["trigger"], "triple_fault");
    assert_eq!(first["partition"], "c");
    // Rebooted: the guest printed ready again after the first dump.
    let log = env.log_of("c");
    assert!(log.matches("parvm-guest: ready").count() >= 2, "{log}");
    let table = env.ok(&["dumps", "c"]);
    assert!(
        table.contains("complete") && table.contains("triple_fault"),
        "{table}"
    );
    // It may be between a crash and its reboot: either way it goes.
    let _ = env.parctl(&["kill", "c"]);
    let out = get_and_read(&env, "c", 1, &[&format!("x/4gx {DUMP_PATTERN:#x}")]);
    assert_eq!(dumps::gdb_register(&out, "r15"), Some(DUMP_R15), "{out}");
    assert_eq!(dumps::gdb_register(&out, "r14"), Some(DUMP_R14), "{out}");
    assert_eq!(dumps::gdb_qwords(&out, DUMP_PATTERN), DUMP_QWORDS, "{out}");
    // Bad requests: one line each.
    one_line(
        &env.fails(&["dump-get", "c", "99", "/tmp/x"]),
        "holds no dump 99 of partition `c`",
    );
    one_line(
        &env.fails(&["dumps", "nobody"]),
        "no partition named `nobody`",
    );
    one_line(
        &env.fails(&["dumps", "vios1"]),
        "is a VIOS: it has no dump disk",
    );
}

#[test]
fn a_pvpanic_is_dumped_and_then_stop_leaves_it_crashed() {
    let env = Env::new("dump-panic");
    let img = vios(&env, 128);
    env.ok(&["define", &client(&env, "p", "dumppanic", "stop")]);
    grant_dumps(&env, "p", "rw");
    env.ok(&["start", "p"]);
    let s = env.wait_state("p", "crashed", Duration::from_secs(60));
    assert!(s["last_exit"].as_str().unwrap().contains("pvpanic"), "{s}");
    let d = wait_dumps(&env, "p", 1);
    assert_eq!(d["dumps"][0]["trigger"], "pvpanic");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        env.status("p")["state"],
        "crashed",
        "then: stop restarted it"
    );
    one_line(
        &env.fails(&["dump", "p"]),
        "only a running partition can be dumped",
    );
    let out = get_and_read(&env, "p", 1, &[&format!("x/4gx {DUMP_PATTERN:#x}")]);
    assert_eq!(dumps::gdb_qwords(&out, DUMP_PATTERN), DUMP_QWORDS, "{out}");
    // A damaged table is reported, not trusted.
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&img, &bytes).unwrap();
    one_line(&env.fails(&["dumps", "p"]), "checksum mismatch");
    one_line(
        &env.fails(&["dump-get", "p", "1", "/tmp/x"]),
        "checksum mismatch",
    );
}

#[test]
fn an_on_demand_dump_is_consistent_and_the_partition_keeps_running() {
    let env = Env::new("dump-demand");
    vios(&env, 128);
    env.ok(&["define", &client(&env, "k", "dumpcount", "stop")]);
    grant_dumps(&env, "k", "rw");
    env.ok(&["start", "k"]);
    env.wait_log("k", "parvm-guest: dumpcount tick");
    let out = env.ok(&["dump", "k"]);
    assert!(out.starts_with("dump 1: complete"), "{out}");
    assert!(out.contains("after on_demand"), "{out}");
    assert_eq!(env.status("k")["state"], "running");
    // It keeps counting.
    let ticks = env.log_of("k").matches("tick").count();
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.log_of("k").matches("tick").count() <= ticks {
        assert!(Instant::now() < deadline, "no tick after the dump");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = get_and_read(
        &env,
        "k",
        1,
        &[
            &format!("x/1gx {DUMP_COUNT_A:#x}"),
            &format!("x/1gx {DUMP_COUNT_B:#x}"),
        ],
    );
    let r15 = dumps::gdb_register(&out, "r15").unwrap();
    let a = dumps::gdb_qwords(&out, DUMP_COUNT_A)[0];
    let b = dumps::gdb_qwords(&out, DUMP_COUNT_B)[0];
    assert!(r15 > 1 << 27, "{out}");
    assert!(a.wrapping_sub(b) <= 1, "torn: A={a} B={b}\n{out}");
    assert!(r15.wrapping_sub(a) <= 1, "torn: r15={r15} A={a}\n{out}");
    // A second one goes after it.
    let out = env.ok(&["dump", "k"]);
    assert!(out.starts_with("dump 2: complete"), "{out}");
    env.ok(&["stop", "k"]);
}

#[test]
fn a_dump_disk_not_granted_or_read_only_is_refused_at_start() {
    let env = Env::new("dump-grant");
    vios(&env, 128);
    env.ok(&["define", &client(&env, "n", "dumpfault", "stop")]);
    one_line(
        &env.fails(&["start", "n"]),
        "VIOS `vios1` has not granted disk `dumps` to partition `n`",
    );
    grant_dumps(&env, "n", "ro");
    one_line(
        &env.fails(&["start", "n"]),
        "dump disk `vios:vios1/dumps`: the grant is read-only",
    );
    // A dump disk too small for the partition's RAM: the VMM refuses to
    // start, the start fails with its one line.
    let small = env.dir.join("small.img");
    std::fs::File::create(&small)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let def = write_json(
        &env.dir,
        "vios2.json",
        serde_json::json!({"kind": "vios", "name": "vios2",
            "disks": [{"id": "small", "path": "small.img"}]}),
    );
    env.ok(&["define", &def]);
    env.ok(&["start", "vios2"]);
    let tiny = write_json(
        &env.dir,
        "t.json",
        serde_json::json!({"name": "t", "kernel": guest_path("tiny.elf"), "memory_mib": 32,
            "on_crash": {"dump": "vios:vios2/small"}}),
    );
    env.ok(&["define", &tiny]);
    let cookie = env
        .ok(&["grant", "vios2/small", "--to", "t", "--rights", "rw"])
        .trim()
        .to_string();
    env.ok(&["accept", &cookie, "--as", "t"]);
    one_line(&env.fails(&["start", "t"]), "too small");
    // A partition without on_crash has no dumps to list.
    let plain = write_json(
        &env.dir,
        "plain.json",
        serde_json::json!({"name": "plain", "kernel": guest_path("tiny.elf")}),
    );
    env.ok(&["define", &plain]);
    one_line(&env.fails(&["dumps", "plain"]), "has no dump disk");
    one_line(&env.fails(&["dump", "plain"]), "has no dump disk");
}

#[test]
fn a_dump_disk_whose_vios_came_back_is_used_again() {
    let env = Env::new("dump-vios-back");
    vios_with(&env, 128, "on-failure");
    env.ok(&["define", &client(&env, "k", "dumpcount", "stop")]);
    grant_dumps(&env, "k", "rw");
    env.ok(&["start", "k"]);
    env.wait_log("k", "parvm-guest: dumpcount tick");
    assert!(env.ok(&["dump", "k"]).starts_with("dump 1: complete"));
    let old = pid_of(&env.status("vios1"));
    kill9(old);
    env.wait_for("vios1", Duration::from_secs(30), "restarted", |s| {
        s["state"] == "running" && s["pid"].as_u64().is_some_and(|p| p as u32 != old)
    });
    // The manager handed the VMM a new connection to the dump disk.
    let out = env.ok(&["dump", "k"]);
    assert!(out.starts_with("dump 2: complete"), "{out}");
    assert_eq!(env.status("k")["state"], "running");
    env.ok(&["stop", "k"]);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn then_reboot_does_not_wait_for_the_end_of_the_dump() {
    let env = Env::new("dump-early-reboot");
    vios(&env, 1024);
    // 512 MiB, filled by the guest: a dump of about half a GiB.
    env.ok(&[
        "define",
        &client_mib(&env, "big", "dumpfill", "reboot", 512),
    ]);
    grant_dumps(&env, "big", "rw");
    env.ok(&["start", "big"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let ready_again_ms = loop {
        if env.log_of("big").matches("parvm-guest: ready").count() >= 2 {
            break now_ms();
        }
        assert!(
            Instant::now() < deadline,
            "no reboot: {}",
            env.manager_log()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let d = wait_dumps(&env, "big", 1);
    let first = &d["dumps"][0];
    let finished = first["finished_ms"].as_u64().unwrap();
    assert!(
        ready_again_ms < finished,
        "the guest was ready again at {ready_again_ms}, after its dump ended at {finished}: {first}"
    );
    eprintln!(
        "dump 1: {} bytes from {} to {finished}; ready again at {ready_again_ms}",
        first["size"], first["started_ms"]
    );
    let _ = env.parctl(&["kill", "big"]);
    let out = get_and_read(
        &env,
        "big",
        1,
        &[&format!("x/4gx {DUMP_PATTERN:#x}"), "x/2gx 0x1f000000"],
    );
    assert_eq!(dumps::gdb_qwords(&out, DUMP_PATTERN), DUMP_QWORDS, "{out}");
    assert_eq!(
        dumps::gdb_qwords(&out, 0x1f00_0000),
        [DUMP_QWORDS[2]; 2],
        "{out}"
    );
    assert_eq!(dumps::gdb_register(&out, "r15"), Some(DUMP_R15), "{out}");
}

#[test]
fn the_vios_killed_mid_dump_marks_it_failed_and_the_policy_runs() {
    let env = Env::new("dump-vios-killed");
    vios(&env, 1024);
    env.ok(&["define", &client_mib(&env, "v", "dumpfill", "stop", 512)]);
    grant_dumps(&env, "v", "rw");
    env.ok(&["start", "v"]);
    // Kill the VIOS as soon as the dump is listed as being written.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = dumps_json(&env, "v");
        if d["dumps"][0]["state"] == "writing" {
            break;
        }
        assert!(Instant::now() < deadline, "no dump started: {d}");
        std::thread::sleep(Duration::from_millis(2));
    }
    kill9(pid_of(&env.status("vios1")));
    // The policy (then: stop) still runs: the partition ends crashed.
    let s = env.wait_state("v", "crashed", Duration::from_secs(30));
    assert!(
        s["last_exit"].as_str().unwrap().contains("triple fault"),
        "{s}"
    );
    let d = dumps_json(&env, "v");
    let rec = &d["dumps"][0];
    if rec["state"] == "complete" {
        eprintln!("note: the dump completed before the VIOS died");
        return;
    }
    assert_eq!(rec["state"], "failed", "{d}");
    assert!(rec["error"].as_str().is_some(), "{d}");
    one_line(
        &env.fails(&["dump-get", "v", "1", "/tmp/x"]),
        "is failed, not complete",
    );
}
