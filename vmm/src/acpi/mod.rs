//! ACPI tables for a stock Linux guest: how it finds every vCPU (MADT), every
//! virtio-mmio device and the COM1 UART (DSDT), and how it powers off and
//! resets (FADT sleep and reset registers on [`ACPI_SHUTDOWN_PORT`]).
//!
//! [`create_acpi_tables`] builds RSDP, XSDT, FADT, DSDT and MADT with the
//! `acpi_tables` crate, lays them out from [`ACPI_START`] upwards (each table
//! 8-byte aligned, all below 1 MiB, RSDP first so the legacy EBDA/BIOS-area
//! scan finds it too) and writes them to guest memory in one piece. The VMM
//! then hands the RSDP address to the guest (`boot_params.acpi_rsdp_addr`,
//! `hvm_start_info.rsdp_paddr`). See `docs/acpi.md`.
//!
//! The platform is ACPI *hardware-reduced*: no PM1 blocks, no SCI, no GPEs.
//! The guest powers off by writing [`S5_SLEEP_VALUE`] and resets by writing
//! [`RESET_VALUE`] to the one I/O port [`ACPI_SHUTDOWN_PORT`].

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError, Permissions};

/// Guest physical address of the RSDP; the other tables follow it.
pub const ACPI_START: u64 = 0xe0000;
/// The tables must end at or below this address (start of the kernel area).
pub const ACPI_END: u64 = 0x10_0000;
/// I/O port of the FADT sleep control/status registers and reset register.
pub const ACPI_SHUTDOWN_PORT: u16 = 0x3c0;
/// The pvpanic device's I/O port (QEMU's `pvpanic` ISA device: ACPI
/// `QEMU0001`, so Linux's pvpanic driver finds it).
pub const PVPANIC_PORT: u16 = 0x505;
/// What the guest writes to [`ACPI_SHUTDOWN_PORT`] to enter S5 (power off):
/// SLP_TYP = 5 (bits 2-4, the `\_S5_` value) | SLP_EN (bit 5).
pub const S5_SLEEP_VALUE: u8 = (5 << 2) | (1 << 5);
/// What the guest writes to [`ACPI_SHUTDOWN_PORT`] to reset (FADT reset value).
pub const RESET_VALUE: u8 = 1;
/// The guest clears the wake status by writing this to the sleep status
/// register (the same port) just before it writes [`S5_SLEEP_VALUE`]; the
/// VMM ignores it.
pub const WAKE_STATUS_VALUE: u8 = 1 << 7;

/// Local APIC base, as in the MADT header.
pub const LOCAL_APIC_ADDR: u32 = 0xfee0_0000;
/// The single IO-APIC's base address.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Input pins of KVM's in-kernel IO-APIC: valid GSIs are `0..IOAPIC_PINS`.
pub const IOAPIC_PINS: u32 = 24;
/// GSI the PIT's IRQ 0 is routed to (MADT interrupt source override).
pub const PIT_GSI: u32 = 2;
/// COM1 (8250 UART) I/O base and ISA IRQ (= GSI), declared in the DSDT.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_GSI: u32 = 4;
/// Device names are `VR00`..`VR99` (ACPI names are exactly 4 characters).
pub const MAX_VIRTIO_MMIO_DEVICES: usize = 100;

const OEM_ID: [u8; 6] = *b"PARVM ";
const OEM_TABLE_ID: [u8; 8] = *b"PARVMVMM";
const OEM_REVISION: u32 = 1;
const CREATOR_ID: [u8; 4] = *b"PRVM";
const CREATOR_REVISION: u32 = 1;
/// FADT `hypervisor_vendor_identity` (ACPI 6.0+), 8 bytes, NUL padded.
const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"PARVM\0\0\0";

/// Size of the standard ACPI table header (signature .. creator revision).
const SDT_HEADER_LEN: usize = 36;
/// Offsets inside the standard header.
const SDT_LENGTH_OFFSET: usize = 4;
const SDT_CHECKSUM_OFFSET: usize = 9;
const SDT_CREATOR_ID_OFFSET: usize = 28;
const SDT_CREATOR_REVISION_OFFSET: usize = 32;
/// The XSDT lists the FADT and the MADT (the DSDT hangs off the FADT).
const XSDT_ENTRIES: usize = 2;
const XSDT_LEN: usize = SDT_HEADER_LEN + XSDT_ENTRIES * 8;
const TABLE_ALIGN: u64 = 8;

