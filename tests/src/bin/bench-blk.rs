//! Block benchmark (issue 3). The tiny guest's `parvm.test=blkbench`
//! (docs/guests.md) drives a virtio-blk disk from CPL3: 4 KiB random reads
//! at queue depth 32, then 1 MiB sequential reads and writes. The host
//! times each phase between the guest's `blkbench start <phase>` and
//! `blkbench done <phase>` lines. The same guest and image run under parvm's
//! `vmm` and under Debian's QEMU (`-M microvm`, virtio-mmio, KVM), and a
//! host pread/pwrite loop on the same file (one thread) gives the limit.
//! The image lives in the page cache (written just before, synced between
//! runs).
//!
//! Run: `cargo build --release --workspace && target/release/bench-blk
//! [--runs N] [--reads N] [--mib N] [--image-mib N]`

use parvm_tests::blkbench::{
    guest_run, host_run, loadavg, make_image, median, qemu_cmd, settle, sibling, vmm_cmd, Metric,
    Options, Phase, Run, GUEST_MEM_MIB, PHASES,
};
use parvm_tests::scratch_dir;
use std::collections::HashMap;
use std::time::Duration;

fn main() {
    let defaults = Options {
        runs: 3,
        reads: 1_000_000,
        mib: 16384,
        image_mib: 256,
    };
    let o = match Options::parse("bench-blk", defaults, std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench-blk: {e}");
            std::process::exit(2);
        }
    };
    let vmm = sibling("vmm");
    let dir = scratch_dir("bench-blk");
    let image = dir.join("disk.img");
    if let Err(e) = make_image(&image, o.image_mib) {
        eprintln!("bench-blk: cannot create the image: {e}");
        std::process::exit(1);
    }
    let timeout = Duration::from_secs(120);
    let load_before = loadavg();

    let mut parvm: Vec<Run> = Vec::new();
    let mut qemu: Vec<Run> = Vec::new();
    let mut host: Vec<Run> = Vec::new();
    let mut qemu_error = None;
    for _ in 0..o.runs {
        match guest_run("parvm", vmm_cmd(&vmm, &image, &o), timeout) {
            Ok(r) => parvm.push(r),
            Err(e) => {
                eprintln!("bench-blk: {e}");
                std::process::exit(1);
            }
        }
        settle(&image);
        if qemu_error.is_none() {
            match guest_run("qemu", qemu_cmd(&image, &o), timeout) {
                Ok(r) => qemu.push(r),
                Err(e) => qemu_error = Some(e),
            }
            settle(&image);
        }
        match host_run(&image, &o) {
            Ok(r) => host.push(r),
            Err(e) => {
                eprintln!("bench-blk: {e}");
                std::process::exit(1);
            }
        }
        settle(&image);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let load_after = loadavg();

    let med = |runs: &[Run], phase: &str, f: Metric| -> Option<f64> {
        if runs.is_empty() {
            return None;
        }
        Some(median(
            runs.iter().filter_map(|r| r.get(phase)).map(f).collect(),
        ))
    };
    println!(
        "block benchmark: tiny guest (1 vCPU, {GUEST_MEM_MIB} MiB), {} MiB raw image in the page cache, {} runs (median)",
        o.image_mib, o.runs
    );
    println!(
        "  random: {} x 4 KiB reads, queue depth 32; sequential: {} x 1 MiB per phase",
        o.reads, o.mib
    );
    println!(
        "  load average before/after: {load_before} / {load_after} ({} CPUs; each VMM wants 2: a polling vCPU and its I/O thread)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>11} {:>11}",
        "metric", "parvm", "qemu", "host", "parvm/qemu", "parvm/host"
    );
    let rows: [(&str, &str, Metric); 3] = [
        ("4 KiB rand read (IOPS)", "randread", Phase::iops),
        ("1 MiB seq read (MiB/s)", "seqread", Phase::mib_s),
        ("1 MiB seq write (MiB/s)", "seqwrite", Phase::mib_s),
    ];
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0}"));
    let fmt2 = |v: Option<f64>| match v {
        Some(v) if v.is_finite() => format!("{v:.2}"),
        _ => "n/a".to_string(),
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".to_string(),
    };
    let mut results = HashMap::new();
    let mut all_runs = Vec::new();
    let each = |runs: &[Run], phase: &str, f: Metric| {
        runs.iter()
            .filter_map(|r| r.get(phase))
            .map(|p| format!("{:.0}", f(p)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (name, phase, f) in rows {
        let (p, q, h) = (
            med(&parvm, phase, f),
            med(&qemu, phase, f),
            med(&host, phase, f),
        );
        println!(
            "{name:<28} {:>10} {:>10} {:>10} {:>11} {:>11}",
            fmt(p),
            fmt(q),
            fmt(h),
            ratio(p, q),
            ratio(p, h)
        );
        results.insert(phase, (p, q, h));
        all_runs.push(format!(
            "  {phase}: parvm [{}] qemu [{}] host [{}]",
            each(&parvm, phase, f),
            each(&qemu, phase, f),
            each(&host, phase, f)
        ));
    }
    let kicks = |runs: &[Run], phase: &str| med(runs, phase, |p| p.kicks as f64);
    for phase in PHASES {
        println!(
            "{:<28} {:>10} {:>10}",
            format!("  notifications ({phase})"),
            fmt(kicks(&parvm, phase)),
            fmt(kicks(&qemu, phase))
        );
    }
    // Where the VMMs' time goes: CPU time per second of the phase, of the
    // whole process and of its vCPU thread (the guest polls, so about 1).
    for phase in PHASES {
        let cores = |runs: &[Run], f: Metric| fmt2(med(runs, phase, f));
        println!(
            "{:<28} {:>10} {:>10}",
            format!("  VMM CPU/s ({phase})"),
            cores(&parvm, |p| p.cpu / p.secs),
            cores(&qemu, |p| p.cpu / p.secs)
        );
        println!(
            "{:<28} {:>10} {:>10}",
            "    of which vCPU thread",
            cores(&parvm, |p| p.vcpu_cpu / p.secs),
            cores(&qemu, |p| p.vcpu_cpu / p.secs)
        );
    }
    println!("every run:");
    for line in &all_runs {
        println!("{line}");
    }
    if let Some(e) = &qemu_error {
        println!("qemu: {e}");
    }
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "n/a",
    };
    let iops_ok = match results.get("randread") {
        Some((Some(p), Some(q), _)) => Some(*p >= 1.5 * q),
        _ => None,
    };
    let seq_ok = ["seqread", "seqwrite"]
        .iter()
        .map(|ph| match results.get(ph) {
            Some((Some(p), _, Some(h))) => Some(*p >= 0.5 * h),
            _ => None,
        })
        .try_fold(true, |acc, ok| ok.map(|ok| acc && ok));
    println!(
        "targets: IOPS >= 1.5 x QEMU: {}; sequential >= 0.5 x host: {}",
        verdict(iops_ok),
        verdict(seq_ok)
    );
}
