#![allow(clippy::unwrap_used)]
//! The pager against real userfaultfd faults on a real guest-RAM memfd,
//! taken by a host thread (the vCPU's path through KVM is the same fault
//! on the same mapping; the tests with guests are in vmm/tests/ams.rs).

use super::test_store::{MemStore, Probe};
use super::*;
use crate::memory::GuestRam;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress};

/// Value of the qword at guest address `a`.
fn pattern(a: u64, seed: u64) -> u64 {
    a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed
}

fn start(mib: u64, target_pages: u64) -> Option<(GuestRam, Pager, Probe)> {
    let ram = GuestRam::new(mib).unwrap();
    let (stores, probe) = MemStore::stores(mib << 20);
    match Pager::start(
        &ram.memory,
        &ram.memfd,
        stores,
        Reconnectors::default(),
        target_pages,
    ) {
        Ok(p) => Some((ram, p, probe)),
        Err(PagerError::Uffd(e)) => {
            eprintln!("skipped: no userfaultfd with shared-memory write protection here: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Bytes of the memfd in memory (what the pool's budget counts).
fn allocated(ram: &GuestRam) -> u64 {
    ram.memfd.metadata().unwrap().blocks() * 512
}

#[test]
fn memory_three_times_the_target_keeps_every_byte_and_the_budget() {
    let target = 512; // 2 MiB of 6
    let Some((ram, pager, store)) = start(6, target) else {
        return;
    };
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let memfd = ram.memfd.try_clone().unwrap();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut worst = 0;
            while !done.load(Ordering::SeqCst) {
                worst = worst.max(memfd.metadata().unwrap().blocks() * 512);
                std::thread::sleep(Duration::from_millis(1));
            }
            worst
        })
    };
    let size = ram.size;
    for seed in [1u64, 2] {
        for a in (0..size).step_by(8) {
            ram.memory
                .write_obj(pattern(a, seed), GuestAddress(a))
                .unwrap();
        }
        for _pass in 0..2 {
            for a in (0..size).step_by(8) {
                let got: u64 = ram.memory.read_obj(GuestAddress(a)).unwrap();
                assert_eq!(got, pattern(a, seed), "qword at {a:#x}");
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    let worst = sampler.join().unwrap();
    let r = pager.report();
    assert!(
        worst <= target * PAGE_SIZE,
        "{worst} bytes resident, target {}",
        target * PAGE_SIZE
    );
    assert!(allocated(&ram) <= target * PAGE_SIZE);
    assert!(r.resident_pages <= target);
    assert!(r.page_outs > 0 && r.page_ins > 0, "{r:?}");
    assert_eq!(store.writes.load(Ordering::SeqCst), r.page_outs);
    assert_eq!(r.logical_pages, 6 << 8);
}

#[test]
fn untouched_and_zero_pages_never_reach_the_device() {
    let Some((ram, pager, store)) = start(4, 64) else {
        return;
    };
    for a in (0..ram.size).step_by(PAGE_SIZE as usize) {
        let got: u64 = ram.memory.read_obj(GuestAddress(a)).unwrap();
        assert_eq!(got, 0);
    }
    // Read twice: the second sweep brings evicted zero pages back as zeros.
    for a in (0..ram.size).step_by(PAGE_SIZE as usize) {
        let got: u64 = ram.memory.read_obj(GuestAddress(a + 8)).unwrap();
        assert_eq!(got, 0);
    }
    let r = pager.report();
    assert_eq!(store.writes.load(Ordering::SeqCst), 0, "{r:?}");
    assert_eq!(store.reads.load(Ordering::SeqCst), 0, "{r:?}");
    assert!(r.zero_outs > 0 && r.zero_fills > 1024, "{r:?}");
}

#[test]
fn faults_wait_while_the_device_is_gone_and_resume_right() {
    let Some((ram, pager, store)) = start(4, 128) else {
        return;
    };
    let size = ram.size;
    for a in (0..size).step_by(8) {
        ram.memory
            .write_obj(pattern(a, 7), GuestAddress(a))
            .unwrap();
    }
    store.down.store(true, Ordering::SeqCst);
    let checked = Arc::new(AtomicU64::new(0));
    let reader = {
        let memory = ram.memory.clone();
        let checked = checked.clone();
        std::thread::spawn(move || {
            for a in (0..size).step_by(8) {
                let got: u64 = memory.read_obj(GuestAddress(a)).unwrap();
                assert_eq!(got, pattern(a, 7), "qword at {a:#x}");
                checked.store(a, Ordering::SeqCst);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let stuck_at = checked.load(Ordering::SeqCst);
    assert!(
        stuck_at < size - 8,
        "the reader finished with the device gone"
    );
    assert!(pager.report().stalled);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        checked.load(Ordering::SeqCst),
        stuck_at,
        "progress without the device"
    );
    store.down.store(false, Ordering::SeqCst);
    reader.join().unwrap();
    assert!(!pager.report().stalled);
}

#[test]
fn a_lower_target_is_reached_and_a_small_device_is_refused() {
    let Some((ram, pager, _store)) = start(4, 1024) else {
        return;
    };
    for a in (0..ram.size).step_by(PAGE_SIZE as usize) {
        ram.memory.write_obj(a | 1, GuestAddress(a)).unwrap();
    }
    // The figures are published after the faulting thread is woken; the
    // pager keeps a slack of free pages below the target (here 2 x 64).
    let settled = |lo: u64, hi: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = pager.report().resident_pages;
            if (lo..=hi).contains(&r) || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let r = settled(1024 - 128, 1024);
    assert!(
        (1024 - 128..=1024).contains(&r),
        "{r} resident, target 1024"
    );
    pager.set_target(100);
    let r = settled(100 - 12, 100);
    assert!((100 - 12..=100).contains(&r), "{r} resident, target 100");
    assert!(allocated(&ram) <= 100 * PAGE_SIZE);

    let small = GuestRam::new(4).unwrap();
    let e = Pager::start(
        &small.memory,
        &small.memfd,
        MemStore::stores(1 << 20).0,
        Reconnectors::default(),
        64,
    )
    .err()
    .unwrap();
    assert!(matches!(e, PagerError::DeviceTooSmall { .. }), "{e}");
}
