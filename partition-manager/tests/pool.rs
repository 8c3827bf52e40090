//! The shared memory pool under the real daemon (docs/ams.md, "The pool
//! and targets"): `parctl pool` and its refusals, the checks at define and
//! at start of shared-memory partitions (no pool, pool too small, paging
//! device too small, assigned, or also a disk), and a partition's end
//! freeing its device. The starts use a stand-in `vmm` that never gets
//! ready: what is checked here happens before and around the spawn.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use parvm_tests::amsbench::guest_ram_bytes;
use parvm_tests::guests::guest_path;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;
use common::*;

fn write_json(dir: &Path, name: &str, v: Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p.display().to_string()
}

/// A sparse image of `mib` MiB.
fn image(dir: &Path, name: &str, mib: u64) {
    std::fs::File::create(dir.join(name))
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
}

/// A shared-memory partition of `logical` MiB (`extra` merged into its
/// memory section).
fn shared(env: &Env, name: &str, logical: u64, extra: Value) -> String {
    let mut memory = serde_json::json!({"mode": "shared", "logical_mib": logical});
    if let (Some(m), Some(e)) = (memory.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    write_json(
        &env.dir,
        &format!("{name}.json"),
        serde_json::json!({
            "name": name, "kernel": guest_path("tiny.elf"),
            "cmdline": "parvm.test=memtest", "memory": memory,
        }),
    )
}

/// VIOS `vios1` exporting `disks` (id, MiB, read-only), defined and running.
fn vios(env: &Env, disks: &[(&str, u64, bool)]) {
    let list: Vec<Value> = disks
        .iter()
        .map(|(id, mib, ro)| {
            image(&env.dir, &format!("{id}.img"), *mib);
            serde_json::json!({"id": id, "path": format!("{id}.img"), "read_only": ro})
        })
        .collect();
    let def = write_json(
        &env.dir,
        "vios1.json",
        serde_json::json!({"kind": "vios", "name": "vios1", "disks": list}),
    );
    env.ok(&["define", &def]);
    env.ok(&["start", "vios1"]);
}

fn pool(env: &Env) -> Value {
    serde_json::from_str(&env.ok(&["pool", "show", "--json"])).unwrap()
}

/// Who has `device` in `parctl pool show --json`.
fn holder(pool: &Value, device: &str) -> Value {
    pool["paging"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == device)
        .map(|d| d["partition"].clone())
        .unwrap_or_else(|| panic!("{device} not in {pool}"))
}

#[test]
fn pool_commands_persist_and_refuse_what_cannot_page() {
    let mut env = Env::new("pool-cli");
    ensure_vios(&env.vmm);

    // No pool yet: shown as such, and a shared-memory definition refused.
    let e = env.fails(&["pool", "show"]);
    assert!(e.contains("there is no shared memory pool"), "{e}");
    let e = env.fails(&["define", &shared(&env, "early", 32, Value::Null)]);
    assert!(
        e.contains("partition `early` has shared memory, but there is no shared memory pool"),
        "{e}"
    );

    vios(
        &env,
        &[
            ("pg0", 64, false),
            ("pg1", 32, false),
            ("data", 1, false),
            ("golden", 1, true),
        ],
    );
    let web = write_json(
        &env.dir,
        "web.json",
        serde_json::json!({
            "name": "web", "kernel": guest_path("tiny.elf"),
            "disks": [{"id": "data", "path": "vios:vios1/data"}],
        }),
    );
    env.ok(&["define", &web]);

    let out = env.ok(&[
        "pool",
        "create",
        "--size",
        "48",
        "--paging",
        "vios:vios1/pg0",
    ]);
    assert_eq!(out.trim(), "pool: 48 MiB, 1 paging device(s)");
    let e = env.fails(&["pool", "create", "--size", "8"]);
    assert!(e.contains("exists already"), "{e}");
    let out = env.ok(&["pool", "add-paging", "vios:vios1/pg1"]);
    assert_eq!(out.trim(), "paging device vios:vios1/pg1 added");
    for (device, want) in [
        ("vios:vios1/pg1", "already in the pool"),
        ("vios:vios1/data", "it is a disk of partition `web`"),
        ("vios:vios1/golden", "the export is read-only"),
        ("vios:vios1/nope", "VIOS `vios1` exports no disk `nope`"),
        ("vios:web/data", "partition `web` is not a VIOS"),
        ("vios:ghost/pg0", "no partition named `ghost`"),
    ] {
        let e = env.fails(&["pool", "add-paging", device]);
        assert!(e.contains(want), "{device}: want `{want}` in {e}");
    }
    // Not a VIOS export at all: parctl's own usage error.
    for device in ["/img/paging.raw", "vios:vios1", "vios:a b/c"] {
        let f = env.parctl(&["pool", "add-paging", device]);
        assert_eq!(f.code(), Some(2), "{device}: {}", f.stderr);
        assert!(f.stderr.contains("use vios:<vios>/<disk>"), "{}", f.stderr);
    }

    // Sizes as the VIOS reported them; nothing assigned, nothing resident.
    let p = pool(&env);
    assert_eq!(p["size_mib"], 48);
    assert_eq!(p["pages"], 48 * 256);
    assert_eq!(p["paging"][0]["device"], "vios:vios1/pg0");
    assert_eq!(p["paging"][0]["size"], 64u64 << 20);
    assert_eq!(p["paging"][1]["size"], 32u64 << 20);
    assert_eq!(holder(&p, "vios:vios1/pg0"), Value::Null);
    assert_eq!(
        (&p["resident_pages"], &p["loaned_pages"], &p["free_pages"]),
        (
            &Value::from(0),
            &Value::from(48 * 256),
            &Value::from(48 * 256)
        )
    );
    let table = env.ok(&["pool", "show"]);
    assert!(table.contains("size:     48 MiB (12288 pages)"), "{table}");
    assert!(table.contains("vios:vios1/pg1"), "{table}");
    assert!(table.contains("32 MiB"), "{table}");

    let out = env.ok(&["pool", "resize", "--size", "64"]);
    assert_eq!(out.trim(), "pool: 64 MiB, 2 paging device(s)");
    for bad in ["1", "2000000"] {
        let e = env.fails(&["pool", "resize", "--size", bad]);
        assert!(e.contains("use 2 to 1048576 MiB"), "{bad}: {e}");
    }
    for bad in ["-3", "lots"] {
        let f = env.parctl(&["pool", "resize", "--size", bad]);
        assert_ne!(f.code(), Some(0), "{bad}: {}", f.stderr);
    }

    // A paging device is nobody's disk: refused at define.
    let thief = write_json(
        &env.dir,
        "thief.json",
        serde_json::json!({
            "name": "thief", "kernel": guest_path("tiny.elf"),
            "disks": [{"id": "d", "path": "vios:vios1/pg0"}],
        }),
    );
    let e = env.fails(&["define", &thief]);
    assert!(
        e.contains("disk `d`: vios:vios1/pg0 is a paging device of the shared memory pool"),
        "{e}"
    );
    // Explicit paging devices: in the pool, and large enough.
    let e = env.fails(&[
        "define",
        &shared(
            &env,
            "pinned",
            64,
            serde_json::json!({"paging": "vios:vios1/pg1"}),
        ),
    ]);
    assert!(
        e.contains("paging device vios:vios1/pg1 holds 33554432 bytes, less than its 64 MiB"),
        "{e}"
    );
    let e = env.fails(&[
        "define",
        &shared(
            &env,
            "pinned",
            16,
            serde_json::json!({"paging": "vios:vios1/data"}),
        ),
    ]);
    assert!(
        e.contains("paging device vios:vios1/data is not in the shared memory pool"),
        "{e}"
    );

    // A shared-memory partition's status and list line.
    env.ok(&[
        "define",
        &shared(&env, "lpar", 32, serde_json::json!({"weight": 7})),
    ]);
    let s = env.status("lpar");
    assert_eq!(s["memory_mib"], 32);
    assert_eq!(s["memory"]["logical_mib"], 32);
    assert_eq!(s["memory"]["weight"], 7);
    assert_eq!(s["memory"]["paging"], Value::Null);
    assert_eq!(s["memory"]["reported"], false);
    assert!(env.status("web").get("memory").is_none());
    let list = env.ok(&["list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("lpar ") && l.contains("32M-shared")),
        "{list}"
    );
    let text = env.ok(&["status", "lpar"]);
    assert!(text.contains("memory mode: shared (weight 7)"), "{text}");

    // Started with the real vmm: its paging device brokered (whether this
    // vmm's pager can use it or not, its end frees the device).
    let f = env.parctl(&["start", "lpar"]);
    match f.code() {
        Some(0) => {
            env.wait_state("lpar", "stopped", Duration::from_secs(120));
        }
        _ => assert!(
            f.stderr
                .contains("partition `lpar` did not start: vmm: error:"),
            "{}",
            f.stderr
        ),
    }
    let p = pool(&env);
    assert_eq!(holder(&p, "vios:vios1/pg0"), Value::Null, "{p}");
    assert_eq!(holder(&p, "vios:vios1/pg1"), Value::Null, "{p}");
    assert_eq!(p["members"], serde_json::json!([]));

    let out = env.ok(&["pool", "remove-paging", "vios:vios1/pg1"]);
    assert_eq!(out.trim(), "paging device vios:vios1/pg1 removed");
    let e = env.fails(&["pool", "remove-paging", "vios:vios1/pg1"]);
    assert!(e.contains("not in the pool"), "{e}");

    // The pool survives a manager restart.
    env.kill_manager();
    env.start_manager();
    let p = pool(&env);
    assert_eq!(p["size_mib"], 64);
    assert_eq!(p["paging"].as_array().unwrap().len(), 1);
    assert_eq!(p["paging"][0]["device"], "vios:vios1/pg0");

    // A VIOS whose exports page for the pool stays defined.
    env.ok(&["stop", "vios1"]);
    let e = env.fails(&["undefine", "vios1"]);
    assert!(
        e.contains("exports paging devices of the pool (vios:vios1/pg0)"),
        "{e}"
    );
    env.ok(&["pool", "remove-paging", "vios:vios1/pg0"]);
    env.ok(&["undefine", "vios1"]);
}

/// `parctl start NAME` in the background (it returns only once the
/// partition is ready, which the stand-in vmm never is).
fn start_in_background(env: &Env, name: &str) -> Child {
    Command::new(PARCTL)
        .args(["start", name])
        .env("PARVM_SOCKET", &env.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn shared_memory_starts_get_a_device_and_room_or_a_one_line_error() {
    // A "vmm" that never gets ready, next to the real vios.
    let bin = parvm_tests::scratch_dir("pm-pool-fake");
    let fake = bin.join("vmm");
    std::fs::write(&fake, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(ensure_vios(&vmm_binary()), bin.join("vios")).unwrap();
    let env = Env::with("pool-start", fake, &["--ready-timeout", "60"]);
    vios(&env, &[("pg0", 64, false), ("small", 8, false)]);
    env.ok(&[
        "pool",
        "create",
        "--size",
        "3",
        "--paging",
        "vios:vios1/pg0",
        "--paging",
        "vios:vios1/small",
    ]);

    // No device large enough: nothing spawned, nothing held.
    env.ok(&["define", &shared(&env, "huge", 128, Value::Null)]);
    let e = env.fails(&["start", "huge"]);
    assert!(
        e.contains("partition `huge` did not start: no paging device fits: vios:vios1/pg0 holds 67108864 bytes, less than the 128 MiB of logical memory; vios:vios1/small holds 8388608 bytes"),
        "{e}"
    );
    let s = env.status("huge");
    assert_eq!(
        (s["state"].as_str(), s["pid"].as_u64()),
        (Some("defined"), None)
    );
    assert_eq!(holder(&pool(&env), "vios:vios1/pg0"), Value::Null);

    // The first partition gets the device that fits and the whole pool.
    env.ok(&["define", &shared(&env, "a", 64, Value::Null)]);
    let start_a = start_in_background(&env, "a");
    env.wait_state("a", "starting", Duration::from_secs(10));
    let p = pool(&env);
    assert_eq!(holder(&p, "vios:vios1/pg0"), "a");
    assert_eq!(holder(&p, "vios:vios1/small"), Value::Null);
    assert_eq!(p["members"][0]["partition"], "a");
    assert_eq!(p["members"][0]["target_pages"], 3 * 256);
    let s = env.status("a");
    assert_eq!(s["memory"]["paging"], "vios:vios1/pg0");
    // The VMM was handed the device as an inherited socket and its target.
    let def: Value = serde_json::from_str(
        &std::fs::read_to_string(env.state.join("partitions/a.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(def["memory"]["paging"], "vhost-user-fd:4");
    assert_eq!(def["memory"]["resident_mib"], 3);

    // Two minimums of 2 MiB do not fit in 3 MiB.
    env.ok(&["define", &shared(&env, "b", 8, Value::Null)]);
    let e = env.fails(&["start", "b"]);
    assert!(
        e.contains("partition `b` did not start: the shared memory pool (3 MiB) is too small: the running shared-memory partitions need 2 MiB and this one 2 MiB at least"),
        "{e}"
    );
    assert_eq!(env.status("b")["state"], "defined");

    // A larger pool: a's target goes up, then half of it comes back for b,
    // which gets the device left.
    env.ok(&["pool", "resize", "--size", "16"]);
    let start_b = start_in_background(&env, "b");
    env.wait_state("b", "starting", Duration::from_secs(10));
    let p = pool(&env);
    assert_eq!(holder(&p, "vios:vios1/small"), "b");
    let targets: Vec<u64> = p["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["target_pages"].as_u64().unwrap())
        .collect();
    assert_eq!(targets, vec![8 * 256, 8 * 256], "{p}");
    assert!(p["free_pages"].as_u64().unwrap() == 0, "{p}");
    let e = env.fails(&["pool", "resize", "--size", "3"]);
    assert!(e.contains("need at least 4 MiB"), "{e}");
    let e = env.fails(&["pool", "remove-paging", "vios:vios1/small"]);
    assert!(
        e.contains("assigned to running partition `b`: stop it first"),
        "{e}"
    );

    // Every device taken: a third start says who has which.
    env.ok(&["define", &shared(&env, "c", 8, Value::Null)]);
    let e = env.fails(&["start", "c"]);
    assert!(
        e.contains("no paging device fits: vios:vios1/pg0 is assigned to `a`; vios:vios1/small is assigned to `b`"),
        "{e}"
    );
    // A device named explicitly, but taken.
    env.ok(&[
        "define",
        &shared(
            &env,
            "d",
            8,
            serde_json::json!({"paging": "vios:vios1/small"}),
        ),
    ]);
    let e = env.fails(&["start", "d"]);
    assert!(
        e.contains("no paging device fits: vios:vios1/small is assigned to `b`"),
        "{e}"
    );

    // The end of a partition frees its device and its share.
    env.ok(&["kill", "a"]);
    let p = pool(&env);
    assert_eq!(holder(&p, "vios:vios1/pg0"), Value::Null);
    assert_eq!(p["members"].as_array().unwrap().len(), 1);
    assert_eq!(env.status("a")["memory"]["paging"], Value::Null);
    // b may grow into it: its logical 8 MiB.
    assert_eq!(p["members"][0]["target_pages"], 8 * 256);
    env.ok(&["kill", "b"]);
    let p = pool(&env);
    assert_eq!(holder(&p, "vios:vios1/small"), Value::Null);
    assert_eq!(p["free_pages"], 16 * 256);
    for child in [start_a, start_b] {
        let f = parvm_tests::wait(child, Duration::from_secs(10));
        assert!(
            matches!(f.code(), Some(c) if c >= 10),
            "{:?} {}",
            f.code(),
            f.stderr
        );
    }
    let _ = std::fs::remove_dir_all(bin);
}

#[test]
fn three_shared_partitions_of_three_times_the_pool_page_through_it() {
    let env = Env::new("pool-boot");
    ensure_vios(&env.vmm);
    vios(
        &env,
        &[("pg0", 64, false), ("pg1", 64, false), ("pg2", 64, false)],
    );
    env.ok(&[
        "pool",
        "create",
        "--size",
        "48",
        "--paging",
        "vios:vios1/pg0",
        "--paging",
        "vios:vios1/pg1",
        "--paging",
        "vios:vios1/pg2",
    ]);
    // 3 x 48 MiB of logical memory over a 48 MiB pool, a pattern each.
    let def = |name: &str, hold: u32, seed: u32| {
        write_json(
            &env.dir,
            &format!("{name}.json"),
            serde_json::json!({
                "name": name, "kernel": guest_path("tiny.elf"),
                "cmdline": format!("console=ttyS0 parvm.test=memtest parvm.passes=2 parvm.memtest_hold={hold} parvm.seed={seed}"),
                "memory": {"mode": "shared", "logical_mib": 48},
            }),
        )
    };
    let names = ["a", "b", "c"];
    for (seed, name) in names.iter().enumerate() {
        env.ok(&["define", &def(name, 2, seed as u32 + 1)]);
    }
    for name in names {
        env.ok(&["start", name]);
    }
    let pids: Vec<u32> = names.iter().map(|n| pid_of(&env.status(n))).collect();
    // The operator's view of a running shared-memory partition.
    let text = env.ok(&["status", "a"]);
    for want in [
        "memory mode: shared (weight 128)",
        "logical:     48 MiB",
        "paging:      vios:vios1/pg",
        "page-ins:    ",
        "page-outs:   ",
    ] {
        assert!(text.contains(want), "want {want:?} in:\n{text}");
    }
    eprintln!("{text}");

    // Sample until both powered off: the memfds' allocated bytes, the
    // pool's resident sum, each partition's counters.
    let budget = 48u64 << 20;
    let (mut worst_ram, mut worst_resident) = (0u64, 0u64);
    let mut seen: [(u64, u64); 3] = [(0, 0); 3];
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let ram: u64 = pids.iter().filter_map(|&p| guest_ram_bytes(p)).sum();
        worst_ram = worst_ram.max(ram);
        let p = pool(&env);
        worst_resident = worst_resident.max(p["resident_pages"].as_u64().unwrap());
        let mut running = 0;
        for (i, name) in names.iter().enumerate() {
            let s = env.status(name);
            if s["state"] == "running" {
                running += 1;
                let m = &s["memory"];
                seen[i].0 = seen[i].0.max(m["page_ins"].as_u64().unwrap());
                seen[i].1 = seen[i].1.max(m["page_outs"].as_u64().unwrap());
            }
        }
        if running == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "memtest did not end: {}\n{}\n{}",
            env.log_of("a"),
            env.log_of("b"),
            env.log_of("c")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for (seed, name) in names.iter().enumerate() {
        let log = env.log_of(name);
        assert!(
            log.contains(&format!("seed={}", seed + 1)),
            "{name}:\n{log}"
        );
        assert!(
            log.contains("parvm-guest: memtest pass 2 ok"),
            "{name}:\n{log}"
        );
        assert!(!log.contains("FAIL"), "{name}:\n{log}");
        assert_eq!(env.status(name)["state"], "stopped");
    }
    eprintln!(
        "pool-boot: worst guest RAM allocated {} KiB, worst resident reported {} pages, page-ins/outs seen {seen:?}",
        worst_ram >> 10,
        worst_resident
    );
    assert!(worst_ram <= budget, "allocated {worst_ram} of {budget}");
    assert!(worst_resident <= 48 * 256, "{worst_resident}");
    for (i, (ins, outs)) in seen.iter().enumerate() {
        assert!(
            *ins > 0 && *outs > 0,
            "partition {i}: page-ins {ins}, page-outs {outs}"
        );
    }
    // Their ends freed both devices and the whole pool.
    let p = pool(&env);
    assert_eq!(holder(&p, "vios:vios1/pg0"), Value::Null, "{p}");
    assert_eq!(holder(&p, "vios:vios1/pg1"), Value::Null, "{p}");
    assert_eq!(holder(&p, "vios:vios1/pg2"), Value::Null, "{p}");
    assert_eq!(p["free_pages"], 48 * 256);

    // A stop frees the device too.
    env.ok(&["define", &def("d", 60, 9)]);
    env.ok(&["start", "d"]);
    env.wait_log("d", "memtest hold=");
    let s = env.status("d");
    assert!(s["memory"]["paging"].is_string(), "{s}");
    env.ok(&["stop", "d"]);
    let p = pool(&env);
    assert!(p["members"].as_array().unwrap().is_empty(), "{p}");
    assert!(
        p["paging"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["partition"].is_null()),
        "{p}"
    );
}