/// FADT IAPC_BOOT_ARCH: no VGA, no MSI (there is no PCI bus). The 8042 bit is
/// deliberately clear: Linux then skips probing a PS/2 controller (each probe
/// is a slow port-I/O exit); reset goes through the ACPI reset register.
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;
const IAPC_BOOT_ARCH_NO_MSI: u16 = 1 << 3;

/// DSDT revision 2+ means 64-bit AML integers.
const DSDT_REVISION: u8 = 6;
/// MADT revision of ACPI 6.2+.
const MADT_REVISION: u8 = 5;
/// MADT flags: PCAT_COMPAT (dual 8259 PICs present; the guest masks them).
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT structure types built here by hand (the crate has no type for them).
const MADT_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
/// MPS INTI flags: active high (bits 0-1 = 01), edge triggered (bits 2-3 = 01).
const MPS_INTI_EDGE_HIGH: u16 = 0b0101;
/// MPS INTI flags: conforms to the bus (an NMI is edge/high).
const MPS_INTI_CONFORMS: u16 = 0;
/// "All processors" in a Local APIC NMI structure.
const ALL_PROCESSORS: u8 = 0xff;

/// One virtio-mmio device as the guest should see it in the DSDT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioAcpi {
    /// Guest physical base of the device's MMIO window (below 4 GiB).
    pub base: u64,
    /// Size of the window in bytes.
    pub size: u64,
    /// IO-APIC input (GSI) the device interrupts on; declared edge
    /// triggered, active high, exclusive (the VMM raises it with an irqfd,
    /// which pulses the line: a level declaration could lose a pulse).
    pub gsi: u32,
}

/// What the tables describe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs; vCPU `i` has ACPI processor UID and APIC ID `i`.
    pub num_cpus: u8,
    /// virtio-mmio devices, in the order they are named `VR00`, `VR01`, ...
    pub virtio_mmio: Vec<VirtioMmioAcpi>,
}

#[derive(thiserror::Error, Debug)]
pub enum AcpiError {
    #[error("ACPI tables need at least one vCPU, got 0")]
    NoCpus,
    #[error("{count} virtio-mmio devices requested; the DSDT names VR00-VR99 allow at most {max}")]
    TooManyDevices { count: usize, max: usize },
    #[error(
        "virtio-mmio device {index}: MMIO window {base:#x} + {size:#x} must be non-empty and end \
         at or below 4 GiB (ACPI Memory32Fixed)"
    )]
    InvalidMmioWindow { index: usize, base: u64, size: u64 },
    #[error("virtio-mmio device {index}: MMIO window at {base:#x} overlaps device {other}'s")]
    OverlappingMmioWindows {
        index: usize,
        other: usize,
        base: u64,
    },
    #[error("virtio-mmio device {index}: GSI {gsi} is beyond the IO-APIC's {pins} pins")]
    GsiOutOfRange { index: usize, gsi: u32, pins: u32 },
    #[error("virtio-mmio device {index}: GSI {gsi} is already used by {user}")]
    GsiInUse {
        index: usize,
        gsi: u32,
        user: String,
    },
    #[error(
        "ACPI tables need {size:#x} bytes from {start:#x}, past the {limit:#x} limit \
         (too many vCPUs or devices)"
    )]
    TablesTooLarge { start: u64, size: u64, limit: u64 },
    #[error("guest memory does not cover the ACPI area {start:#x}..{end:#x}")]
    MemoryTooSmall { start: u64, end: u64 },
    #[error("{table} is {actual} bytes, laid out for {planned}")]
    LayoutMismatch {
        table: &'static str,
        planned: usize,
        actual: usize,
    },
    #[error("writing ACPI tables to guest memory at {addr:#x}: {source}")]
    GuestMemory {
        addr: u64,
        #[source]
        source: GuestMemoryError,
    },
}

/// Where each table goes; computed from the tables' sizes before any table
/// that points at another one is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    rsdp: u64,
    xsdt: u64,
    fadt: u64,
    dsdt: u64,
    madt: u64,
    end: u64,
}

