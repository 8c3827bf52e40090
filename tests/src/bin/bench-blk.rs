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

use parvm_tests::guests::guest_path;
use parvm_tests::scratch_dir;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PHASES: [&str; 3] = ["randread", "seqread", "seqwrite"];
const MIB: u64 = 1 << 20;
const GUEST_MEM_MIB: u64 = 256;

struct Options {
    runs: usize,
    /// 4 KiB random reads per run.
    reads: u64,
    /// MiB per sequential phase.
    mib: u64,
    image_mib: u64,
}

impl Options {
    fn parse() -> Result<Self, String> {
        let mut o = Options {
            runs: 3,
            reads: 1_000_000,
            mib: 16384,
            image_mib: 256,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let n: u64 = value
                .parse()
                .map_err(|_| format!("{flag} {value}: not a number"))?;
            match flag.as_str() {
                "--runs" => o.runs = n.max(1) as usize,
                "--reads" => o.reads = n.max(1),
                "--mib" => o.mib = n.max(1),
                "--image-mib" => o.image_mib = n.max(1),
                _ => {
                    return Err(format!(
                        "unknown flag {flag}; usage: bench-blk [--runs N] [--reads N] [--mib N] [--image-mib N]"
                    ))
                }
            }
        }
        Ok(o)
    }
}

/// One timed phase of one run.
#[derive(Clone, Copy, Debug)]
struct Phase {
    secs: f64,
    ops: u64,
    bytes: u64,
    /// Guest notifications (QueueNotify writes) in the phase; 0 for the host.
    kicks: u64,
    /// CPU time of the whole process during the phase, in seconds.
    cpu: f64,
    /// CPU time of its vCPU thread (guest time included).
    vcpu_cpu: f64,
}

impl Phase {
    fn iops(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    fn mib_s(&self) -> f64 {
        self.bytes as f64 / MIB as f64 / self.secs
    }
}

type Run = HashMap<&'static str, Phase>;

/// What a table row shows of a phase.
type Metric = fn(&Phase) -> f64;

/// Clock ticks per second of /proc's CPU times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// utime + stime (seconds) from a /proc `stat` file.
fn stat_cpu(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let rest: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

/// CPU seconds so far of the whole process (threads that exited included,
/// as long as it is not reaped) and of its vCPU threads (NaN if none is
/// alive). parvm names its vCPU threads `vcpuN`, QEMU (with
/// `debug-threads=on`) `CPU N/KVM`.
fn cpu_split(pid: u32) -> (f64, f64) {
    let all = stat_cpu(&format!("/proc/{pid}/stat")).unwrap_or(f64::NAN);
    let mut vcpu = f64::NAN;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let name = name.trim_end();
        if name.starts_with("vcpu") || name.ends_with("/KVM") {
            if let Some(c) = stat_cpu(&t.path().join("stat").to_string_lossy()) {
                vcpu = if vcpu.is_nan() { c } else { vcpu + c };
            }
        }
    }
    (all, vcpu)
}

/// `key=<u64>` out of a `blkbench done` line.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Runs a VMM whose guest does `blkbench` and times the phases from the
/// arrival of the start and done lines.
fn guest_run(name: &str, mut cmd: Command, timeout: Duration) -> Result<Run, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{name}: cannot start {cmd:?}: {e}"))?;
    let pid = child.id();
    let out = child.stdout.take().ok_or("no stdout")?;
    let err = child.stderr.take().ok_or("no stderr")?;
    // The reader samples CPU times as soon as a phase line arrives: after
    // the last one the guest powers off within a millisecond.
    let (tx, rx) = mpsc::channel::<(Instant, String, (f64, f64))>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let at = Instant::now();
            let cpu = if line.contains("blkbench ") {
                cpu_split(pid)
            } else {
                (f64::NAN, f64::NAN)
            };
            if tx.send((at, line, cpu)).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(err), &mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let mut transcript = String::new();
    let mut starts: HashMap<String, (Instant, (f64, f64))> = HashMap::new();
    let mut run = Run::new();
    let mut failure = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((at, line, cpu)) => {
                transcript.push_str(&line);
                transcript.push('\n');
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    [_, "blkbench", "start", phase] => {
                        starts.insert(phase.to_string(), (at, cpu));
                    }
                    [_, "blkbench", "done", phase, ..] => {
                        let Some(&phase) = PHASES.iter().find(|p| *p == phase) else {
                            continue;
                        };
                        let Some((start, cpu0)) = starts.get(phase) else {
                            failure = Some(format!("done {phase} without a start"));
                            continue;
                        };
                        if field(&line, "errors") != Some(0) {
                            failure = Some(format!("guest reports failed requests: {line}"));
                        }
                        run.insert(
                            phase,
                            Phase {
                                secs: at.duration_since(*start).as_secs_f64(),
                                ops: field(&line, "ops").unwrap_or(0),
                                bytes: field(&line, "bytes").unwrap_or(0),
                                kicks: field(&line, "kicks").unwrap_or(0),
                                cpu: cpu.0 - cpu0.0,
                                vcpu_cpu: cpu.1 - cpu0.1,
                            },
                        );
                    }
                    _ => {}
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                failure = Some(format!("no result within {timeout:?}"));
                let _ = child.kill();
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait();
    let _ = reader.join();
    let stderr = err_reader.join().unwrap_or_default();
    if failure.is_none() && run.len() != PHASES.len() {
        failure = Some(format!("missing phases (exit: {status:?})"));
    }
    match failure {
        None => Ok(run),
        Some(f) => Err(format!(
            "{name}: {f}\n--- guest output ---\n{transcript}--- stderr ---\n{}",
            stderr.lines().take(20).collect::<Vec<_>>().join("\n")
        )),
    }
}

fn guest_cmdline(o: &Options) -> String {
    format!(
        "parvm.test=blkbench parvm.bench={} parvm.benchmib={}",
        o.reads, o.mib
    )
}

fn parvm_cmd(vmm: &Path, image: &Path, o: &Options) -> Command {
    let mut c = Command::new(vmm);
    c.arg("--kernel")
        .arg(guest_path("tiny.elf"))
        .args(["--memory-mib", &GUEST_MEM_MIB.to_string(), "--vcpus", "1"])
        .args(["--console", "stdout", "--cmdline", &guest_cmdline(o)])
        .arg("--disk")
        .arg(image);
    c
}

/// QEMU microvm: `acpi=off` makes it append `virtio_mmio.device=` to the
/// command line (with ACPI it only describes the devices in the DSDT), and
/// `force-legacy=false` gives the modern (version 2) transport the guest
/// driver expects.
fn qemu_cmd(image: &Path, o: &Options) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-name",
        "bench,debug-threads=on",
        "-M",
        "microvm,acpi=off",
        "-global",
        "virtio-mmio.force-legacy=false",
        "-enable-kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-smp",
        "1",
        "-m",
        &GUEST_MEM_MIB.to_string(),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
    ])
    .arg(guest_path("tiny.elf"))
    .args(["-append", &guest_cmdline(o)])
    .arg("-drive")
    .arg(format!(
        "file={},if=none,id=d0,format=raw,cache=writeback",
        image.display()
    ))
    .args(["-device", "virtio-blk-device,drive=d0"]);
    c
}

