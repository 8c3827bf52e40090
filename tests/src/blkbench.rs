//! What the block benchmarks `bench-blk` and `bench-vios` (docs/benchmarks.md,
//! "Block" and "VIOS") share: their options, the command lines that run the
//! tiny guest's `parvm.test=blkbench` (docs/guests.md) under parvm's `vmm` and
//! under QEMU, timing its phases from the guest's `blkbench start <phase>` and
//! `blkbench done <phase>` lines (with the VMM's CPU time), the host
//! pread/pwrite limit, and the disk image.

use crate::guests::guest_path;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The guest's phases, in the order it runs them.
pub const PHASES: [&str; 3] = ["randread", "seqread", "seqwrite"];
/// Bytes in a MiB.
pub const MIB: u64 = 1 << 20;
/// The guest's memory (parvm and QEMU alike).
pub const GUEST_MEM_MIB: u64 = 256;

/// A benchmark's command-line options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub runs: usize,
    /// 4 KiB random reads per run.
    pub reads: u64,
    /// MiB per sequential phase.
    pub mib: u64,
    pub image_mib: u64,
}

impl Options {
    /// Parses `--runs N --reads N --mib N --image-mib N` (each optional,
    /// each at least 1) from `args` over `defaults`; errors name `program`.
    pub fn parse(
        program: &str,
        defaults: Options,
        args: impl IntoIterator<Item = String>,
    ) -> Result<Self, String> {
        let mut o = defaults;
        let mut args = args.into_iter();
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
                        "unknown flag {flag}; usage: {program} [--runs N] [--reads N] [--mib N] [--image-mib N]"
                    ))
                }
            }
        }
        Ok(o)
    }
}

/// One timed phase of one run.
#[derive(Clone, Copy, Debug)]
pub struct Phase {
    pub secs: f64,
    pub ops: u64,
    pub bytes: u64,
    /// Guest notifications (QueueNotify writes) in the phase; 0 for the host.
    pub kicks: u64,
    /// CPU time of the whole process during the phase, in seconds.
    pub cpu: f64,
    /// CPU time of its vCPU thread (guest time included).
    pub vcpu_cpu: f64,
}

impl Phase {
    /// Operations per second.
    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    /// MiB per second.
    pub fn mib_s(&self) -> f64 {
        self.bytes as f64 / MIB as f64 / self.secs
    }
}

/// The phases of one run, by name (see [`PHASES`]).
pub type Run = HashMap<&'static str, Phase>;

/// What a table row shows of a phase.
pub type Metric = fn(&Phase) -> f64;

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
pub fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Runs a VMM whose guest does `blkbench` and times the phases from the
/// arrival of the start and done lines; kills it after `timeout`.
pub fn guest_run(name: &str, mut cmd: Command, timeout: Duration) -> Result<Run, String> {
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

/// The guest's command line for `o`.
pub fn guest_cmdline(o: &Options) -> String {
    format!(
        "parvm.test=blkbench parvm.bench={} parvm.benchmib={}",
        o.reads, o.mib
    )
}

/// parvm's `vmm` (at `vmm`) running the tiny guest with `disk` (an image
/// path or `vhost-user:SOCKET`).
pub fn vmm_cmd(vmm: &Path, disk: impl AsRef<OsStr>, o: &Options) -> Command {
    let mut c = Command::new(vmm);
    c.arg("--kernel")
        .arg(guest_path("tiny.elf"))
        .args(["--memory-mib", &GUEST_MEM_MIB.to_string(), "--vcpus", "1"])
        .args(["--console", "stdout", "--cmdline", &guest_cmdline(o)])
        .arg("--disk")
        .arg(disk);
    c
}

/// QEMU microvm: `acpi=off` makes it append `virtio_mmio.device=` to the
/// command line (with ACPI it only describes the devices in the DSDT), and
/// `force-legacy=false` gives the modern (version 2) transport the guest
/// driver expects. `-cpu host,-arch-capabilities`: see docs/pvm.md.
pub fn qemu_cmd(image: &Path, o: &Options) -> Command {
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

/// The guest's LCG (Knuth's MMIX constants), high bits: the same offsets.
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
pub fn host_run(image: &Path, o: &Options) -> Result<Run, String> {
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
pub fn make_image(path: &Path, mib: u64) -> Result<(), String> {
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
pub fn settle(image: &Path) {
    if let Ok(f) = File::open(image) {
        let _ = f.sync_data();
    }
}

/// The 1-minute load average, as text (`?` if /proc does not say).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The median of `v` (the upper one of an even count); NaN if empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The binary `name` in the directory of the running executable (the
/// benchmarks run `vmm` and `vios` from target/release/).
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .unwrap_or_default()
        .with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Options = Options {
        runs: 3,
        reads: 10,
        mib: 20,
        image_mib: 30,
    };

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::parse("bench", DEFAULTS, args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn options_override_defaults_and_reject_unknown_flags() {
        assert_eq!(parse(&[]), Ok(DEFAULTS));
        let o = parse(&[
            "--runs",
            "0",
            "--reads",
            "5",
            "--mib",
            "6",
            "--image-mib",
            "7",
        ]);
        assert_eq!(
            o,
            Ok(Options {
                runs: 1,
                reads: 5,
                mib: 6,
                image_mib: 7
            })
        );
        assert!(parse(&["--runs"]).is_err());
        assert!(parse(&["--runs", "x"]).is_err());
        let Err(e) = parse(&["--bogus", "1"]) else {
            panic!("--bogus accepted");
        };
        assert!(e.contains("usage: bench "), "{e}");
    }

    #[test]
    fn field_and_median() {
        let line = "parvm-guest: blkbench done randread ops=12 bytes=49152 errors=0 kicks=3";
        assert_eq!(field(line, "ops"), Some(12));
        assert_eq!(field(line, "errors"), Some(0));
        assert_eq!(field(line, "missing"), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert!(median(Vec::new()).is_nan());
    }
}
