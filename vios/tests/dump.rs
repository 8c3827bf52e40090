//! Firmware-assisted dump with a standalone VIOS (docs/dump.md): the `vmm`
//! binary under KVM runs the tiny guest's dump switches
//! (tests/guests/dump.S) with `--dump-disk vhost-user:SOCKET`, a `vios`
//! binary serves the dump disk, and the test reads the disk image: the
//! table lists the dump, `readelf` reads the extracted core, batch gdb
//! shows the guest's registers and the pattern it wrote.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{vmm_binary, Vios};
use parvm_protocol::dump::{DumpState, DumpTrigger};
use parvm_tests::dumps::{self, DUMP_PATTERN, DUMP_QWORDS, DUMP_R14, DUMP_R15};
use parvm_tests::guests::guest_path;
use parvm_tests::{run, scratch_dir};

fn vmm(socket: &Path, memory_mib: u64, test: &str) -> Command {
    let mut cmd = Command::new(vmm_binary());
    cmd.arg("--kernel")
        .arg(guest_path("tiny.elf"))
        .args(["--memory-mib", &memory_mib.to_string()])
        .args(["--cmdline", &format!("parvm.test={test}")])
        .arg("--dump-disk")
        .arg(format!("vhost-user:{}", socket.display()));
    cmd
}

