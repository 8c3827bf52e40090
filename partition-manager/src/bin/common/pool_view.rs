//! How `parctl` prints the shared memory pool and a shared-memory
//! partition's figures (docs/ams.md, "What parctl shows").

use partition_manager::protocol::{PoolInfo, SharedMemoryStatus, PAGES_PER_MIB};

fn mib_of(pages: u64) -> String {
    match pages % PAGES_PER_MIB {
        0 => format!("{} MiB", pages / PAGES_PER_MIB),
        _ => format!("{:.1} MiB", pages as f64 / PAGES_PER_MIB as f64),
    }
}

pub fn print_pool(p: &PoolInfo) {
    println!("size:     {} MiB ({} pages)", p.size_mib, p.pages);
    println!(
        "resident: {} pages ({})",
        p.resident_pages,
        mib_of(p.resident_pages)
    );
    println!(
        "loaned:   {} pages ({})",
        p.loaned_pages,
        mib_of(p.loaned_pages)
    );
    println!(
        "free:     {} pages ({})",
        p.free_pages,
        mib_of(p.free_pages)
    );
    println!("PAGING DEVICE                 SIZE        PARTITION");
    for d in &p.paging {
        let size = d
            .size
            .map(|s| mib_of(s / 4096))
            .unwrap_or_else(|| "-".into());
        let who = d.partition.as_deref().unwrap_or("-");
        println!("{:<29} {size:<11} {who}", d.device.to_string());
    }
    if !p.members.is_empty() {
        println!("PARTITION         WEIGHT  LOGICAL     GOAL        TARGET      RESIDENT");
        for m in &p.members {
            println!(
                "{:<17} {:<7} {:<11} {:<11} {:<11} {}",
                m.partition,
                m.weight,
                mib_of(m.logical_pages),
                mib_of(m.goal_pages),
                mib_of(m.target_pages),
                mib_of(m.resident_pages)
            );
        }
    }
}

/// The figures `lparstat -m` shows on PowerVM.
pub fn print_shared(m: &SharedMemoryStatus) {
    println!("memory mode: shared (weight {})", m.weight);
    println!("logical:     {} MiB", m.logical_mib);
    let paging = m.paging.as_ref().map(|d| d.to_string());
    println!("paging:      {}", paging.as_deref().unwrap_or("-"));
    if !m.reported {
        println!("resident:    -");
        return;
    }
    println!(
        "target:      {} pages ({})",
        m.target_pages,
        mib_of(m.target_pages)
    );
    println!(
        "resident:    {} pages ({})",
        m.resident_pages,
        mib_of(m.resident_pages)
    );
    println!(
        "page-ins:    {} ({} ms waiting){}",
        m.page_ins,
        m.page_in_us / 1000,
        if m.stalled { ", stalled" } else { "" }
    );
    println!(
        "page-outs:   {} (+{} zero pages released, {} zero-filled)",
        m.page_outs, m.zero_outs, m.zero_fills
    );
}
