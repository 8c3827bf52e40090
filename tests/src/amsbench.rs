//! The limits `bench-ams` (docs/benchmarks.md, "Active Memory Sharing")
//! sets the pager's figures beside, measured on this machine in the same
//! run:
//!
//! * [`uffd_round_trips`]: a bare userfaultfd round trip, one host thread
//!   faulting on a missing page of a registered memfd and another serving
//!   it with `UFFDIO_COPY` from a buffer already in memory (the pager's
//!   own `vmm::pager::uffd`, without a device behind it);
//! * [`PagingLimits`]: the VIOS through the pager's own driver
//!   (`virtio_devices::paging::PagingDisk`): one-page read latency and
//!   sequential 64-page batches both ways;
//! * [`pager_round_trips`]: the pager's own page-in with nothing else
//!   running: a host thread loading from evicted pages of a real pager
//!   (both its threads, its two connections to a real VIOS) with room for
//!   every page, so no write-out runs beside the faults;
//! * /proc readers for a thread's CPU time and a VMM's memory beyond guest
//!   RAM.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use virtio_devices::paging::{PagingDisk, MAX_BATCH_PAGES, PAGE_SIZE};
use vm_memory::{Bytes, GuestAddress};
use vmm::pager::uffd::{Fault, Placed, Uffd};

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// A shared mapping of a new memfd of `len` bytes.
struct MappedMemfd {
    fd: OwnedFd,
    addr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; the faulting thread only
// reads it through volatile loads, the kernel fills it.
unsafe impl Send for MappedMemfd {}
// SAFETY: as above.
unsafe impl Sync for MappedMemfd {}

impl MappedMemfd {
    fn new(len: usize) -> Result<MappedMemfd, String> {
        // SAFETY: memfd_create with a NUL-terminated name; checked below.
        let raw = unsafe { libc::memfd_create(c"bench-ams-uffd".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(os_err("memfd_create"));
        }
        // SAFETY: `raw` is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate on our own descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } < 0 {
            return Err(os_err("ftruncate"));
        }
        // SAFETY: a new shared mapping of the whole memfd; checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(os_err("mmap"));
        }
        Ok(MappedMemfd {
            fd,
            addr: addr.cast(),
            len,
        })
    }

    /// Frees every page: the next access to each is a missing fault.
    fn punch(&self) -> Result<(), String> {
        // SAFETY: fallocate on our own memfd, inside its size.
        let r = unsafe {
            libc::fallocate(
                self.fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                self.len as libc::off_t,
            )
        };
        if r < 0 {
            Err(os_err("fallocate(PUNCH_HOLE)"))
        } else {
            Ok(())
        }
    }
}

impl Drop for MappedMemfd {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; nothing uses it
        // any more.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// The serving thread: poll (100 ms, to see `stop`), read one fault,
/// `UFFDIO_COPY` one page from `src`: the pager's loop without a device.
fn serve_faults(uffd: &Uffd, src: &[u8], stop: &AtomicBool) -> Result<u64, String> {
    let mut served = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: uffd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd that lives across the call.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        let Ok(Some(Fault::Missing(addr))) = uffd.read_fault() else {
            continue;
        };
        let dst = addr & !(PAGE_SIZE - 1);
        // SAFETY: `src` holds a page; `dst` is a page of the registered
        // mapping.
        match unsafe { uffd.copy(src.as_ptr(), dst, PAGE_SIZE) } {
            Ok(Placed::Done) => served += 1,
            Ok(Placed::Exists) => {}
            Err(e) => return Err(format!("UFFDIO_COPY: {e}")),
        }
    }
    Ok(served)
}

