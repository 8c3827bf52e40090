//! The pager's paging disk (`virtio_devices::paging::PagingDisk`) against
//! the real `vios` binary: pages written land at their offsets in the image
//! file, read back the same, bad batches are refused before anything is
//! sent, a read-only export is refused, and a VIOS killed with SIGKILL
//! gives `Disconnected` promptly, after which a new VIOS and `reconnect`
//! let the same call succeed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{dial, pattern, TempDir, Vios};
use virtio_devices::paging::{PagingDisk, PagingError, MAX_BATCH_PAGES, PAGE_SIZE};

const P: u64 = PAGE_SIZE as u64;

fn connect(id: &str, socket: &Path) -> Result<PagingDisk, PagingError> {
    PagingDisk::connect(id, dial(socket))
}

fn image(dir: &TempDir, size: u64) -> PathBuf {
    let image = dir.path("paging.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(size)
        .unwrap();
    image
}

fn file_page(image: &Path, offset: u64) -> Vec<u8> {
    let mut buf = vec![0u8; PAGE_SIZE];
    std::fs::File::open(image)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

fn page(seed: u64) -> Vec<u8> {
    let mut p = pattern(seed as u8, PAGE_SIZE);
    p[..8].copy_from_slice(&seed.to_le_bytes());
    p
}

#[test]
fn pages_land_at_their_offsets_and_read_back() {
    let dir = TempDir::new("paging-rw");
    let img = image(&dir, 4 << 20);
    let sock = dir.path("vios.sock");
    let _vios = Vios::spawn(&sock, img.to_str().unwrap());
    let mut disk = connect("pg0", &sock).unwrap();
    assert_eq!(disk.capacity(), 4 << 20);
    assert!(disk.has_flush());

    // Scattered pages, a run of four consecutive ones, the last page of
    // the disk, and a run given backwards (two requests, not one).
    let offsets = [
        0x3000,
        0x10_0000,
        0x20_0000,
        0x20_1000,
        0x20_2000,
        0x20_3000,
        (4 << 20) - P,
        0x8000,
        0x7000,
    ];
    let pages: Vec<Vec<u8>> = offsets.iter().map(|&o| page(o)).collect();
    let batch: Vec<(u64, &[u8])> = offsets
        .iter()
        .zip(&pages)
        .map(|(&o, p)| (o, p.as_slice()))
        .collect();
    disk.write_pages(&batch).unwrap();
    disk.flush().unwrap();
    for (&o, p) in offsets.iter().zip(&pages) {
        assert!(file_page(&img, o) == *p, "image page at {o:#x}");
    }
    // Neighbours untouched.
    assert_eq!(file_page(&img, 0x2000), vec![0u8; PAGE_SIZE]);
    assert_eq!(file_page(&img, 0x20_4000), vec![0u8; PAGE_SIZE]);

    // Back in another order, with a repeat and a never-written page.
    let ask = [0x20_2000, 0x3000, 0x20_3000, (4 << 20) - P, 0x3000, 0x5000];
    let got = disk.read_pages(&ask).unwrap().to_vec();
    assert_eq!(got.len(), ask.len() * PAGE_SIZE);
    for (i, &o) in ask.iter().enumerate() {
        let want = if o == 0x5000 {
            vec![0u8; PAGE_SIZE]
        } else {
            page(o)
        };
        assert!(
            got[i * PAGE_SIZE..(i + 1) * PAGE_SIZE] == want[..],
            "read page {i} at {o:#x}"
        );
    }

    // A full batch: 64 consecutive pages (one request), then 64 scattered.
    let full: Vec<Vec<u8>> = (0..MAX_BATCH_PAGES as u64)
        .map(|i| page(1000 + i))
        .collect();
    let run: Vec<(u64, &[u8])> = full
        .iter()
        .enumerate()
        .map(|(i, p)| (0x30_0000 + i as u64 * P, p.as_slice()))
        .collect();
    disk.write_pages(&run).unwrap();
    let scattered: Vec<(u64, &[u8])> = full
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64 * 3 * P, p.as_slice()))
        .collect();
    disk.write_pages(&scattered).unwrap();
    let back = disk
        .read_pages(&scattered.iter().map(|p| p.0).collect::<Vec<_>>())
        .unwrap();
    for (i, p) in full.iter().enumerate() {
        assert!(
            back[i * PAGE_SIZE..(i + 1) * PAGE_SIZE] == p[..],
            "scattered page {i}"
        );
        assert!(
            file_page(&img, 0x30_0000 + i as u64 * P) == *p,
            "run page {i}"
        );
    }
    assert!(disk.read_pages(&[]).unwrap().is_empty());
    disk.write_pages(&[]).unwrap();
}