impl Layout {
    /// Places RSDP, XSDT, FADT, DSDT, MADT from `start`, each 8-byte aligned,
    /// and fails if the last one would end past `limit`.
    fn new(
        start: u64,
        limit: u64,
        fadt_len: usize,
        dsdt_len: usize,
        madt_len: usize,
    ) -> Result<Self, AcpiError> {
        let too_large = |end: Option<u64>| AcpiError::TablesTooLarge {
            start,
            size: end.map_or(u64::MAX, |end| end - start),
            limit,
        };
        let next = |addr: u64, len: usize| -> Option<u64> {
            addr.checked_add(u64::try_from(len).ok()?)?
                .checked_next_multiple_of(TABLE_ALIGN)
        };
        let rsdp = start;
        let xsdt = next(rsdp, Rsdp::len()).ok_or_else(|| too_large(None))?;
        let fadt = next(xsdt, XSDT_LEN).ok_or_else(|| too_large(None))?;
        let dsdt = next(fadt, fadt_len).ok_or_else(|| too_large(None))?;
        let madt = next(dsdt, dsdt_len).ok_or_else(|| too_large(None))?;
        let end = u64::try_from(madt_len)
            .ok()
            .and_then(|len| madt.checked_add(len))
            .ok_or_else(|| too_large(None))?;
        if end > limit {
            return Err(too_large(Some(end)));
        }
        Ok(Layout {
            rsdp,
            xsdt,
            fadt,
            dsdt,
            madt,
            end,
        })
    }
}

/// Writes RSDP, XSDT, FADT, DSDT, MADT into guest memory; returns the RSDP address.
///
/// Nothing is written unless every table was built and the whole area
/// `ACPI_START..end` is backed by `mem`.
pub fn create_acpi_tables<M: GuestMemory>(
    mem: &M,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    validate(cfg)?;

    let dsdt = build_dsdt(cfg);
    let madt = build_madt(cfg.num_cpus);
    let layout = Layout::new(ACPI_START, ACPI_END, fadt_len(), dsdt.len(), madt.len())?;
    let fadt = build_fadt(layout.dsdt);
    let xsdt = build_xsdt(&[layout.fadt, layout.madt]);
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, layout.xsdt));

    let mut image = Vec::new();
    for (table, addr, bytes, planned) in [
        ("RSDP", layout.rsdp, &rsdp, Rsdp::len()),
        ("XSDT", layout.xsdt, &xsdt, XSDT_LEN),
        ("FACP", layout.fadt, &fadt, fadt_len()),
        ("DSDT", layout.dsdt, &dsdt, dsdt.len()),
        ("APIC", layout.madt, &madt, madt.len()),
    ] {
        place(&mut image, addr - ACPI_START, table, bytes, planned)?;
    }

    let start = GuestAddress(ACPI_START);
    if !mem.check_range(start, image.len(), Permissions::Write) {
        return Err(AcpiError::MemoryTooSmall {
            start: ACPI_START,
            end: layout.end,
        });
    }
    mem.write_slice(&image, start)
        .map_err(|source| AcpiError::GuestMemory {
            addr: ACPI_START,
            source,
        })?;

    tracing::debug!(
        rsdp = format_args!("{:#x}", layout.rsdp),
        xsdt = format_args!("{:#x}", layout.xsdt),
        fadt = format_args!("{:#x}", layout.fadt),
        dsdt = format_args!("{:#x}", layout.dsdt),
        madt = format_args!("{:#x}", layout.madt),
        end = format_args!("{:#x}", layout.end),
        vcpus = cfg.num_cpus,
        virtio_mmio = cfg.virtio_mmio.len(),
        "ACPI tables written"
    );
    Ok(GuestAddress(layout.rsdp))
}

/// Size of the FADT the crate builds (ACPI 6.x, 276 bytes).
fn fadt_len() -> usize {
    acpi_tables::fadt::FADT::len()
}