/// `faults` bare userfaultfd round trips (nanoseconds each, as the
/// faulting thread sees them: from its load to the load returning), in
/// rounds over a 16 MiB memfd whose pages are punched out between rounds.
pub fn uffd_round_trips(faults: usize) -> Result<Vec<u64>, String> {
    const PAGES: usize = 4096;
    let mem = Arc::new(MappedMemfd::new(PAGES * PAGE_SIZE)?);
    // The pager's own userfaultfd (vmm/src/pager/uffd.rs): kernel faults
    // are not needed here but not excluded either, as in the pager.
    let uffd = Uffd::new().map_err(|e| format!("userfaultfd: {e}"))?;
    uffd.register(mem.addr as usize, mem.len)
        .map_err(|e| format!("UFFDIO_REGISTER: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let stop = stop.clone();
        let src = vec![0x5au8; PAGE_SIZE];
        std::thread::Builder::new()
            .name("uffd-server".into())
            .spawn(move || serve_faults(&uffd, &src, &stop))
            .map_err(|e| format!("spawn: {e}"))?
    };
    let mut lat = Vec::with_capacity(faults);
    let mut sum = 0u64;
    'rounds: loop {
        mem.punch()?;
        for page in 0..PAGES {
            if lat.len() == faults {
                break 'rounds;
            }
            let t = Instant::now();
            // SAFETY: inside the mapping; a volatile load so that the
            // fault happens here, once.
            let b = unsafe { std::ptr::read_volatile(mem.addr.add(page * PAGE_SIZE)) };
            lat.push(t.elapsed().as_nanos() as u64);
            sum += u64::from(b);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let served = server
        .join()
        .map_err(|_| "uffd server panicked".to_string())??;
    if served < faults as u64 || sum != 0x5a * faults as u64 {
        return Err(format!(
            "{served} faults served, {faults} taken, byte sum {sum}"
        ));
    }
    Ok(lat)
}

/// The `q`-quantile of `v` (sorted in place).
pub fn percentile(v: &mut [u64], q: f64) -> u64 {
    v.sort_unstable();
    if v.is_empty() {
        return 0;
    }
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// The VIOS through the pager's driver: one run's figures.
#[derive(Clone, Copy, Debug)]
pub struct PagingLimits {
    /// One-page `read_pages`, p50 and p99, nanoseconds.
    pub read_p50_ns: u64,
    pub read_p99_ns: u64,
    /// 64 consecutive pages per call over the whole image, MiB/s.
    pub seq_write_mib_s: f64,
    pub seq_read_mib_s: f64,
}

/// Measures [`PagingLimits`] against the VIOS listening on `socket` whose
/// image is at least `bytes` long: writes it all in 64-page batches, reads
/// it back the same way, then `reads` single pages scattered over it.
pub fn paging_limits(socket: &Path, bytes: u64, reads: usize) -> Result<PagingLimits, String> {
    let stream =
        UnixStream::connect(socket).map_err(|e| format!("dial {}: {e}", socket.display()))?;
    let mut disk = PagingDisk::connect("bench", stream).map_err(|e| e.to_string())?;
    let p = PAGE_SIZE as u64;
    let batches = bytes / (p * MAX_BATCH_PAGES as u64);
    let pages: Vec<Vec<u8>> = (0..MAX_BATCH_PAGES)
        .map(|i| vec![(i as u8) | 1; PAGE_SIZE])
        .collect();
    let mib = (batches * MAX_BATCH_PAGES as u64 * p) as f64 / (1 << 20) as f64;
    let t = Instant::now();
    for b in 0..batches {
        let batch: Vec<(u64, &[u8])> = pages
            .iter()
            .enumerate()
            .map(|(i, page)| ((b * MAX_BATCH_PAGES as u64 + i as u64) * p, page.as_slice()))
            .collect();
        disk.write_pages(&batch).map_err(|e| e.to_string())?;
    }
    let seq_write_mib_s = mib / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for b in 0..batches {
        let offsets: Vec<u64> = (0..MAX_BATCH_PAGES as u64)
            .map(|i| (b * MAX_BATCH_PAGES as u64 + i) * p)
            .collect();
        disk.read_pages(&offsets).map_err(|e| e.to_string())?;
    }
    let seq_read_mib_s = mib / t.elapsed().as_secs_f64();
    let total_pages = batches * MAX_BATCH_PAGES as u64;
    let mut lat = Vec::with_capacity(reads);
    for i in 0..reads as u64 {
        let offset = ((i * 7919) % total_pages) * p;
        let t = Instant::now();
        let got = disk.read_pages(&[offset]).map_err(|e| e.to_string())?;
        lat.push(t.elapsed().as_nanos() as u64);
        if got.len() != PAGE_SIZE {
            return Err(format!("read {} bytes for one page", got.len()));
        }
    }
    Ok(PagingLimits {
        read_p50_ns: percentile(&mut lat, 0.50),
        read_p99_ns: percentile(&mut lat, 0.99),
        seq_write_mib_s,
        seq_read_mib_s,
    })
}

/// The id of `pid`'s thread named `name`, if it has one.
pub fn thread_named(pid: u32, name: &str) -> Option<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(|t| t.ok())
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })?
        .file_name()
        .to_str()?
        .parse()
        .ok()
}

/// A thread's CPU use so far: utime + stime in clock ticks (/proc stat),
/// run time in nanoseconds (schedstat) and context switches (status).
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadCpu {
    pub ticks: u64,
    pub run_ns: u64,
    pub switches: u64,
}

