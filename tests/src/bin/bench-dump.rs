//! Dump benchmark (docs/benchmarks.md, "Dump"): in one run, on a fresh
//! sparse image served by the `vios` binary each time,
//!
//! * `vios seqwrite`: the VIOS's sequential write bandwidth as the VMM's
//!   driver sees it: `PagingDisk::write_at` of 256 KiB (the driver's
//!   largest request, the one the dump uses) over `--write-mib` MiB;
//! * `dump 1 GiB filled`: `vmm --memory-mib SMALL` running the tiny
//!   guest's `parvm.test=dumpfill` (RAM from 16 MiB up filled, then a
//!   triple fault), dumped to the VIOS: the dump's own start and end
//!   (the record's `started_ms`/`finished_ms`);
//! * `dump 4 GiB mostly zero`: `vmm --memory-mib LARGE` with
//!   `parvm.test=dumpfault` (a few MiB touched);
//! * reboot: from the failure (the dump's start, right after the vCPUs
//!   stopped) to the `parvm-guest: ready` line of a new `vmm` started as
//!   soon as the old one exited (what `then: reboot` does, without the
//!   manager's 100 ms restart delay).
//!
//! Prints medians as a Markdown table.
//!
//!     cargo build --release --workspace && target/release/bench-dump [--runs N] [--small-mib N] [--large-mib N] [--write-mib N]

use parvm_protocol::dump::DumpRecord;
use parvm_tests::blkbench::{loadavg, median, sibling};
use parvm_tests::dumps;
use parvm_tests::guests::guest_path;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use virtio_devices::paging::{PagingDisk, MAX_TRANSFER};

struct Vios(Child);