#[test]
fn bad_batches_are_refused_before_anything_is_sent() {
    let dir = TempDir::new("paging-bad");
    let size = 1 << 20;
    let img = image(&dir, size);
    let sock = dir.path("vios.sock");
    let _vios = Vios::spawn(&sock, img.to_str().unwrap());
    let mut disk = connect("pg1", &sock).unwrap();
    let good = page(1);
    let short = vec![7u8; 512];

    // One good page with one past the end: neither is written.
    let e = disk.write_pages(&[(0, &good), (size, &good)]).unwrap_err();
    assert!(
        matches!(e, PagingError::OutOfRange { offset, capacity, .. } if offset == size && capacity == size),
        "{e}"
    );
    assert!(
        e.to_string().contains("pg1") && e.to_string().contains("0x100000"),
        "{e}"
    );
    let e = disk
        .write_pages(&[(0, &good), (u64::MAX - P + 1, &good)])
        .unwrap_err();
    assert!(matches!(e, PagingError::OutOfRange { .. }), "{e}");
    let e = disk
        .write_pages(&[(0, &good), (0x1800, &good)])
        .unwrap_err();
    assert!(
        matches!(e, PagingError::Misaligned { offset: 0x1800, .. }),
        "{e}"
    );
    let e = disk.write_pages(&[(0, &good), (P, &short)]).unwrap_err();
    assert!(matches!(e, PagingError::PageLength { len: 512, .. }), "{e}");
    let e = disk.write_pages(&[(0, &good), (0, &good)]).unwrap_err();
    assert!(
        matches!(e, PagingError::DuplicateOffset { offset: 0, .. }),
        "{e}"
    );
    let many: Vec<(u64, &[u8])> = (0..=MAX_BATCH_PAGES as u64)
        .map(|i| (i * P, good.as_slice()))
        .collect();
    let e = disk.write_pages(&many).unwrap_err();
    assert!(
        matches!(
            e,
            PagingError::BatchTooLarge {
                pages: 65,
                max: 64,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(std::fs::read(&img).unwrap(), vec![0u8; size as usize]);

    let e = disk.read_pages(&[0, size]).unwrap_err();
    assert!(matches!(e, PagingError::OutOfRange { .. }), "{e}");
    let e = disk.read_pages(&[0x10]).unwrap_err();
    assert!(matches!(e, PagingError::Misaligned { .. }), "{e}");

    // Refusals leave the disk usable; the last page is inside.
    disk.write_pages(&[(size - P, &good)]).unwrap();
    assert_eq!(file_page(&img, size - P), good);
    assert!(disk.is_connected());
}

#[test]
fn a_failed_request_names_offset_and_status_and_the_disk_stays_usable() {
    let dir = TempDir::new("paging-ioerr");
    let img = image(&dir, 1 << 20);
    let sock = dir.path("vios.sock");
    let _vios = Vios::spawn(&sock, img.to_str().unwrap());
    let mut disk = connect("pg2", &sock).unwrap();
    // The image shrinks under the VIOS: reads past its new end fail there.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(512 << 10)
        .unwrap();
    let e = disk.read_pages(&[0, 0x9_0000, 0x9_1000]).unwrap_err();
    assert!(
        matches!(
            e,
            PagingError::Status {
                offset: 0x9_0000,
                pages: 2,
                status: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("0x90000") && e.to_string().contains("IOERR"),
        "{e}"
    );
    assert!(disk.is_connected());
    assert_eq!(disk.read_pages(&[0x1000]).unwrap(), &[0u8; PAGE_SIZE][..]);
}

#[test]
fn a_read_only_export_is_refused() {
    let dir = TempDir::new("paging-ro");
    let img = image(&dir, 1 << 20);
    let sock = dir.path("vios.sock");
    let _vios = Vios::spawn(&sock, &format!("{},ro", img.display()));
    let e = connect("pg3", &sock).err().unwrap();
    assert!(matches!(e, PagingError::ReadOnly { .. }), "{e}");
    assert!(
        e.to_string().contains("pg3") && e.to_string().contains("must be writable"),
        "{e}"
    );
}

/// The byte-range calls a shared-memory partition's disks use
/// (`read_at`/`write_at`, whole sectors): bytes land at their offset, come
/// back, and bad ranges are refused before anything is sent; a read-only
/// export connects as a disk and refuses writes.
#[test]
fn sector_ranges_land_and_bad_ranges_are_refused() {
    let dir = TempDir::new("paging-ranges");
    let img = image(&dir, 1 << 20);
    let sock = dir.path("vios.sock");
    let _vios = Vios::spawn(&sock, &img.display().to_string());
    let mut disk = PagingDisk::connect_disk("d0", dial(&sock)).unwrap();
    let data = pattern(9, 3 * 512);
    disk.write_at(5 * 512, &data).unwrap();
    let on_file = std::fs::read(&img).unwrap();
    assert_eq!(&on_file[5 * 512..8 * 512], &data[..]);
    assert_eq!(disk.read_at(5 * 512, 3 * 512).unwrap(), &data[..]);
    let before = std::fs::read(&img).unwrap();
    for (offset, len) in [(1u64, 512usize), (512, 100), ((1 << 20) - 512, 1024)] {
        assert!(
            disk.write_at(offset, &vec![1u8; len]).is_err(),
            "{offset} {len}"
        );
        assert!(disk.read_at(offset, len).is_err(), "{offset} {len}");
    }
    let too_big = vec![0u8; virtio_devices::paging::MAX_TRANSFER + 512];
    assert!(disk.write_at(0, &too_big).is_err());
    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "image changed by refused calls"
    );

    let ro_sock = dir.path("ro.sock");
    let _ro = Vios::spawn(&ro_sock, &format!("{},ro", img.display()));
    let mut ro = PagingDisk::connect_disk("d1", dial(&ro_sock)).unwrap();
    assert!(ro.read_only());
    assert_eq!(ro.read_at(5 * 512, 512).unwrap(), &data[..512]);
    let e = ro.write_at(0, &[0u8; 512]).unwrap_err();
    assert!(matches!(e, PagingError::ReadOnly { .. }), "{e}");
}

/// SIGKILL while batches run: the call in flight (or the next one) fails
/// with `Disconnected` within a bounded time; with a new VIOS on the same
/// image, `reconnect` and the same call again succeed.
#[test]
fn a_killed_vios_gives_disconnected_then_reconnect_and_retry_succeed() {
    let dir = TempDir::new("paging-kill");
    let img = image(&dir, 8 << 20);
    let sock = dir.path("vios.sock");
    let mut vios = Vios::spawn(&sock, img.to_str().unwrap());
    let mut disk = connect("pg4", &sock).unwrap();
    let pages: Vec<Vec<u8>> = (0..MAX_BATCH_PAGES as u64).map(|i| page(77 + i)).collect();
    let batch = |round: u64| -> Vec<(u64, &[u8])> {
        pages
            .iter()
            .enumerate()
            .map(|(i, p)| (((round % 32) * 64 + i as u64) * P, p.as_slice()))
            .collect()
    };

    // Kill the VIOS while batches are being written back to back.
    let pid = vios.pid() as libc::pid_t;
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: kill(2) on the pid of a child this test owns.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        Instant::now()
    });
    let mut round = 0;
    let failed_round = loop {
        match disk.write_pages(&batch(round)) {
            Ok(()) => round += 1,
            Err(PagingError::Disconnected { .. }) => break round,
            Err(e) => panic!("unexpected error: {e}"),
        }
        assert!(round < 1_000_000, "the kill never showed");
    };
    let killed_at = killer.join().unwrap();
    let noticed = killed_at.elapsed();
    eprintln!("Disconnected in round {failed_round}, {noticed:?} after the kill");
    assert!(
        noticed < Duration::from_secs(5),
        "Disconnected {noticed:?} after the kill"
    );
    vios.kill();
    assert!(!disk.is_connected());
    // Without a reconnect every call fails the same way, at once.
    let e = disk.read_pages(&[0]).unwrap_err();
    assert!(matches!(e, PagingError::Disconnected { .. }), "{e}");

    let _vios2 = Vios::spawn(&sock, img.to_str().unwrap());
    disk.reconnect(dial(&sock)).unwrap();
    disk.write_pages(&batch(failed_round)).unwrap();
    let offsets: Vec<u64> = batch(failed_round).iter().map(|p| p.0).collect();
    let back = disk.read_pages(&offsets).unwrap().to_vec();
    for (i, (o, p)) in batch(failed_round).into_iter().enumerate() {
        assert!(&back[i * PAGE_SIZE..(i + 1) * PAGE_SIZE] == p, "page {i}");
        assert!(file_page(&img, o) == p, "image page at {o:#x}");
    }

    // A VIOS dead before the batch starts: Disconnected too, not a hang.
    drop(_vios2);
    let t = Instant::now();
    let e = disk.read_pages(&[0, P]).unwrap_err();
    assert!(matches!(e, PagingError::Disconnected { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// A VIOS that stops answering (SIGSTOP) fails the batch with `Timeout`
/// after the timeout, not a hang, and a reconnect to it while stopped fails
/// the same way; once it runs again, reconnect and retry succeed.
#[test]
fn a_stalled_vios_times_out_then_reconnect_and_retry_succeed() {
    let dir = TempDir::new("paging-stall");
    let img = image(&dir, 1 << 20);
    let sock = dir.path("vios.sock");
    let vios = Vios::spawn(&sock, img.to_str().unwrap());
    let mut disk = connect("pg5", &sock).unwrap();
    disk.set_timeout(Duration::from_millis(300));
    let signal = |sig| {
        // SAFETY: kill(2) on the pid of a child this test owns.
        unsafe { libc::kill(vios.pid() as libc::pid_t, sig) };
    };
    let p = page(5);
    signal(libc::SIGSTOP);
    // kill(2) returns before the stop lands: wait until /proc shows it.
    let stat = format!("/proc/{}/stat", vios.pid());
    let stopped = || {
        std::fs::read_to_string(&stat).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('T'))
        })
    };
    let since = Instant::now();
    while !stopped() {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "vios never stopped"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = Instant::now();
    let e = disk.write_pages(&[(0x4000, &p)]).unwrap_err();
    assert!(matches!(e, PagingError::Timeout { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(!disk.is_connected());
    let t = Instant::now();
    let e = disk.reconnect(dial(&sock)).unwrap_err();
    assert!(matches!(e, PagingError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("pg5"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    signal(libc::SIGCONT);
    disk.reconnect(dial(&sock)).unwrap();
    disk.write_pages(&[(0x4000, &p)]).unwrap();
    assert_eq!(file_page(&img, 0x4000), p);
    assert_eq!(disk.read_pages(&[0x4000]).unwrap(), &p[..]);
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Numbers, not a test: `cargo test -p vios --test paging -- --ignored
/// --nocapture` (add `--release` for the shipped build).
#[test]
#[ignore]
fn measure_read_latency_and_batch_write_throughput() {
    let dir = TempDir::new("paging-bench");
    let img = image(&dir, 64 << 20);
    let sock = dir.path("vios.sock");
    let _vios = Vios::spawn(&sock, img.to_str().unwrap());
    let mut disk = connect("bench", &sock).unwrap();
    let pages: Vec<Vec<u8>> = (0..MAX_BATCH_PAGES as u64).map(page).collect();
    let batches = 256u64; // 64 MiB
    let total_pages = batches * 64;
    // Consecutive: one 256 KiB request per batch; scattered: 64 requests.
    let consecutive = |b: u64, i: u64| (b * 64 + i) * P;
    let scattered = |b: u64, i: u64| ((i * 256 + b) % total_pages) * P;
    for (name, at) in [
        ("consecutive", &consecutive as &dyn Fn(u64, u64) -> u64),
        ("scattered", &scattered),
    ] {
        let t = Instant::now();
        for b in 0..batches {
            let batch: Vec<(u64, &[u8])> = pages
                .iter()
                .enumerate()
                .map(|(i, p)| (at(b, i as u64), p.as_slice()))
                .collect();
            disk.write_pages(&batch).unwrap();
        }
        let w = t.elapsed();
        let t = Instant::now();
        for b in 0..batches {
            let offsets: Vec<u64> = (0..64).map(|i| at(b, i)).collect();
            disk.read_pages(&offsets).unwrap();
        }
        let r = t.elapsed();
        let mib = (batches * 64 * P) as f64 / (1 << 20) as f64;
        eprintln!(
            "64-page batches, {name}: write {:.0} MiB/s ({:.0} us per batch), read {:.0} MiB/s ({:.0} us per batch)",
            mib / w.as_secs_f64(),
            w.as_secs_f64() * 1e6 / batches as f64,
            mib / r.as_secs_f64(),
            r.as_secs_f64() * 1e6 / batches as f64
        );
    }
    let n = 2000u64;
    let mut lat = Vec::with_capacity(n as usize);
    for i in 0..n {
        let offset = ((i * 7919) % (batches * 64)) * P;
        let t = Instant::now();
        let got = disk.read_pages(&[offset]).unwrap();
        lat.push(t.elapsed());
        assert_eq!(got.len(), PAGE_SIZE);
    }
    lat.sort();
    eprintln!(
        "4 KiB reads: {n}, p50 {:?}, p99 {:?}, max {:?}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );
}