/// Rejects configurations the tables cannot describe, before building any.
fn validate(cfg: &AcpiConfig) -> Result<(), AcpiError> {
    if cfg.num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    let devices = &cfg.virtio_mmio;
    if devices.len() > MAX_VIRTIO_MMIO_DEVICES {
        return Err(AcpiError::TooManyDevices {
            count: devices.len(),
            max: MAX_VIRTIO_MMIO_DEVICES,
        });
    }
    for (index, dev) in devices.iter().enumerate() {
        let fits_32bit = match dev.base.checked_add(dev.size) {
            Some(end) => end <= 1 << 32,
            None => false,
        };
        if dev.size == 0 || !fits_32bit {
            return Err(AcpiError::InvalidMmioWindow {
                index,
                base: dev.base,
                size: dev.size,
            });
        }
        if dev.gsi >= IOAPIC_PINS {
            return Err(AcpiError::GsiOutOfRange {
                index,
                gsi: dev.gsi,
                pins: IOAPIC_PINS,
            });
        }
        let gsi_user = match dev.gsi {
            PIT_GSI => Some("the PIT (IRQ 0 override)".to_string()),
            COM1_GSI => Some("COM1".to_string()),
            _ => None,
        };
        if let Some(user) = gsi_user {
            return Err(AcpiError::GsiInUse {
                index,
                gsi: dev.gsi,
                user,
            });
        }
        for (other, prev) in devices[..index].iter().enumerate() {
            if prev.gsi == dev.gsi {
                return Err(AcpiError::GsiInUse {
                    index,
                    gsi: dev.gsi,
                    user: format!("virtio-mmio device {other}"),
                });
            }
            // Both windows were checked above not to overflow.
            if dev.base < prev.base + prev.size && prev.base < dev.base + dev.size {
                return Err(AcpiError::OverlappingMmioWindows {
                    index,
                    other,
                    base: dev.base,
                });
            }
        }
    }
    Ok(())
}

/// Appends `bytes` to `image` at `offset` (zero-filling the alignment gap),
/// checking that the table has the size the layout was computed with.
fn place(
    image: &mut Vec<u8>,
    offset: u64,
    table: &'static str,
    bytes: &[u8],
    planned: usize,
) -> Result<(), AcpiError> {
    let offset = usize::try_from(offset).ok();
    match offset {
        Some(offset) if bytes.len() == planned && image.len() <= offset => {
            image.resize(offset, 0);
            image.extend_from_slice(bytes);
            Ok(())
        }
        _ => Err(AcpiError::LayoutMismatch {
            table,
            planned,
            actual: bytes.len(),
        }),
    }
}

/// Serializes a table or AML object.
fn to_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

/// Stamps parvm's creator ID/revision into a serialized system description
/// table (the crate hard-codes its own), makes the length field match the
/// bytes, and recomputes the checksum.
fn finish_sdt(mut table: Vec<u8>) -> Vec<u8> {
    let Ok(len) = u32::try_from(table.len()) else {
        return table;
    };
    if table.len() < SDT_HEADER_LEN {
        return table;
    }
    table[SDT_LENGTH_OFFSET..SDT_LENGTH_OFFSET + 4].copy_from_slice(&len.to_le_bytes());
    table[SDT_CREATOR_ID_OFFSET..SDT_CREATOR_ID_OFFSET + 4].copy_from_slice(&CREATOR_ID);
    table[SDT_CREATOR_REVISION_OFFSET..SDT_CREATOR_REVISION_OFFSET + 4]
        .copy_from_slice(&CREATOR_REVISION.to_le_bytes());
    table[SDT_CHECKSUM_OFFSET] = 0;
    let sum = table.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    table[SDT_CHECKSUM_OFFSET] = 0u8.wrapping_sub(sum);
    table
}

/// A generic, empty table with parvm's OEM fields.
fn new_sdt(signature: [u8; 4], revision: u8) -> Sdt {
    // Length SDT_HEADER_LEN is the minimum `Sdt::new` accepts.
    Sdt::new(
        signature,
        SDT_HEADER_LEN as u32,
        revision,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    )
}

fn build_xsdt(entries: &[u64; XSDT_ENTRIES]) -> Vec<u8> {
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for entry in entries {
        xsdt.add_entry(*entry);
    }
    finish_sdt(to_bytes(&xsdt))
}

/// FADT revision 6.5, hardware-reduced: power off and reset both go through
/// one byte-wide I/O port.
fn build_fadt(dsdt_addr: u64) -> Vec<u8> {
    let shutdown_port = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        ACPI_SHUTDOWN_PORT.into(),
    );
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    fadt.reset_reg = shutdown_port;
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = shutdown_port;
    fadt.sleep_status_reg = shutdown_port;
    fadt.iapc_boot_arch = (IAPC_BOOT_ARCH_NO_VGA | IAPC_BOOT_ARCH_NO_MSI).into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_ID).into();
    finish_sdt(to_bytes(&fadt.finalize()))
}

