//! Active Memory Sharing under the real daemon with real guests
//! (docs/ams.md): the paging VIOS killed with SIGKILL while partitions page
//! (the manager restarts it, re-brokers the paging device, the guests stall
//! and go on with every byte right), and two partitions under pressure
//! whose resident memory splits by their weights.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use parvm_tests::guests::guest_path;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::*;

fn write_json(dir: &Path, name: &str, v: Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p.display().to_string()
}

/// VIOS `vios1` (restarted on failure) exporting sparse paging images
/// `pg0`, `pg1` of `mib` MiB each, running, and a pool of `pool_mib` on
/// them.
fn vios_and_pool(env: &Env, mib: u64, pool_mib: u64) {
    let mut disks = Vec::new();
    for id in ["pg0", "pg1"] {
        std::fs::File::create(env.dir.join(format!("{id}.img")))
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        disks.push(serde_json::json!({"id": id, "path": format!("{id}.img")}));
    }
    let def = write_json(
        &env.dir,
        "vios1.json",
        serde_json::json!({"kind": "vios", "name": "vios1", "disks": disks, "restart": "on-failure"}),
    );
    env.ok(&["define", &def]);
    env.ok(&["start", "vios1"]);
    env.ok(&[
        "pool",
        "create",
        "--size",
        &pool_mib.to_string(),
        "--paging",
        "vios:vios1/pg0",
        "--paging",
        "vios:vios1/pg1",
    ]);
}

/// A memtest partition of `logical` MiB with `weight` and `cmdline` extras.
fn memtest(env: &Env, name: &str, logical: u64, weight: u8, extra: &str) -> String {
    write_json(
        &env.dir,
        &format!("{name}.json"),
        serde_json::json!({
            "name": name, "kernel": guest_path("tiny.elf"),
            "cmdline": format!("console=ttyS0 parvm.test=memtest {extra}"),
            "memory": {"mode": "shared", "logical_mib": logical, "weight": weight},
        }),
    )
}

