#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Debian's stock cloud kernel under `vmm` (docs/linux.md). The image is
//! built from Debian packages by tests/linux/build-image.sh (cached in
//! target/linux/).
//!
//! * `early_boot_reports_what_the_vmm_built` (ignored: ~4 minutes on PVM):
//!   boots the bzImage with 2 vCPUs, a disk and the initramfs and checks what
//!   Linux prints about the VMM's work before PVM's instruction emulator
//!   stops it: the command line, the e820 map, every ACPI table, the MADT's
//!   CPUs and IO-APIC.
//! * `full_boot_on_hardware_kvm`: the acceptance test for VMX/SVM hosts. The
//!   guest boots to its /init, finds /dev/vda through ACPI, writes a pattern
//!   the host then finds in the image, answers commands on its serial
//!   console ([`GuestConsole`]) and powers off cleanly. On PVM it says why it
//!   is skipped and passes.
//! * `image_boots_under_qemu_tcg` (ignored): the same full boot with QEMU/TCG
//!   as the VMM, a reference check of the image, its /init and the command
//!   protocol that runs anywhere (~3 s).
//!
//! ```text
//! cargo test -p vmm --test linux_boot -- --ignored --nocapture
//! ```

use parvm_tests::{linux, scratch_dir};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};
use vmm::acpi::{ACPI_START, IOAPIC_ADDR, IOAPIC_PINS};
use vmm::config::{Console, DiskConfig, DiskSource, PartitionDefinition};
use vmm::devices::virtio::VIRTIO_GSI_BASE;
use vmm::memory::{e820_map, E820_RAM, VIRTIO_MMIO_START};

const VCPUS: u8 = 2;
const MEMORY_MIB: u64 = 512;
const DISK_BYTES: u64 = 16 << 20;

/// What the stock kernel needs on PVM (docs/linux.md, docs/pvm.md): the
/// guest's CPUID shows the host's features whatever the VMM filters, so the
/// kernel itself must be told to leave alone what the emulator lacks
/// (XSAVE/XRSTOR, CMPXCHG16B, ...). Not `la57`: the decompressor turns on
/// 5-level paging from CPUID before the kernel reads `clearcpuid=`, and a
/// kernel told otherwise then faults (seen under QEMU/TCG `-cpu max`).
const PVM_FLAGS: &str = "noxsave mitigations=off nokaslr \
    clearcpuid=cx16,pcid,invpcid,fsgsbase,smap,smep,pku,ospke,rdrand,rdseed,rdpid,umip,erms,\
    fsrm,movbe,x2apic,avx,avx2,avx512f,sha_ni,aes,pclmulqdq,clwb,clflushopt,movdiri,\
    movdir64b,gfni,vaes,vpclmulqdq";

/// The early-boot test's command line: the PVM switches, and the early
/// serial console so that Linux's first lines reach it.
fn pvm_cmdline() -> String {
    format!("console=ttyS0 earlyprintk=serial {PVM_FLAGS}")
}

/// The full boot's command line: a stock kernel with no switches at all
/// (what an operator would write), plus command mode for /init.
const FULL_BOOT_CMDLINE: &str = "console=ttyS0 parvm.console=cmd";

/// Why `/dev/kvm` here is PVM (software virtualization) rather than VMX/SVM,
/// or `None` on a hardware-assisted host. See docs/pvm.md ("Detecting PVM").
fn pvm_reason() -> Option<String> {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Some("the kvm_pvm module is loaded (/sys/module/kvm_pvm)".into());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hardware = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !hardware {
        return Some("the CPU flags in /proc/cpuinfo have neither vmx nor svm".into());
    }
    None
}

/// A running `vmm` whose serial console is read line by line (and, with
/// stdin piped, written to): the test's second console path. Later tests can
/// drive any guest whose /init speaks the `parvm-cmd` protocol
/// (tests/linux/init) with [`GuestConsole::run`].
struct GuestConsole {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every console line so far (kernel timestamps stripped), for messages.
    seen: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
}

