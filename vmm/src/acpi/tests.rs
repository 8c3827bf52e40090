//! Unit tests of the ACPI tables: layout, checksums, and what Linux parses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use vm_memory::GuestMemoryMmap;

const MIB: usize = 1 << 20;

fn guest_memory(size: usize) -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}

fn devices(n: usize) -> Vec<VirtioMmioAcpi> {
    (0..n)
        .map(|i| VirtioMmioAcpi {
            base: 0xd000_0000 + 0x1000 * i as u64,
            size: 0x1000,
            gsi: 5 + i as u32,
        })
        .collect()
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn read(mem: &GuestMemoryMmap<()>, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

/// Reads a whole system description table at `addr` and checks the
/// header fields every table shares.
fn read_sdt(mem: &GuestMemoryMmap<()>, addr: u64) -> Vec<u8> {
    assert_eq!(addr % 8, 0, "table at {addr:#x} not 8-byte aligned");
    let header = read(mem, addr, SDT_HEADER_LEN);
    let len = u32_at(&header, SDT_LENGTH_OFFSET) as usize;
    assert!(len >= SDT_HEADER_LEN);
    assert!(
        addr + len as u64 <= ACPI_END,
        "table at {addr:#x} past 1 MiB"
    );
    let table = read(mem, addr, len);
    let sig = String::from_utf8_lossy(&table[0..4]).into_owned();
    assert_eq!(sum(&table), 0, "{sig} checksum");
    assert_eq!(&table[10..16], b"PARVM ", "{sig} OEM ID");
    assert_eq!(&table[16..24], b"PARVMVMM", "{sig} OEM table ID");
    assert_eq!(&table[28..32], b"PRVM", "{sig} creator ID");
    table
}

struct Parsed {
    rsdp_addr: u64,
    fadt: Vec<u8>,
    fadt_addr: u64,
    madt: Vec<u8>,
    dsdt: Vec<u8>,
    dsdt_addr: u64,
}

/// Parses the tables back the way a guest would: RSDP -> XSDT -> tables.
fn parse(mem: &GuestMemoryMmap<()>, rsdp_addr: GuestAddress) -> Parsed {
    let rsdp_addr = rsdp_addr.0;
    assert_eq!(rsdp_addr, ACPI_START);
    assert_eq!(rsdp_addr % 16, 0, "RSDP must be 16-byte aligned for a scan");
    let rsdp = read(mem, rsdp_addr, 36);
    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[0..20]), 0, "RSDP v1 checksum");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
    assert_eq!(&rsdp[9..15], b"PARVM ");
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");
    let xsdt_addr = u64_at(&rsdp, 24);

    let xsdt = read_sdt(mem, xsdt_addr);
    assert_eq!(&xsdt[0..4], b"XSDT");
    assert_eq!((xsdt.len() - SDT_HEADER_LEN) % 8, 0);
    let mut fadt = None;
    let mut madt = None;
    for entry in xsdt[SDT_HEADER_LEN..].chunks(8) {
        let addr = u64::from_le_bytes(entry.try_into().unwrap());
        let table = read_sdt(mem, addr);
        match &table[0..4] {
            b"FACP" => assert!(fadt.replace((addr, table)).is_none()),
            b"APIC" => assert!(madt.replace(table).is_none()),
            other => panic!("unexpected table {other:?} in XSDT"),
        }
    }
    let (fadt_addr, fadt) = fadt.expect("FADT in XSDT");
    let madt = madt.expect("MADT in XSDT");
    let dsdt_addr = u64_at(&fadt, 140);
    let dsdt = read_sdt(mem, dsdt_addr);
    assert_eq!(&dsdt[0..4], b"DSDT");
    Parsed {
        rsdp_addr,
        fadt,
        fadt_addr,
        madt,
        dsdt,
        dsdt_addr,
    }
}

fn check_fadt(fadt: &[u8], dsdt_addr: u64) {
    assert_eq!(fadt.len(), 276);
    assert_eq!(fadt[8], 6, "FADT major revision");
    assert_eq!(fadt[131], 5, "FADT minor revision");
    assert_eq!(u32_at(fadt, 40), 0, "32-bit DSDT pointer unused");
    assert_eq!(u64_at(fadt, 140), dsdt_addr, "X_DSDT");
    let flags = u32_at(fadt, 112);
    for bit in [4, 5, 10, 20] {
        assert_ne!(flags & (1 << bit), 0, "FADT flag bit {bit}");
    }
    assert_eq!(u16_at(fadt, 109), 0b1100, "IAPC_BOOT_ARCH: no VGA, no MSI");
    // GAS: SystemIO, 8 bits, offset 0, byte access, port.
    let mut port_gas = vec![1u8, 8, 0, 1];
    port_gas.extend_from_slice(&u64::from(ACPI_SHUTDOWN_PORT).to_le_bytes());
    assert_eq!(&fadt[116..128], &port_gas[..], "reset register");
    assert_eq!(fadt[128], RESET_VALUE);
    assert_eq!(&fadt[244..256], &port_gas[..], "sleep control register");
    assert_eq!(&fadt[256..268], &port_gas[..], "sleep status register");
    assert_eq!(&fadt[268..276], b"PARVM\0\0\0", "hypervisor vendor");
}

