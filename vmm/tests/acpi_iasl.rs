#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The VMM's ACPI tables checked by an independent tool: a partition is
//! built through the library (`Vmm::new`, never run), its tables are read
//! back from guest memory the way firmware-less Linux finds them (RSDP ->
//! XSDT -> each table, FADT -> DSDT), dumped to .dat files and disassembled
//! by ACPICA's `iasl -d` (Debian's acpica-tools). The disassembly must have
//! no errors and must show what the VMM meant to build: the CPUs and the
//! IO-APIC in the MADT, one LNRO0005 device per disk in the DSDT with its
//! MMIO window and interrupt, parvm's OEM id everywhere.

use parvm_tests::guests::guest_path;
use parvm_tests::scratch_dir;
use std::path::{Path, PathBuf};
use std::process::Command;
use vm_memory::{Bytes, GuestAddress};
use vmm::acpi::{ACPI_SHUTDOWN_PORT, ACPI_START, IOAPIC_ADDR};
use vmm::config::{Console, DiskConfig, DiskSource, PartitionDefinition};
use vmm::devices::virtio::VIRTIO_GSI_BASE;
use vmm::memory::VIRTIO_MMIO_START;

const VCPUS: u8 = 4;
const DISKS: usize = 2;
/// Size of one virtio-mmio window (docs/virtio.md).
const MMIO_WINDOW: u64 = 0x1000;

/// `iasl`, or a failure that says how to get it: the check must not pass
/// silently on a machine without the tool.
fn iasl() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("iasl"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "iasl (Debian package acpica-tools) is not installed: run scripts/install-deps.sh \
             (CI installs it); this test checks the VMM's ACPI tables with it"
        )
    })
}

fn read(mem: &vmm::memory::GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr))
        .unwrap_or_else(|e| panic!("reading {len} bytes at {addr:#x}: {e}"));
    buf
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// One ACPI table (standard 36-byte header) at `addr`, whole, with its
/// checksum verified.
fn read_table(mem: &vmm::memory::GuestMemoryMmap, addr: u64) -> (String, Vec<u8>) {
    let header = read(mem, addr, 36);
    let len = u32_at(&header, 4) as usize;
    assert!(
        (36..=0x2_0000).contains(&len),
        "table at {addr:#x}: length {len}"
    );
    let table = read(mem, addr, len);
    let sig = String::from_utf8_lossy(&table[0..4]).into_owned();
    let sum = table.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    assert_eq!(sum, 0, "{sig} at {addr:#x}: bad checksum");
    (sig, table)
}

/// Reads every table the guest can reach, RSDP first, in discovery order.
fn dump_tables(mem: &vmm::memory::GuestMemoryMmap) -> Vec<(String, Vec<u8>)> {
    let rsdp = read(mem, ACPI_START, 36);
    assert_eq!(&rsdp[0..8], b"RSD PTR ", "no RSDP at {ACPI_START:#x}");
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");
    // iasl 20200925 (Debian 12) cannot disassemble a lone RSDP, so its
    // fields are checked here: both checksums and the OEM id.
    let sum = |b: &[u8]| b.iter().fold(0u8, |s, x| s.wrapping_add(*x));
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
    assert_eq!(&rsdp[9..15], b"PARVM ", "RSDP OEM id");
    let xsdt_addr = u64_at(&rsdp, 24);
    let mut tables = vec![("RSDP".to_string(), rsdp)];

    let (sig, xsdt) = read_table(mem, xsdt_addr);
    assert_eq!(sig, "XSDT");
    let entries: Vec<u64> = (36..xsdt.len())
        .step_by(8)
        .map(|off| u64_at(&xsdt, off))
        .collect();
    tables.push((sig, xsdt));
    for addr in entries {
        let (sig, table) = read_table(mem, addr);
        if sig == "FACP" {
            // X_DSDT (offset 140) wins over the 32-bit DSDT field (40).
            let x_dsdt = u64_at(&table, 140);
            let dsdt = if x_dsdt != 0 {
                x_dsdt
            } else {
                u64::from(u32_at(&table, 40))
            };
            tables.push((sig, table));
            let (dsig, dtable) = read_table(mem, dsdt);
            assert_eq!(dsig, "DSDT", "FADT's DSDT pointer {dsdt:#x}");
            tables.push((dsig, dtable));
        } else {
            tables.push((sig, table));
        }
    }
    tables
}

