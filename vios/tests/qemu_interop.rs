//! External clients: Debian's QEMU (TCG, q35) boots Debian's cloud kernel
//! with a busybox initramfs and a `vhost-user-blk-pci` disk served by
//! `vios --listen`. The guest's /init (tests/linux/init) writes a 64 KiB
//! pattern to /dev/vda, drops its caches, reads it back and compares; the
//! host then finds the pattern in the image. A read-only export must make
//! the guest's write fail and leave the image untouched.
//!
//! The image is built from Debian packages by
//! tests/linux/build-vios-initramfs.sh (cached in target/linux/). A boot
//! takes about 2 s under TCG here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use parvm_tests::linux;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DISK_BYTES: u64 = 64 << 20;
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("vios-qemu-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills (by its own pid) and reaps a child on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_vios(socket: &Path, disk: &str, log: &Path) -> Reaped {
    let child = Command::new(env!("CARGO_BIN_EXE_vios"))
        .arg("--listen")
        .arg(socket)
        .arg("--disk")
        .arg(disk)
        .env("PARVM_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn vios");
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "vios never listened"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Reaped(child)
}

/// Boot QEMU against `socket`; returns its console output.
fn boot_qemu(image: &Path, socket: &Path) -> String {
    let mut child = Reaped(
        Command::new("qemu-system-x86_64")
            .args(["-machine", "q35,accel=tcg", "-m", "256M", "-smp", "1"])
            .args([
                "-object",
                "memory-backend-memfd,id=mem,size=256M,share=on",
                "-numa",
                "node,memdev=mem",
            ])
            .arg("-chardev")
            .arg(format!("socket,id=c,path={}", socket.display()))
            .args(["-device", "vhost-user-blk-pci,chardev=c"])
            .arg("-kernel")
            .arg(image.join("bzImage"))
            .arg("-initrd")
            .arg(image.join("initramfs-pci.cpio.gz"))
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .args([
                "-nodefaults",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qemu-system-x86_64 (run scripts/install-deps.sh)"),
    );
    let mut stdout = child.0.stdout.take().unwrap();
    let mut stderr = child.0.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        out + &err
    });
    let start = Instant::now();
    loop {
        if child.0.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > BOOT_TIMEOUT {
            let _ = child.0.kill();
            let out = reader.join().unwrap();
            panic!("QEMU did not power off within {BOOT_TIMEOUT:?}:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = reader.join().unwrap();
    eprintln!("QEMU booted in {:?}", start.elapsed());
    out
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn linux_in_qemu_writes_and_reads_through_vios() {
    let image = linux::vios_image();
    let scratch = Scratch::new("rw");
    let disk = scratch.0.join("disk.raw");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(DISK_BYTES).unwrap();
    let socket = scratch.0.join("vios.sock");
    let vios_log = scratch.0.join("vios.log");
    let _vios = start_vios(&socket, disk.to_str().unwrap(), &vios_log);

    let out = boot_qemu(&image, &socket);
    let log = std::fs::read_to_string(&vios_log).unwrap_or_default();
    let want = sha256_of(&image.join("pattern.bin"));
    assert!(
        out.contains(&format!(
            "parvm-linux: found /dev/vda {} sectors",
            DISK_BYTES / 512
        )),
        "guest did not find the disk:\n{out}\nvios:\n{log}"
    );
    assert!(
        out.contains(&format!("parvm-linux: vda ok {want}")),
        "guest did not read its pattern back:\n{out}\nvios:\n{log}"
    );
    assert!(!out.contains("parvm-linux: FAIL"), "{out}");
    // The data reached the image.
    let pattern = std::fs::read(image.join("pattern.bin")).unwrap();
    let mut on_disk = vec![0u8; pattern.len()];
    std::fs::File::open(&disk)
        .unwrap()
        .read_exact_at(&mut on_disk, 0)
        .unwrap();
    assert!(
        on_disk == pattern,
        "the image does not hold the guest's pattern"
    );
    assert!(log.contains("client connected"), "{log}");
}

#[test]
fn linux_in_qemu_cannot_write_a_read_only_export() {
    let image = linux::vios_image();
    let scratch = Scratch::new("ro");
    let disk = scratch.0.join("disk.raw");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(DISK_BYTES).unwrap();
    f.write_all_at(b"read-only image", 0).unwrap();
    let socket = scratch.0.join("vios.sock");
    let vios_log = scratch.0.join("vios.log");
    let _vios = start_vios(&socket, &format!("{},ro", disk.display()), &vios_log);

    let out = boot_qemu(&image, &socket);
    assert!(
        out.contains(&format!(
            "parvm-linux: found /dev/vda {} sectors",
            DISK_BYTES / 512
        )),
        "{out}"
    );
    assert!(out.contains("parvm-linux: FAIL write to /dev/vda"), "{out}");
    let mut head = [0u8; 15];
    std::fs::File::open(&disk)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert_eq!(&head, b"read-only image");
}
