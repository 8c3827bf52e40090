//! Least privilege (docs/security.md): the VMM needs no root. It runs as
//! `nobody` given only a KVM device node it may open (here a private node
//! with /dev/kvm's device number, in a scratch directory owned by
//! `nobody`: the real /dev/kvm is untouched), its kernel and its disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use parvm_tests::guests::guest_path;
use parvm_tests::sandbox::{chown_tree, is_root, private_device_node, NOBODY};
use parvm_tests::{run, scratch_dir};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

#[test]
fn the_vmm_boots_and_does_disk_io_as_nobody_with_a_private_kvm_node() {
    if !is_root() {
        eprintln!("skipped: changing to another user needs root");
        return;
    }
    let dir = scratch_dir("unprivileged-vmm");
    let kernel = dir.join("tiny.elf");
    std::fs::copy(guest_path("tiny.elf"), &kernel).unwrap();
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    chown_tree(&dir, NOBODY).unwrap();
    let kvm = dir.join("kvm");
    private_device_node(std::path::Path::new("/dev/kvm"), &kvm, NOBODY).unwrap();

    let vmm = |kvm_device: &std::path::Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm"));
        cmd.arg("--kernel")
            .arg(&kernel)
            .args(["--memory-mib", "32", "--cmdline", "parvm.test=blk"])
            .arg("--disk")
            .arg(&img)
            .arg("--kvm-device")
            .arg(kvm_device)
            .uid(NOBODY)
            .gid(NOBODY);
        run(cmd, Duration::from_secs(60))
    };

    let f = vmm(&kvm);
    assert_eq!(f.code(), Some(0), "{}\n{}", f.stdout, f.stderr);
    assert!(
        f.stdout.contains("match=yes"),
        "the guest's disk I/O: {}",
        f.stdout
    );
    assert!(f.stdout.contains("parvm-guest: poweroff\n"), "{}", f.stdout);
    let written = std::fs::read(&img).unwrap();
    assert!(written[..512].iter().any(|&b| b != 0), "nothing written");

    // Without the private node `nobody` cannot use KVM at all.
    if std::fs::metadata("/dev/kvm").is_ok() {
        let f = vmm(std::path::Path::new("/dev/kvm"));
        if f.code() == Some(1) {
            assert!(
                f.stderr.contains("cannot open KVM device /dev/kvm"),
                "{}",
                f.stderr
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