pub fn thread_cpu(pid: u32, tid: u32) -> Option<ThreadCpu> {
    let base = format!("/proc/{pid}/task/{tid}");
    let stat = std::fs::read_to_string(format!("{base}/stat")).ok()?;
    let rest: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    let run_ns = std::fs::read_to_string(format!("{base}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("{base}/status")).ok()?;
    let switches = status
        .lines()
        .filter(|l| l.contains("ctxt_switches:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    Some(ThreadCpu {
        ticks,
        run_ns,
        switches,
    })
}

/// A `/proc/PID/status` field in KiB (0 if absent).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Bytes the guest-RAM memfd of VMM `pid` holds in memory (its allocated
/// blocks); `None` once the process (or its memfd) is gone. What the pool's
/// budget counts; also sampled by the AMS tests.
pub fn guest_ram_bytes(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:parvm-guest-ram"))
        })
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .map(|m| m.blocks() * 512)
        .max()
}

/// Fault-to-running-again times (ns) of up to `faults` single-page
/// page-ins through a real pager whose paging device is the VIOS on
/// `socket` (image at least `mib` MiB): every page of `mib` MiB is
/// written, the target lowered until all but 2 MiB are out, then raised
/// to the whole size, and pages are loaded 97 apart (never sequential: one
/// 4 KiB read each), timed by the loading thread. Loads that found their
/// page resident are not counted.
pub fn pager_round_trips(socket: &Path, mib: u64, faults: usize) -> Result<Vec<u64>, String> {
    use vmm::pager::{device, Pager};
    let ram = vmm::memory::GuestRam::new(mib).map_err(|e| e.to_string())?;
    let source = vmm::config::DiskSource::VhostUser(socket.to_path_buf());
    let (stores, reconnectors) = device::connect(&source, None).map_err(|e| e.to_string())?;
    let pages = ram.size / PAGE_SIZE as u64;
    let pager = Pager::start(&ram.memory, &ram.memfd, stores, reconnectors, pages)
        .map_err(|e| e.to_string())?;
    let value = |p: u64| p.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for p in 0..pages {
        ram.memory
            .write_obj(value(p), GuestAddress(p * PAGE_SIZE as u64))
            .map_err(|e| e.to_string())?;
    }
    let low = 512;
    pager.set_target(low);
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while pager.report().resident_pages > low {
        if Instant::now() > deadline {
            return Err(format!(
                "the pager never got under {low} pages: {}",
                pager.report()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    pager.set_target(pages);
    let mut lat = Vec::with_capacity(faults);
    let mut page = 0;
    for _ in 0..pages {
        if lat.len() == faults {
            break;
        }
        page = (page + 97) % pages;
        let before = pager.report().page_ins;
        let t = Instant::now();
        let got: u64 = ram
            .memory
            .read_obj(GuestAddress(page * PAGE_SIZE as u64))
            .map_err(|e| e.to_string())?;
        let took = t.elapsed().as_nanos() as u64;
        if got != value(page) {
            return Err(format!("page {page} came back wrong: {got:#x}"));
        }
        // The count goes up right after the copy that woke this thread.
        let counted = Instant::now();
        while pager.report().page_ins == before && counted.elapsed().as_micros() < 200 {
            std::hint::spin_loop();
        }
        if pager.report().page_ins > before {
            lat.push(took);
        }
    }
    Ok(lat)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_round_trip_is_served_with_the_buffer() {
        // Spans two rounds: the punch between them makes the pages
        // missing again (the byte sum checks every load saw 0x5a).
        let lat = uffd_round_trips(4096 + 10).unwrap();
        assert_eq!(lat.len(), 4106);
    }

    #[test]
    fn percentiles_pick_by_rank() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut v, 0.5), 50);
        assert_eq!(percentile(&mut v, 0.99), 99);
        assert_eq!(percentile(&mut v, 1.0), 100);
        assert_eq!(percentile(&mut [], 0.5), 0);
    }

    #[test]
    fn a_thread_is_found_by_name_and_has_cpu_figures() {
        let pid = std::process::id();
        let tid = thread_named(pid, "parked-thread");
        assert!(tid.is_none());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("parked-thread".into())
            .spawn(move || rx.recv())
            .unwrap();
        let mut found = None;
        for _ in 0..100 {
            found = thread_named(pid, "parked-thread");
            if found.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Time for it to block in `recv` (a voluntary switch).
        std::thread::sleep(std::time::Duration::from_millis(50));
        let cpu = thread_cpu(pid, found.unwrap()).unwrap();
        assert!(cpu.switches >= 1, "{cpu:?}");
        tx.send(()).unwrap();
        let _ = t.join();
    }
}
