//! Guest physical memory: the layout constants every other module uses, and
//! guest RAM as one memfd (so later stages can share it) mapped through
//! vm-memory and registered with KVM.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// GDT built by the VMM for the boot vCPU.
pub const BOOT_GDT_START: u64 = 0x500;
/// PVH `hvm_start_info`, its module list, and its memory map.
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = 0x6040;
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux `boot_params` (the zero page).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Identity page tables: PML4, PDPT, four page directories (0-4 GiB).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = parvm_config::MAX_CMDLINE_LEN + 1;
/// End of conventional memory; EBDA, ACPI tables and BIOS area follow.
pub const EBDA_START: u64 = 0x9fc00;
/// Kernels are loaded here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole (to 4 GiB).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;
/// virtio-mmio device windows (4 KiB each) start here.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const LAPIC_START: u64 = 0xfee0_0000;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot create memfd for {0} MiB of guest RAM: {1}")]
    Memfd(u64, std::io::Error),
    #[error("cannot size guest RAM memfd to {0} MiB: {1}")]
    Truncate(u64, std::io::Error),
    #[error("cannot map {0} MiB of guest RAM: {1}")]
    Map(u64, String),
}

/// The RAM ranges (guest address, size) for `mem_bytes` of RAM: below the
/// MMIO hole, and the rest above 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(GuestAddress, u64)> {
    if mem_bytes <= MMIO_HOLE_START {
        vec![(GuestAddress(0), mem_bytes)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (
                GuestAddress(FIRST_ADDR_PAST_32BITS),
                mem_bytes - MMIO_HOLE_START,
            ),
        ]
    }
}

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// The memory map given to the guest.
pub fn e820_map(mem_bytes: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, size) in ram_ranges(mem_bytes) {
        let start = start.0.max(HIMEM_START);
        let end = if start == HIMEM_START {
            size
        } else {
            start + size
        };
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// Guest RAM: a memfd and the mapping of it.
pub struct GuestRam {
    pub memfd: File,
    pub memory: GuestMemoryMmap,
    pub size: u64,
}

impl GuestRam {
    pub fn new(mem_mib: u64) -> Result<Self, MemoryError> {
        let size = mem_mib << 20;
        // SAFETY: memfd_create with a valid NUL-terminated name; the result
        // is checked before use.
        let fd = unsafe {
            libc::memfd_create(
                c"parvm-guest-ram".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(MemoryError::Memfd(mem_mib, std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a freshly created descriptor owned by nobody else.
        let memfd = unsafe { File::from_raw_fd(fd) };
        memfd
            .set_len(size)
            .map_err(|e| MemoryError::Truncate(mem_mib, e))?;
        // Guest RAM never changes size: sealed, so that a process it is
        // shared with (a vhost-user backend such as the VIOS, which insists
        // on it) can map it without risking SIGBUS from a later truncate.
        // SAFETY: F_ADD_SEALS on a valid memfd we own; no memory is passed.
        if unsafe {
            libc::fcntl(
                memfd.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
            )
        } < 0
        {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot seal the guest RAM memfd");
        }
        let mut offset = 0u64;
        let mut ranges = Vec::new();
        for (addr, len) in ram_ranges(size) {
            let file = memfd
                .try_clone()
                .map_err(|e| MemoryError::Map(mem_mib, e.to_string()))?;
            ranges.push((addr, len as usize, Some(FileOffset::new(file, offset))));
            offset += len;
        }
        let memory = GuestMemoryMmap::from_ranges_with_files(ranges)
            .map_err(|e| MemoryError::Map(mem_mib, e.to_string()))?;
        Ok(GuestRam {
            memfd,
            memory,
            size,
        })
    }

    /// Bytes of RAM below the MMIO hole.
    pub fn low_end(&self) -> u64 {
        self.size.min(MMIO_HOLE_START)
    }

    /// Registers every region as a KVM memory slot (slots 0..n).
    pub fn register(&self, vm: &kvm_ioctls::VmFd) -> Result<(), kvm_ioctls::Error> {
        for (slot, region) in self.memory.iter().enumerate() {
            let mem_region = kvm_bindings::kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region stays mapped for the life of the VM: the
            // GuestMemoryMmap is owned by the Vmm, which outlives the VmFd's use.
            unsafe { vm.set_user_memory_region(mem_region)? };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn small_ram_is_one_range_and_large_ram_skips_the_hole() {
        assert_eq!(ram_ranges(16 << 20), vec![(GuestAddress(0), 16 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[1], (GuestAddress(4 << 30), 1 << 30));
    }

    #[test]
    fn e820_reserves_the_bios_area_and_sums_to_ram() {
        let map = e820_map(16 << 20);
        assert_eq!(map[1].kind, E820_RESERVED);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, EBDA_START + (16 << 20) - HIMEM_START);
        let big = e820_map(5 << 30);
        assert_eq!(big.last().unwrap().addr, 4 << 30);
        assert_eq!(big.last().unwrap().size, 2 << 30);
    }

    #[test]
    fn guest_ram_is_a_memfd_of_the_right_size() {
        let ram = GuestRam::new(16).unwrap();
        assert_eq!(ram.memfd.metadata().unwrap().len(), 16 << 20);
        assert_eq!(ram.memory.num_regions(), 1);
    }
}
