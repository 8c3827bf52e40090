//! `bench-grants`: grant cookies measured through the real manager, `vmm`
//! and tiny guests, each figure beside its limit (docs/benchmarks.md,
//! "Grants"):
//!
//! 1. grant -> accept -> mapped latency (p50, p99) and operations per
//!    second (each pair followed by a revoke, timed too);
//! 2. a revoke cascading to 100 grantees (paused partitions: the VMMs'
//!    control threads answer, no vCPU competes for the 2 cores);
//! 3. a doorbell round trip between two partitions (ioeventfd -> irqfd,
//!    guest TSC) beside an eventfd ping-pong between two host processes;
//! 4. bulk copy through a shared segment by a CPL3 guest loop beside the
//!    same loop within guest RAM and host memcpy.
//!
//! ```text
//! cargo build --release -p vmm -p partition-manager -p parvm-tests
//! target/release/bench-grants
//! ```
//!
//! `PARVM_LOG=info PARVM_BENCH_KEEP=1` keeps each manager's directory (its
//! log has the revoke's phases). Exits non-zero if a target is missed (p99 < 200 us, 100-grantee revoke
//! < 10 ms, shared copy >= 80 % of memcpy).

use anyhow::{anyhow, bail};
use clap::Parser;
#[path = "common/scratch.rs"]
mod bench;
use bench::ScratchManager;
use partition_manager::client::Client;
use partition_manager::protocol::{GrantCookie, Request, Response, RestartPolicy, Rights};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "bench-grants")]
struct Args {
    /// grant -> accept -> revoke rounds.
    #[arg(long, default_value_t = 500)]
    rounds: usize,
    /// Grantees of the cascading revoke.
    #[arg(long, default_value_t = 100)]
    grantees: usize,
    /// Tiny guest kernel [default: target/guests/tiny.elf].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Internal: the child end of the host eventfd ping-pong.
    #[arg(long, hide = true, num_args = 3)]
    eventfd_child: Option<Vec<i32>>,
}

/// A scratch manager and what the grant benchmarks ask of it.
struct Manager(ScratchManager);