/// Disassembles `dat` with `iasl -d`; returns the .dsl text.
fn disassemble(iasl: &Path, dat: &Path) -> String {
    let out = Command::new(iasl)
        .arg("-d")
        .arg(dat)
        .current_dir(dat.parent().unwrap())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {iasl:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "iasl -d {dat:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for line in stdout.lines().chain(stderr.lines()) {
        let l = line.to_ascii_lowercase();
        assert!(
            (!l.contains("error") || l.contains("0 errors")) && !l.contains("invalid"),
            "iasl -d {dat:?} reported a problem: {line}\n{stdout}\n{stderr}"
        );
    }
    let dsl = dat.with_extension("dsl");
    std::fs::read_to_string(&dsl).unwrap_or_else(|e| panic!("no {dsl:?} from iasl: {e}\n{stdout}"))
}

/// The text of `Device (NAME) { ... }` in a disassembled DSDT.
fn device_block<'a>(dsl: &'a str, name: &str) -> &'a str {
    let start = dsl
        .find(&format!("Device ({name})"))
        .unwrap_or_else(|| panic!("no Device ({name}) in the DSDT:\n{dsl}"));
    let rest = &dsl[start + 1..];
    let end = rest.find("Device (").map_or(dsl.len(), |e| start + 1 + e);
    &dsl[start..end]
}

/// `Field : value` lines of an iasl data-table disassembly, in order.
fn fields<'a>(dsl: &'a str, field: &str) -> Vec<&'a str> {
    dsl.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(" : ")?;
            // "[02Ch 0044   1]    Subtable Type" -> "Subtable Type"
            let name = name.rsplit(']').next()?.trim();
            (name == field).then_some(value.trim())
        })
        .collect()
}

