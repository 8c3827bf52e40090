//! Active Memory Sharing end to end (docs/ams.md): a `vmm` in shared memory
//! mode pages its guest's RAM to a paging device the `vios` binary serves,
//! while the tiny guest writes a per-address pattern over all of it and
//! verifies every byte twice (`parvm.test=memtest`, docs/guests.md).
//! Checked: the guest's own verdict, the VMM's memfd never holding more
//! than the resident target (sampled from /proc all along), the pager's
//! figures, and the pages on the paging image holding exactly what the
//! guest wrote at those addresses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{vmm_binary, Vios};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parvm_tests::amsbench::guest_ram_bytes;
use parvm_tests::guests::{guest_path, memtest_qword, MEMTEST_START};
use parvm_tests::{scratch_dir, wait, Finished};

const PAGE: u64 = 4096;

/// A sparse image of `mib` MiB in `dir`.
fn sparse(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    path
}

/// `vmm` booting the tiny guest with `memory_mib` of (logical) RAM and
/// `--paging paging`.
fn shared_vmm(memory_mib: u64, paging: &str) -> Command {
    let mut cmd = Command::new(vmm_binary());
    cmd.arg("--kernel").arg(guest_path("tiny.elf")).args([
        "--memory-mib",
        &memory_mib.to_string(),
        "--paging",
        paging,
    ]);
    cmd
}

/// A VIOS exporting `disk` as `paging0` on `socket`.
fn start_vios(socket: &Path, disk: &Path) -> Vios {
    Vios::spawn(socket, &format!("{},id=paging0", disk.display()))
}

/// The VMM's `vmm: pager: k=v ...` figures.
fn pager_figures(stderr: &str) -> Vec<(String, u64)> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("vmm: pager: "))
        .unwrap_or_else(|| panic!("no pager line in:\n{stderr}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

fn figure(figures: &[(String, u64)], name: &str) -> u64 {
    figures
        .iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no {name} in {figures:?}"))
        .1
}

/// Boots the memtest guest with `logical_mib` of RAM, `resident_mib`
/// resident at most, paging to `socket`; returns its output and the
/// largest resident size seen.
fn boot_shared(
    socket: &Path,
    logical_mib: u64,
    resident_mib: u64,
    cmdline: &str,
) -> (Finished, u64) {
    let mut cmd = shared_vmm(logical_mib, &format!("vhost-user:{}", socket.display()));
    cmd.args(["--resident-mib", &resident_mib.to_string()])
        .args(["--cmdline", cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut worst = 0;
            while !done.load(Ordering::SeqCst) {
                if let Some(b) = guest_ram_bytes(pid) {
                    worst = worst.max(b);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            worst
        })
    };
    let f = wait(child, Duration::from_secs(120));
    done.store(true, Ordering::SeqCst);
    let worst = sampler.join().unwrap();
    assert!(!f.timed_out, "vmm timed out:\n{}\n{}", f.stdout, f.stderr);
    (f, worst)
}

#[test]
fn memory_four_times_the_resident_target_comes_back_right_through_the_vios() {
    let dir = scratch_dir("ams-memtest");
    let image = dir.join("paging0.img");
    let file = std::fs::File::create(&image).unwrap();
    file.set_len(64 << 20).unwrap();
    drop(file);
    let socket = dir.join("vios.sock");
    let _vios = start_vios(&socket, &image);

    let seed = 5;
    let (f, worst) = boot_shared(
        &socket,
        64,
        16,
        &format!("parvm.test=memtest parvm.seed={seed}"),
    );
    assert_eq!(
        f.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        f.stdout,
        f.stderr
    );
    for line in [
        "parvm-guest: memtest written",
        "parvm-guest: memtest pass 1 ok",
        "parvm-guest: memtest pass 2 ok",
    ] {
        assert!(f.stdout.contains(line), "no `{line}` in:\n{}", f.stdout);
    }
    let target = 16u64 << 20;
    assert!(worst > 0, "the guest-RAM memfd was never seen");
    assert!(worst <= target, "{worst} bytes resident, target {target}");
    let figures = pager_figures(&f.stderr);
    assert_eq!(figure(&figures, "logical"), (64 << 20) / PAGE);
    assert!(figure(&figures, "resident") <= target / PAGE);
    // 60 MiB of pattern through 16 MiB: most of it went out and came back.
    assert!(
        figure(&figures, "page_outs") > (40 << 20) / PAGE,
        "{figures:?}"
    );
    assert!(
        figure(&figures, "page_ins") > (40 << 20) / PAGE,
        "{figures:?}"
    );

    // What the device holds is what the guest wrote: every non-zero page
    // of the pattern range is the pattern, and there are many of them.
    let bytes = std::fs::read(&image).unwrap();
    let mut pattern_pages = 0;
    for page in (MEMTEST_START / PAGE)..((64 << 20) / PAGE) {
        let at = (page * PAGE) as usize;
        let data = &bytes[at..at + PAGE as usize];
        if data.iter().all(|b| *b == 0) {
            continue;
        }
        for (i, q) in data.chunks_exact(8).enumerate() {
            let addr = page * PAGE + i as u64 * 8;
            let got = u64::from_le_bytes(q.try_into().unwrap());
            assert_eq!(got, memtest_qword(addr, seed), "paging image at {addr:#x}");
        }
        pattern_pages += 1;
    }
    assert!(
        pattern_pages > (40 << 20) / PAGE,
        "{pattern_pages} pattern pages on the image"
    );
}

#[test]
fn a_shared_memory_partition_with_a_bad_paging_device_says_which() {
    let dir = scratch_dir("ams-bad");
    // Too small for 64 MiB.
    let image = sparse(&dir, "small.img", 8);
    let socket = dir.join("vios.sock");
    let _vios = start_vios(&socket, &image);
    let mut cmd = shared_vmm(64, &format!("vhost-user:{}", socket.display()));
    cmd.args(["--resident-mib", "16"]);
    let f = parvm_tests::run(cmd, Duration::from_secs(30));
    assert_eq!(f.code(), Some(1), "{}", f.stderr);
    assert!(
        f.stderr.contains("paging device holds 8388608 bytes"),
        "{}",
        f.stderr
    );
    assert_eq!(f.stderr.trim().lines().count(), 1, "{}", f.stderr);

    // No backend at all, and a paging source that is not a VIOS.
    for (paging, says) in [
        (
            format!("vhost-user:{}", dir.join("nobody.sock").display()),
            "nobody.sock",
        ),
        ("/tmp/x.img".to_string(), "--paging /tmp/x.img"),
    ] {
        let f = parvm_tests::run(shared_vmm(64, &paging), Duration::from_secs(30));
        assert_eq!(f.code(), Some(1), "{}", f.stderr);
        assert!(f.stderr.contains(says), "{paging}: {}", f.stderr);
    }
}

#[test]
fn the_guest_stalls_while_its_paging_vios_is_gone_and_resumes_with_every_byte() {
    let dir = scratch_dir("ams-vios-kill");
    let image = sparse(&dir, "paging0.img", 64);
    let socket = dir.join("vios.sock");
    let vios = start_vios(&socket, &image);
    let seed = 11;
    // Enough passes that the guest still pages when the VIOS goes, 1.5 s
    // in, however fast the pager is (a pass over 64 MiB through 16 MiB
    // takes about 0.2 s in a release build, docs/benchmarks.md).
    let passes = 30;
    let run = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            boot_shared(
                &socket,
                64,
                16,
                &format!("parvm.test=memtest parvm.seed={seed} parvm.passes={passes}"),
            )
        })
    };
    // Let it page for a while, then take the paging VIOS away.
    std::thread::sleep(Duration::from_millis(1500));
    drop(vios);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        !run.is_finished(),
        "the guest finished without its paging device"
    );
    let _vios = start_vios(&socket, &image);
    let (f, worst) = run.join().unwrap();
    assert_eq!(
        f.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        f.stdout,
        f.stderr
    );
    for pass in 1..=passes {
        let line = format!("parvm-guest: memtest pass {pass} ok");
        assert!(f.stdout.contains(&line), "no `{line}` in:\n{}", f.stdout);
    }
    assert!(worst <= 16 << 20, "{worst} bytes resident");
    assert!(f.stderr.contains("paging device gone"), "{}", f.stderr);
}

