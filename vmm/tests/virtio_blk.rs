#![allow(clippy::unwrap_used, clippy::expect_used)]
//! virtio-blk end to end: the tiny guest's driver (`parvm.test=blk`, see
//! docs/guests.md) writes a pattern to sectors 0..63 of the first disk,
//! flushes, reads it back and prints the FNV-1a 64 of what it read; these
//! tests compare that with the image file on the host after the VMM exited.

use parvm_tests::guests::{fnv1a64, guest_path};
use parvm_tests::{run, scratch_dir, Finished};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Sectors the guest writes, and their bytes.
const PATTERN_SECTORS: usize = 64;
const PATTERN_BYTES: usize = PATTERN_SECTORS * 512;

/// The guest's pattern: byte i of sector s is (s * 31 + i * 7) & 0xff.
fn pattern() -> Vec<u8> {
    (0..PATTERN_BYTES)
        .map(|o| ((o / 512) * 31 + (o % 512) * 7) as u8)
        .collect()
}

/// Image contents that are not the pattern (and not zeros).
fn filler(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 % 251) as u8 ^ 0xa5).collect()
}

fn image(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

/// Boots tiny.elf with `parvm.test=blk` (plus `extra_cmdline`) and the given
/// `--disk` arguments.
fn boot(disks: &[String], extra_cmdline: &str) -> Finished {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm"));
    cmd.arg("--kernel")
        .arg(guest_path("tiny.elf"))
        .args(["--memory-mib", "64"])
        .arg("--cmdline")
        .arg(format!("parvm.test=blk {extra_cmdline}").trim_end());
    for d in disks {
        cmd.arg("--disk").arg(d);
    }
    let f = run(cmd, Duration::from_secs(60));
    assert!(!f.timed_out, "vmm timed out:\n{}\n{}", f.stdout, f.stderr);
    assert_eq!(
        f.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        f.stdout,
        f.stderr
    );
    assert!(f.stdout.contains("parvm-guest: poweroff\n"), "{}", f.stdout);
    f
}

fn disk_arg(path: &Path, opts: &str) -> String {
    format!("{}{opts}", path.display())
}

/// What the guest printed about the disk.
#[derive(Debug, PartialEq, Eq)]
struct BlkReport {
    capacity: u64,
    ro: bool,
    serial: String,
    write: u8,
    flush: u8,
    read: u8,
    matched: bool,
    fnv: u64,
}

fn line_after<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{out}"))
}

fn value<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in `{line}`"))
}

fn report(f: &Finished) -> BlkReport {
    let hello = line_after(&f.stdout, "parvm-guest: blk capacity=");
    let capacity = hello.split(' ').next().unwrap().parse().unwrap();
    let serial = hello
        .split_once(" serial=")
        .map(|(_, s)| s.to_string())
        .unwrap_or_else(|| panic!("no serial= in `{hello}`"));
    let res = format!("write={}", line_after(&f.stdout, "parvm-guest: blk write="));
    BlkReport {
        capacity,
        ro: value(hello, "ro") == "1",
        serial,
        write: value(&res, "write").parse().unwrap(),
        flush: value(&res, "flush").parse().unwrap(),
        read: value(&res, "read").parse().unwrap(),
        matched: match value(&res, "match") {
            "yes" => true,
            "no" => false,
            other => panic!("match={other}"),
        },
        fnv: u64::from_str_radix(value(&res, "fnv1a64"), 16).unwrap(),
    }
}

