//! A VIOS session must not leak descriptors: the vhost_user target's
//! one-hour run hung after about 13,800 sessions, every eventfd of the
//! process's 20,000 taken by exit eventfds vhost-user-backend leaves open
//! (one per queue worker per session; see `VhostUserBlk::close_exit_events`).
//! Its own test binary, so no other test opens descriptors meanwhile.
#![allow(clippy::unwrap_used)]

use std::path::Path;

fn eventfds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|p| p.to_string_lossy() == "anon_inode:[eventfd]")
        })
        .count()
}

#[test]
fn sessions_do_not_leak_eventfds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/vhost_user");
    let mut inputs = Vec::new();
    for seed in ["session-read", "session-read-only", "config"] {
        inputs.push(std::fs::read(root.join(seed)).unwrap());
    }
    // Warm up (the export and anything else created once per process).
    for data in &inputs {
        parvm_fuzz::vhost_user::vhost_user(data);
    }
    let before = eventfds();
    for _ in 0..50 {
        for data in &inputs {
            parvm_fuzz::vhost_user::vhost_user(data);
        }
    }
    let after = eventfds();
    assert!(
        after <= before + 2,
        "150 sessions left {} more eventfds open ({before} before, {after} after)",
        after.saturating_sub(before)
    );
}
