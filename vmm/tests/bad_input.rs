#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Bad input to the `vmm` binary: each case gets a one-line error naming the
//! problem and exit status 1, never a panic.

use parvm_tests::guests::guest_path;
use parvm_tests::{run, scratch_dir, Finished};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn vmm(args: &[&str]) -> Finished {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm"));
    cmd.args(args);
    run(cmd, Duration::from_secs(30))
}

/// Asserts a clean refusal whose single stderr line contains every `needle`.
fn refused(f: &Finished, needles: &[&str]) {
    assert_eq!(f.code(), Some(1), "exit status; stderr: {}", f.stderr);
    assert!(!f.stderr.contains("panicked"), "panic: {}", f.stderr);
    let lines: Vec<&str> = f.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one line of error expected, got: {}",
        f.stderr
    );
    assert!(lines[0].starts_with("vmm: error: "), "{}", lines[0]);
    for n in needles {
        assert!(lines[0].contains(n), "`{n}` not in: {}", lines[0]);
    }
    assert!(!f.stdout.contains("parvm-guest"), "guest must not run");
}

fn tiny() -> String {
    guest_path("tiny.elf").display().to_string()
}

#[test]
fn missing_kvm_device() {
    let f = vmm(&["--kernel", &tiny(), "--kvm-device", "/nonexistent/kvm"]);
    refused(&f, &["/nonexistent/kvm", "No such file"]);
}

#[test]
fn kvm_device_that_is_not_kvm() {
    let f = vmm(&["--kernel", &tiny(), "--kvm-device", "/dev/null"]);
    refused(&f, &["/dev/null", "not a usable KVM device"]);
}

#[test]
fn no_permission_on_dev_kvm() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to drop to an unprivileged uid");
        return;
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm"));
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    // The kernel path must be readable by nobody; the error comes first anyway.
    cmd.args(["--kernel", "/nonexistent", "--kvm-device", "/dev/kvm"]);
    let f = run(cmd, Duration::from_secs(30));
    refused(&f, &["/dev/kvm", "Permission denied"]);
}

#[test]
fn missing_kernel() {
    let f = vmm(&["--kernel", "/nonexistent/vmlinux"]);
    refused(
        &f,
        &["cannot open kernel /nonexistent/vmlinux", "No such file"],
    );
}

#[test]
fn no_kernel_at_all() {
    refused(&vmm(&["--memory-mib", "16"]), &["no kernel given"]);
}

#[test]
fn unreadable_kernel() {
    let dir = scratch_dir("unreadable-kernel");
    let f = vmm(&["--kernel", &dir.display().to_string()]);
    refused(&f, &["kernel", "Is a directory"]);
}

#[test]
fn truncated_and_foreign_kernels() {
    let dir = scratch_dir("bad-kernels");
    let elf = std::fs::read(guest_path("tiny.elf")).expect("tiny.elf");
    let bz = std::fs::read(guest_path("tiny.bzImage")).expect("tiny.bzImage");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("trunc.elf", elf[..100].to_vec(), "kernel"),
        ("header-only.elf", elf[..64].to_vec(), "kernel"),
        ("trunc.bzImage", bz[..0x300].to_vec(), "kernel"),
        (
            "text.img",
            b"this is not a kernel\n".repeat(100),
            "neither an ELF vmlinux nor a bzImage",
        ),
        (
            "empty.img",
            Vec::new(),
            "neither an ELF vmlinux nor a bzImage",
        ),
    ];
    for (name, bytes, needle) in cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        let f = vmm(&["--kernel", &p.display().to_string(), "--memory-mib", "16"]);
        refused(&f, &[name, needle]);
    }
}

#[test]
fn memory_too_small_for_kernel_or_initrd() {
    let dir = scratch_dir("too-small");
    // A kernel whose file does not fit: the tiny ELF padded to 3 MiB.
    let mut big = std::fs::read(guest_path("tiny.elf")).expect("tiny.elf");
    big.resize(3 << 20, 0);
    let k = dir.join("big.elf");
    std::fs::write(&k, big).expect("write");
    let f = vmm(&["--kernel", &k.display().to_string(), "--memory-mib", "2"]);
    refused(&f, &["too small for kernel", "2 MiB"]);
    // Kernel fits in 8 MiB (it boots there), kernel + a 7 MiB initrd does not.
    let ok = vmm(&["--kernel", &tiny(), "--memory-mib", "8"]);
    assert_eq!(
        ok.code(),
        Some(0),
        "tiny guest must fit in 8 MiB: {}",
        ok.stderr
    );
    let i = dir.join("initrd");
    std::fs::write(&i, vec![7u8; 7 << 20]).expect("write");
    let f = vmm(&[
        "--kernel",
        &tiny(),
        "--initrd",
        &i.display().to_string(),
        "--memory-mib",
        "8",
    ]);
    refused(&f, &["initrd", "does not fit", "8 MiB"]);
}