/// The guest's LCG (Knuth's MMIX constants), high bits.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 16
    }
}

/// The limit: the same work as the guest, done by one host thread with
/// pread/pwrite on the image file.
fn host_run(image: &Path, o: &Options) -> Result<Run, String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|e| format!("host: {}: {e}", image.display()))?;
    let size = f.metadata().map_err(|e| format!("host: {e}"))?.len();
    let mut run = Run::new();
    let mut buf = vec![0u8; MIB as usize];

    let blocks = size / 4096;
    let mut lcg = Lcg(0x2545_f491_4f6c_dd1d);
    let t = Instant::now();
    for _ in 0..o.reads {
        let off = (lcg.next() % blocks) * 4096;
        f.read_exact_at(&mut buf[..4096], off)
            .map_err(|e| format!("host pread: {e}"))?;
    }
    run.insert(
        "randread",
        Phase {
            secs: t.elapsed().as_secs_f64(),
            ops: o.reads,
            bytes: o.reads * 4096,
            kicks: 0,
            cpu: 0.0,
            vcpu_cpu: 0.0,
        },
    );

    let span = size / MIB * MIB;
    for phase in ["seqread", "seqwrite"] {
        let t = Instant::now();
        for i in 0..o.mib {
            let off = (i * MIB) % span;
            if phase == "seqread" {
                f.read_exact_at(&mut buf, off)
            } else {
                f.write_all_at(&buf, off)
            }
            .map_err(|e| format!("host {phase}: {e}"))?;
        }
        run.insert(
            phase,
            Phase {
                secs: t.elapsed().as_secs_f64(),
                ops: o.mib,
                bytes: o.mib * MIB,
                kicks: 0,
                cpu: 0.0,
                vcpu_cpu: 0.0,
            },
        );
    }
    Ok(run)
}

/// A raw image of pseudo-random bytes (no holes: every read copies data).
fn make_image(path: &Path, mib: u64) -> Result<(), String> {
    let mut f = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; MIB as usize];
    for _ in 0..mib {
        for w in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&chunk)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    f.sync_all().map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes the image's dirty pages back so that one run's writes do not
/// slow down the next run.
fn settle(image: &Path) {
    if let Ok(f) = File::open(image) {
        let _ = f.sync_data();
    }
}

/// The 1-minute load average, as text.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let o = match Options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench-blk: {e}");
            std::process::exit(2);
        }
    };
    let vmm: PathBuf = std::env::current_exe()
        .unwrap_or_default()
        .with_file_name("vmm");
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
        match guest_run("parvm", parvm_cmd(&vmm, &image, &o), timeout) {
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
