//! Active Memory Sharing benchmark (docs/benchmarks.md, "Active Memory
//! Sharing"; issue 12's Benchmark section), in one run:
//!
//! 1. **page-in latency**: the tiny guest's `parvm.test=memtest` over
//!    96 MiB of logical RAM with 32 MiB resident (3x overcommitted), a real
//!    `vios` serving the paging image; p50/p99 from the pager's histogram
//!    (the `vmm: pager:` line), beside a bare userfaultfd round trip and
//!    the VIOS's one-page read through the pager's driver
//!    (`parvm_tests::amsbench`);
//! 2. **sequential sweep**: the same runs' write pass and verifying passes
//!    in GB/s (timed between the guest's serial lines), beside the VIOS's
//!    sequential 64-page reads and writes and the same guest in dedicated
//!    memory;
//! 3. **overhead**: `parvm.test=hang` (resident, spinning at CPL3): the
//!    `pager` thread's CPU time over 5 s, and the VMM's memory beyond guest
//!    RAM in shared and dedicated mode;
//! 4. **eviction policy**: page-ins per later memtest pass with 64 MiB
//!    logical for resident targets above and below the working set.
//!
//! Every measurement is repeated `--runs` times (medians printed). `vmm`
//! and `vios` are run from the directory of this executable.
//!
//!     cargo build --release --workspace && target/release/bench-ams [--runs N] [--faults N] [--reads N]

use parvm_tests::amsbench::{
    guest_ram_bytes, pager_round_trips, paging_limits, percentile, status_kib, thread_cpu,
    thread_named, uffd_round_trips, PagingLimits, ThreadCpu,
};
use parvm_tests::blkbench::{median, sibling};
use parvm_tests::guests::guest_path;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SWEEP_LOGICAL_MIB: u64 = 96;
const SWEEP_RESIDENT_MIB: u64 = 32;
const SWEEP_PASSES: u32 = 3;
const POLICY_LOGICAL_MIB: u64 = 64;
const POLICY_TARGETS_MIB: [u64; 4] = [64, 62, 56, 48];
const POLICY_PASSES: u32 = 5;
const IDLE_MIB: u64 = 64;
const IDLE_WINDOW: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_secs(300);

struct Options {
    runs: usize,
    faults: usize,
    reads: usize,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut o = Options {
            runs: 3,
            faults: 20_000,
            reads: 5_000,
        };
        while let Some(a) = args.next() {
            let slot = match a.as_str() {
                "--runs" => &mut o.runs,
                "--faults" => &mut o.faults,
                "--reads" => &mut o.reads,
                _ => return Err(format!("unknown argument {a:?}")),
            };
            *slot = args
                .next()
                .and_then(|v| v.parse().ok())
                .filter(|v| *v > 0)
                .ok_or_else(|| format!("{a} needs a positive number"))?;
        }
        Ok(o)
    }
}

/// A child process (a `vios`, a `vmm`) killed and reaped when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binaries and a scratch directory; each paging run gets a fresh
/// sparse image and its own `vios`.
struct Bench {
    vmm: PathBuf,
    vios: PathBuf,
    dir: PathBuf,
}

impl Bench {
    fn start_vios(&self, name: &str, bytes: u64) -> Result<(Running, PathBuf), String> {
        let image = self.dir.join(format!("{name}.img"));
        let socket = self.dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&image);
        let _ = std::fs::remove_file(&socket);
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(bytes))
            .map_err(|e| format!("{}: {e}", image.display()))?;
        let child = Command::new(&self.vios)
            .arg("--listen")
            .arg(&socket)
            .arg("--disk")
            .arg(format!("{},id=paging0", image.display()))
            .env("PARVM_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.vios.display()))?;
        let vios = Running(child);
        let start = Instant::now();
        // The socket file appears at bind, a moment before listen.
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err("vios never listened".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok((vios, socket))
    }

    /// The VMM with the tiny guest; shared mode when `paging` is given.
    fn vmm_cmd(&self, mib: u64, paging: Option<(&Path, u64)>, cmdline: &str) -> Command {
        let mut c = Command::new(&self.vmm);
        c.arg("--kernel")
            .arg(guest_path("tiny.elf"))
            .args(["--memory-mib", &mib.to_string(), "--vcpus", "1"])
            .args(["--cmdline", cmdline])
            .env("PARVM_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((socket, resident)) = paging {
            c.arg("--paging")
                .arg(format!("vhost-user:{}", socket.display()))
                .args(["--resident-mib", &resident.to_string()]);
        }
        c
    }
}

