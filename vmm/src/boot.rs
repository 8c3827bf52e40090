//! Loading a guest: the kernel (ELF vmlinux with or without a PVH note, or a
//! bzImage) through linux-loader, the initrd and command line, the boot
//! information the guest reads (Linux `boot_params` or PVH `hvm_start_info`)
//! and the initial register state of the boot vCPU (GDT, identity page tables,
//! long or protected mode). See docs/boot-protocol.md.

use crate::memory::*;
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::Elf;
use linux_loader::loader::{KernelLoader, KernelLoaderResult, PvhBootCapability};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use vm_memory::{Bytes, GuestAddress};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// Initial stack pointer of the boot vCPU (below the command line).
pub const BOOT_STACK_POINTER: u64 = 0x1_fff0;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {0}: {1}")]
    OpenKernel(PathBuf, std::io::Error),
    #[error("kernel {0} is neither an ELF vmlinux nor a bzImage")]
    UnknownKernelFormat(PathBuf),
    #[error("kernel {0}: {1}")]
    LoadKernel(PathBuf, String),
    #[error("guest RAM ({mem_mib} MiB) is too small for kernel {path} ({size} bytes at 1 MiB)")]
    KernelTooBig {
        path: PathBuf,
        size: u64,
        mem_mib: u64,
    },
    #[error("cannot open initrd {0}: {1}")]
    OpenInitrd(PathBuf, std::io::Error),
    #[error(
        "initrd {path} ({size} bytes) does not fit in guest RAM ({mem_mib} MiB) above the kernel"
    )]
    InitrdTooBig {
        path: PathBuf,
        size: u64,
        mem_mib: u64,
    },
    #[error("cannot read initrd {0}: {1}")]
    ReadInitrd(PathBuf, String),
    #[error("command line `{0}` is too long or invalid (at most {max} bytes): {1}", max = parvm_config::MAX_CMDLINE_LEN)]
    Cmdline(String, String),
    #[error("cannot write boot information into guest memory: {0}")]
    GuestMemory(String),
}

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 32-bit protected mode, paging off, `ebx` = hvm_start_info.
    Pvh,
    /// 64-bit long mode with identity paging, `rsi` = boot_params.
    Linux64,
}

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPoint {
    pub addr: GuestAddress,
    pub mode: EntryMode,
}

/// What the guest needs to boot, beyond its RAM.
pub struct BootSetup<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    pub mem_mib: u64,
    pub rsdp: GuestAddress,
}

fn write<T: vm_memory::ByteValued>(mem: &GuestMemoryMmap, v: T, at: u64) -> Result<(), BootError> {
    mem.write_obj(v, GuestAddress(at))
        .map_err(|e| BootError::GuestMemory(e.to_string()))
}

/// Loads kernel, initrd and command line and writes the boot information.
/// The start of a command line, for an error message that stays one
/// readable line however long the command line was.
fn excerpt(cmdline: &str) -> String {
    const SHOWN: usize = 64;
    match cmdline.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}... ({} bytes)", &cmdline[..end], cmdline.len()),
        None => cmdline.to_string(),
    }
}