fn wait_stopped(env: &Env, names: &[&str], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while names.iter().any(|n| env.status(n)["state"] == "running") {
        assert!(
            Instant::now() < deadline,
            "still running: {}",
            names
                .iter()
                .map(|n| env.log_of(n))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn killing_the_paging_vios_stalls_the_guests_which_resume_with_every_byte() {
    let env = Env::new("ams-vios-kill");
    ensure_vios(&env.vmm);
    vios_and_pool(&env, 64, 24);
    env.ok(&[
        "define",
        &memtest(&env, "a", 48, 128, "parvm.seed=3 parvm.passes=4"),
    ]);
    env.ok(&[
        "define",
        &memtest(&env, "b", 48, 128, "parvm.seed=4 parvm.passes=4"),
    ]);
    env.ok(&["start", "a"]);
    env.ok(&["start", "b"]);
    let vios_pid = pid_of(&env.status("vios1"));
    // Paging under way: both have written their pattern.
    env.wait_log("a", "memtest written");
    env.wait_log("b", "memtest written");
    kill9(vios_pid);
    // The manager restarts the VIOS (on-failure) and re-brokers the paging
    // devices; the partitions stay running meanwhile.
    let s = env.wait_for("vios1", Duration::from_secs(30), "a new vios", |s| {
        s["state"] == "running" && s["pid"].as_u64().is_some_and(|p| p as u32 != vios_pid)
    });
    assert_ne!(pid_of(&s), vios_pid);
    for name in ["a", "b"] {
        assert_eq!(env.status(name)["state"], "running", "{name}");
    }
    wait_stopped(&env, &["a", "b"], Duration::from_secs(240));
    for name in ["a", "b"] {
        let log = env.log_of(name);
        for pass in 1..=4 {
            let line = format!("parvm-guest: memtest pass {pass} ok");
            assert!(log.contains(&line), "{name}: no `{line}` in:\n{log}");
        }
        assert!(!log.contains("FAIL"), "{name}:\n{log}");
    }
    // Their ends gave the pool back.
    let p: Value = serde_json::from_str(&env.ok(&["pool", "show", "--json"])).unwrap();
    assert_eq!(p["free_pages"], 24 * 256, "{p}");
}

#[test]
fn two_partitions_under_pressure_split_the_pool_by_weight() {
    // Pool 40 MiB, two partitions of 64 MiB sweeping all of it: weights 1
    // and 4 give targets of 8 and 32 MiB (docs/ams.md: water-filling, each
    // capped at its logical size). Tolerance: the average resident of each,
    // sampled while both page, within 20% of its share of the pool.
    let env = Env::new("ams-weights");
    ensure_vios(&env.vmm);
    vios_and_pool(&env, 64, 40);
    env.ok(&["define", &memtest(&env, "light", 64, 1, "parvm.passes=40")]);
    env.ok(&["define", &memtest(&env, "heavy", 64, 4, "parvm.passes=40")]);
    env.ok(&["start", "light"]);
    env.ok(&["start", "heavy"]);
    // Both sweeping: the write pass of each is over (8 MiB resident makes
    // the light one slow to get there).
    let deadline = Instant::now() + Duration::from_secs(120);
    while !["light", "heavy"]
        .iter()
        .all(|n| env.log_of(n).contains("memtest written"))
    {
        assert!(Instant::now() < deadline, "{}", env.log_of("light"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut sums = [0u64; 2];
    let mut samples = 0u64;
    let mut targets = [0u64; 2];
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let s: Vec<Value> = ["light", "heavy"].iter().map(|n| env.status(n)).collect();
        if s.iter().any(|s| s["state"] != "running") {
            break;
        }
        for (i, s) in s.iter().enumerate() {
            sums[i] += s["memory"]["resident_pages"].as_u64().unwrap();
            targets[i] = s["memory"]["target_pages"].as_u64().unwrap();
        }
        samples += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(samples >= 10, "only {samples} samples while both ran");
    let avg = [sums[0] / samples, sums[1] / samples];
    eprintln!("ams-weights: targets {targets:?} pages, average resident {avg:?} pages over {samples} samples");
    let (light_share, heavy_share) = (8 * 256u64, 32 * 256u64);
    assert_eq!(targets, [light_share, heavy_share], "targets by weight");
    for (got, want) in avg.iter().zip([light_share, heavy_share]) {
        let lo = want * 8 / 10;
        let hi = want * 12 / 10;
        assert!(
            (lo..=hi).contains(got),
            "average resident {got} pages, share {want}"
        );
    }
    env.ok(&["stop", "light"]);
    env.ok(&["stop", "heavy"]);
}

#[test]
fn an_idle_partitions_share_of_the_pool_goes_to_the_busy_one() {
    // Pool 40 MiB, two 64 MiB partitions of equal weight: goals 20 and
    // 20 MiB while both are new. B only spins (it touches a few MiB and
    // then nothing): after 10 s without a fault it is idle, its goal drops
    // to what it holds plus a slack of 4 MiB (docs/ams.md, "Demand"), and
    // A, sweeping all of its memory, grows into the rest. Never below what
    // B holds, never above the pool.
    let env = Env::new("ams-idle");
    ensure_vios(&env.vmm);
    vios_and_pool(&env, 64, 40);
    env.ok(&[
        "define",
        &memtest(&env, "busy", 64, 128, "parvm.passes=400"),
    ]);
    let idle = write_json(
        &env.dir,
        "idle.json",
        serde_json::json!({
            "name": "idle", "kernel": guest_path("tiny.elf"),
            "cmdline": "console=ttyS0 parvm.test=hang",
            "memory": {"mode": "shared", "logical_mib": 64, "weight": 128},
        }),
    );
    env.ok(&["define", &idle]);
    env.ok(&["start", "busy"]);
    env.ok(&["start", "idle"]);
    env.wait_log("idle", "parvm-guest: hanging");
    let mem = |n: &str| env.status(n)["memory"].clone();
    let pages = |v: &Value, k: &str| v[k].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (b, i) = (mem("busy"), mem("idle"));
        let (bt, it) = (pages(&b, "target_pages"), pages(&i, "target_pages"));
        assert!(
            bt + it <= 40 * 256,
            "targets {bt} + {it} pages over the pool"
        );
        assert!(
            pages(&b, "resident_pages") + pages(&i, "resident_pages") <= 40 * 256 + 2 * 128,
            "{b} {i}"
        );
        if bt >= 30 * 256 {
            // The idle one keeps its minimum and what it holds.
            assert!(it >= 2 * 256, "idle target {it} pages");
            assert!(it >= pages(&i, "resident_pages"), "{i}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "busy target {bt}, idle target {it} pages after 60 s: {b} {i}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    env.ok(&["stop", "busy"]);
    env.ok(&["stop", "idle"]);
}