#[test]
fn iasl_disassembles_the_tables_the_vmm_builds() {
    let iasl = iasl();
    let dir = scratch_dir("acpi-iasl");
    let disks: Vec<DiskConfig> = (0..DISKS)
        .map(|i| {
            let path = dir.join(format!("disk{i}.img"));
            std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
            DiskConfig {
                id: format!("disk{i}"),
                source: DiskSource::Image(path),
                read_only: i == 1,
            }
        })
        .collect();
    let config = PartitionDefinition {
        name: Some("acpi-iasl".into()),
        vcpus: Some(u64::from(VCPUS)),
        memory_mib: Some(128),
        kernel: Some(guest_path("tiny.elf")),
        console: Some(Console::None),
        disks: Some(disks),
        ..Default::default()
    }
    .validate()
    .unwrap();
    let vmm = vmm::Vmm::new(config, Path::new(vmm::KVM_DEVICE)).unwrap();

    let tables = dump_tables(&vmm.ram.memory);
    let sigs: Vec<&str> = tables.iter().map(|(s, _)| s.as_str()).collect();
    for want in ["RSDP", "XSDT", "FACP", "DSDT", "APIC"] {
        assert!(
            sigs.contains(&want),
            "{want} not reachable from the RSDP: {sigs:?}"
        );
    }

    let mut dats = Vec::new();
    for (sig, table) in &tables {
        let dat = dir.join(format!("{}.dat", sig.to_ascii_lowercase()));
        std::fs::write(&dat, table).unwrap();
        dats.push((sig.clone(), dat));
    }
    let mut dsl = std::collections::HashMap::new();
    for (sig, dat) in dats.iter().filter(|(s, _)| s != "RSDP") {
        dsl.insert(sig.clone(), disassemble(&iasl, dat));
    }

    // Every table carries parvm's OEM id (iasl prints it quoted).
    for (sig, text) in &dsl {
        let oem = if sig == "DSDT" {
            // DefinitionBlock ("", "DSDT", 6, "PARVM ", "PARVMVMM", 0x00000001)
            text.lines()
                .find(|l| l.starts_with("DefinitionBlock"))
                .map(|l| {
                    l.contains("\"PARVM \", \"PARVMVMM\"")
                        .then_some("\"PARVM \"")
                })
                .unwrap_or(None)
                .into_iter()
                .collect::<Vec<_>>()
        } else {
            fields(text, "Oem ID")
        };
        assert_eq!(oem, vec!["\"PARVM \""], "{sig}: OEM ID\n{text}");
    }

    // MADT: one enabled Processor Local APIC per vCPU (APIC id = index), one
    // IO-APIC at the documented address, above the last APIC id.
    let madt = &dsl["APIC"];
    let types = fields(madt, "Subtable Type");
    let lapics = types
        .iter()
        .filter(|t| t.contains("[Processor Local APIC]"))
        .count();
    assert_eq!(lapics, usize::from(VCPUS), "Local APIC entries\n{madt}");
    let ids: Vec<&str> = fields(madt, "Local Apic ID");
    let want_ids: Vec<String> = (0..VCPUS).map(|i| format!("{i:02X}")).collect();
    assert_eq!(ids, want_ids, "Local APIC ids\n{madt}");
    assert_eq!(
        fields(madt, "Processor Enabled"),
        vec!["1"; usize::from(VCPUS)],
        "{madt}"
    );
    assert_eq!(
        types.iter().filter(|t| t.contains("[I/O APIC]")).count(),
        1,
        "{madt}"
    );
    assert_eq!(
        fields(madt, "Address"),
        vec![format!("{IOAPIC_ADDR:08X}")],
        "IO-APIC address\n{madt}"
    );
    assert_eq!(
        fields(madt, "I/O Apic ID"),
        vec![format!("{VCPUS:02X}")],
        "{madt}"
    );
    // "Interrupt": the IO-APIC's GSI base, then the override ISA IRQ 0 -> GSI 2.
    assert_eq!(
        fields(madt, "Interrupt"),
        vec!["00000000", "00000002"],
        "{madt}"
    );

    // FADT: hardware reduced, power off / reset on port 0x3c0.
    let fadt = &dsl["FACP"];
    assert_eq!(fields(fadt, "Hardware Reduced (V5)"), vec!["1"], "{fadt}");
    // "PARVM" read as a little-endian u64.
    assert_eq!(
        fields(fadt, "Hypervisor ID"),
        vec!["0000004D56524150"],
        "{fadt}"
    );
    assert_eq!(fields(fadt, "Value to cause reset"), vec!["01"], "{fadt}");
    for reg in [
        "Reset Register",
        "Sleep Control Register",
        "Sleep Status Register",
    ] {
        let at = fadt
            .find(&format!("{reg} : "))
            .unwrap_or_else(|| panic!("no {reg} in the FADT\n{fadt}"));
        // Space ID 01 (SystemIO), 8 bits wide, byte access, at the port.
        let gas: String = fadt[at..].lines().take(6).collect::<Vec<_>>().join("\n");
        assert_eq!(
            fields(&gas, "Space ID"),
            vec!["01 [SystemIO]"],
            "{reg}\n{gas}"
        );
        assert_eq!(fields(&gas, "Bit Width"), vec!["08"], "{reg}\n{gas}");
        assert_eq!(
            fields(&gas, "Address"),
            vec![format!("{:016X}", ACPI_SHUTDOWN_PORT)],
            "{reg}\n{gas}"
        );
    }

    // DSDT: COM1 and one LNRO0005 per disk with its window and interrupt.
    let dsdt = &dsl["DSDT"];
    assert!(
        device_block(dsdt, "COM1").contains("EisaId (\"PNP0501\")"),
        "{dsdt}"
    );
    for i in 0..DISKS {
        let name = format!("VR{i:02}");
        let block = device_block(dsdt, &name);
        let base = VIRTIO_MMIO_START + i as u64 * MMIO_WINDOW;
        let gsi = VIRTIO_GSI_BASE + i as u32;
        let compact: String = block.split_whitespace().collect::<Vec<_>>().join(" ");
        for want in [
            "Name (_HID, \"LNRO0005\")".to_string(),
            format!("Memory32Fixed (ReadWrite, 0x{base:08X}, // Address Base 0x{MMIO_WINDOW:08X}, // Address Length"),
            "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )".to_string(),
            format!("{{ 0x{gsi:08X}, }}"),
        ] {
            assert!(compact.contains(&want), "{name}: no `{want}` in\n{block}");
        }
    }
    assert!(
        !dsdt.contains(&format!("Device (VR{DISKS:02})")),
        "more virtio devices than disks\n{dsdt}"
    );
    // The disassembly compiles back without errors (iasl's own grammar and
    // semantic checks on the AML the VMM generated).
    let out = Command::new(&iasl)
        .args(["-p", "recompiled"])
        .arg(dir.join("dsdt.dsl"))
        .current_dir(&dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains(" 0 Errors"),
        "iasl could not recompile the disassembled DSDT:\n{text}"
    );
    if std::env::var_os("PARVM_KEEP_ACPI").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
