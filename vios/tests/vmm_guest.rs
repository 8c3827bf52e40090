//! parvm's own VMM as a VIOS client, under KVM: the tiny guest's virtio-blk
//! driver (`parvm.test=blk`, docs/guests.md) runs against a disk whose path
//! is `vhost-user:SOCKET`, served by the `vios` binary. The guest writes a
//! pattern to sectors 0..63, flushes, reads it back and prints a checksum;
//! the host then finds the pattern in the image.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// The `vmm` binary of this build (built on demand: it belongs to another
/// package of the workspace).
fn vmm_binary() -> PathBuf {
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(vmm) = built.as_ref() {
        return vmm.clone();
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let vmm = profile_dir.join("vmm");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-p", "vmm", "--bin", "vmm"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build -p vmm");
    assert!(status.success(), "cargo build -p vmm failed");
    assert!(vmm.exists(), "{} missing after the build", vmm.display());
    *built = Some(vmm.clone());
    vmm
}

struct Vios(Child);

impl Drop for Vios {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_vios(socket: &Path, disk: &str) -> Vios {
    let child = Command::new(env!("CARGO_BIN_EXE_vios"))
        .arg("--listen")
        .arg(socket)
        .arg("--disk")
        .arg(disk)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "vios never listened"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Vios(child)
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