pub fn load(mem: &GuestMemoryMmap, setup: &BootSetup) -> Result<EntryPoint, BootError> {
    let path = setup.kernel.to_path_buf();
    let mut kernel =
        File::open(setup.kernel).map_err(|e| BootError::OpenKernel(path.clone(), e))?;
    let size = kernel
        .metadata()
        .map_err(|e| BootError::OpenKernel(path.clone(), e))?
        .len();
    let low_end = (setup.mem_mib << 20).min(MMIO_HOLE_START);
    let mut magic = [0u8; 0x206];
    let got =
        read_prefix(&mut kernel, &mut magic).map_err(|e| BootError::OpenKernel(path.clone(), e))?;
    let is_elf = got >= 4 && magic[..4] == *b"\x7fELF";
    let is_bzimage = got >= 0x206 && magic[0x202..0x206] == *b"HdrS";
    if !is_elf && !is_bzimage {
        return Err(BootError::UnknownKernelFormat(path));
    }
    if HIMEM_START + size > low_end {
        return Err(BootError::KernelTooBig {
            path,
            size,
            mem_mib: setup.mem_mib,
        });
    }
    let himem = Some(GuestAddress(HIMEM_START));
    let result: KernelLoaderResult = if is_elf {
        Elf::load(mem, None, &mut kernel, himem)
    } else {
        BzImage::load(mem, None, &mut kernel, himem)
    }
    .map_err(|e| BootError::LoadKernel(path.clone(), e.to_string()))?;
    if result.kernel_end > low_end {
        return Err(BootError::KernelTooBig {
            path,
            size: result.kernel_end - HIMEM_START,
            mem_mib: setup.mem_mib,
        });
    }

    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE)
        .map_err(|e| BootError::Cmdline(excerpt(setup.cmdline), e.to_string()))?;
    cmdline
        .insert_str(setup.cmdline)
        .map_err(|e| BootError::Cmdline(excerpt(setup.cmdline), e.to_string()))?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(|e| BootError::Cmdline(excerpt(setup.cmdline), e.to_string()))?;
    let cmdline_len = setup.cmdline.len() as u32 + 1;

    let initrd_limit = match result.setup_header {
        Some(h) if h.initrd_addr_max != 0 => low_end.min(u64::from(h.initrd_addr_max) + 1),
        _ => low_end,
    };
    let initrd = match setup.initrd {
        Some(p) => Some(load_initrd(
            mem,
            p,
            result.kernel_end,
            initrd_limit,
            setup.mem_mib,
        )?),
        None => None,
    };
    let e820 = e820_map(setup.mem_mib << 20);

    match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) if is_elf => {
            write_pvh_info(mem, &e820, initrd, setup.rsdp)?;
            Ok(EntryPoint {
                addr: entry,
                mode: EntryMode::Pvh,
            })
        }
        _ => {
            let mut params = boot_params::default();
            if let Some(hdr) = result.setup_header {
                params.hdr = hdr;
            }
            params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
            params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            params.hdr.header = KERNEL_HDR_MAGIC;
            if params.hdr.kernel_alignment == 0 {
                params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
            }
            params.hdr.cmd_line_ptr = CMDLINE_START as u32;
            params.hdr.cmdline_size = cmdline_len;
            if let Some((addr, len)) = initrd {
                params.hdr.ramdisk_image = addr as u32;
                params.hdr.ramdisk_size = len as u32;
                params.ext_ramdisk_image = (addr >> 32) as u32;
                params.ext_ramdisk_size = (len >> 32) as u32;
            }
            params.acpi_rsdp_addr = setup.rsdp.0;
            for (i, e) in e820.iter().enumerate() {
                params.e820_table[i].addr = e.addr;
                params.e820_table[i].size = e.size;
                params.e820_table[i].r#type = e.kind;
            }
            params.e820_entries = e820.len() as u8;
            write(mem, params, ZERO_PAGE_START)?;
            let entry = if is_elf {
                result.kernel_load
            } else {
                // The 64-bit entry of a bzImage is 0x200 into the protected-mode part.
                GuestAddress(result.kernel_load.0 + 0x200)
            };
            Ok(EntryPoint {
                addr: entry,
                mode: EntryMode::Linux64,
            })
        }
    }
}

fn read_prefix(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = f.read(&mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    limit: u64,
    mem_mib: u64,
) -> Result<(u64, u64), BootError> {
    let mut f = File::open(path).map_err(|e| BootError::OpenInitrd(path.into(), e))?;
    let size = f
        .metadata()
        .map_err(|e| BootError::OpenInitrd(path.into(), e))?
        .len();
    let too_big = || BootError::InitrdTooBig {
        path: path.into(),
        size,
        mem_mib,
    };
    let start = limit.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if start < kernel_end.next_multiple_of(0x1000) {
        return Err(too_big());
    }
    mem.read_exact_volatile_from(GuestAddress(start), &mut f, size as usize)
        .map_err(|e| BootError::ReadInitrd(path.into(), e.to_string()))?;
    Ok((start, size))
}

fn write_pvh_info(
    mem: &GuestMemoryMmap,
    e820: &[E820Entry],
    initrd: Option<(u64, u64)>,
    rsdp: GuestAddress,
) -> Result<(), BootError> {
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp.0,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        write(mem, module, PVH_MODLIST_START)?;
    }
    for (i, e) in e820.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        write(
            mem,
            entry,
            PVH_MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64,
        )?;
    }
    write(mem, info, PVH_INFO_START)
}

