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
//! Prints medians and ratios as a Markdown table.
//!
//!     cargo build --release -p vmm -p vios && target/release/bench-vios [--runs N] [--reads N] [--mib N] [--image-mib N]

#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PHASES: [&str; 3] = ["randread", "seqread", "seqwrite"];
const MIB: u64 = 1 << 20;
const GUEST_MEM_MIB: u64 = 256;

struct Options {
    runs: usize,
    reads: u64,
    mib: u64,
    image_mib: u64,
}

fn parse_options() -> Result<Options, String> {
    let mut o = Options {
        runs: 3,
        reads: 200_000,
        mib: 4096,
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
                "unknown flag {flag}; usage: bench-vios [--runs N] [--reads N] [--mib N] [--image-mib N]"
            ))
            }
        }
    }
    Ok(o)
}

/// One phase: seconds, operations, bytes.
#[derive(Clone, Copy, Debug)]
struct Phase {
    secs: f64,
    ops: u64,
    bytes: u64,
}

type Run = HashMap<&'static str, Phase>;

fn guest_cmdline(o: &Options) -> String {
    format!(
        "parvm.test=blkbench parvm.bench={} parvm.benchmib={}",
        o.reads, o.mib
    )
}

fn tiny_elf() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/guests/tiny.elf"
    ))
}

fn vmm_cmd(vmm: &Path, disk: &str, o: &Options) -> Command {
    let mut c = Command::new(vmm);
    c.arg("--kernel")
        .arg(tiny_elf())
        .args(["--memory-mib", &GUEST_MEM_MIB.to_string(), "--vcpus", "1"])
        .args(["--console", "stdout", "--cmdline", &guest_cmdline(o)])
        .args(["--disk", disk]);
    c
}

/// QEMU microvm with the modern virtio-mmio transport; `acpi=off` makes it
/// put `virtio_mmio.device=` on the command line. `-cpu
/// host,-arch-capabilities`: see docs/pvm.md.
fn qemu_cmd(image: &Path, o: &Options) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
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
    .arg(tiny_elf())
    .args(["-append", &guest_cmdline(o)])
    .arg("-drive")
    .arg(format!(
        "file={},if=none,id=d0,format=raw,cache=writeback",
        image.display()
    ))
    .args(["-device", "virtio-blk-device,drive=d0"]);
    c
}

fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Run a guest and time its phases from the arrival of its lines.
fn guest_run(name: &str, mut cmd: Command) -> Result<Run, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{name}: cannot start: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let mut starts: HashMap<String, Instant> = HashMap::new();
    let mut run = Run::new();
    let mut transcript = String::new();
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        let at = Instant::now();
        transcript.push_str(&line);
        transcript.push('\n');
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [_, "blkbench", "start", phase] => {
                starts.insert(phase.to_string(), at);
            }
            [_, "blkbench", "done", phase, ..] => {
                let (Some(p), Some(start)) =
                    (PHASES.iter().find(|p| *p == phase), starts.get(*phase))
                else {
                    continue;
                };
                if field(&line, "errors") != Some(0) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{name}: {phase} had errors:\n{transcript}"));
                }
                run.insert(
                    p,
                    Phase {
                        secs: at.duration_since(*start).as_secs_f64(),
                        ops: field(&line, "ops").unwrap_or(0),
                        bytes: field(&line, "bytes").unwrap_or(0),
                    },
                );
            }
            _ => {}
        }
    }
    let _ = child.wait();
    if run.len() != PHASES.len() {
        return Err(format!("{name}: not every phase completed:\n{transcript}"));
    }
    Ok(run)
}

/// The guest's LCG (MMIX constants), high bits: the same offsets.
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

fn host_run(image: &Path, o: &Options) -> Result<Run, String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|e| format!("host: {e}"))?;
    let size = f.metadata().map_err(|e| format!("host: {e}"))?.len();
    let mut buf = vec![0u8; MIB as usize];
    let mut run = Run::new();
    let blocks = size / 4096;
    let mut lcg = Lcg(0x2545_f491_4f6c_dd1d);
    let t = Instant::now();
    for _ in 0..o.reads {
        let off = (lcg.next() % blocks) * 4096;
        f.read_exact_at(&mut buf[..4096], off)
            .map_err(|e| format!("host: {e}"))?;
    }
    run.insert(
        "randread",
        Phase {
            secs: t.elapsed().as_secs_f64(),
            ops: o.reads,
            bytes: o.reads * 4096,
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
            .map_err(|e| format!("host: {e}"))?;
        }
        run.insert(
            phase,
            Phase {
                secs: t.elapsed().as_secs_f64(),
                ops: o.mib,
                bytes: o.mib * MIB,
            },
        );
    }
    Ok(run)
}

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
        f.write_all(&chunk).map_err(|e| format!("{e}"))?;
    }
    f.sync_all().map_err(|e| format!("{e}"))
}

fn settle(image: &Path) {
    if let Ok(f) = File::open(image) {
        let _ = f.sync_data();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct ViosProcess(Child);

impl Drop for ViosProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let o = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench-vios: {e}");
            std::process::exit(2);
        }
    };
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let (vmm, vios) = (bin_dir.join("vmm"), bin_dir.join("vios"));
    for b in [&vmm, &vios] {
        if !b.exists() {
            eprintln!(
                "bench-vios: {} missing: cargo build --release -p vmm -p vios",
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
    let image_disk = image.display().to_string();
    let names = ["vios", "vmm", "qemu", "host"];
    let mut results: HashMap<&str, Vec<Run>> = HashMap::new();
    let mut errors: Vec<String> = Vec::new();
    for run in 0..o.runs {
        eprintln!("bench-vios: run {} of {}", run + 1, o.runs);
        for name in names {
            settle(&image);
            let r = match name {
                "vios" => guest_run(name, vmm_cmd(&vmm, &vios_disk, &o)),
                "vmm" => guest_run(name, vmm_cmd(&vmm, &image_disk, &o)),
                "qemu" => guest_run(name, qemu_cmd(&image, &o)),
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

    let med = |name: &str, phase: &str, f: fn(&Phase) -> f64| {
        median(
            results
                .get(name)
                .map(|runs| runs.iter().filter_map(|r| r.get(phase)).map(f).collect())
                .unwrap_or_default(),
        )
    };
    let iops: fn(&Phase) -> f64 = |p| p.ops as f64 / p.secs;
    let mibs: fn(&Phase) -> f64 = |p| p.bytes as f64 / MIB as f64 / p.secs;
    println!(
        "{} runs, {} random 4 KiB reads (QD 32), {} MiB sequential each way, {} MiB image; load {}",
        o.runs,
        o.reads,
        o.mib,
        o.image_mib,
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().map(str::to_string))
            .unwrap_or_default()
    );
    println!();
    println!("| metric | vios | vmm virtio-blk | QEMU virtio-blk | host pread/pwrite | vios/vmm | vios/QEMU | vios/host |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (phase, label, f) in [
        ("randread", "4 KiB random read (IOPS)", iops),
        ("seqread", "1 MiB sequential read (MiB/s)", mibs),
        ("seqwrite", "1 MiB sequential write (MiB/s)", mibs),
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