/// One memtest boot: the phases timed from the serial lines' arrival.
struct Memtest {
    swept_bytes: u64,
    write_secs: f64,
    pass_secs: Vec<f64>,
    pager: Vec<(String, u64)>,
}

impl Memtest {
    fn figure(&self, name: &str) -> u64 {
        self.pager
            .iter()
            .find(|(k, _)| k == name)
            .map_or(0, |(_, v)| *v)
    }
}

/// `key=0x<hex>` out of the memtest start line.
fn hex_field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix("=0x"))
        .and_then(|v| u64::from_str_radix(v, 16).ok())
}

fn memtest(
    bench: &Bench,
    mib: u64,
    resident_mib: Option<u64>,
    passes: u32,
) -> Result<Memtest, String> {
    let vios = match resident_mib {
        Some(_) => Some(bench.start_vios("memtest", mib << 20)?),
        None => None,
    };
    let paging = vios
        .as_ref()
        .zip(resident_mib)
        .map(|((_, socket), r)| (socket.as_path(), r));
    let cmdline = format!("parvm.test=memtest parvm.passes={passes}");
    let mut cmd = bench.vmm_cmd(mib, paging, &cmdline);
    let mut child = cmd.spawn().map_err(|e| format!("cannot start vmm: {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let mut err = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + TIMEOUT;
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => lines.push(l),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    let stderr = err_reader.join().unwrap_or_default();
    let transcript = || {
        let out: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
        format!("{}\n--- stderr ---\n{stderr}", out.join("\n"))
    };
    let at = |what: &str| lines.iter().find(|(_, l)| l.contains(what));
    let (Some((t0, start)), Some((t1, _))) = (at("memtest start="), at("memtest written")) else {
        return Err(format!("no memtest lines ({status}):\n{}", transcript()));
    };
    let swept_bytes = hex_field(start, "end").unwrap_or(0) - hex_field(start, "start").unwrap_or(0);
    let mut pass_secs = Vec::new();
    let mut prev = *t1;
    for k in 1..=passes {
        let Some((t, _)) = at(&format!("memtest pass {k} ok")) else {
            return Err(format!(
                "no `memtest pass {k} ok` ({status}):\n{}",
                transcript()
            ));
        };
        pass_secs.push(t.duration_since(prev).as_secs_f64());
        prev = *t;
    }
    let pager = stderr
        .lines()
        .find_map(|l| l.strip_prefix("vmm: pager: "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect()
        })
        .unwrap_or_default();
    if resident_mib.is_some() && !stderr.contains("vmm: pager: ") {
        return Err(format!("no pager line:\n{}", transcript()));
    }
    Ok(Memtest {
        swept_bytes,
        write_secs: t1.duration_since(*t0).as_secs_f64(),
        pass_secs,
        pager,
    })
}

/// One idle boot (`parvm.test=hang`), sampled after the guest spins.
struct Idle {
    /// The pager threads (summed) over the window: ticks, run ns, context switches.
    pager: Option<(u64, u64, u64)>,
    /// VmRSS minus the guest memfd's resident bytes, MiB.
    beyond_guest_mib: f64,
    /// RssAnon + RssFile (docs/benchmarks.md, "Boot"), MiB.
    anon_file_mib: f64,
}

fn idle(bench: &Bench, resident_mib: Option<u64>) -> Result<Idle, String> {
    let vios = match resident_mib {
        Some(_) => Some(bench.start_vios("idle", IDLE_MIB << 20)?),
        None => None,
    };
    let paging = vios
        .as_ref()
        .zip(resident_mib)
        .map(|((_, socket), r)| (socket.as_path(), r));
    let mut cmd = bench.vmm_cmd(IDLE_MIB, paging, "parvm.test=hang");
    cmd.stderr(Stdio::null());
    let child = cmd.spawn().map_err(|e| format!("cannot start vmm: {e}"))?;
    let mut vmm = Running(child);
    let pid = vmm.0.id();
    let out = vmm.0.stdout.take().ok_or("no stdout")?;
    let mut hanging = false;
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        if line.contains("parvm-guest: hanging") {
            hanging = true;
            break;
        }
    }
    if !hanging {
        return Err("the guest never printed `hanging`".into());
    }
    std::thread::sleep(Duration::from_secs(1));
    // Both pager threads: faults and the evictor.
    let tids: Vec<u32> = ["pager", "pager-evict"]
        .iter()
        .filter_map(|n| thread_named(pid, n))
        .collect();
    if resident_mib.is_some() && tids.len() != 2 {
        return Err("no `pager` and `pager-evict` threads in shared mode".into());
    }
    let cpu = || -> Option<ThreadCpu> {
        if tids.is_empty() {
            return None;
        }
        tids.iter().try_fold(ThreadCpu::default(), |sum, &t| {
            let c = thread_cpu(pid, t)?;
            Some(ThreadCpu {
                ticks: sum.ticks + c.ticks,
                run_ns: sum.run_ns + c.run_ns,
                switches: sum.switches + c.switches,
            })
        })
    };
    let before = cpu();
    std::thread::sleep(IDLE_WINDOW);
    let after = cpu();
    let guest = guest_ram_bytes(pid).ok_or("no guest memfd")?;
    let rss = status_kib(pid, "VmRSS:") * 1024;
    let anon_file = (status_kib(pid, "RssAnon:") + status_kib(pid, "RssFile:")) * 1024;
    drop(vmm);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    Ok(Idle {
        pager: before.zip(after).map(|(b, a)| {
            (
                a.ticks - b.ticks,
                a.run_ns - b.run_ns,
                a.switches - b.switches,
            )
        }),
        beyond_guest_mib: mib(rss.saturating_sub(guest)),
        anon_file_mib: mib(anon_file),
    })
}

fn runs<T>(n: usize, what: &str, mut f: impl FnMut() -> Result<T, String>) -> Vec<T> {
    (0..n)
        .map(|i| {
            f().unwrap_or_else(|e| {
                eprintln!("bench-ams: {what}, run {}: {e}", i + 1);
                std::process::exit(1);
            })
        })
        .collect()
}

fn med<T>(v: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(v.iter().map(f).collect())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn gb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn main() {
    let o = Options::parse(std::env::args().skip(1)).unwrap_or_else(|e| {
        eprintln!("bench-ams: {e}");
        std::process::exit(2);
    });
    let bench = Bench {
        vmm: sibling("vmm"),
        vios: sibling("vios"),
        dir: std::env::temp_dir().join(format!("parvm-bench-ams-{}", std::process::id())),
    };
    for b in [&bench.vmm, &bench.vios] {
        if !b.exists() {
            eprintln!(
                "bench-ams: {} missing: cargo build --release --workspace",
                b.display()
            );
            std::process::exit(2);
        }
    }
    if let Err(e) = std::fs::create_dir_all(&bench.dir) {
        eprintln!("bench-ams: {}: {e}", bench.dir.display());
        std::process::exit(1);
    }
    let load_before = loadavg();
    let started = Instant::now();
    println!(
        "bench-ams: {} runs of each measurement (medians); load average {load_before}",
        o.runs
    );

    // Limits: bare userfaultfd, the VIOS through the pager's driver.
    let uffd = runs(o.runs, "bare userfaultfd", || {
        let mut lat = uffd_round_trips(o.faults)?;
        Ok((percentile(&mut lat, 0.5), percentile(&mut lat, 0.99)))
    });
    let vios = runs(o.runs, "VIOS through PagingDisk", || {
        let (_vios, socket) = bench.start_vios("limits", SWEEP_LOGICAL_MIB << 20)?;
        paging_limits(&socket, SWEEP_LOGICAL_MIB << 20, o.reads)
    });
    let alone = runs(o.runs, "pager page-in alone", || {
        let (_vios, socket) = bench.start_vios("alone", SWEEP_LOGICAL_MIB << 20)?;
        let mut lat = pager_round_trips(&socket, SWEEP_LOGICAL_MIB, o.reads)?;
        if lat.len() < o.reads / 2 {
            return Err(format!("only {} page-ins timed", lat.len()));
        }
        Ok((percentile(&mut lat, 0.5), percentile(&mut lat, 0.99)))
    });
    let alone50 = med(&alone, |u| u.0 as f64) / 1e3;
    let alone99 = med(&alone, |u| u.1 as f64) / 1e3;
    let uffd_p50 = med(&uffd, |u| u.0 as f64) / 1e3;
    let uffd_p99 = med(&uffd, |u| u.1 as f64) / 1e3;
    let read_p50 = med(&vios, |v: &PagingLimits| v.read_p50_ns as f64) / 1e3;
    let read_p99 = med(&vios, |v: &PagingLimits| v.read_p99_ns as f64) / 1e3;
    let vios_w = med(&vios, |v: &PagingLimits| v.seq_write_mib_s) * (1 << 20) as f64 / 1e9;
    let vios_r = med(&vios, |v: &PagingLimits| v.seq_read_mib_s) * (1 << 20) as f64 / 1e9;

    // 1 + 2: the 3x-overcommitted sweep, and the same guest dedicated.
    let sweep = runs(o.runs, "3x sweep", || {
        memtest(
            &bench,
            SWEEP_LOGICAL_MIB,
            Some(SWEEP_RESIDENT_MIB),
            SWEEP_PASSES,
        )
    });
    let dedicated = runs(o.runs, "dedicated sweep", || {
        memtest(&bench, SWEEP_LOGICAL_MIB, None, SWEEP_PASSES)
    });
    let p50 = med(&sweep, |m| m.figure("page_in_p50_us") as f64);
    let p99 = med(&sweep, |m| m.figure("page_in_p99_us") as f64);
    let single50 = med(&sweep, |m| m.figure("single_p50_us") as f64);
    let single99 = med(&sweep, |m| m.figure("single_p99_us") as f64);
    let room_waits = med(&sweep, |m| m.figure("room_waits") as f64);
    let write_gb = |m: &Memtest| gb_s(m.swept_bytes, m.write_secs);
    let verify_gb = |m: &Memtest| {
        median(
            m.pass_secs
                .iter()
                .map(|s| gb_s(m.swept_bytes, *s))
                .collect(),
        )
    };
    // Page-ins happen in the verifying passes only (the write pass finds
    // pages never written: zero fills).
    let ins_per_pass = |m: &Memtest| m.figure("page_ins") as f64 / SWEEP_PASSES as f64;
    // What the guest waits per page it gets back, end to end: a verifying
    // pass's time over the pages it brought in.
    let guest_us_per_in =
        |m: &Memtest| median(m.pass_secs.clone()) * 1e6 / ins_per_pass(m).max(1.0);
    let pages_swept = |m: &Memtest| (m.swept_bytes / 4096) as f64;

    println!();
    println!(
        "## 1. page-in latency: memtest over {SWEEP_LOGICAL_MIB} MiB logical, {SWEEP_RESIDENT_MIB} MiB resident, {SWEEP_PASSES} verifying passes"
    );
    println!();
    println!("| measure | p50 (us) | p99 (us) |");
    println!("|---|---:|---:|");
    println!("| pager page-in (fault read to page placed, its histogram; up to 16 pages read ahead) | {p50:.0} | {p99:.0} |");
    println!("| pager page-in of a single page (no read-ahead) | {single50:.0} | {single99:.0} |");
    println!("| pager page-in alone: a host thread's load of an evicted page, 97 pages apart, room for all (no write-out beside it; {} faults per run) | {alone50:.1} | {alone99:.1} |", o.reads);
    println!(
        "| bare userfaultfd round trip ({} faults per run) | {uffd_p50:.1} | {uffd_p99:.1} |",
        o.faults
    );
    println!(
        "| VIOS 4 KiB read through PagingDisk ({} reads per run) | {read_p50:.1} | {read_p99:.1} |",
        o.reads
    );
    println!(
        "| bare round trip + one read | {:.1} | {:.1} |",
        uffd_p50 + read_p50,
        uffd_p99 + read_p99
    );
    let limit99 = 3.0 * (uffd_p99 + read_p99);
    let limit50 = 3.0 * (uffd_p50 + read_p50);
    println!();
    println!(
        "goal for the pager alone: p99 {alone99:.1} us within 3 x (round trip + read): {} against the p99 sum ({limit99:.1} us), {} against the p50 sum ({limit50:.1} us)",
        if alone99 <= limit99 { "met" } else { "NOT met" },
        if alone99 <= limit50 { "met" } else { "NOT met" },
    );
    println!(
        "goal: page-in p99 {p99:.0} us within 3 x (round trip + read): {} against the p99 sum ({limit99:.1} us), {} against the p50 sum ({limit50:.1} us)",
        if p99 <= limit99 { "met" } else { "NOT met" },
        if p99 <= limit50 { "met" } else { "NOT met" },
    );
    println!("faults that waited for the evictor (room): {room_waits:.0} per run (median)");
    println!(
        "every run: page-in p50/p99 {}; single-page p50/p99 {}; uffd p50/p99 ns {}; read p50/p99 ns {}",
        sweep
            .iter()
            .map(|m| format!(
                "{}/{}",
                m.figure("page_in_p50_us"),
                m.figure("page_in_p99_us")
            ))
            .collect::<Vec<_>>()
            .join(", "),
        sweep
            .iter()
            .map(|m| format!(
                "{}/{}",
                m.figure("single_p50_us"),
                m.figure("single_p99_us")
            ))
            .collect::<Vec<_>>()
            .join(", "),
        uffd.iter()
            .map(|u| format!("{}/{}", u.0, u.1))
            .collect::<Vec<_>>()
            .join(", "),
        vios.iter()
            .map(|v| format!("{}/{}", v.read_p50_ns, v.read_p99_ns))
            .collect::<Vec<_>>()
            .join(", "),
    );

    println!();
    println!(
        "## 2. sequential sweep ({} MiB swept per pass)",
        sweep[0].swept_bytes >> 20
    );
    println!();
    println!("| measure | GB/s |");
    println!("|---|---:|");
    println!(
        "| write pass, shared 3x (zero fills + page-outs) | {:.3} |",
        med(&sweep, write_gb)
    );
    println!(
        "| verifying pass, shared 3x (page-ins + page-outs) | {:.3} |",
        med(&sweep, verify_gb)
    );
    println!(
        "| write pass, dedicated | {:.3} |",
        med(&dedicated, write_gb)
    );
    println!(
        "| verifying pass, dedicated | {:.3} |",
        med(&dedicated, verify_gb)
    );
    println!("| VIOS sequential write, 64-page batches | {vios_w:.3} |");
    println!("| VIOS sequential read, 64-page batches | {vios_r:.3} |");
    println!(
        "| VIOS read + write of every page (1 / (1/R + 1/W)) | {:.3} |",
        1.0 / (1.0 / vios_r + 1.0 / vios_w)
    );
    println!();
    println!(
        "pager, per run (medians): page_ins {:.0} per verifying pass, page_outs {:.0} and zero_fills {:.0} in all; mean wait per page-in {:.1} us; guest time per page brought in {:.1} us; dedicated write pass per page (first touch) {:.1} us",
        med(&sweep, ins_per_pass),
        med(&sweep, |m| m.figure("page_outs") as f64),
        med(&sweep, |m| m.figure("zero_fills") as f64),
        med(&sweep, |m| m.figure("page_in_us") as f64 / m.figure("page_ins").max(1) as f64),
        med(&sweep, guest_us_per_in),
        med(&dedicated, |m| m.write_secs * 1e6 / pages_swept(m)),
    );

    // 3: overhead at idle.
    let shared_idle = runs(o.runs, "idle shared", || idle(&bench, Some(IDLE_MIB)));
    let dedicated_idle = runs(o.runs, "idle dedicated", || idle(&bench, None));
    println!();
    println!(
        "## 3. overhead: parvm.test=hang, {IDLE_MIB} MiB (shared: resident target {IDLE_MIB} MiB)"
    );
    println!();
    println!("| measure | shared | dedicated |");
    println!("|---|---:|---:|");
    let pager = |f: fn(&(u64, u64, u64)) -> u64| {
        med(&shared_idle, |i| {
            i.pager.as_ref().map_or(f64::NAN, |p| f(p) as f64)
        })
    };
    println!(
        "| pager threads (faults + evictor) CPU over {} s: utime+stime ticks / run time (us) / context switches | {:.0} / {:.1} / {:.0} | - |",
        IDLE_WINDOW.as_secs(),
        pager(|p| p.0),
        pager(|p| p.1) / 1e3,
        pager(|p| p.2)
    );
    println!(
        "| VmRSS beyond the guest memfd (MiB) | {:.2} | {:.2} |",
        med(&shared_idle, |i| i.beyond_guest_mib),
        med(&dedicated_idle, |i| i.beyond_guest_mib)
    );
    println!(
        "| RssAnon + RssFile (MiB) | {:.2} | {:.2} |",
        med(&shared_idle, |i| i.anon_file_mib),
        med(&dedicated_idle, |i| i.anon_file_mib)
    );

    // 4: eviction policy: page-ins per later pass.
    println!();
    println!("## 4. eviction policy: memtest over {POLICY_LOGICAL_MIB} MiB logical, page-ins per verifying pass after the first");
    println!();
    println!("| resident target (MiB) | resident at exit (MiB) | page-ins, write + pass 1 | page-ins per later pass | pages swept per pass |");
    println!("|---:|---:|---:|---:|---:|");
    for target in POLICY_TARGETS_MIB {
        let one = runs(o.runs, "policy, 1 pass", || {
            memtest(&bench, POLICY_LOGICAL_MIB, Some(target), 1)
        });
        let many = runs(o.runs, "policy, many passes", || {
            memtest(&bench, POLICY_LOGICAL_MIB, Some(target), POLICY_PASSES)
        });
        let first = med(&one, |m| m.figure("page_ins") as f64);
        let later =
            (med(&many, |m| m.figure("page_ins") as f64) - first) / (POLICY_PASSES - 1) as f64;
        println!(
            "| {target} | {:.1} | {first:.0} | {later:.0} | {} |",
            med(&many, |m| m.figure("resident") as f64) * 4096.0 / (1 << 20) as f64,
            many[0].swept_bytes / 4096
        );
    }
    println!();
    println!(
        "bench-ams: done in {:.0} s; load average before {load_before}, after {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    let _ = std::fs::remove_dir_all(&bench.dir);
}
