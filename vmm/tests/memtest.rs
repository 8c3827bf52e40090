#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The tiny guest's memory exerciser (`parvm.test=memtest`, docs/guests.md)
//! under the real vmm: it writes a per-address, per-seed pattern over the
//! RAM from 4 MiB to the end of RAM and verifies it; these tests check the
//! exact lines it prints.

use parvm_tests::guests::{guest_path, MEMTEST_START};
use parvm_tests::{run, Finished};
use std::process::Command;
use std::time::{Duration, Instant};

fn boot(memory_mib: u64, cmdline: &str) -> Finished {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm"));
    cmd.arg("--kernel")
        .arg(guest_path("tiny.elf"))
        .args(["--memory-mib", &memory_mib.to_string()])
        .args(["--cmdline", cmdline]);
    let f = run(cmd, Duration::from_secs(60));
    assert!(!f.timed_out, "vmm timed out:\n{}\n{}", f.stdout, f.stderr);
    assert_eq!(
        f.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        f.stdout,
        f.stderr
    );
    f
}

/// The guest's lines after `initrd none` (the switch's own output).
fn switch_lines(f: &Finished) -> Vec<&str> {
    let lines: Vec<&str> = f
        .stdout
        .lines()
        .filter(|l| l.starts_with("parvm-guest: "))
        .collect();
    let at = lines
        .iter()
        .position(|l| *l == "parvm-guest: initrd none")
        .unwrap_or_else(|| panic!("no initrd line in:\n{}", f.stdout));
    lines[at + 1..].to_vec()
}

fn start_line(memory_mib: u64, seed: u64) -> String {
    format!(
        "parvm-guest: memtest start=0x{MEMTEST_START:016x} end=0x{:016x} seed={seed}",
        memory_mib << 20
    )
}

#[test]
fn memtest_over_32_mib_passes_twice_by_default() {
    let f = boot(32, "parvm.test=memtest");
    assert_eq!(
        switch_lines(&f),
        [
            "parvm-guest: memtest start=0x0000000000400000 end=0x0000000002000000 seed=1",
            "parvm-guest: memtest written",
            "parvm-guest: memtest pass 1 ok",
            "parvm-guest: memtest pass 2 ok",
            "parvm-guest: poweroff",
        ],
        "{}",
        f.stdout
    );
}

#[test]
fn memtest_prints_the_seed_and_runs_the_passes_asked_for() {
    for (seed, passes) in [(42u64, 1u64), (18_446_744_073_709_551_615, 3)] {
        let f = boot(
            48,
            &format!("parvm.test=memtest parvm.seed={seed} parvm.passes={passes}"),
        );
        let mut want = vec![start_line(48, seed), "parvm-guest: memtest written".into()];
        want.extend((1..=passes).map(|k| format!("parvm-guest: memtest pass {k} ok")));
        want.push("parvm-guest: poweroff".into());
        assert_eq!(switch_lines(&f), want, "{}", f.stdout);
    }
}

/// `parvm.memtest_hold=1`: a line, then about a second of idling (TSC
/// calibrated against the PIT) before the passes.
#[test]
fn memtest_hold_idles_between_writing_and_verifying() {
    let t = Instant::now();
    let f = boot(16, "parvm.test=memtest parvm.passes=1 parvm.memtest_hold=1");
    let took = t.elapsed();
    let lines = switch_lines(&f);
    assert_eq!(lines.len(), 5, "{}", f.stdout);
    assert_eq!(lines[0], start_line(16, 1));
    assert_eq!(lines[1], "parvm-guest: memtest written");
    let hold = lines[2]
        .strip_prefix("parvm-guest: memtest hold=1s tsc=")
        .and_then(|r| r.strip_suffix("MHz"))
        .unwrap_or_else(|| panic!("hold line: {}", f.stdout));
    let mhz: u64 = hold.parse().unwrap();
    assert!((100..100_000).contains(&mhz), "tsc={mhz}MHz");
    assert_eq!(
        lines[3..],
        ["parvm-guest: memtest pass 1 ok", "parvm-guest: poweroff"]
    );
    assert!(took >= Duration::from_millis(900), "took {took:?}");
}

#[test]
fn memtest_without_ram_above_4_mib_says_so() {
    let f = boot(4, "parvm.test=memtest");
    assert_eq!(
        switch_lines(&f),
        [
            "parvm-guest: memtest no RAM above 4 MiB",
            "parvm-guest: poweroff"
        ],
        "{}",
        f.stdout
    );
}
