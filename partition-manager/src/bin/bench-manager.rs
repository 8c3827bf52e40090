//! `bench-manager`: how fast the partition manager brings up N tiny
//! partitions, and what it costs at idle. See docs/benchmarks.md.
//!
//! For each N it starts a fresh manager in a scratch directory, defines N
//! partitions booting the tiny guest, sends the N start requests from a few
//! client threads at once, and times until every console log holds
//! `parvm-guest: ready`. Then it lets the manager idle and reads its RSS and
//! CPU time from /proc.

use anyhow::{bail, Context};
use clap::Parser;
// (`keep_if_asked` is for bench-grants.)
#[allow(dead_code)]
#[path = "common/scratch.rs"]
mod bench;
use bench::ScratchManager;
use partition_manager::client::Client;
use partition_manager::protocol::{Request, RestartPolicy};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Benchmark the partition manager: N tiny partitions started through it.
#[derive(Parser, Debug)]
#[command(name = "bench-manager")]
struct Args {
    /// Partition counts to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 10, 50, 100])]
    counts: Vec<usize>,
    /// Guest kernel [default: target/guests/tiny.elf beside this binary].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Partitions keep running (`parvm.test=hang`, each spins a vCPU)
    /// instead of powering off after ready.
    #[arg(long)]
    hang: bool,
    /// Client threads sending start requests.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds of idle over which the manager's CPU use is measured.
    #[arg(long, default_value_t = 2.0)]
    idle_secs: f64,
}

struct Row {
    n: usize,
    ready: Duration,
    rss_kib: u64,
    peak_kib: u64,
    cpu_pct: f64,
}

fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("bad status line")?
        .parse()?)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &s[s.rfind(')').context("bad stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    Ok(f.get(11).context("bad stat")?.parse::<u64>()?
        + f.get(12).context("bad stat")?.parse::<u64>()?)
}

fn start_manager(bin: &Path, n: usize) -> anyhow::Result<ScratchManager> {
    let dir = std::env::temp_dir().join(format!("parvm-bench-{}-{n}", std::process::id()));
    ScratchManager::start(bin, dir, &[], "warn")
}

fn measure(args: &Args, bin: &Path, kernel: &Path, n: usize) -> anyhow::Result<Row> {
    let m = start_manager(bin, n)?;
    let client = Client::connect(&m.socket)?;
    let cmdline = if args.hang {
        "console=ttyS0 parvm.test=hang"
    } else {
        "console=ttyS0"
    };
    let names: Vec<String> = (0..n).map(|i| format!("bench{i:03}")).collect();
    for name in &names {
        client.call(&Request::Define {
            definition: serde_json::from_value(serde_json::json!({
                "name": name, "vcpus": 1, "memory_mib": 16,
                "kernel": kernel, "cmdline": cmdline,
            }))?,
            restart: RestartPolicy::Never,
            segments: Vec::new(),
            dry_run: false,
        })?;
    }
    let names = Arc::new(names);
    let socket = Arc::new(m.socket.clone());
    let t0 = Instant::now();
    let workers: Vec<_> = (0..args.clients.max(1))
        .map(|k| {
            let (names, socket, step) = (names.clone(), socket.clone(), args.clients.max(1));
            std::thread::spawn(move || -> anyhow::Result<()> {
                let c = Client::connect(&socket)?;
                for name in names.iter().skip(k).step_by(step) {
                    c.call(&Request::Start { name: name.clone() })?;
                }
                Ok(())
            })
        })
        .collect();
    let logs = m.dir.join("state/logs");
    let mut pending: Vec<&String> = names.iter().collect();
    while !pending.is_empty() {
        pending.retain(|name| {
            let text =
                std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default();
            !text.contains("parvm-guest: ready")
        });
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("{} partitions not ready after 120 s", pending.len());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let ready = t0.elapsed();
    for w in workers {
        match w.join() {
            Ok(r) => r?,
            Err(_) => bail!("a client thread panicked"),
        }
    }
    // Idle: nothing asked of the manager; its partitions run or have ended.
    std::thread::sleep(Duration::from_millis(500));
    let pid = m.child.id();
    let hz = {
        // SAFETY: sysconf has no preconditions.
        let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if v > 0 {
            v as f64
        } else {
            100.0
        }
    };
    let c0 = cpu_ticks(pid)?;
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(args.idle_secs));
    let cpu_pct = (cpu_ticks(pid)? - c0) as f64 / hz / w0.elapsed().as_secs_f64() * 100.0;
    Ok(Row {
        n,
        ready,
        rss_kib: proc_status_kib(pid, "VmRSS:")?,
        peak_kib: proc_status_kib(pid, "VmHWM:")?,
        cpu_pct,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = bench::bin_dir()?;
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => bin
            .parent()
            .context("no target directory")?
            .join("guests/tiny.elf"),
    };
    if !kernel.exists() {
        bail!(
            "{} missing: build the test guests (cargo build -p parvm-tests) or pass --kernel",
            kernel.display()
        );
    }
    let kernel = std::fs::canonicalize(&kernel)?;
    let mut rows = Vec::new();
    for &n in &args.counts {
        let row = measure(&args, &bin, &kernel, n)?;
        eprintln!("N={n}: all ready after {:.3} s", row.ready.as_secs_f64());
        rows.push(row);
    }
    println!(
        "guest: {} ({}), {} client threads, 1 vCPU / 16 MiB each",
        kernel.display(),
        if args.hang {
            "keeps running"
        } else {
            "powers off after ready"
        },
        args.clients
    );
    println!();
    println!("| partitions | all ready (s) | per partition (ms) | manager RSS idle (MiB) | manager RSS peak (MiB) | manager CPU idle (%) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.3} | {:.1} | {:.1} | {:.1} | {:.2} |",
            r.n,
            r.ready.as_secs_f64(),
            r.ready.as_secs_f64() * 1000.0 / r.n as f64,
            r.rss_kib as f64 / 1024.0,
            r.peak_kib as f64 / 1024.0,
            r.cpu_pct
        );
    }
    println!();
    let mut ok = true;
    if let Some(r) = rows.iter().find(|r| r.n == 100) {
        let pass = r.ready < Duration::from_secs(10);
        ok &= pass;
        println!(
            "target: 100 partitions ready in < 10 s: {:.3} s {}",
            r.ready.as_secs_f64(),
            if pass { "PASS" } else { "FAIL" }
        );
    }
    let worst = rows.iter().map(|r| r.peak_kib).max().unwrap_or(0);
    let pass = worst < 20 * 1024;
    ok &= pass;
    println!(
        "target: manager RSS < 20 MiB: peak {:.1} MiB {}",
        worst as f64 / 1024.0,
        if pass { "PASS" } else { "FAIL" }
    );
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