impl Drop for Vios {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Options {
    runs: usize,
    small_mib: u64,
    large_mib: u64,
    write_mib: u64,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        runs: 3,
        small_mib: 1024,
        large_mib: 4096,
        write_mib: 1024,
    };
    let mut args = args;
    while let Some(a) = args.next() {
        let mut num = || -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{a} needs a number"))
        };
        match a.as_str() {
            "--runs" => o.runs = num()? as usize,
            "--small-mib" => o.small_mib = num()?,
            "--large-mib" => o.large_mib = num()?,
            "--write-mib" => o.write_mib = num()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh sparse image of `mib` MiB and a `vios` serving it.
fn fresh(dir: &Path, mib: u64) -> Result<(PathBuf, PathBuf, Vios), String> {
    let image = dir.join("dump.img");
    let _ = std::fs::remove_file(&image);
    let f = std::fs::File::create(&image).map_err(|e| e.to_string())?;
    f.set_len(mib << 20).map_err(|e| e.to_string())?;
    let socket = dir.join("vios.sock");
    let _ = std::fs::remove_file(&socket);
    let child = Command::new(sibling("vios"))
        .arg("--listen")
        .arg(&socket)
        .arg("--disk")
        .arg(&image)
        .env("PARVM_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("vios: {e}"))?;
    let vios = Vios(child);
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if start.elapsed() > Duration::from_secs(5) {
            return Err("vios did not listen".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok((image, socket, vios))
}

/// MiB/s of sequential 256 KiB writes through the paging driver.
fn seqwrite(socket: &Path, mib: u64) -> Result<f64, String> {
    let mut disk = PagingDisk::connect_path("bench", socket).map_err(|e| e.to_string())?;
    let buf: Vec<u8> = (0..MAX_TRANSFER).map(|i| (i % 251) as u8 | 1).collect();
    let chunks = (mib << 20) / MAX_TRANSFER as u64;
    let start = Instant::now();
    for i in 0..chunks {
        disk.write_at((1 << 20) + i * MAX_TRANSFER as u64, &buf)
            .map_err(|e| e.to_string())?;
    }
    disk.flush().map_err(|e| e.to_string())?;
    Ok((mib as f64) / start.elapsed().as_secs_f64())
}

/// A crash dump of a `memory_mib` partition running `test`, and the
/// reboot time (failure to a new VMM's ready line), in ms.
fn dump_run(
    socket: &Path,
    image: &Path,
    memory_mib: u64,
    test: &str,
) -> Result<(DumpRecord, u64), String> {
    let vmm = sibling("vmm");
    let out = Command::new(&vmm)
        .arg("--kernel")
        .arg(guest_path("tiny.elf"))
        .args(["--memory-mib", &memory_mib.to_string()])
        .args(["--cmdline", &format!("parvm.test={test}")])
        .arg("--dump-disk")
        .arg(format!("vhost-user:{}", socket.display()))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("vmm: {e}"))?;
    let exited_ms = now_ms();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(2) || !stderr.contains("complete") {
        return Err(format!("vmm: {:?}: {stderr}", out.status));
    }
    // The reboot: a new VMM, timed to its ready line.
    let started = Instant::now();
    let mut child = Command::new(&vmm)
        .arg("--kernel")
        .arg(guest_path("tiny.elf"))
        .args(["--memory-mib", &memory_mib.to_string()])
        .args(["--cmdline", "parvm.test=hang"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("vmm: {e}"))?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let ready = lines.any(|l| l.is_ok_and(|l| l.contains("parvm-guest: ready")));
    let boot_ms = started.elapsed().as_millis() as u64;
    let _ = child.kill();
    let _ = child.wait();
    if !ready {
        return Err("the rebooted vmm never printed ready".into());
    }
    let table = dumps::table(image)?;
    let rec = table.dumps.last().ok_or("no dump in the table")?.clone();
    let reboot = exited_ms.saturating_sub(rec.started_ms) + boot_ms;
    Ok((rec, reboot))
}

fn main() {
    let o = match parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench-dump: {e}");
            std::process::exit(2);
        }
    };
    for b in ["vmm", "vios"] {
        if !sibling(b).exists() {
            eprintln!("bench-dump: {b} missing: cargo build --release --workspace");
            std::process::exit(2);
        }
    }
    let dir = std::env::temp_dir().join(format!("parvm-bench-dump-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let disk_mib = o.large_mib.max(o.small_mib).max(o.write_mib) + 64;
    let (mut write, mut small, mut large) = (Vec::new(), Vec::new(), Vec::new());
    let mut errors = Vec::new();
    for run in 0..o.runs {
        eprintln!("bench-dump: run {} of {}", run + 1, o.runs);
        let r = fresh(&dir, disk_mib).and_then(|(_, socket, _vios)| seqwrite(&socket, o.write_mib));
        match r {
            Ok(v) => write.push(v),
            Err(e) => errors.push(e),
        }
        for (mib, test, into) in [
            (o.small_mib, "dumpfill", &mut small),
            (o.large_mib, "dumpfault", &mut large),
        ] {
            let r = fresh(&dir, disk_mib)
                .and_then(|(image, socket, _vios)| dump_run(&socket, &image, mib, test));
            match r {
                Ok(v) => into.push(v),
                Err(e) => errors.push(e),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let ms = |r: &DumpRecord| {
        r.finished_ms
            .unwrap_or(r.started_ms)
            .saturating_sub(r.started_ms)
            .max(1) as f64
    };
    let written = |v: &[(DumpRecord, u64)]| {
        median(
            v.iter()
                .map(|(r, _)| r.size as f64 / (1 << 20) as f64 / (ms(r) / 1000.0))
                .collect(),
        )
    };
    let ram = |v: &[(DumpRecord, u64)]| {
        median(
            v.iter()
                .map(|(r, _)| r.ram_bytes as f64 / (1 << 20) as f64 / (ms(r) / 1000.0))
                .collect(),
        )
    };
    let dur = |v: &[(DumpRecord, u64)]| median(v.iter().map(|(r, _)| ms(r)).collect());
    let core = |v: &[(DumpRecord, u64)]| {
        median(
            v.iter()
                .map(|(r, _)| r.size as f64 / (1 << 20) as f64)
                .collect(),
        )
    };
    let reboot = |v: &[(DumpRecord, u64)]| median(v.iter().map(|(_, b)| *b as f64).collect());
    let seq = median(write.clone());
    println!(
        "{} runs, {} MiB sequential 256 KiB writes, partitions of {} MiB (filled from 16 MiB) and {} MiB (mostly zero); load {}",
        o.runs, o.write_mib, o.small_mib, o.large_mib, loadavg()
    );
    println!();
    println!(
        "| measure | VIOS seqwrite | dump {} MiB filled | dump {} MiB mostly zero |",
        o.small_mib, o.large_mib
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| core written (MiB) | {} | {:.0} | {:.1} |",
        o.write_mib,
        core(&small),
        core(&large)
    );
    println!(
        "| dump time (ms) | - | {:.0} | {:.0} |",
        dur(&small),
        dur(&large)
    );
    println!(
        "| written MiB/s | {seq:.0} | {:.0} | {:.0} |",
        written(&small),
        written(&large)
    );
    println!(
        "| of the VIOS seqwrite | 1.00 | {:.2} | {:.2} |",
        written(&small) / seq,
        written(&large) / seq
    );
    println!(
        "| RAM covered MiB/s | - | {:.0} | {:.0} |",
        ram(&small),
        ram(&large)
    );
    println!(
        "| failure to ready after reboot (ms) | - | {:.0} | {:.0} |",
        reboot(&small),
        reboot(&large)
    );
    for e in &errors {
        println!("error: {}", e.lines().next().unwrap_or_default());
    }
}
