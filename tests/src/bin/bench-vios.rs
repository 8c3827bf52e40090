//! VIOS benchmark (docs/benchmarks.md, "VIOS"): the tiny guest's
//! `parvm.test=blkbench` (docs/guests.md: 4 KiB random reads at queue depth
//! 32, then 1 MiB sequential reads and writes, all from CPL3) on one image,
//! in one run, through
//!
//! * `vios`: parvm's `vmm` with the disk `vhost-user:SOCKET` served by the
//!   `vios` binary (the vhost-user-blk path),
//! * `vmm`: parvm's `vmm` with its own virtio-blk on the image,
//! * `qemu`: Debian's QEMU (`-M microvm`, virtio-blk-device over
//!   virtio-mmio, KVM) on the image,
//! * `host`: one host thread doing the same preads/pwrites on the image (the
//!   limit),
//!
//! timing each phase between the guest's `blkbench start` and `done` lines.
//! Prints medians and ratios as a Markdown table. The shared parts are in
//! `parvm_tests::blkbench`; `vmm` and `vios` are run from the directory of
//! this executable (target/release/).
//!
//!     cargo build --release --workspace && target/release/bench-vios [--runs N] [--reads N] [--mib N] [--image-mib N]

use parvm_tests::blkbench::{
    guest_run, host_run, loadavg, make_image, median, qemu_cmd, settle, sibling, vmm_cmd, Metric,
    Options, Phase, Run,
};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct ViosProcess(Child);

impl Drop for ViosProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let defaults = Options {
        runs: 3,
        reads: 200_000,
        mib: 4096,
        image_mib: 256,
    };
    let o = match Options::parse("bench-vios", defaults, std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench-vios: {e}");
            std::process::exit(2);
        }
    };
    let (vmm, vios) = (sibling("vmm"), sibling("vios"));
    for b in [&vmm, &vios] {
        if !b.exists() {
            eprintln!(
                "bench-vios: {} missing: cargo build --release --workspace",
                b.display()
            );
            std::process::exit(2);
        }
    }
    let dir = std::env::temp_dir().join(format!("parvm-bench-vios-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let image = dir.join("disk.img");
    let socket = dir.join("vios.sock");
    if let Err(e) = make_image(&image, o.image_mib) {
        eprintln!("bench-vios: image: {e}");
        std::process::exit(1);
    }
    let server = match Command::new(&vios)
        .arg("--listen")
        .arg(&socket)
        .arg("--disk")
        .arg(&image)
        .env("PARVM_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(c) => ViosProcess(c),
        Err(e) => {
            eprintln!("bench-vios: cannot start {}: {e}", vios.display());
            std::process::exit(1);
        }
    };
    let start = Instant::now();
    while !socket.exists() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let vios_disk = format!("vhost-user:{}", socket.display());
    let timeout = Duration::from_secs(120);
    let names = ["vios", "vmm", "qemu", "host"];
    let mut results: HashMap<&str, Vec<Run>> = HashMap::new();
    let mut errors: Vec<String> = Vec::new();
    for run in 0..o.runs {
        eprintln!("bench-vios: run {} of {}", run + 1, o.runs);
        for name in names {
            settle(&image);
            let r = match name {
                "vios" => guest_run(name, vmm_cmd(&vmm, &vios_disk, &o), timeout),
                "vmm" => guest_run(name, vmm_cmd(&vmm, &image, &o), timeout),
                "qemu" => guest_run(name, qemu_cmd(&image, &o), timeout),
                _ => host_run(&image, &o),
            };
            match r {
                Ok(r) => results.entry(name).or_default().push(r),
                Err(e) => errors.push(e),
            }
        }
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);

    let med = |name: &str, phase: &str, f: Metric| {
        median(
            results
                .get(name)
                .map(|runs| runs.iter().filter_map(|r| r.get(phase)).map(f).collect())
                .unwrap_or_default(),
        )
    };
    println!(
        "{} runs, {} random 4 KiB reads (QD 32), {} MiB sequential each way, {} MiB image; load {}",
        o.runs,
        o.reads,
        o.mib,
        o.image_mib,
        loadavg()
    );
    println!();
    println!("| metric | vios | vmm virtio-blk | QEMU virtio-blk | host pread/pwrite | vios/vmm | vios/QEMU | vios/host |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (phase, label, f) in [
        (
            "randread",
            "4 KiB random read (IOPS)",
            Phase::iops as Metric,
        ),
        ("seqread", "1 MiB sequential read (MiB/s)", Phase::mib_s),
        ("seqwrite", "1 MiB sequential write (MiB/s)", Phase::mib_s),
    ] {
        let v: Vec<f64> = names.iter().map(|n| med(n, phase, f)).collect();
        println!(
            "| {label} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} |",
            v[0],
            v[1],
            v[2],
            v[3],
            v[0] / v[1],
            v[0] / v[2],
            v[0] / v[3]
        );
    }
    for e in &errors {
        println!("error: {}", e.lines().next().unwrap_or_default());
    }
}