fn check_madt(madt: &[u8], num_cpus: u8) {
    assert_eq!(u32_at(madt, 36), 0xfee0_0000, "local APIC address");
    assert_eq!(u32_at(madt, 40), 1, "PCAT_COMPAT");
    let mut lapics = Vec::new();
    let mut ioapics = Vec::new();
    let mut overrides = Vec::new();
    let mut nmis = Vec::new();
    let mut off = 44;
    while off < madt.len() {
        let (kind, len) = (madt[off], madt[off + 1] as usize);
        assert!(len >= 2 && off + len <= madt.len(), "MADT entry at {off}");
        let e = &madt[off..off + len];
        match kind {
            0 => {
                assert_eq!(len, 8);
                lapics.push((e[2], e[3], u32_at(e, 4)));
            }
            1 => {
                assert_eq!(len, 12);
                ioapics.push((e[2], u32_at(e, 4), u32_at(e, 8)));
            }
            2 => {
                assert_eq!(len, 10);
                overrides.push((e[2], e[3], u32_at(e, 4), u16_at(e, 8)));
            }
            4 => {
                assert_eq!(len, 6);
                nmis.push((e[2], u16_at(e, 3), e[5]));
            }
            other => panic!("unexpected MADT entry type {other}"),
        }
        off += len;
    }
    assert_eq!(off, madt.len());
    let enabled: Vec<_> = lapics.iter().filter(|l| l.2 & 1 == 1).collect();
    assert_eq!(enabled.len(), num_cpus as usize);
    assert_eq!(lapics.len(), num_cpus as usize);
    for (i, (uid, apic_id, _)) in lapics.iter().enumerate() {
        assert_eq!((*uid as usize, *apic_id as usize), (i, i));
    }
    assert_eq!(ioapics, vec![(num_cpus, 0xfec0_0000, 0)]);
    assert_eq!(overrides, vec![(0, 0, 2, 0b0101)]);
    assert_eq!(nmis, vec![(0xff, 0, 1)]);
}

fn check_dsdt(dsdt: &[u8], devs: &[VirtioMmioAcpi]) {
    assert!(dsdt[8] >= 2, "DSDT revision >= 2 (64-bit integers)");
    // Name(_S5_, Package(1) {5})
    assert_eq!(count(dsdt, b"\x08_S5_\x12\x04\x01\x0a\x05"), 1);
    assert_eq!(count(dsdt, b"\x5c_SB_"), 1, "one \\_SB_ scope");
    assert_eq!(count(dsdt, b"COM1"), 1);
    // _HID EISAID("PNP0501") = 0x0105d041, IO(0x3f8, 0x3f8, 1, 8), IRQ 4 edge.
    assert_eq!(count(dsdt, b"_HID\x0c\x41\xd0\x05\x01"), 1);
    assert_eq!(count(dsdt, b"\x47\x01\xf8\x03\xf8\x03\x01\x08"), 1);
    assert_eq!(count(dsdt, b"\x89\x06\x00\x03\x01\x04\x00\x00\x00"), 1);

    assert_eq!(count(dsdt, b"LNRO0005"), devs.len());
    for (i, dev) in devs.iter().enumerate() {
        let name = format!("VR{i:02}");
        assert_eq!(count(dsdt, name.as_bytes()), 1, "{name}");
        let mut mem32 = vec![0x86, 9, 0, 1];
        mem32.extend_from_slice(&(dev.base as u32).to_le_bytes());
        mem32.extend_from_slice(&(dev.size as u32).to_le_bytes());
        assert_eq!(count(dsdt, &mem32), 1, "{name} Memory32Fixed");
        // Extended IRQ: consumer, edge, active high, exclusive, one GSI.
        let mut irq = vec![0x89, 6, 0, 0x03, 1];
        irq.extend_from_slice(&dev.gsi.to_le_bytes());
        assert_eq!(count(dsdt, &irq), 1, "{name} Interrupt");
    }
}

#[test]
fn tables_parse_back_for_each_shape() {
    for num_cpus in [1u8, 2, 8] {
        for num_devs in [0usize, 2] {
            let mem = guest_memory(2 * MIB);
            let cfg = AcpiConfig {
                num_cpus,
                virtio_mmio: devices(num_devs),
            };
            let rsdp = create_acpi_tables(&mem, &cfg).unwrap();
            let parsed = parse(&mem, rsdp);
            assert_eq!(parsed.rsdp_addr, ACPI_START);
            assert!(parsed.fadt_addr > ACPI_START);
            check_fadt(&parsed.fadt, parsed.dsdt_addr);
            check_madt(&parsed.madt, num_cpus);
            check_dsdt(&parsed.dsdt, &cfg.virtio_mmio);
        }
    }
}

