#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Booting the tiny guest with the real `vmm` binary: serial output and exit
//! status for the configurations a user would run.

use parvm_tests::guests::{fnv1a64, guest_path};
use parvm_tests::{repo_root, run, scratch_dir, Finished};
use std::process::Command;
use std::time::Duration;

fn vmm(args: &[&str]) -> Finished {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm"));
    cmd.args(args);
    run(cmd, Duration::from_secs(60))
}

fn boot(kernel: &str, vcpus: u32, mem_mib: u64, extra: &[&str]) -> Finished {
    let k = guest_path(kernel).display().to_string();
    let (v, m) = (vcpus.to_string(), mem_mib.to_string());
    let mut args = vec!["--kernel", &k, "--vcpus", &v, "--memory-mib", &m];
    args.extend_from_slice(extra);
    vmm(&args)
}

/// Usable RAM the guest should count from the e820 map, in MiB.
fn expected_mem_mib(mem_mib: u64) -> u64 {
    (0x9fc00 + (mem_mib << 20) - (1 << 20)) >> 20
}

fn assert_clean_boot(f: &Finished, vcpus: u32, mem_mib: u64) {
    assert!(
        !f.timed_out,
        "guest did not finish: {}\n{}",
        f.stdout, f.stderr
    );
    assert_eq!(
        f.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        f.stdout,
        f.stderr
    );
    let out = &f.stdout;
    assert!(out.contains("parvm-guest: ready\n"), "{out}");
    assert!(
        out.contains(&format!("parvm-guest: cpus={vcpus}\n")),
        "{out}"
    );
    assert!(
        out.contains(&format!("parvm-guest: smp online={vcpus}/{vcpus}\n")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "parvm-guest: mem={}MiB\n",
            expected_mem_mib(mem_mib)
        )),
        "{out}"
    );
    assert!(out.contains("parvm-guest: cpl=3\n"), "{out}");
    assert!(out.contains("parvm-guest: poweroff\n"), "{out}");
}

#[test]
fn one_vcpu_16_mib() {
    let f = boot("tiny.elf", 1, 16, &[]);
    assert_clean_boot(&f, 1, 16);
    assert!(f.stdout.contains("parvm-guest: boot=pvh\n"), "{}", f.stdout);
}

#[test]
fn two_vcpus_1_gib() {
    let f = boot("tiny.elf", 2, 1024, &[]);
    assert_clean_boot(&f, 2, 1024);
}

#[test]
fn four_vcpus_64bit_entry() {
    let f = boot("tiny64.elf", 4, 64, &[]);
    assert_clean_boot(&f, 4, 64);
    assert!(
        f.stdout.contains("parvm-guest: boot=linux64\n"),
        "{}",
        f.stdout
    );
}

#[test]
fn bzimage() {
    let f = boot("tiny.bzImage", 2, 32, &[]);
    assert_clean_boot(&f, 2, 32);
    assert!(
        f.stdout.contains("parvm-guest: boot=linux64\n"),
        "{}",
        f.stdout
    );
}

#[test]
fn initrd_checksum_and_cmdline_reach_the_guest() {
    let dir = scratch_dir("initrd");
    let initrd = dir.join("initrd.img");
    // 3 MiB + 123 bytes of a pattern, so page alignment and the tail matter.
    let data: Vec<u8> = (0..(3usize << 20) + 123)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    std::fs::write(&initrd, &data).expect("write initrd");
    let want = format!(
        "parvm-guest: initrd bytes={} fnv1a64={:016x}\n",
        data.len(),
        fnv1a64(&data)
    );
    let cmdline = "console=ttyS0 parvm.hello=world spaces  kept";
    for kernel in ["tiny.elf", "tiny64.elf", "tiny.bzImage"] {
        let f = boot(
            kernel,
            1,
            64,
            &[
                "--initrd",
                &initrd.display().to_string(),
                "--cmdline",
                cmdline,
            ],
        );
        assert_clean_boot(&f, 1, 64);
        assert!(
            f.stdout.contains(&want),
            "{kernel}: want {want} in\n{}",
            f.stdout
        );
        assert!(
            f.stdout
                .contains(&format!("parvm-guest: cmdline={cmdline}\n")),
            "{kernel}: {}",
            f.stdout
        );
    }
    let f = boot("tiny.elf", 1, 16, &[]);
    assert!(
        f.stdout.contains("parvm-guest: initrd none\n"),
        "{}",
        f.stdout
    );
}

#[test]
fn triple_fault_exits_nonzero_with_registers() {
    let f = boot("tiny.elf", 1, 16, &["--cmdline", "parvm.test=triplefault"]);
    assert!(
        f.stdout.contains("parvm-guest: triple fault now"),
        "{}",
        f.stdout
    );
    assert_eq!(f.code(), Some(2), "{}", f.stderr);
    let first = f.stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("guest crashed") && first.contains("triple fault"),
        "{}",
        f.stderr
    );
    assert!(
        f.stderr.contains("rip=") && f.stderr.contains("cr3="),
        "{}",
        f.stderr
    );
    assert!(!f.stderr.contains("panicked"));
}

#[test]
fn sigterm_stops_a_running_guest() {
    let k = guest_path("tiny.elf").display().to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm"));
    cmd.args([
        "--kernel",
        &k,
        "--vcpus",
        "2",
        "--memory-mib",
        "32",
        "--cmdline",
        "parvm.test=hang",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn vmm");
    // Wait for the guest to be spinning at CPL3, then ask for a shutdown.
    let out = child.stdout.take().expect("stdout");
    let mut reader = std::io::BufReader::new(out);
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut reader, &mut line).expect("read");
        assert!(n > 0, "guest never said it was hanging: {seen}");
        seen.push_str(&line);
        if line.contains("parvm-guest: hanging") {
            break;
        }
    }
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.stdout = Some(reader.into_inner());
    let f = parvm_tests::wait(child, Duration::from_secs(10));
    assert!(!f.timed_out, "vmm did not stop on SIGTERM");
    assert_eq!(f.code(), Some(0), "{}", f.stderr);
}

#[test]
fn console_to_file_and_none() {
    let dir = scratch_dir("console");
    let log = dir.join("console.log");
    let f = boot(
        "tiny.elf",
        1,
        16,
        &["--console", &log.display().to_string()],
    );
    assert_eq!(f.code(), Some(0), "{}", f.stderr);
    assert!(!f.stdout.contains("parvm-guest"));
    let text = std::fs::read_to_string(&log).expect("console log");
    assert!(text.contains("parvm-guest: ready\n"), "{text}");
    let f = boot("tiny.elf", 1, 16, &["--console", "none"]);
    assert_eq!(f.code(), Some(0), "{}", f.stderr);
    assert!(f.stdout.is_empty(), "{}", f.stdout);
}

#[test]
fn example_definition_boots() {
    let cfg = repo_root().join("configs/tiny.json");
    let f = vmm(&["--config", &cfg.display().to_string()]);
    assert_clean_boot(&f, 2, 64);
    assert!(
        f.stdout
            .contains("parvm-guest: cmdline=console=ttyS0 parvm.example=tiny\n"),
        "{}",
        f.stdout
    );
    // Flags override the file.
    let f = vmm(&[
        "--config",
        &cfg.display().to_string(),
        "--vcpus",
        "1",
        "--cmdline",
        "over",
    ]);
    assert_clean_boot(&f, 1, 64);
    assert!(
        f.stdout.contains("parvm-guest: cmdline=over\n"),
        "{}",
        f.stdout
    );
}
