//! The pool part on its own: members' targets through starts, reports,
//! idle spells, ends and a manager restart (the arithmetic is tested in
//! `targets.rs`, admission under the real daemon in tests/pool.rs).

#![allow(clippy::unwrap_used)]

use super::*;
use std::time::{Duration, Instant};

const MIB: u64 = PAGES_PER_MIB;

fn pool(size_mib: u64) -> Pool {
    Pool {
        row: Some(PoolRow {
            size_mib,
            paging: Vec::new(),
        }),
        members: BTreeMap::new(),
    }
}

fn member(logical_mib: u64, weight: u8, target: u64, resident: u64) -> Member {
    let now = Instant::now();
    Member {
        device: "vios:v/pg".parse().unwrap(),
        weight,
        logical: logical_mib * MIB,
        min: 2 * MIB,
        goal: 0,
        target,
        resident,
        spawned: true,
        recovered: false,
        admitted: now,
        report: Some(MemoryReport::default()),
        faults: 0,
        quiet_since: now,
    }
}

fn report(resident: u64, target: u64, faults: u64) -> MemoryReport {
    MemoryReport {
        logical_pages: 64 * MIB,
        target_pages: target,
        resident_pages: resident,
        page_ins: faults,
        ..Default::default()
    }
}

fn change(partition: &str, pages: u64) -> TargetChange {
    TargetChange {
        partition: partition.into(),
        pages,
    }
}

#[test]
fn a_start_lowers_the_others_first_and_gets_room_as_they_report() {
    let mut p = pool(48);
    p.members
        .insert("a".into(), member(64, 128, 48 * MIB, 40 * MIB));
    let mut b = member(64, 128, 0, 0);
    b.spawned = false;
    b.report = None;
    p.members.insert("b".into(), b);
    // a is told its new target at once; b (not spawned) gets the 8 MiB
    // that a does not hold, not the 24 of its goal.
    assert_eq!(p.recompute(Instant::now()), vec![change("a", 24 * MIB)]);
    assert_eq!(p.members["b"].target, 8 * MIB);
    assert_eq!(p.held(), 48 * MIB);
    assert!(p.reserving("b"));
    assert_eq!(p.start_target("b"), None, "starts before the grace");
    // a's pager is under its target: b's room is there.
    assert_eq!(p.report("a", report(24 * MIB, 24 * MIB, 0)), vec![]);
    assert_eq!(p.start_target("b"), Some(24 * MIB));
    assert_eq!(
        p.spawning("b", 24 * MIB),
        Some("vios:v/pg".parse().unwrap())
    );
    assert!(!p.reserving("b"));
    assert_eq!(p.held(), 48 * MIB);
}

#[test]
fn a_start_that_waited_long_enough_takes_its_minimum() {
    let mut p = pool(48);
    p.members
        .insert("a".into(), member(64, 128, 48 * MIB, 46 * MIB));
    let mut b = member(64, 128, 0, 0);
    b.spawned = false;
    b.admitted = Instant::now() - START_GRACE - Duration::from_millis(1);
    p.members.insert("b".into(), b);
    p.recompute(Instant::now());
    // 2 MiB free: exactly b's minimum, whole MiB.
    assert_eq!(p.start_target("b"), Some(2 * MIB));
}

#[test]
fn an_end_frees_the_share_and_the_others_grow_into_it() {
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let store = Store::open(dir.as_path()).unwrap();
    let mut p = pool(48);
    p.members
        .insert("a".into(), member(64, 128, 24 * MIB, 24 * MIB));
    p.members
        .insert("b".into(), member(64, 128, 24 * MIB, 24 * MIB));
    p.recompute(Instant::now());
    assert_eq!(p.release(&store, "b"), vec![change("a", 48 * MIB)]);
    // A second release of the same partition changes nothing.
    assert_eq!(p.release(&store, "b"), vec![]);
    // A partition capped by its logical size leaves the rest free.
    let mut p = pool(48);
    p.members.insert("s".into(), member(8, 128, 2 * MIB, 0));
    assert_eq!(p.tick(), vec![change("s", 8 * MIB)]);
    assert_eq!(p.budget_pages() - p.held(), 40 * MIB);
}

#[test]
fn an_idle_partition_lends_what_it_does_not_use_until_it_faults_again() {
    let mut p = pool(48);
    p.members
        .insert("a".into(), member(64, 128, 24 * MIB, 24 * MIB));
    let mut b = member(64, 128, 24 * MIB, 10 * MIB);
    b.quiet_since = Instant::now() - IDLE_AFTER - Duration::from_secs(1);
    p.members.insert("b".into(), b);
    // b touched nothing new for a while: capped at 10 + 4 MiB; a gets the
    // rest once b's target is down.
    assert_eq!(p.tick(), vec![change("a", 34 * MIB), change("b", 14 * MIB)]);
    assert_eq!(p.held(), 48 * MIB);
    // b faults again: its goal is back at once, a comes down first, b
    // gets only what is free until a reports.
    assert_eq!(
        p.report("b", report(10 * MIB, 14 * MIB, 5)),
        vec![change("a", 24 * MIB), change("b", 24 * MIB)]
    );
    // (a had not grown past 24 yet: room for b at once.)
    assert_eq!(p.held(), 48 * MIB);
}

#[test]
fn a_partition_found_after_a_restart_counts_whole_until_it_reports() {
    let mut p = pool(48);
    if let Some(row) = p.row.as_mut() {
        row.paging.push(PagingRow {
            device: "vios:v/pg".parse().unwrap(),
            assigned: Some("r".into()),
        });
    }
    let def: PartitionDefinition = serde_json::from_value(serde_json::json!({
        "name": "r", "kernel": "/k",
        "memory": {"mode": "shared", "logical_mib": 64, "weight": 1},
    }))
    .unwrap();
    p.recover("r", &def);
    assert_eq!(p.held(), 64 * MIB);
    // Its goal is the pool; the target comes down to it.
    assert_eq!(p.tick(), vec![change("r", 48 * MIB)]);
    // Its first report: what it holds, and the target it runs with.
    assert_eq!(p.report("r", report(30 * MIB, 48 * MIB, 1)), vec![]);
    assert_eq!(p.held(), 48 * MIB);
    let s = p.status("r", &def).unwrap();
    assert_eq!(
        (s.logical_mib, s.weight, s.resident_pages, s.reported),
        (64, 1, 30 * MIB, true)
    );
    assert_eq!(s.paging.unwrap().to_string(), "vios:v/pg");
    assert_eq!(p.members_on("v").len(), 1);
    assert!(p.members_on("w").is_empty());
}

#[test]
fn a_shrink_below_the_minimums_is_refused_and_a_valid_one_lowers_targets() {
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let store = Store::open(dir.as_path()).unwrap();
    let mut p = pool(48);
    p.members
        .insert("a".into(), member(64, 128, 24 * MIB, 24 * MIB));
    p.members
        .insert("b".into(), member(64, 128, 24 * MIB, 24 * MIB));
    let e = p.resize(&store, 3).unwrap_err().to_string();
    assert!(e.contains("need at least 4 MiB"), "{e}");
    assert_eq!(
        p.resize(&store, 16).unwrap(),
        vec![change("a", 8 * MIB), change("b", 8 * MIB)]
    );
    // Still held until they report.
    assert_eq!(p.held(), 48 * MIB);
    p.report("a", report(8 * MIB, 8 * MIB, 0));
    p.report("b", report(8 * MIB, 8 * MIB, 0));
    assert_eq!(p.held(), p.budget_pages());
}