/// MADT: one enabled local APIC per vCPU, one IO-APIC, the PIT's IRQ 0 -> GSI 2
/// override and LINT1 as NMI on every processor.
fn build_madt(num_cpus: u8) -> Vec<u8> {
    let mut madt = new_sdt(*b"APIC", MADT_REVISION);
    madt.append_slice(&LOCAL_APIC_ADDR.to_le_bytes());
    madt.append_slice(&MADT_PCAT_COMPAT.to_le_bytes());

    for cpu in 0..num_cpus {
        madt.append_slice(&to_bytes(&ProcessorLocalApic::new(
            cpu,
            cpu,
            EnabledStatus::Enabled,
        )));
    }
    // The IO-APIC ID follows the local APIC IDs so that none collide.
    madt.append_slice(&to_bytes(&IoApic::new(num_cpus, IOAPIC_ADDR, 0)));

    // Interrupt Source Override: ISA bus 0, IRQ 0 (PIT) -> GSI 2, edge/high.
    let mut iso = vec![MADT_INTERRUPT_SOURCE_OVERRIDE, 10, 0, 0];
    iso.extend_from_slice(&PIT_GSI.to_le_bytes());
    iso.extend_from_slice(&MPS_INTI_EDGE_HIGH.to_le_bytes());
    madt.append_slice(&iso);

    // Local APIC NMI: all processors, LINT1.
    let mut nmi = vec![MADT_LOCAL_APIC_NMI, 6, ALL_PROCESSORS];
    nmi.extend_from_slice(&MPS_INTI_CONFORMS.to_le_bytes());
    nmi.push(1);
    madt.append_slice(&nmi);

    finish_sdt(madt.as_slice().to_vec())
}

/// DSDT: `\_S5_` for power off, `\_SB_.COM1`, `\_SB_.PEVT` (pvpanic), and one `\_SB_.VRnn` per
/// virtio-mmio device in the form Linux's virtio_mmio ACPI probe reads
/// (memory resource 0 = the window, IRQ resource 0 = the GSI).
fn build_dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut body = Vec::new();

    // SLP_TYPa = 5 (SLP_TYPb, packed in bits 8-15 of a 1-element package, = 0).
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&5u8])).to_aml_bytes(&mut body);

    let mut sb = Vec::new();
    let com1_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, COM1_GSI);
    aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]),
            ),
        ],
    )
    .to_aml_bytes(&mut sb);

    let pvpanic_io = aml::IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1);
    aml::Device::new(
        "PEVT".into(),
        vec![
            &aml::Name::new("_HID".into(), &"QEMU0001"),
            &aml::Name::new("_STA".into(), &0x0fu8),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&pvpanic_io]),
            ),
        ],
    )
    .to_aml_bytes(&mut sb);

    for (index, dev) in cfg.virtio_mmio.iter().enumerate() {
        sb.extend(virtio_mmio_device(index, dev));
    }
    body.extend(aml::Scope::raw("\\_SB_".into(), sb));

    let mut dsdt = new_sdt(*b"DSDT", DSDT_REVISION);
    dsdt.append_slice(&body);
    finish_sdt(dsdt.as_slice().to_vec())
}

/// One `VRnn` device, serialized. `index` < [`MAX_VIRTIO_MMIO_DEVICES`] and
/// the window below 4 GiB were checked by [`validate`].
fn virtio_mmio_device(index: usize, dev: &VirtioMmioAcpi) -> Vec<u8> {
    // Names must be exactly four characters: VR00..VR99.
    let name = format!("VR{:02}", index % MAX_VIRTIO_MMIO_DEVICES);
    let uid = u32::try_from(index).unwrap_or(u32::MAX);
    let window = aml::Memory32Fixed::new(
        true,
        u32::try_from(dev.base).unwrap_or(u32::MAX),
        u32::try_from(dev.size).unwrap_or(u32::MAX),
    );
    // consumer, edge triggered, active high, exclusive.
    let irq = aml::Interrupt::new(true, true, false, false, dev.gsi);
    to_bytes(&aml::Device::new(
        name.as_str().into(),
        vec![
            &aml::Name::new("_HID".into(), &"LNRO0005"),
            &aml::Name::new("_UID".into(), &uid),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&window, &irq]),
            ),
        ],
    ))
}

#[cfg(test)]
mod tests;
