//! parvm's own VMM as a VIOS client, under KVM: the tiny guest's virtio-blk
//! driver (`parvm.test=blk`, docs/guests.md) runs against a disk whose path
//! is `vhost-user:SOCKET`, served by the `vios` binary. The guest writes a
//! pattern to sectors 0..63, flushes, reads it back and prints a checksum;
//! the host then finds the pattern in the image.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;

use common::{vmm_binary, Vios};
use parvm_tests::guests::{fnv1a64, guest_path};
use parvm_tests::{run, scratch_dir};

const PATTERN_BYTES: usize = 64 * 512;

/// The guest's pattern: byte i of sector s is (s * 31 + i * 7) & 0xff.
fn pattern() -> Vec<u8> {
    (0..PATTERN_BYTES)
        .map(|o| ((o / 512) * 31 + (o % 512) * 7) as u8)
        .collect()
}

fn filler(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 % 251) as u8 ^ 0xa5).collect()
}

fn start_vios(socket: &Path, disk: &str) -> Vios {
    Vios::spawn(socket, disk)
}

fn boot(vmm: &Path, disk: &str) -> parvm_tests::Finished {
    let mut cmd = Command::new(vmm);
    cmd.arg("--kernel")
        .arg(guest_path("tiny.elf"))
        .args(["--memory-mib", "64", "--cmdline", "parvm.test=blk"])
        .arg("--disk")
        .arg(disk);
    run(cmd, Duration::from_secs(60))
}

#[test]
fn tiny_guest_reads_and_writes_through_the_vios() {
    let vmm = vmm_binary();
    let dir = scratch_dir("vios-vmm");
    let img = dir.join("disk.img");
    std::fs::write(&img, filler(1 << 20)).unwrap();
    let socket = dir.join("vios.sock");
    let _vios = start_vios(&socket, &format!("{},id=vios-data", img.display()));

    // Twice: the VIOS serves a client that comes back.
    for _ in 0..2 {
        let f = boot(&vmm, &format!("vhost-user:{},id=data", socket.display()));
        assert!(!f.timed_out, "vmm timed out:\n{}\n{}", f.stdout, f.stderr);
        assert_eq!(f.code(), Some(0), "{}\n{}", f.stdout, f.stderr);
        // The serial is the VIOS export's id: the VIOS serves the disk.
        assert!(
            f.stdout
                .contains("parvm-guest: blk capacity=2048 ro=0 serial=vios-data\n"),
            "{}",
            f.stdout
        );
        let on_host = std::fs::read(&img).unwrap();
        assert_eq!(&on_host[..PATTERN_BYTES], &pattern()[..], "pattern on disk");
        assert_eq!(&on_host[PATTERN_BYTES..], &filler(1 << 20)[PATTERN_BYTES..]);
        let want = format!(
            "parvm-guest: blk write=0 flush=0 read=0 match=yes fnv1a64={:016x}\n",
            fnv1a64(&on_host[..PATTERN_BYTES])
        );
        assert!(f.stdout.contains(&want), "want {want}in:\n{}", f.stdout);
        assert!(f.stdout.contains("parvm-guest: poweroff\n"), "{}", f.stdout);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn read_only_export_refuses_the_guest_write() {
    let vmm = vmm_binary();
    let dir = scratch_dir("vios-vmm-ro");
    let img = dir.join("ro.img");
    let before = filler(64 << 10);
    std::fs::write(&img, &before).unwrap();
    let socket = dir.join("vios.sock");
    let _vios = start_vios(&socket, &format!("{},ro,id=golden", img.display()));
    let f = boot(&vmm, &format!("vhost-user:{}", socket.display()));
    assert_eq!(f.code(), Some(0), "{}\n{}", f.stdout, f.stderr);
    assert!(
        f.stdout
            .contains("parvm-guest: blk capacity=128 ro=1 serial=golden\n"),
        "{}",
        f.stdout
    );
    assert!(
        f.stdout.contains("parvm-guest: blk write=1 "),
        "{}",
        f.stdout
    );
    assert_eq!(std::fs::read(&img).unwrap(), before, "image unchanged");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vmm_without_its_vios_fails_to_start_with_a_clear_error() {
    let vmm = vmm_binary();
    let f = boot(&vmm, "vhost-user:/nonexistent/vios.sock,id=data");
    assert_eq!(f.code(), Some(1), "{}\n{}", f.stdout, f.stderr);
    assert!(
        f.stderr
            .contains("disk data: cannot connect to vhost-user socket /nonexistent/vios.sock"),
        "{}",
        f.stderr
    );
}