#[test]
fn pattern_written_flushed_and_read_back_matches_the_host_image() {
    let dir = scratch_dir("blk-pattern");
    let img = image(&dir, "disk.img", &filler(1 << 20));
    let f = boot(&[disk_arg(&img, ",id=data-0")], "");
    let r = report(&f);
    let on_host = std::fs::read(&img).unwrap();
    assert_eq!(on_host.len(), 1 << 20, "image size unchanged");
    assert_eq!(&on_host[..PATTERN_BYTES], &pattern()[..], "pattern on disk");
    assert_eq!(
        &on_host[PATTERN_BYTES..],
        &filler(1 << 20)[PATTERN_BYTES..],
        "nothing past sector 63 written"
    );
    assert_eq!(
        r,
        BlkReport {
            capacity: 2048,
            ro: false,
            serial: "data-0".into(),
            write: 0,
            flush: 0,
            read: 0,
            matched: true,
            fnv: fnv1a64(&on_host[..PATTERN_BYTES]),
        },
        "{}",
        f.stdout
    );
    assert!(
        f.stdout
            .contains("parvm-guest: cmdline=parvm.test=blk virtio_mmio.device=4K@0xd0000000:5\n"),
        "{}",
        f.stdout
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn read_only_disk_refuses_the_write_and_stays_unchanged() {
    let dir = scratch_dir("blk-ro");
    let before = filler(64 << 10);
    let img = image(&dir, "ro.img", &before);
    let f = boot(&[disk_arg(&img, ",ro,id=golden")], "");
    let r = report(&f);
    assert_eq!(std::fs::read(&img).unwrap(), before, "image unchanged");
    assert_eq!(
        r,
        BlkReport {
            capacity: 128,
            ro: true,
            serial: "golden".into(),
            write: 1, // VIRTIO_BLK_S_IOERR
            flush: 0,
            read: 0,
            matched: false,
            fnv: fnv1a64(&before[..PATTERN_BYTES]),
        },
        "{}",
        f.stdout
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unnamed_disk_serial_is_its_default_id() {
    let dir = scratch_dir("blk-default-id");
    let img = image(&dir, "d.img", &filler(PATTERN_BYTES));
    let r = report(&boot(&[disk_arg(&img, "")], ""));
    assert_eq!(r.serial, "disk0");
    assert_eq!(r.capacity, PATTERN_SECTORS as u64);
    assert!(r.matched && r.write == 0 && r.read == 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_two_disks_the_guest_uses_the_first_on_the_command_line() {
    let dir = scratch_dir("blk-two");
    let a = image(&dir, "a.img", &filler(1 << 20));
    let b = image(&dir, "b.img", &filler(512 << 10));
    let f = boot(&[disk_arg(&a, ",id=first"), disk_arg(&b, ",id=second")], "");
    assert!(
        f.stdout
            .contains("virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6\n"),
        "{}",
        f.stdout
    );
    let r = report(&f);
    assert_eq!((r.serial.as_str(), r.capacity), ("first", 2048));
    assert!(r.matched);
    assert_eq!(&std::fs::read(&a).unwrap()[..PATTERN_BYTES], &pattern()[..]);
    assert_eq!(std::fs::read(&b).unwrap(), filler(512 << 10), "b untouched");

    // The other order: the same guest now writes to b.
    let a_before = std::fs::read(&a).unwrap();
    let f = boot(&[disk_arg(&b, ",id=second"), disk_arg(&a, ",id=first")], "");
    let r = report(&f);
    assert_eq!((r.serial.as_str(), r.capacity), ("second", 1024));
    assert!(r.matched);
    let b_now = std::fs::read(&b).unwrap();
    assert_eq!(&b_now[..PATTERN_BYTES], &pattern()[..]);
    assert_eq!(r.fnv, fnv1a64(&b_now[..PATTERN_BYTES]));
    assert_eq!(std::fs::read(&a).unwrap(), a_before, "a untouched");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A disk of 16 sectors: the 64-sector write and read lie past its end, so
/// the device fails them with IOERR before any I/O. The guest zeroes its
/// read buffer first, so its checksum is that of 32 KiB of zeros, and the
/// image keeps its contents and size.
#[test]
fn image_shorter_than_the_pattern_gets_ioerr_and_is_untouched() {
    let dir = scratch_dir("blk-short");
    let before = filler(16 * 512);
    let img = image(&dir, "short.img", &before);
    let f = boot(&[disk_arg(&img, ",id=tiny")], "");
    assert_eq!(
        report(&f),
        BlkReport {
            capacity: 16,
            ro: false,
            serial: "tiny".into(),
            write: 1,
            flush: 0,
            read: 1,
            matched: false,
            fnv: fnv1a64(&[0u8; PATTERN_BYTES]),
        },
        "{}",
        f.stdout
    );
    assert_eq!(std::fs::read(&img).unwrap(), before);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An image whose size is not a whole number of sectors: capacity rounds
/// down, and the pattern still fits.
#[test]
fn capacity_rounds_down_to_whole_sectors() {
    let dir = scratch_dir("blk-odd");
    let len = PATTERN_BYTES + 700;
    let img = image(&dir, "odd.img", &filler(len));
    let r = report(&boot(&[disk_arg(&img, "")], ""));
    assert_eq!(r.capacity, (len / 512) as u64);
    assert!(r.matched);
    let on_host = std::fs::read(&img).unwrap();
    assert_eq!(on_host.len(), len);
    assert_eq!(r.fnv, fnv1a64(&on_host[..PATTERN_BYTES]));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_disk_the_guest_says_so() {
    let f = boot(&[], "");
    assert!(
        f.stdout
            .contains("parvm-guest: blk no virtio_mmio.device= on the command line\n"),
        "{}",
        f.stdout
    );
}

/// The benchmark switch, small: every phase completes without errors.
#[test]
fn blkbench_phases_complete_without_errors() {
    let dir = scratch_dir("blk-bench");
    let img = image(&dir, "bench.img", &filler(8 << 20));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm"));
    cmd.arg("--kernel")
        .arg(guest_path("tiny.elf"))
        .args(["--memory-mib", "64", "--disk"])
        .arg(&img)
        .args([
            "--cmdline",
            "parvm.test=blkbench parvm.bench=3000 parvm.benchmib=16",
        ]);
    let f = run(cmd, Duration::from_secs(60));
    assert_eq!(f.code(), Some(0), "{}\n{}", f.stdout, f.stderr);
    for (phase, ops, bytes) in [
        ("randread", 3000, 3000 * 4096),
        ("seqread", 16, 16 << 20),
        ("seqwrite", 16, 16 << 20),
    ] {
        assert!(
            f.stdout
                .contains(&format!("parvm-guest: blkbench start {phase}\n")),
            "{}",
            f.stdout
        );
        let done = format!("parvm-guest: blkbench done {phase} ops={ops} bytes={bytes} errors=0 ");
        assert!(f.stdout.contains(&done), "`{done}` in:\n{}", f.stdout);
    }
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 8 << 20);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `parvm.test=blkswap`: the blk sequence with a sweep over the RAM from
/// 8 MiB to the end (here 24 MiB of it) after filling the write buffer and
/// after zeroing the read buffer. Same pattern on the disk, same result.
#[test]
fn blkswap_writes_the_pattern_and_reads_it_back_after_the_sweeps() {
    let dir = scratch_dir("blkswap");
    let img = image(&dir, "swap.img", &filler(1 << 20));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm"));
    cmd.arg("--kernel")
        .arg(guest_path("tiny.elf"))
        .args(["--memory-mib", "32", "--cmdline", "parvm.test=blkswap"])
        .arg("--disk")
        .arg(disk_arg(&img, ",id=swap-0"));
    let f = run(cmd, Duration::from_secs(60));
    assert_eq!(f.code(), Some(0), "{}\n{}", f.stdout, f.stderr);
    let on_host = std::fs::read(&img).unwrap();
    assert_eq!(&on_host[..PATTERN_BYTES], &pattern()[..], "pattern on disk");
    assert_eq!(&on_host[PATTERN_BYTES..], &filler(1 << 20)[PATTERN_BYTES..]);
    let tail: Vec<&str> = f
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("parvm-guest: initrd"))
        .skip(1)
        .collect();
    let result = format!(
        "parvm-guest: blkswap write=0 flush=0 read=0 match=yes fnv1a64={:016x}",
        fnv1a64(&pattern())
    );
    assert_eq!(
        tail,
        [
            "parvm-guest: blkswap capacity=2048 ro=0 serial=swap-0",
            "parvm-guest: blkswap swept=24MiB",
            "parvm-guest: blkswap swept=24MiB",
            result.as_str(),
            "parvm-guest: poweroff",
        ],
        "{}",
        f.stdout
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn blkswap_needs_16_mib() {
    let dir = scratch_dir("blkswap-small");
    let before = filler(64 << 10);
    let img = image(&dir, "small.img", &before);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm"));
    cmd.arg("--kernel")
        .arg(guest_path("tiny.elf"))
        .args(["--memory-mib", "8", "--cmdline", "parvm.test=blkswap"])
        .arg("--disk")
        .arg(&img);
    let f = run(cmd, Duration::from_secs(60));
    assert_eq!(f.code(), Some(0), "{}\n{}", f.stdout, f.stderr);
    assert!(
        f.stdout.contains(
            "parvm-guest: initrd none\n\
             parvm-guest: blkswap needs at least 16 MiB of RAM\n\
             parvm-guest: poweroff\n"
        ),
        "{}",
        f.stdout
    );
    assert_eq!(std::fs::read(&img).unwrap(), before, "image untouched");
    let _ = std::fs::remove_dir_all(&dir);
}