/// The guest's `parvm.test=blk` pattern: byte i of sector s is
/// (s * 31 + i * 7) & 0xff, sectors 0..63.
fn blk_pattern() -> Vec<u8> {
    (0..64 * 512)
        .map(|o| ((o / 512) * 31 + (o % 512) * 7) as u8)
        .collect()
}

#[test]
fn disk_buffers_that_were_paged_out_are_read_and_written_right_through_the_vios() {
    // `parvm.test=blkswap` fills its write buffer (guest RAM at 2 MiB), then
    // writes over 24 MiB of other RAM: with 4 MiB resident, the buffer has
    // been paged out when the write request is submitted from it; the same
    // for the read buffer before the read lands in it. The disk is served
    // by a VIOS; the VMM's own virtio-blk carries the data (docs/ams.md).
    let dir = scratch_dir("ams-blkswap");
    let paging = sparse(&dir, "paging0.img", 32);
    let data = dir.join("data.img");
    std::fs::write(&data, vec![0x5au8; 1 << 20]).unwrap();
    let paging_socket = dir.join("paging.sock");
    let data_socket = dir.join("data.sock");
    let _paging_vios = start_vios(&paging_socket, &paging);
    let _data_vios = start_vios(&data_socket, &data);
    let mut cmd = shared_vmm(32, &format!("vhost-user:{}", paging_socket.display()));
    cmd.args(["--resident-mib", "4"])
        .arg("--disk")
        .arg(format!("vhost-user:{},id=swap-0", data_socket.display()))
        .args(["--cmdline", "parvm.test=blkswap"]);
    let f = parvm_tests::run(cmd, Duration::from_secs(120));
    assert_eq!(
        f.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        f.stdout,
        f.stderr
    );
    assert!(
        f.stdout
            .contains("parvm-guest: blkswap write=0 flush=0 read=0 match=yes"),
        "{}",
        f.stdout
    );
    assert_eq!(
        f.stdout.matches("parvm-guest: blkswap swept=24MiB").count(),
        2
    );
    let image = std::fs::read(&data).unwrap();
    let wrong = (0..64 * 512)
        .filter(|&i| image[i] != blk_pattern()[i])
        .count();
    assert_eq!(
        wrong, 0,
        "bytes of sectors 0..63 on the disk image not the guest's pattern"
    );
    assert!(
        image[64 * 512..].iter().all(|b| *b == 0x5a),
        "past sector 63"
    );
    let figures = pager_figures(&f.stderr);
    assert!(
        figure(&figures, "page_outs") > (16 << 20) / PAGE,
        "{figures:?}"
    );
    assert!(figure(&figures, "resident") <= (4 << 20) / PAGE);
}
