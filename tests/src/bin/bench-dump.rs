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
//! * managed reboot: the same two partitions under `partition-manager`
//!   with `"on_crash": {"dump": "vios:vios1/dumps", "then": "reboot"}`:
//!   from the failure to the second `ready` line in the console log, while
//!   the dump goes on (docs/dump.md, "Reboot early"), and the dump's time.
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

/// SIGKILL to every process whose command line names `dir` (the
/// manager's VMMs and VIOS of this run), then the manager.
fn kill_under(dir: &Path, manager: &mut Child) {
    let _ = manager.kill();
    let _ = manager.wait();
    let marker = dir.display().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&marker) {
            // SAFETY: a process this run's manager started for us.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn parctl(socket: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(sibling("parctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .map_err(|e| format!("parctl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "parctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Under the manager, `then: reboot`: the dump's record and the time from
/// the failure to the rebooted guest's ready line, in ms.
fn managed_run(
    dir: &Path,
    disk_mib: u64,
    memory_mib: u64,
    test: &str,
) -> Result<(DumpRecord, u64), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let image = dir.join("dumps.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(disk_mib << 20))
        .map_err(|e| e.to_string())?;
    let socket = dir.join("pm.sock");
    let state = dir.join("state");
    let mut manager = Command::new(sibling("partition-manager"))
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(&state)
        .arg("--vmm")
        .arg(sibling("vmm"))
        .env("PARVM_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("partition-manager: {e}"))?;
    let result = (|| {
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err("the manager did not listen".to_string());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let write = |name: &str, v: serde_json::Value| -> Result<String, String> {
            let p = dir.join(name);
            std::fs::write(&p, v.to_string()).map_err(|e| e.to_string())?;
            Ok(p.display().to_string())
        };
        let vios = write(
            "vios1.json",
            serde_json::json!({"kind": "vios", "name": "vios1",
                "disks": [{"id": "dumps", "path": image}]}),
        )?;
        let client = write(
            "c.json",
            serde_json::json!({"name": "c", "kernel": guest_path("tiny.elf"),
                "memory_mib": memory_mib, "cmdline": format!("parvm.test={test}"),
                "on_crash": {"dump": "vios:vios1/dumps", "then": "reboot"}}),
        )?;
        parctl(&socket, &["define", &vios])?;
        parctl(&socket, &["start", "vios1"])?;
        parctl(&socket, &["define", &client])?;
        let cookie = parctl(
            &socket,
            &["grant", "vios1/dumps", "--to", "c", "--rights", "rw"],
        )?;
        parctl(&socket, &["accept", cookie.trim(), "--as", "c"])?;
        parctl(&socket, &["start", "c"])?;
        let log = state.join("logs").join("c.log");
        let start = Instant::now();
        let ready_ms = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.matches("parvm-guest: ready").count() >= 2 {
                break now_ms();
            }
            if start.elapsed() > Duration::from_secs(300) {
                return Err("the partition was not ready again".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        loop {
            if let Some(first) = dumps::table(&image)?.get(1).cloned() {
                if first.state != parvm_protocol::dump::DumpState::Writing {
                    let reboot = ready_ms.saturating_sub(first.started_ms);
                    return Ok((first, reboot));
                }
            }
            if start.elapsed() > Duration::from_secs(300) {
                return Err("the first dump did not end".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })();
    kill_under(dir, &mut manager);
    result
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
    let (mut msmall, mut mlarge) = (Vec::new(), Vec::new());
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
        for (mib, test, into) in [
            (o.small_mib, "dumpfill", &mut msmall),
            (o.large_mib, "dumpfault", &mut mlarge),
        ] {
            match managed_run(&dir.join("managed"), disk_mib, mib, test) {
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
        "| failure to ready after reboot, hand-run vmm (ms) | - | {:.0} | {:.0} |",
        reboot(&small),
        reboot(&large)
    );
    println!(
        "| failure to ready after reboot, manager `then: reboot` (ms) | - | {:.0} | {:.0} |",
        reboot(&msmall),
        reboot(&mlarge)
    );
    println!(
        "| dump time under the manager (ms) | - | {:.0} | {:.0} |",
        dur(&msmall),
        dur(&mlarge)
    );
    for e in &errors {
        println!("error: {}", e.lines().next().unwrap_or_default());
    }
}