impl Manager {
    fn start(bin: &Path) -> anyhow::Result<Manager> {
        static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = RUN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("parvm-bench-grants-{}-{run}", std::process::id()));
        let log = std::env::var("PARVM_LOG").unwrap_or_else(|_| "warn".into());
        let m = ScratchManager::start(bin, dir, &["--ready-timeout", "60"], &log)?;
        Ok(Manager(m.keep_if_asked("bench-grants")))
    }

    fn call(&self, r: &Request) -> anyhow::Result<Response> {
        self.0.call(r)
    }

    fn define(&self, kernel: &Path, name: &str, cmdline: &str, seg_kib: u64) -> anyhow::Result<()> {
        let segments = if seg_kib > 0 {
            serde_json::from_value(serde_json::json!([
                {"id": "buf", "size_kib": seg_kib, "gpa": 0xe000_0000u64}
            ]))?
        } else {
            Vec::new()
        };
        self.call(&Request::Define {
            definition: serde_json::from_value(serde_json::json!({
                "name": name, "vcpus": 1, "memory_mib": 16,
                "kernel": kernel, "cmdline": format!("console=ttyS0 {cmdline}"),
            }))?,
            restart: RestartPolicy::Never,
            segments,
            dry_run: false,
        })?;
        Ok(())
    }

    fn start_partition(&self, name: &str) -> anyhow::Result<()> {
        self.call(&Request::Start { name: name.into() })?;
        Ok(())
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.0.dir.join(format!("state/logs/{name}.log")))
            .unwrap_or_default()
    }

    /// Waits for a console line starting with `prefix`; returns its rest.
    fn wait_line(&self, name: &str, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log(name);
            let found = log.split_inclusive('\n').find_map(|l| {
                let rest = l.strip_prefix(prefix)?;
                rest.ends_with('\n').then(|| rest.trim().to_string())
            });
            if let Some(r) = found {
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!("{name} never printed {prefix:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn grant(&self, segment: &str, to: &str) -> anyhow::Result<GrantCookie> {
        match self.call(&Request::Grant {
            segment: segment.into(),
            grantee: to.into(),
            rights: Rights::Rw,
        })? {
            Response::Grant { grant } => Ok(grant.cookie),
            other => bail!("unexpected answer {other:?}"),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The TSC frequency (guest and host share the TSC here), calibrated
/// against the monotonic clock.
fn tsc_hz() -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no preconditions on x86-64.
        let t0 = unsafe { core::arch::x86_64::_rdtsc() };
        let i0 = Instant::now();
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: as above.
        let t1 = unsafe { core::arch::x86_64::_rdtsc() };
        (t1 - t0) as f64 / i0.elapsed().as_secs_f64()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        1e9
    }
}

fn eventfd() -> anyhow::Result<OwnedFd> {
    // SAFETY: eventfd(2) with valid flags; checked.
    let fd = unsafe { libc::eventfd(0, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn efd_write(fd: i32) -> std::io::Result<()> {
    let one = 1u64;
    // SAFETY: writes 8 bytes from a local.
    if unsafe { libc::write(fd, (&one as *const u64).cast(), 8) } != 8 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn efd_read(fd: i32) -> std::io::Result<()> {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a local.
    if unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) } != 8 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The host limit: eventfd ping-pong between two processes (round trip).
fn host_eventfd_round_trip(rounds: u32) -> anyhow::Result<Duration> {
    let ping = eventfd()?;
    let pong = eventfd()?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--eventfd-child")
        .arg(ping.as_raw_fd().to_string())
        .arg(pong.as_raw_fd().to_string())
        .arg(rounds.to_string())
        .spawn()?;
    efd_write(ping.as_raw_fd())?;
    efd_read(pong.as_raw_fd())?; // warm-up
    let t = Instant::now();
    for _ in 1..rounds {
        efd_write(ping.as_raw_fd())?;
        efd_read(pong.as_raw_fd())?;
    }
    let d = t.elapsed() / (rounds - 1);
    child.wait()?;
    Ok(d)
}

fn eventfd_child(fds: &[i32]) -> anyhow::Result<()> {
    let (ping, pong, rounds) = (fds[0], fds[1], fds[2]);
    for _ in 0..rounds {
        efd_read(ping)?;
        efd_write(pong)?;
    }
    Ok(())
}

/// Host `rep movsq` bandwidth (bytes/s) over the same 256 x 1 MiB: the
/// guest's instruction, natively.
fn host_rep_movsq() -> f64 {
    let src = vec![7u64; 1 << 17];
    let mut dst = vec![0u64; 1 << 17];
    let copy = |dst: &mut [u64], src: &[u64]| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: copies exactly `src.len()` qwords between two distinct
        // buffers of that length; rep movsq with the direction flag clear
        // (the ABI guarantees it).
        unsafe {
            std::arch::asm!(
                "rep movsq",
                inout("rcx") src.len() => _,
                inout("rsi") src.as_ptr() => _,
                inout("rdi") dst.as_mut_ptr() => _,
                options(nostack, preserves_flags)
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        dst.copy_from_slice(src);
    };
    copy(&mut dst, &src);
    let t = Instant::now();
    for _ in 0..256 {
        copy(&mut dst, std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    (256u64 << 20) as f64 / t.elapsed().as_secs_f64()
}

/// Host memcpy bandwidth (bytes/s) over the same 256 x 1 MiB.
fn host_memcpy() -> f64 {
    let src = vec![7u8; 1 << 20];
    let mut dst = vec![0u8; 1 << 20];
    dst.copy_from_slice(&src);
    let t = Instant::now();
    for _ in 0..256 {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    (256u64 << 20) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let args = Args::parse();
    if let Some(fds) = &args.eventfd_child {
        if let Err(e) = eventfd_child(fds) {
            eprintln!("bench-grants child: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    match run(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("bench-grants: error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run(args: &Args) -> anyhow::Result<bool> {
    let bin = bench::bin_dir()?;
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => bin.join("../guests/tiny.elf"),
    };
    let kernel = std::fs::canonicalize(&kernel).map_err(|e| {
        anyhow!(
            "{}: {e}: build the test guests (cargo build -p parvm-tests) or pass --kernel",
            kernel.display()
        )
    })?;
    let hz = tsc_hz();
    let mut ok = true;

    // 1. grant -> accept -> mapped, then revoke.
    let m = Manager::start(&bin)?;
    m.define(&kernel, "a", "parvm.test=hang", 64)?;
    m.define(&kernel, "b", "parvm.test=hang", 0)?;
    m.start_partition("a")?;
    m.start_partition("b")?;
    m.call(&Request::Pause { name: "a".into() })?;
    m.call(&Request::Pause { name: "b".into() })?;
    let client = Client::connect(&m.0.socket)?;
    let mut pairs = Vec::with_capacity(args.rounds);
    let mut revokes = Vec::with_capacity(args.rounds);
    let t_all = Instant::now();
    for _ in 0..args.rounds {
        let t = Instant::now();
        let cookie = match client.call(&Request::Grant {
            segment: "a/buf".into(),
            grantee: "b".into(),
            rights: Rights::Rw,
        })? {
            (Response::Grant { grant }, _) => grant.cookie,
            (other, _) => bail!("unexpected answer {other:?}"),
        };
        client.call(&Request::Accept {
            cookie,
            partition: "b".into(),
            gpa: None,
        })?;
        pairs.push(t.elapsed());
        let t = Instant::now();
        client.call(&Request::Revoke {
            cookie,
            partition: None,
        })?;
        revokes.push(t.elapsed());
    }
    let total = t_all.elapsed();
    pairs.sort();
    revokes.sort();
    let p99 = percentile(&pairs, 0.99);
    println!(
        "## grant -> accept -> mapped ({} rounds, each then revoked)",
        args.rounds
    );
    println!(
        "grant+accept: p50 {:.0} us, p99 {:.0} us (target p99 < 200 us){}",
        us(percentile(&pairs, 0.5)),
        us(p99),
        if p99 < Duration::from_micros(200) {
            ""
        } else {
            "  MISSED"
        }
    );
    println!(
        "revoke (1 grantee): p50 {:.0} us, p99 {:.0} us",
        us(percentile(&revokes, 0.5)),
        us(percentile(&revokes, 0.99))
    );
    println!(
        "operations per second: {:.0} grant+accept+revoke cycles/s ({:.0} operations/s)",
        args.rounds as f64 / total.as_secs_f64(),
        3.0 * args.rounds as f64 / total.as_secs_f64()
    );
    ok &= p99 < Duration::from_micros(200);

    // 2. Revoke cascading to N grantees: a -> g0, g0 -> g1..gN-1.
    let n = args.grantees.max(1);
    for i in 0..n {
        let name = format!("g{i}");
        m.define(&kernel, &name, "parvm.test=hang", 0)?;
        m.start_partition(&name)?;
        m.call(&Request::Pause { name })?;
    }
    let mut cascades = Vec::new();
    let mut revoked = 0;
    for _ in 0..5 {
        let root = m.grant("a/buf", "g0")?;
        client.call(&Request::Accept {
            cookie: root,
            partition: "g0".into(),
            gpa: None,
        })?;
        for i in 1..n {
            let c = match client.call(&Request::Regrant {
                cookie: root,
                partition: "g0".into(),
                grantee: format!("g{i}"),
                rights: Rights::Ro,
            })? {
                (Response::Grant { grant }, _) => grant.cookie,
                (other, _) => bail!("unexpected answer {other:?}"),
            };
            client.call(&Request::Accept {
                cookie: c,
                partition: format!("g{i}"),
                gpa: None,
            })?;
        }
        let t = Instant::now();
        revoked = match client.call(&Request::Revoke {
            cookie: root,
            partition: Some("a".into()),
        })? {
            (Response::Revoked { revoked }, _) => revoked.len(),
            (other, _) => bail!("unexpected answer {other:?}"),
        };
        cascades.push(t.elapsed());
    }
    cascades.sort();
    let cascade = cascades[cascades.len() / 2];
    let worst = cascades[cascades.len() - 1];
    println!(
        "## revoke cascading to {revoked} grantees (each VMM unmaps and acknowledges; 5 runs)"
    );
    println!(
        "revoke: median {:.2} ms, worst {:.2} ms (target < 10 ms){}",
        cascade.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3,
        if cascade < Duration::from_millis(10) {
            ""
        } else {
            "  MISSED"
        }
    );
    if n >= 100 {
        ok &= cascade < Duration::from_millis(10);
    }
    drop(client);
    drop(m);

    // 3. Doorbell round trips: IO-APIC pin and MSI, beside host eventfds.
    let host_rt = host_eventfd_round_trip(10_000)?;
    println!(
        "## doorbell round trip (guest write -> ioeventfd -> irqfd -> peer interrupt, and back)"
    );
    for (how, target) in [
        ("IO-APIC pin 22", serde_json::json!({"gsi": 22})),
        ("MSI vector 0x41", serde_json::json!({"vector": 0x41})),
    ] {
        let m = Manager::start(&bin)?;
        m.define(&kernel, "ping", "parvm.grant=pingbench", 0)?;
        m.define(&kernel, "pong", "parvm.grant=pong", 0)?;
        let mut p2q = serde_json::json!({"id": "p2q", "from": "ping", "ring": 0, "to": "pong"});
        let mut q2p = serde_json::json!({"id": "q2p", "from": "pong", "ring": 0, "to": "ping"});
        for d in [&mut p2q, &mut q2p] {
            if let (Some(d), Some(t)) = (d.as_object_mut(), target.as_object()) {
                d.extend(t.clone());
            }
        }
        let config = serde_json::from_value(serde_json::json!({ "doorbells": [p2q, q2p] }))?;
        m.call(&Request::Share { config })?;
        m.start_partition("pong")?;
        m.start_partition("ping")?;
        let line = m.wait_line(
            "ping",
            "parvm-guest: doorbell ping rounds=",
            Duration::from_secs(120),
        )?;
        let (rounds, cycles) = line
            .split_once(" cycles=")
            .ok_or_else(|| anyhow!("bad line {line}"))?;
        let (rounds, cycles): (f64, f64) = (rounds.parse()?, cycles.parse()?);
        let guest_rt = cycles / hz / rounds;
        println!(
            "doorbell via {how}: {:.1} us per round trip ({rounds} rounds); host eventfd ping-pong between two processes: {:.1} us (the limit); ratio {:.1}",
            guest_rt * 1e6,
            us(host_rt),
            guest_rt / host_rt.as_secs_f64()
        );
    }

    // 4. Bulk copy through a shared segment.
    let m = Manager::start(&bin)?;
    m.define(&kernel, "bulk", "parvm.grant=bench", 4096)?;
    m.start_partition("bulk")?;
    let shared: f64 = m
        .wait_line(
            "bulk",
            "parvm-guest: grant bench shared 256MiB cycles=",
            Duration::from_secs(60),
        )?
        .parse()?;
    let ram: f64 = m
        .wait_line(
            "bulk",
            "parvm-guest: grant bench ram 256MiB cycles=",
            Duration::from_secs(60),
        )?
        .parse()?;
    drop(m);
    let bytes = (256u64 << 20) as f64;
    let shared_bw = bytes / (shared / hz);
    let ram_bw = bytes / (ram / hz);
    let host_bw = host_memcpy();
    let host_movsq = host_rep_movsq();
    let ratio = shared_bw / host_bw;
    println!(
        "## bulk copy, 256 x 1 MiB rep movsq at CPL3 (TSC {:.2} GHz)",
        hz / 1e9
    );
    println!(
        "guest, shared segment: {:.2} GB/s; guest, within its RAM: {:.2} GB/s; host memcpy: {:.2} GB/s; shared/memcpy {:.0} % (target >= 80 %){}",
        shared_bw / 1e9,
        ram_bw / 1e9,
        host_bw / 1e9,
        ratio * 100.0,
        if ratio >= 0.8 { "" } else { "  MISSED" }
    );
    println!(
        "host rep movsq (the guest's instruction, natively): {:.2} GB/s; shared/host rep movsq {:.0} %",
        host_movsq / 1e9,
        shared_bw / host_movsq * 100.0
    );
    ok &= ratio >= 0.8;
    Ok(ok)
}
