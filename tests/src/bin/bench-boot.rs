//! Boot benchmark (issue: foundation). For the tiny guest it measures, over
//! several runs, the time from process start to `parvm-guest: ready` on the
//! serial console, and the VMM's resident memory beyond guest RAM (RssAnon +
//! RssFile from /proc; guest RAM is a memfd and counts as RssShmem). The same
//! guest is booted by Debian's QEMU (`-M microvm -enable-kvm`, guest RAM also
//! a memfd) in the same run, and the two are printed side by side.
//!
//! Run: `cargo build --release --workspace && target/release/bench-boot [RUNS]`

use parvm_tests::guests::guest_path;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Sample {
    ready: Duration,
    overhead_kib: u64,
    private_kib: u64,
}

/// Private (unshared) memory of the process beyond its guest RAM.
fn private_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Private_Clean:") + field("Private_Dirty:")).saturating_sub(status_kib(pid, "RssShmem:"))
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Starts `cmd`, times the ready line, waits for the guest to idle at CPL3,
/// samples memory, kills it.
fn measure(mut cmd: Command) -> Result<Sample, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let pid = child.id();
    let out = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(out).lines();
    let mut ready = None;
    let mut result = Err("guest output ended before `parvm-guest: hanging`".to_string());
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        if ready.is_none() && line.contains("parvm-guest: ready") {
            ready = Some(start.elapsed());
        }
        if line.contains("parvm-guest: hanging") {
            std::thread::sleep(Duration::from_millis(200));
            let overhead = status_kib(pid, "RssAnon:") + status_kib(pid, "RssFile:");
            let private = private_kib(pid);
            result = ready
                .map(|ready| Sample {
                    ready,
                    overhead_kib: overhead,
                    private_kib: private,
                })
                .ok_or_else(|| "no ready line".to_string());
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let me = std::env::current_exe().unwrap_or_default();
    let vmm: PathBuf = me.with_file_name("vmm");
    let kernel = guest_path("tiny.elf");
    let cmdline = "console=ttyS0 parvm.test=hang";
    let mem = "64";

    let parvm = |_: usize| {
        let mut c = Command::new(&vmm);
        c.args(["--kernel"]).arg(&kernel).args([
            "--memory-mib",
            mem,
            "--vcpus",
            "1",
            "--cmdline",
            cmdline,
        ]);
        measure(c)
    };
    let qemu = |_: usize| {
        let mut c = Command::new("qemu-system-x86_64");
        c.args([
            "-M",
            "microvm,memory-backend=mem",
            "-enable-kvm",
            "-cpu",
            "host,-arch-capabilities",
            "-smp",
            "1",
            "-m",
            &format!("{mem}M"),
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem}M"),
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-no-reboot",
            "-append",
            cmdline,
            "-kernel",
        ])
        .arg(&kernel);
        measure(c)
    };

    println!("boot benchmark: tiny guest, {runs} runs each, 1 vCPU, {mem} MiB (median)");
    let collect = |f: &dyn Fn(usize) -> Result<Sample, String>| -> Result<(f64, f64, f64), String> {
        let mut t = Vec::new();
        let mut m = Vec::new();
        let mut u = Vec::new();
        for i in 0..runs {
            let s = f(i)?;
            t.push(s.ready.as_secs_f64() * 1000.0);
            m.push(s.overhead_kib as f64 / 1024.0);
            u.push(s.private_kib as f64 / 1024.0);
        }
        Ok((median(t), median(m), median(u)))
    };
    let p = match collect(&parvm) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bench-boot: parvm: {e}");
            std::process::exit(1);
        }
    };
    let q = collect(&qemu);
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "metric", "parvm", "qemu", "ratio"
    );
    let rows = [
        ("start to ready (ms)", p.0, q.as_ref().map(|q| q.0)),
        (
            "VMM RSS beyond guest RAM (MiB)",
            p.1,
            q.as_ref().map(|q| q.1),
        ),
        ("  of which private (MiB)", p.2, q.as_ref().map(|q| q.2)),
    ];
    for (name, ours, theirs) in rows {
        match theirs {
            Ok(t) => println!("{name:<34} {ours:>12.2} {t:>12.2} {:>8.3}", ours / t),
            Err(_) => println!("{name:<34} {ours:>12.2} {:>12} {:>8}", "n/a", "-"),
        }
    }
    if let Err(e) = &q {
        println!("qemu: {e}");
    }
    // The machine's floor for "start a process and hear from it": spawn
    // `true` and wait for it to exit.
    let floor: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            let _ = Command::new("true").status();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    println!(
        "limit: spawning and reaping `true` takes {:.2} ms (median)",
        median(floor)
    );
    println!("targets: ready < 0.25 x QEMU; VMM overhead < 3 MiB");
}