/// A kernel log line without its `[    1.234567] ` timestamp.
fn strip_timestamp(line: &str) -> &str {
    let t = line.trim_end_matches('\r');
    if t.starts_with('[') {
        if let Some(end) = t.find("] ") {
            return &t[end + 2..];
        }
    }
    t
}

impl GuestConsole {
    /// Starts `cmd` (a VMM whose stdout is the guest's serial console and
    /// whose stdin, with `with_input`, feeds the guest's serial port).
    fn start(mut cmd: Command, with_input: bool) -> Self {
        cmd.stdin(if with_input {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let mut stderr_pipe = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            // Lines may hold non-UTF-8 bytes (early boot noise): lossy.
            while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                buf.clear();
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr_pipe.read_to_string(&mut s);
            s
        });
        GuestConsole {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The next console line matching `want`, waiting until `deadline`;
    /// `None` if the deadline passed or the VMM exited first.
    fn wait_for(&mut self, deadline: Instant, want: impl Fn(&str) -> bool) -> Option<String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(raw) => {
                    let line = strip_timestamp(&raw).to_string();
                    self.seen.push(line.clone());
                    if want(&line) {
                        return Some(line);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Like [`wait_for`](Self::wait_for), failing the test with the console
    /// so far when the line does not come.
    fn expect(&mut self, deadline: Instant, what: &str, want: impl Fn(&str) -> bool) -> String {
        match self.wait_for(deadline, want) {
            Some(l) => l,
            None => panic!(
                "no console line {what}; console so far:\n{}",
                self.transcript()
            ),
        }
    }

    fn transcript(&self) -> String {
        self.seen.join("\n")
    }

    /// Sends one line to the guest's serial port (through vmm's stdin).
    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("console started without input");
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Runs `command` in the guest (`run <command>` to its /init) and returns
    /// its output lines and exit status.
    fn run(&mut self, command: &str, timeout: Duration) -> (Vec<String>, i32) {
        self.send(&format!("run {command}"));
        let deadline = Instant::now() + timeout;
        let mut output = Vec::new();
        loop {
            let line = self.expect(
                deadline,
                &format!("`parvm-cmd: done` for `{command}`"),
                |_| true,
            );
            if let Some(status) = line.strip_prefix("parvm-cmd: done ") {
                return (output, status.trim().parse().unwrap());
            }
            output.push(line);
        }
    }

    /// Waits for the VMM to exit (killing it after `timeout`); its status
    /// (`None` if it had to be killed) and stderr.
    fn finish(mut self, timeout: Duration) -> (Option<ExitStatus>, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(raw) = self.lines.try_recv() {
            self.seen.push(strip_timestamp(&raw).to_string());
        }
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        (status, stderr.join().unwrap_or_default())
    }
}

impl Drop for GuestConsole {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn vmm_command(image: &Path, disk: &Path, cmdline: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm"));
    cmd.args([
        "--kernel",
        &image.join("bzImage").display().to_string(),
        "--initrd",
        &image.join("initramfs.cpio.gz").display().to_string(),
        "--vcpus",
        &VCPUS.to_string(),
        "--memory-mib",
        &MEMORY_MIB.to_string(),
        "--disk",
        &format!("{},id=linux0", disk.display()),
        "--cmdline",
        cmdline,
        "--console",
        "stdout",
    ]);
    cmd
}

/// The same guest under QEMU with TCG (no KVM): the reference VMM, to check
/// the image, its /init and the command protocol where hardware KVM is
/// missing. microvm with ACPI describes virtio-mmio as LNRO0005 too.
fn qemu_command(image: &Path, disk: &Path, cmdline: &str) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-M",
        "microvm,acpi=on,rtc=on",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        &MEMORY_MIB.to_string(),
        "-smp",
        &VCPUS.to_string(),
        "-kernel",
        &image.join("bzImage").display().to_string(),
        "-initrd",
        &image.join("initramfs.cpio.gz").display().to_string(),
        "-append",
        // Under TCG the TSC-against-PIT calibration fails now and then
        // ("tsc: Unable to calibrate against PIT") and the kernel then hangs
        // calibrating against jiffies: give it the TSC rate.
        &format!("{cmdline} tsc_early_khz=2000000"),
        "-drive",
        &format!("id=d,file={},format=raw,if=none", disk.display()),
        "-device",
        "virtio-blk-device,drive=d,serial=linux0",
        "-nographic",
        "-no-reboot",
    ]);
    cmd
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// The `ACPI: SIG 0x... LEN (vREV OEM...)` lines Linux prints for the tables
/// the VMM builds for this partition: built through the library (never
/// run) and read back from its guest memory, RSDP -> XSDT -> tables, FADT ->
/// DSDT, in the order Linux prints them.
fn expected_acpi_lines(disk: &Path) -> Vec<String> {
    let config = PartitionDefinition {
        vcpus: Some(u64::from(VCPUS)),
        memory_mib: Some(MEMORY_MIB),
        kernel: Some(parvm_tests::guests::guest_path("tiny.elf")),
        console: Some(Console::None),
        disks: Some(vec![DiskConfig {
            id: "linux0".into(),
            source: DiskSource::Image(disk.to_path_buf()),
            read_only: true,
        }]),
        ..Default::default()
    }
    .validate()
    .unwrap();
    let vmm = vmm::Vmm::new(config, Path::new(vmm::KVM_DEVICE)).unwrap();
    let mem = &vmm.ram.memory;
    let read = |addr: u64, len: usize| {
        let mut b = vec![0u8; len];
        mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    };
    let rsdp = read(ACPI_START, 36);
    let oem = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut lines = vec![format!(
        "ACPI: RSDP 0x{ACPI_START:016X} {:06X} (v{:02} {})",
        u32_at(&rsdp, 20),
        rsdp[15],
        oem(&rsdp[9..15])
    )];
    let table_line = |addr: u64| {
        let h = read(addr, 36);
        (
            format!(
                "ACPI: {} 0x{addr:016X} {:06X} (v{:02} {} {} {:08X} {} {:08X})",
                oem(&h[0..4]),
                u32_at(&h, 4),
                h[8],
                oem(&h[10..16]),
                oem(&h[16..24]),
                u32_at(&h, 24),
                oem(&h[28..32]),
                u32_at(&h, 32)
            ),
            h,
        )
    };
    let xsdt_addr = u64_at(&rsdp, 24);
    let (line, xsdt) = table_line(xsdt_addr);
    lines.push(line);
    let xsdt = read(xsdt_addr, u32_at(&xsdt, 4) as usize);
    for off in (36..xsdt.len()).step_by(8) {
        let addr = u64_at(&xsdt, off);
        let (line, header) = table_line(addr);
        lines.push(line);
        if &header[0..4] == b"FACP" {
            let fadt = read(addr, 148);
            lines.push(table_line(u64_at(&fadt, 140)).0);
        }
    }
    lines
}

/// The `BIOS-e820:` lines Linux prints for the map the VMM hands it.
fn expected_e820_lines() -> Vec<String> {
    e820_map(MEMORY_MIB << 20)
        .iter()
        .map(|e| {
            format!(
                "BIOS-e820: [mem {:#018x}-{:#018x}] {}",
                e.addr,
                e.addr + e.size - 1,
                if e.kind == E820_RAM {
                    "usable"
                } else {
                    "reserved"
                }
            )
        })
        .collect()
}

#[test]
#[ignore = "slow on PVM (~4 minutes): cargo test -p vmm --test linux_boot -- --ignored"]
fn early_boot_reports_what_the_vmm_built() {
    let image = linux::image();
    let dir = scratch_dir("linux-early");
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(DISK_BYTES)
        .unwrap();
    let acpi = expected_acpi_lines(&disk);
    let e820 = expected_e820_lines();
    let cmdline = pvm_cmdline();
    let full_cmdline = format!(
        "{cmdline} {}",
        virtio_devices::kernel_cmdline_device(VIRTIO_MMIO_START, VIRTIO_GSI_BASE)
    );

    let started = Instant::now();
    let mut console = GuestConsole::start(vmm_command(&image, &disk, &cmdline), false);
    // On PVM the decompressor alone takes ~3.5 minutes.
    let deadline = started + Duration::from_secs(420);

    let line = console.expect(deadline, "`Command line:`", |l| {
        l.starts_with("Command line: ")
    });
    assert_eq!(line, format!("Command line: {full_cmdline}"));

    console.expect(deadline, "`BIOS-provided physical RAM map:`", |l| {
        l == "BIOS-provided physical RAM map:"
    });
    let mut got = Vec::new();
    while got.len() < e820.len() {
        let l = console.expect(deadline, "`BIOS-e820:`", |_| true);
        assert!(
            l.starts_with("BIOS-e820: "),
            "e820 map ended early at `{l}`; want\n{}",
            e820.join("\n")
        );
        got.push(l);
    }
    assert_eq!(got, e820, "the e820 map (docs/boot-protocol.md)");
    let next = console.expect(deadline, "after the e820 map", |_| true);
    assert!(
        !next.starts_with("BIOS-e820: "),
        "extra e820 entry `{next}`"
    );

    // Every table, in the order the VMM laid them out, with its address,
    // length, revision and parvm's OEM fields.
    for want in &acpi {
        console.expect(deadline, &format!("`{want}`"), |l| l == want);
    }
    let madt = [
        // The MADT's Local APIC NMI, IO-APIC (id = vCPU count) and override.
        "ACPI: LAPIC_NMI (acpi_id[0xff] dfl dfl lint[0x1])".to_string(),
        format!("IOAPIC[0]: apic_id {VCPUS}, version "),
        "ACPI: INT_SRC_OVR (bus 0 bus_irq 0 global_irq 2 high edge)".to_string(),
        "ACPI: Using ACPI (MADT) for SMP configuration information".to_string(),
        // One Processor Local APIC per vCPU, none hot-pluggable.
        format!("smpboot: Allowing {VCPUS} CPUs, 0 hotplug CPUs"),
    ];
    let ioapic_tail = format!("address {IOAPIC_ADDR:#x}, GSI 0-{}", IOAPIC_PINS - 1);
    for want in &madt {
        let l = console.expect(deadline, &format!("`{want}`"), |l| {
            l.starts_with(want.as_str())
        });
        if l.starts_with("IOAPIC[0]") {
            assert!(l.ends_with(&ioapic_tail), "`{l}`: want `... {ioapic_tail}`");
        }
    }
    let took = started.elapsed();
    let (_, stderr) = console.finish(Duration::from_secs(0));
    eprintln!(
        "linux_boot: early boot checked in {:.0} s (Linux reached SMP setup); vmm stderr:\n{stderr}",
        took.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Boots the Linux test image to its /init under `vmm` and drives it: the
/// markers, commands on the serial console, a clean power-off, and the
/// guest's writes found in the image. Returns how long it took.
fn full_boot(
    vmm: impl Fn(&Path, &Path, &str) -> Command,
    name: &str,
    timeout: Duration,
) -> Duration {
    let image = linux::image();
    let dir = scratch_dir(name);
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(DISK_BYTES)
        .unwrap();
    let pattern = std::fs::read(image.join("pattern.bin")).unwrap();

    let started = Instant::now();
    let mut console = GuestConsole::start(vmm(&image, &disk, FULL_BOOT_CMDLINE), true);
    let deadline = started + timeout;
    console.expect(deadline, "`parvm-linux: init started`", |l| {
        l.starts_with("parvm-linux: init started ")
    });
    let failed = |l: &str| l.starts_with("parvm-linux: FAIL");
    for m in ["virtio_ring", "virtio", "virtio_mmio", "virtio_blk"] {
        let want = format!("parvm-linux: loaded {m}");
        let l = console.expect(deadline, &format!("`{want}`"), |l| l == want || failed(l));
        assert_eq!(l, want, "{}", console.transcript());
    }
    let found = console.expect(deadline, "`parvm-linux: found /dev/vda`", |l| {
        l.starts_with("parvm-linux: found /dev/vda") || failed(l)
    });
    assert_eq!(
        found,
        format!("parvm-linux: found /dev/vda {} sectors", DISK_BYTES / 512),
        "{}",
        console.transcript()
    );
    let ok = console.expect(deadline, "`parvm-linux: vda ok`", |l| {
        l.starts_with("parvm-linux: vda ok ") || failed(l)
    });
    assert!(
        ok.starts_with("parvm-linux: vda ok "),
        "{}",
        console.transcript()
    );

    // The second console path: commands on the serial port.
    console.expect(deadline, "`parvm-cmd: ready`", |l| l == "parvm-cmd: ready");
    let (out, status) = console.run("ls /sys/bus/acpi/devices", Duration::from_secs(30));
    assert_eq!(status, 0, "{out:?}");
    assert!(
        out.iter()
            .any(|l| l.split_whitespace().any(|w| w == "LNRO0005:00")),
        "virtio-mmio device not found through ACPI: {out:?}"
    );
    let (out, status) = console.run("cat /sys/block/vda/serial", Duration::from_secs(30));
    assert_eq!((out, status), (vec!["linux0".to_string()], 0), "disk id");
    let (out, status) = console.run("test -b /dev/vdb", Duration::from_secs(30));
    assert_eq!(status, 1, "one disk, one /dev/vd*: {out:?}");
    console.send("poweroff");
    console.expect(deadline, "`parvm-linux: powering off`", |l| {
        l == "parvm-linux: powering off"
    });
    let transcript = console.transcript();
    let (status, stderr) = console.finish(Duration::from_secs(30));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "no clean exit after the guest's power-off:\n{transcript}\nstderr:\n{stderr}"
    );

    // The host finds the guest's writes in the image.
    let written = std::fs::read(&disk).unwrap();
    assert!(
        written[..pattern.len()] == pattern[..],
        "the guest's pattern is not at the start of the disk image"
    );
    let _ = std::fs::remove_dir_all(&dir);
    started.elapsed()
}

/// The acceptance test for VMX/SVM hosts (docs/linux.md).
#[test]
fn full_boot_on_hardware_kvm() {
    if let Some(why) = pvm_reason() {
        eprintln!(
            "linux_boot: full_boot_on_hardware_kvm SKIPPED: /dev/kvm here is PVM ({why}); a stock \
             kernel cannot boot to /init under PVM's instruction emulator (docs/linux.md). \
             This is the acceptance test for VMX/SVM hosts."
        );
        return;
    }
    let took = full_boot(vmm_command, "linux-full", Duration::from_secs(180));
    eprintln!(
        "linux_boot: full boot, disk check, commands and power-off in {:.1} s",
        took.as_secs_f64()
    );
}

/// The same image and script under QEMU/TCG: checks the image, /init and the
/// command protocol independently of parvm's VMM, on any host.
#[test]
#[ignore = "needs qemu-system-x86 and the Debian download: cargo test -p vmm --test linux_boot -- --ignored"]
fn image_boots_under_qemu_tcg() {
    let took = full_boot(qemu_command, "linux-qemu", Duration::from_secs(300));
    eprintln!(
        "linux_boot: QEMU/TCG full boot of the image in {:.1} s",
        took.as_secs_f64()
    );
}