#[test]
fn initrd_larger_than_ram() {
    let dir = scratch_dir("initrd-huge");
    let i = dir.join("initrd");
    let f = std::fs::File::create(&i).expect("create");
    f.set_len(64 << 20).expect("set_len");
    let f = vmm(&[
        "--kernel",
        &tiny(),
        "--initrd",
        &i.display().to_string(),
        "--memory-mib",
        "16",
    ]);
    refused(&f, &["initrd", "67108864 bytes", "16 MiB"]);
    let f = vmm(&["--kernel", &tiny(), "--initrd", "/nonexistent/initrd"]);
    refused(&f, &["cannot open initrd /nonexistent/initrd"]);
}

#[test]
fn vcpu_counts_out_of_range() {
    refused(
        &vmm(&["--kernel", &tiny(), "--vcpus", "0"]),
        &["vcpus", "got 0"],
    );
    refused(
        &vmm(&["--kernel", &tiny(), "--vcpus", "300"]),
        &["vcpus", "got 300"],
    );
}

#[test]
fn an_overlong_command_line_is_refused_in_one_short_line() {
    // (One argument may be at most 128 KiB; a definition file may hold more.)
    let long = "x".repeat(100 * 1024);
    let f = vmm(&["--kernel", &tiny(), "--cmdline", &long]);
    assert!(f.stderr.len() < 300, "{} bytes of error", f.stderr.len());
    refused(&f, &["cmdline is 102400 bytes", "at most 4095"]);
    let dir = scratch_dir("long-cmdline");
    let def = definition(
        &dir,
        "long.json",
        &format!(
            r#"{{"kernel":"{}","cmdline":"{}"}}"#,
            tiny(),
            "y".repeat(200 * 1024)
        ),
    );
    let f = vmm(&["--config", &def]);
    assert!(f.stderr.len() < 300, "{} bytes of error", f.stderr.len());
    refused(&f, &["cmdline is 204800 bytes", "at most 4095"]);
}

fn definition(dir: &Path, name: &str, json: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, json).expect("write");
    p.display().to_string()
}

#[test]
fn bad_definitions_name_the_field() {
    let dir = scratch_dir("bad-json");
    let k = tiny();
    let unknown = definition(
        &dir,
        "unknown.json",
        &format!(r#"{{"kernel":"{k}","memroy_mib":64}}"#),
    );
    refused(
        &vmm(&["--config", &unknown]),
        &["unknown.json", "memroy_mib"],
    );
    let wrong = definition(
        &dir,
        "wrong.json",
        &format!(r#"{{"kernel":"{k}","vcpus":"two"}}"#),
    );
    refused(
        &vmm(&["--config", &wrong]),
        &["wrong.json", "field `vcpus`", "invalid type"],
    );
    let neg = definition(
        &dir,
        "neg.json",
        &format!(r#"{{"kernel":"{k}","memory_mib":-5}}"#),
    );
    refused(&vmm(&["--config", &neg]), &["field `memory_mib`"]);
    let broken = definition(&dir, "broken.json", r#"{"kernel": "#);
    refused(&vmm(&["--config", &broken]), &["broken.json", "EOF"]);
    let console = definition(
        &dir,
        "console.json",
        &format!(r#"{{"kernel":"{k}","console":""}}"#),
    );
    refused(&vmm(&["--config", &console]), &["console"]);
    refused(
        &vmm(&["--config", "/nonexistent/p.json"]),
        &["cannot read partition definition /nonexistent/p.json"],
    );
}

#[test]
fn bad_disks_are_refused() {
    let dir = scratch_dir("bad-disks");
    let small = dir.join("small.img");
    std::fs::write(&small, [0u8; 511]).unwrap();
    let good = dir.join("good.img");
    std::fs::write(&good, vec![0u8; 1 << 20]).unwrap();
    let k = tiny();
    let f = vmm(&["--kernel", &k, "--disk", "/nonexistent/disk.img"]);
    refused(&f, &["disk0", "/nonexistent/disk.img", "No such file"]);
    let f = vmm(&["--kernel", &k, "--disk", &small.display().to_string()]);
    refused(&f, &["disk0", "small.img", "512"]);
    let f = vmm(&["--kernel", &k, "--disk", &dir.display().to_string()]);
    refused(&f, &["disk0"]);
    let g = good.display().to_string();
    let f = vmm(&[
        "--kernel",
        &k,
        "--disk",
        &format!("{g},id=a"),
        "--disk",
        &format!("{g},id=a"),
    ]);
    refused(&f, &["duplicate disk id `a`"]);
    let f = vmm(&["--kernel", &k, "--disk", &format!("{g},bogus")]);
    refused(&f, &["invalid --disk", "bogus"]);
    let json = definition(
        &dir,
        "disks.json",
        &format!(r#"{{"kernel":"{k}","disks":[{{"id":"root","path":"{g}","readonly":true}}]}}"#),
    );
    refused(&vmm(&["--config", &json]), &["disks[0]", "readonly"]);
}