fn setup(tag: &str, disk_mib: u64) -> (PathBuf, PathBuf, PathBuf, Vios) {
    let dir = scratch_dir(tag);
    let img = dir.join("dump.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(disk_mib << 20).unwrap();
    let socket = dir.join("vios.sock");
    let vios = Vios::spawn(&socket, &img.display().to_string());
    (dir, img, socket, vios)
}

/// The core of the dump the image's table lists last, checked with
/// readelf and gdb: the pattern at DUMP_PATTERN, r14 and r15.
fn check_core(dir: &Path, img: &Path, trigger: DumpTrigger) {
    let table = dumps::table(img).unwrap();
    let rec = table.dumps.last().expect("a dump in the table");
    assert_eq!(rec.state, DumpState::Complete, "{rec:?}");
    assert_eq!(rec.trigger, trigger);
    assert_eq!(rec.written, rec.size);
    assert!(
        rec.zero_bytes > rec.ram_bytes / 2,
        "mostly zero RAM is not written: {rec:?}"
    );
    assert!(rec.size < rec.ram_bytes / 2, "{rec:?}");
    let core = dir.join(format!("core.{}", rec.id));
    dumps::extract(img, rec, &core);
    let elf = dumps::readelf(&core);
    assert!(elf.contains("CORE (Core file)"), "{elf}");
    assert!(elf.contains("Advanced Micro Devices X86-64"), "{elf}");
    assert!(elf.contains("NT_PRSTATUS"), "{elf}");
    assert!(elf.contains("QEMU"), "{elf}");
    assert!(elf.contains("LOAD"), "{elf}");
    let out = dumps::gdb(
        &core,
        &["info registers", &format!("x/4gx {DUMP_PATTERN:#x}")],
    );
    assert_eq!(dumps::gdb_register(&out, "r14"), Some(DUMP_R14), "{out}");
    assert_eq!(dumps::gdb_register(&out, "r15"), Some(DUMP_R15), "{out}");
    assert_eq!(dumps::gdb_qwords(&out, DUMP_PATTERN), DUMP_QWORDS, "{out}");
}

#[test]
fn a_triple_fault_is_dumped_and_gdb_reads_the_core() {
    let (dir, img, socket, _vios) = setup("dump-fault", 128);
    let f = run(vmm(&socket, 32, "dumpfault"), Duration::from_secs(60));
    assert!(!f.timed_out, "{}\n{}", f.stdout, f.stderr);
    assert_eq!(f.code(), Some(2), "{}\n{}", f.stdout, f.stderr);
    assert!(
        f.stdout
            .contains("parvm-guest: dump pattern at 0x0000000000400000\n"),
        "{}",
        f.stdout
    );
    assert!(f.stderr.contains("vmm: dump 1 complete"), "{}", f.stderr);
    check_core(&dir, &img, DumpTrigger::TripleFault);
    // A second failure is a second dump on the same disk.
    let f = run(vmm(&socket, 32, "dumpfault"), Duration::from_secs(60));
    assert!(f.stderr.contains("vmm: dump 2 complete"), "{}", f.stderr);
    let table = dumps::table(&img).unwrap();
    assert_eq!(table.dumps.iter().map(|d| d.id).collect::<Vec<_>>(), [1, 2]);
    check_core(&dir, &img, DumpTrigger::TripleFault);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_pvpanic_report_is_dumped() {
    let (dir, img, socket, _vios) = setup("dump-panic", 128);
    let f = run(vmm(&socket, 32, "dumppanic"), Duration::from_secs(60));
    assert_eq!(f.code(), Some(2), "{}\n{}", f.stdout, f.stderr);
    assert!(
        f.stdout
            .contains("parvm-guest: panic through pvpanic now\n"),
        "{}",
        f.stdout
    );
    assert!(
        f.stderr
            .contains("vmm: guest crashed: guest panic reported through pvpanic"),
        "{}",
        f.stderr
    );
    check_core(&dir, &img, DumpTrigger::Pvpanic);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_dump_disk_too_small_or_missing_is_one_line_at_start() {
    let (dir, _img, socket, _vios) = setup("dump-small", 16);
    let f = run(vmm(&socket, 32, "dumpfault"), Duration::from_secs(60));
    assert_eq!(f.code(), Some(1), "{}\n{}", f.stdout, f.stderr);
    let line = f.stderr.trim();
    assert!(!line.contains('\n'), "{line}");
    assert!(
        line.contains("dump disk vhost-user:") && line.contains("too small"),
        "{line}"
    );
    let f = run(
        vmm(&dir.join("nobody.sock"), 32, "dumpfault"),
        Duration::from_secs(60),
    );
    assert_eq!(f.code(), Some(1), "{}\n{}", f.stdout, f.stderr);
    assert!(
        f.stderr.trim().starts_with("vmm: error: dump disk"),
        "{}",
        f.stderr
    );
    assert!(!f.stderr.trim().contains('\n'), "{}", f.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_vios_killed_mid_dump_fails_the_dump_and_the_vmm_still_exits() {
    let (dir, img, socket, mut vios) = setup("dump-kill", 1024);
    // 512 MiB, almost all of it written by the guest: a dump long enough
    // to be interrupted.
    let mut child = vmm(&socket, 512, "dumpfill")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "vmm ended early:\n{seen}"
        );
        seen.push_str(&line);
        if line.starts_with("vmm: dumping after") {
            break;
        }
    }
    // The table says "writing" once the first chunk is out.
    let started = Instant::now();
    while !dumps::table(&img).is_ok_and(|t| t.dumps.len() == 1) {
        assert!(started.elapsed() < Duration::from_secs(20), "{seen}");
        std::thread::sleep(Duration::from_millis(1));
    }
    vios.kill();
    let killed = Instant::now();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    seen.push_str(&rest);
    assert_eq!(status.code(), Some(2), "{seen}");
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "took {:?}",
        killed.elapsed()
    );
    let table = dumps::table(&img).unwrap();
    let rec = &table.dumps[0];
    if seen.contains("vmm: dump 1 complete") {
        // The dump beat the kill: nothing to check here but the record.
        assert_eq!(rec.state, DumpState::Complete);
        eprintln!("note: the dump completed before the VIOS was killed");
    } else {
        assert!(seen.contains("vmm: dump failed: dump 1 failed"), "{seen}");
        // The VIOS could not take the last update: the record says
        // writing, with less than the whole core.
        assert_eq!(rec.state, DumpState::Writing, "{rec:?}");
        assert!(rec.written < rec.size, "{rec:?}");
        // The next dump on the disk marks it failed (interrupted).
        let _vios = Vios::spawn(&socket, &img.display().to_string());
        let f = run(vmm(&socket, 32, "dumpfault"), Duration::from_secs(60));
        assert!(f.stderr.contains("vmm: dump 2 complete"), "{}", f.stderr);
        let table = dumps::table(&img).unwrap();
        let first = table.get(1).unwrap();
        assert_eq!(first.state, DumpState::Failed);
        assert!(first.error.as_deref().unwrap_or("").contains("interrupted"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One QMP command on `qmp` (a line of JSON), waiting for its `return`
/// (events before it are skipped).
fn qmp(stream: &mut BufReader<std::os::unix::net::UnixStream>, command: &str) -> String {
    use std::io::Write;
    stream.get_mut().write_all(command.as_bytes()).unwrap();
    stream.get_mut().write_all(b"\n").unwrap();
    loop {
        let mut line = String::new();
        assert!(stream.read_line(&mut line).unwrap() > 0, "QMP closed");
        assert!(!line.contains("\"error\""), "{command}: {line}");
        if line.contains("\"return\"") {
            return line;
        }
    }
}

/// The notes `readelf -n` lists, as (owner, description) pairs.
fn note_kinds(readelf: &str) -> Vec<(String, String)> {
    readelf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let owner = w.next()?;
            if !matches!(owner, "CORE" | "QEMU") {
                return None;
            }
            let _size = w.next()?;
            Some((owner.to_string(), w.collect::<Vec<_>>().join(" ")))
        })
        .map(|(o, d)| {
            (
                o,
                d.split(" description data:")
                    .next()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn qemu_and_parvm_dumps_of_the_same_guest_read_alike() {
    let (dir, img, socket, _vios) = setup("dump-qemu", 128);
    // parvm: the triple fault, dumped.
    let f = run(vmm(&socket, 32, "dumpfault"), Duration::from_secs(60));
    assert_eq!(f.code(), Some(2), "{}\n{}", f.stdout, f.stderr);
    let rec = dumps::table(&img).unwrap().dumps[0].clone();
    let ours = dir.join("parvm.core");
    dumps::extract(&img, &rec, &ours);
    // QEMU: the same guest; its triple fault pauses the VM
    // (-action reboot=shutdown,shutdown=pause), QMP dump-guest-memory.
    let qmp_path = dir.join("qmp.sock");
    let theirs = dir.join("qemu.core");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,acpi=off",
            "-enable-kvm",
            "-cpu",
            "host,-arch-capabilities",
        ])
        .args(["-m", "32", "-nographic", "-nodefaults", "-serial", "stdio"])
        .arg("-kernel")
        .arg(guest_path("tiny.elf"))
        .args(["-append", "parvm.test=dumpfault"])
        .args(["-action", "reboot=shutdown,shutdown=pause"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qemu-system-x86_64 (run scripts/install-deps.sh)");
    let mut out = BufReader::new(qemu.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("parvm-guest: triple fault now") {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "QEMU ended:\n{seen}");
        seen.push_str(&line);
    }
    let started = Instant::now();
    let stream = loop {
        match std::os::unix::net::UnixStream::connect(&qmp_path) {
            Ok(s) => break s,
            Err(e) => {
                assert!(started.elapsed() < Duration::from_secs(10), "QMP: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let mut stream = BufReader::new(stream);
    let mut greeting = String::new();
    stream.read_line(&mut greeting).unwrap();
    qmp(&mut stream, r#"{"execute":"qmp_capabilities"}"#);
    // Paused once the guest's reset turned into a shutdown.
    while !qmp(&mut stream, r#"{"execute":"query-status"}"#).contains("\"running\": false") {
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    qmp(
        &mut stream,
        &format!(
            r#"{{"execute":"dump-guest-memory","arguments":{{"paging":false,"protocol":"file:{}"}}}}"#,
            theirs.display()
        ),
    );
    let _ = qmp(&mut stream, r#"{"execute":"quit"}"#);
    let _ = qemu.wait();
    // The same kinds of notes, in the same order, and PT_LOADs.
    let (a, b) = (dumps::readelf(&ours), dumps::readelf(&theirs));
    assert_eq!(note_kinds(&a), note_kinds(&b), "parvm:\n{a}\nQEMU:\n{b}");
    assert_eq!(
        note_kinds(&a),
        [
            ("CORE".into(), "NT_PRSTATUS (prstatus structure)".into()),
            ("QEMU".into(), "Unknown note type: (0x00000000)".into())
        ]
    );
    for text in [&a, &b] {
        assert!(
            text.contains("CORE (Core file)") && text.contains("LOAD"),
            "{text}"
        );
    }
    // gdb reads both alike.
    for core in [&ours, &theirs] {
        let out = dumps::gdb(
            core,
            &["info registers", &format!("x/4gx {DUMP_PATTERN:#x}")],
        );
        assert_eq!(dumps::gdb_register(&out, "r15"), Some(DUMP_R15), "{out}");
        assert_eq!(dumps::gdb_qwords(&out, DUMP_PATTERN), DUMP_QWORDS, "{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_watchdog_dumps_a_guest_that_shows_no_sign_of_life() {
    let (dir, img, socket, _vios) = setup("dump-watchdog", 128);
    let started = Instant::now();
    let mut cmd = vmm(&socket, 32, "hang");
    cmd.args(["--watchdog-secs", "2"]);
    let f = run(cmd, Duration::from_secs(60));
    let took = started.elapsed();
    assert_eq!(f.code(), Some(2), "{}\n{}", f.stdout, f.stderr);
    assert!(f.stdout.contains("parvm-guest: hanging\n"), "{}", f.stdout);
    assert!(
        f.stderr
            .contains("vmm: guest crashed: watchdog: no sign of life from the guest for 2 s"),
        "{}",
        f.stderr
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "{took:?}"
    );
    let rec = dumps::table(&img).unwrap().dumps[0].clone();
    assert_eq!(
        (rec.trigger, rec.state),
        (DumpTrigger::Watchdog, DumpState::Complete)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_shared_memory_partition_is_dumped_with_its_paged_out_pages() {
    let (dir, img, socket, _vios) = setup("dump-ams", 256);
    let paging_img = dir.join("paging.img");
    std::fs::File::create(&paging_img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let paging = dir.join("paging.sock");
    let _pager_vios = Vios::spawn(&paging, &paging_img.display().to_string());
    // 64 MiB logical, 16 MiB resident: of the 48 MiB the guest fills, most
    // is on the paging device when it triple-faults.
    let mut cmd = vmm(&socket, 64, "dumpfill");
    cmd.arg("--paging")
        .arg(format!("vhost-user:{}", paging.display()))
        .args(["--resident-mib", "16"]);
    let f = run(cmd, Duration::from_secs(120));
    assert_eq!(f.code(), Some(2), "{}\n{}", f.stdout, f.stderr);
    assert!(
        f.stdout.contains("parvm-guest: dump filled RAM\n"),
        "{}",
        f.stdout
    );
    assert!(f.stderr.contains("vmm: dump 1 complete"), "{}", f.stderr);
    let pager = f
        .stderr
        .lines()
        .find(|l| l.starts_with("vmm: pager:"))
        .unwrap_or_default()
        .to_string();
    let rec = dumps::table(&img).unwrap().dumps[0].clone();
    assert_eq!(rec.state, DumpState::Complete);
    assert!(rec.zero_bytes < 16 << 20, "{rec:?}");
    let core_path = dir.join("ams.core");
    dumps::extract(&img, &rec, &core_path);
    let core = std::fs::read(&core_path).unwrap();
    // Every qword the guest filled, paged out or not, is in the core.
    let filled = dumps::phys_read(&core, 16 << 20, 48 << 20).expect("RAM from 16 MiB in the core");
    let bad = filled
        .chunks(8)
        .position(|q| u64::from_le_bytes(q.try_into().unwrap()) != DUMP_QWORDS[2]);
    assert_eq!(
        bad,
        None,
        "first wrong qword at {:#x}; {pager}",
        (16 << 20) + 8 * bad.unwrap_or(0)
    );
    let out = dumps::gdb(
        &core_path,
        &[
            "info registers",
            &format!("x/4gx {DUMP_PATTERN:#x}"),
            "x/2gx 0x3ff0000",
        ],
    );
    assert_eq!(dumps::gdb_register(&out, "r15"), Some(DUMP_R15), "{out}");
    assert_eq!(dumps::gdb_qwords(&out, DUMP_PATTERN), DUMP_QWORDS, "{out}");
    assert_eq!(
        dumps::gdb_qwords(&out, 0x3ff_0000),
        [DUMP_QWORDS[2]; 2],
        "{out}"
    );
    // The evicted pages came back from the paging device for the dump.
    let page_ins: u64 = pager
        .split_whitespace()
        .find_map(|w| w.strip_prefix("page_ins="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(page_ins > 4096, "{pager}");
    let _ = std::fs::remove_dir_all(&dir);
}