#[test]
fn largest_configuration_fits_below_1mib() {
    let mem = guest_memory(2 * MIB);
    let cfg = AcpiConfig {
        num_cpus: u8::MAX,
        virtio_mmio: (0..MAX_VIRTIO_MMIO_DEVICES)
            .map(|i| VirtioMmioAcpi {
                base: 0xd000_0000 + 0x200 * i as u64,
                size: 0x200,
                gsi: 5,
            })
            .collect(),
    };
    // Exclusive GSIs: 100 devices cannot each have their own of 24 pins.
    assert!(matches!(
        create_acpi_tables(&mem, &cfg),
        Err(AcpiError::GsiInUse {
            index: 1,
            gsi: 5,
            ..
        })
    ));
    let cfg = AcpiConfig {
        num_cpus: u8::MAX,
        virtio_mmio: devices(19),
    };
    let rsdp = create_acpi_tables(&mem, &cfg).unwrap();
    let parsed = parse(&mem, rsdp);
    check_madt(&parsed.madt, u8::MAX);
    check_dsdt(&parsed.dsdt, &cfg.virtio_mmio);
}

#[test]
fn xsdt_and_fadt_have_the_planned_sizes() {
    assert_eq!(build_xsdt(&[0, 0]).len(), XSDT_LEN);
    assert_eq!(build_fadt(0).len(), fadt_len());
    assert_eq!(to_bytes(&Rsdp::new(OEM_ID, 0)).len(), 36);
}

#[test]
fn too_many_devices_is_an_error() {
    let mem = guest_memory(2 * MIB);
    let cfg = AcpiConfig {
        num_cpus: 1,
        virtio_mmio: devices(MAX_VIRTIO_MMIO_DEVICES + 1),
    };
    let err = create_acpi_tables(&mem, &cfg).unwrap_err();
    assert!(
        matches!(
            err,
            AcpiError::TooManyDevices {
                count: 101,
                max: 100
            }
        ),
        "{err}"
    );
    // Nothing was written.
    assert_eq!(read(&mem, ACPI_START, 8), vec![0u8; 8]);
}

#[test]
fn tables_past_1mib_are_an_error() {
    // Too many CPUs/devices cannot be expressed through AcpiConfig before
    // the name and GSI limits hit, so drive the layout directly.
    let err = Layout::new(ACPI_START, ACPI_END, 276, 0x1f000, 0x1000).unwrap_err();
    assert!(matches!(err, AcpiError::TablesTooLarge { .. }), "{err}");
    assert!(Layout::new(ACPI_START, ACPI_END, 276, usize::MAX, 0).is_err());
    let ok = Layout::new(ACPI_START, ACPI_END, 276, 0x100, 0x100).unwrap();
    assert_eq!(ok.rsdp, ACPI_START);
    assert!([ok.xsdt, ok.fadt, ok.dsdt, ok.madt]
        .iter()
        .all(|a| a % 8 == 0));
    assert!(ok.rsdp < ok.xsdt && ok.xsdt < ok.fadt && ok.fadt < ok.dsdt);
    assert!(ok.dsdt < ok.madt && ok.madt < ok.end && ok.end <= ACPI_END);
}

#[test]
fn memory_too_small_is_an_error() {
    for size in [0x8_0000, 0xe_0100] {
        let mem = guest_memory(size);
        let cfg = AcpiConfig {
            num_cpus: 2,
            virtio_mmio: devices(2),
        };
        let err = create_acpi_tables(&mem, &cfg).unwrap_err();
        assert!(matches!(err, AcpiError::MemoryTooSmall { .. }), "{err}");
    }
}

#[test]
fn bad_configurations_are_errors() {
    let mem = guest_memory(2 * MIB);
    let with = |num_cpus, virtio_mmio| AcpiConfig {
        num_cpus,
        virtio_mmio,
    };
    let dev = |base, size, gsi| VirtioMmioAcpi { base, size, gsi };
    let cases = [
        with(0, vec![]),
        with(1, vec![dev(0xd000_0000, 0, 5)]),
        with(1, vec![dev(0xffff_f000, 0x2000, 5)]),
        with(1, vec![dev(u64::MAX, 0x1000, 5)]),
        with(1, vec![dev(0xd000_0000, 0x1000, 24)]),
        with(1, vec![dev(0xd000_0000, 0x1000, PIT_GSI)]),
        with(1, vec![dev(0xd000_0000, 0x1000, COM1_GSI)]),
        with(
            1,
            vec![dev(0xd000_0000, 0x1000, 5), dev(0xd000_1000, 0x1000, 5)],
        ),
        with(
            1,
            vec![dev(0xd000_0000, 0x1000, 5), dev(0xd000_0800, 0x1000, 6)],
        ),
    ];
    for cfg in cases {
        assert!(create_acpi_tables(&mem, &cfg).is_err(), "{cfg:?}");
    }
    assert_eq!(read(&mem, ACPI_START, 8), vec![0u8; 8]);
    // A window ending exactly at 4 GiB is fine.
    let cfg = with(1, vec![dev(0xffff_f000, 0x1000, 5)]);
    assert!(create_acpi_tables(&mem, &cfg).is_ok());
}