// --- initial CPU state -----------------------------------------------------

/// A GDT descriptor from flags, base and limit (as in the Intel SDM 3.4.5).
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << (56 - 24))
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << (48 - 16))
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Writes the GDT (and identity page tables for long mode) and returns the
/// boot vCPU's special registers.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, BootError> {
    let code = match mode {
        EntryMode::Linux64 => gdt_entry(0xa09b, 0, 0xfffff),
        EntryMode::Pvh => gdt_entry(0xc09b, 0, 0xfffff),
    };
    let gdt = [
        gdt_entry(0, 0, 0),
        gdt_entry(0, 0, 0),
        code,                          // 0x10 __BOOT_CS
        gdt_entry(0xc093, 0, 0xfffff), // 0x18 __BOOT_DS
        gdt_entry(0x808b, 0, 0xfffff), // 0x20 TSS
    ];
    for (i, e) in gdt.iter().enumerate() {
        write(mem, *e, BOOT_GDT_START + (i * 8) as u64)?;
    }
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    let data = segment_from_gdt(gdt[3], 3);
    sregs.cs = segment_from_gdt(gdt[2], 2);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[4], 4);
    match mode {
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryMode::Linux64 => {
            write_identity_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
    }
    Ok(sregs)
}

/// Identity-maps 0-4 GiB with 2 MiB pages.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    write(mem, PDPTE_START | 0x3, PML4_START)?;
    for i in 0..4u64 {
        write(mem, (PDE_START + i * 0x1000) | 0x3, PDPTE_START + i * 8)?;
    }
    for j in 0..2048u64 {
        write(mem, (j << 21) | 0x83, PDE_START + j * 8)?;
    }
    Ok(())
}

/// The boot vCPU's general registers at entry.
pub fn boot_regs(entry: EntryPoint) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry.addr.0,
        ..Default::default()
    };
    match entry.mode {
        EntryMode::Pvh => regs.rbx = PVH_INFO_START,
        EntryMode::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
    }
    regs
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let cs = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 2);
        assert_eq!(
            (cs.selector, cs.l, cs.db, cs.limit, cs.present),
            (0x10, 1, 0, 0xffff_ffff, 1)
        );
        let cs32 = segment_from_gdt(gdt_entry(0xc09b, 0, 0xfffff), 2);
        assert_eq!((cs32.l, cs32.db, cs32.type_), (0, 1, 0xb));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn page_tables_map_the_first_4gib() {
        let ram = GuestRam::new(16).unwrap();
        let s = setup_sregs(&ram.memory, EntryMode::Linux64, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr3, PML4_START);
        let pde: u64 = ram
            .memory
            .read_obj(GuestAddress(PDE_START + 2047 * 8))
            .unwrap();
        assert_eq!(pde, (2047 << 21) | 0x83);
    }

    fn tmpfile(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("parvm-boot-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn try_load(
        kernel: &Path,
        initrd: Option<&Path>,
        mem_mib: u64,
    ) -> Result<EntryPoint, BootError> {
        let ram = GuestRam::new(mem_mib).unwrap();
        load(
            &ram.memory,
            &BootSetup {
                kernel,
                initrd,
                cmdline: "x",
                mem_mib,
                rsdp: GuestAddress(0xe0000),
            },
        )
    }

    #[test]
    fn garbage_and_truncated_kernels_are_refused() {
        let junk = tmpfile("junk", &[0x55; 4096]);
        assert!(matches!(
            try_load(&junk, None, 16),
            Err(BootError::UnknownKernelFormat(_))
        ));
        let empty = tmpfile("empty", &[]);
        assert!(matches!(
            try_load(&empty, None, 16),
            Err(BootError::UnknownKernelFormat(_))
        ));
        let trunc = tmpfile("trunc", b"\x7fELF\x02\x01\x01");
        let e = try_load(&trunc, None, 16).unwrap_err();
        assert!(matches!(e, BootError::LoadKernel(..)), "{e}");
        let missing = Path::new("/nonexistent/parvm-kernel");
        assert!(matches!(
            try_load(missing, None, 16),
            Err(BootError::OpenKernel(..))
        ));
        for p in [junk, empty, trunc] {
            let _ = std::fs::remove_file(p);
        }
    }
}
