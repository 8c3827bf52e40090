//! The ELF64 core a dump is: the layout QEMU's `dump-guest-memory` writes
//! (without paging), so gdb and `crash` read it like a QEMU dump.
//!
//! ```text
//! ELF header (ET_CORE, EM_X86_64)
//! program headers: PT_NOTE, then one PT_LOAD per piece of RAM
//! notes: NT_PRSTATUS "CORE" per vCPU, then a "QEMU" note per vCPU
//! zeros up to 4 KiB
//! the PT_LOADs' bytes, in order
//! ```
//!
//! A PT_LOAD's `p_paddr` is the guest-physical address; `p_vaddr` is the
//! same number (gdb reads memory by `p_vaddr`: right for identity-mapped
//! guests, and physical addresses for everyone else; QEMU 7.2 does the
//! same without paging). Runs of zero pages are PT_LOADs with `p_filesz` 0 and
//! their size in `p_memsz`: nothing is written for them, readers see zeros.

use super::cpu::CpuState;
use kvm_bindings::kvm_segment;

pub const EHDR_SIZE: usize = 64;
pub const PHDR_SIZE: usize = 56;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const ET_CORE: u16 = 4;
const EM_X86_64: u16 = 62;
const NT_PRSTATUS: u32 = 1;
/// QEMU's per-CPU note type (target/i386/arch_dump.c).
const NT_QEMU: u32 = 0;
const PF_RWX: u32 = 7;
/// `struct elf_prstatus` on x86-64.
pub const PRSTATUS_SIZE: usize = 336;
/// Offset of `pr_pid` and of `pr_reg` in it.
const PRSTATUS_PID: usize = 32;
const PRSTATUS_REGS: usize = 112;
/// QEMU's `QEMUCPUState`, version 1 with `kernel_gs_base`.
pub const QEMU_CPU_STATE_SIZE: usize = 440;
/// Most program headers (e_phnum is 16 bits; 0xffff means "look
/// elsewhere", which readers handle unevenly).
pub const MAX_PHDRS: usize = 0xfff0;

/// One PT_LOAD: `memsz` bytes of guest RAM at `paddr`; `file` says whether
/// its bytes are in the file (false: a run of zero pages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    pub paddr: u64,
    pub memsz: u64,
    pub file: bool,
}

/// Where everything goes in the core file.
#[derive(Debug)]
pub struct Layout {
    /// ELF header, program headers and notes, padded to 4 KiB.
    pub head: Vec<u8>,
    /// Each load with its file offset (for a zero run: where it would be).
    pub loads: Vec<(Load, u64)>,
    /// Bytes of the whole file.
    pub size: u64,
}

fn note(out: &mut Vec<u8>, name: &[u8], kind: u32, desc: &[u8]) {
    let namesz = name.len() + 1;
    out.extend_from_slice(&(namesz as u32).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(name);
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(desc);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn put(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// `struct elf_prstatus` for one vCPU: pid = index + 1 (gdb's thread
/// ids), the general registers in `user_regs_struct` order.
pub fn prstatus(cpu: &CpuState) -> Vec<u8> {
    let r = &cpu.regs;
    let s = &cpu.sregs;
    let mut d = vec![0u8; PRSTATUS_SIZE];
    d[PRSTATUS_PID..PRSTATUS_PID + 4].copy_from_slice(&(u32::from(cpu.index) + 1).to_le_bytes());
    let regs = [
        r.r15,
        r.r14,
        r.r13,
        r.r12,
        r.rbp,
        r.rbx,
        r.r11,
        r.r10,
        r.r9,
        r.r8,
        r.rax,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        0, // orig_rax (QEMU writes 0 too)
        r.rip,
        u64::from(s.cs.selector),
        r.rflags,
        r.rsp,
        u64::from(s.ss.selector),
        s.fs.base,
        s.gs.base,
        u64::from(s.ds.selector),
        u64::from(s.es.selector),
        u64::from(s.fs.selector),
        u64::from(s.gs.selector),
    ];
    for (i, v) in regs.iter().enumerate() {
        put(&mut d, PRSTATUS_REGS + 8 * i, *v);
    }
    d
}

/// A segment's descriptor attribute bits as QEMU keeps them (`flags`:
/// type at bit 8, S 12, DPL 13, P 15, AVL 20, L 21, D/B 22, G 23).
fn segment_flags(s: &kvm_segment) -> u32 {
    (u32::from(s.type_) << 8)
        | (u32::from(s.s) << 12)
        | (u32::from(s.dpl) << 13)
        | (u32::from(s.present) << 15)
        | (u32::from(s.avl) << 20)
        | (u32::from(s.l) << 21)
        | (u32::from(s.db) << 22)
        | (u32::from(s.g) << 23)
}

/// QEMU's `QEMUCPUState` for one vCPU.
pub fn qemu_cpu_state(cpu: &CpuState) -> Vec<u8> {
    let r = &cpu.regs;
    let s = &cpu.sregs;
    let mut d = Vec::with_capacity(QEMU_CPU_STATE_SIZE);
    d.extend_from_slice(&1u32.to_le_bytes());
    d.extend_from_slice(&(QEMU_CPU_STATE_SIZE as u32).to_le_bytes());
    for v in [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip, r.rflags,
    ] {
        d.extend_from_slice(&v.to_le_bytes());
    }
    let seg = |d: &mut Vec<u8>, selector: u16, limit: u32, flags: u32, base: u64| {
        d.extend_from_slice(&u32::from(selector).to_le_bytes());
        d.extend_from_slice(&limit.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&0u32.to_le_bytes());
        d.extend_from_slice(&base.to_le_bytes());
    };
    for x in [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.ldt, &s.tr] {
        seg(&mut d, x.selector, x.limit, segment_flags(x), x.base);
    }
    seg(&mut d, 0, u32::from(s.gdt.limit), 0, s.gdt.base);
    seg(&mut d, 0, u32::from(s.idt.limit), 0, s.idt.base);
    for v in [s.cr0, 0, s.cr2, s.cr3, s.cr4, cpu.kernel_gs_base] {
        d.extend_from_slice(&v.to_le_bytes());
    }
    d
}

/// The notes of `cpus`: every NT_PRSTATUS first, then every QEMU note
/// (QEMU's order).
pub fn notes(cpus: &[CpuState]) -> Vec<u8> {
    let mut out = Vec::new();
    for cpu in cpus {
        note(&mut out, b"CORE", NT_PRSTATUS, &prstatus(cpu));
    }
    for cpu in cpus {
        note(&mut out, b"QEMU", NT_QEMU, &qemu_cpu_state(cpu));
    }
    out
}

fn phdr(out: &mut Vec<u8>, kind: u32, flags: u32, offset: u64, addr: u64, filesz: u64, memsz: u64) {
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    for v in [offset, addr, addr, filesz, memsz, 0] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// The file's layout for these vCPUs and loads (at most [`MAX_PHDRS`] - 1).
pub fn layout(cpus: &[CpuState], loads: &[Load]) -> Layout {
    let phnum = loads.len() + 1;
    let notes = notes(cpus);
    let notes_at = (EHDR_SIZE + PHDR_SIZE * phnum) as u64;
    let data_at = (notes_at + notes.len() as u64).next_multiple_of(4096);
    let mut head = Vec::with_capacity(data_at as usize);
    head.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    head.extend_from_slice(&[0; 8]);
    head.extend_from_slice(&ET_CORE.to_le_bytes());
    head.extend_from_slice(&EM_X86_64.to_le_bytes());
    head.extend_from_slice(&1u32.to_le_bytes()); // e_version
    head.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    head.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    head.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    head.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    head.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    head.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    head.extend_from_slice(&(phnum.min(MAX_PHDRS) as u16).to_le_bytes());
    head.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
    let size = notes.len() as u64;
    phdr(&mut head, PT_NOTE, 0, notes_at, 0, size, size);
    let mut at = data_at;
    let mut placed = Vec::with_capacity(loads.len());
    for load in loads {
        let filesz = if load.file { load.memsz } else { 0 };
        phdr(
            &mut head, PT_LOAD, PF_RWX, at, load.paddr, filesz, load.memsz,
        );
        placed.push((*load, at));
        at += filesz;
    }
    head.extend_from_slice(&notes);
    head.resize(data_at as usize, 0);
    Layout {
        head,
        loads: placed,
        size: at,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cpu(index: u8) -> CpuState {
        let mut c = CpuState {
            index,
            ..Default::default()
        };
        c.regs.rip = 0x100234;
        c.regs.r15 = 0x7061_7276_6d64_6d70;
        c.regs.rsp = 0x7000_0000_0000;
        c.sregs.cs.selector = 8;
        c.sregs.cs.type_ = 0xb;
        c.sregs.cs.s = 1;
        c.sregs.cs.present = 1;
        c.sregs.cs.l = 1;
        c.sregs.cr3 = 0x9000;
        c
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn prstatus_has_gdb_layout() {
        let d = prstatus(&cpu(1));
        assert_eq!(d.len(), PRSTATUS_SIZE);
        assert_eq!(u32::from_le_bytes(d[32..36].try_into().unwrap()), 2);
        assert_eq!(u64_at(&d, PRSTATUS_REGS), 0x7061_7276_6d64_6d70); // r15
        assert_eq!(u64_at(&d, PRSTATUS_REGS + 16 * 8), 0x100234); // rip
        assert_eq!(u64_at(&d, PRSTATUS_REGS + 17 * 8), 8); // cs
        assert_eq!(u64_at(&d, PRSTATUS_REGS + 19 * 8), 0x7000_0000_0000); // rsp
    }

    #[test]
    fn qemu_state_has_qemu_layout() {
        let d = qemu_cpu_state(&cpu(0));
        assert_eq!(d.len(), QEMU_CPU_STATE_SIZE);
        assert_eq!(u32::from_le_bytes(d[4..8].try_into().unwrap()), 440);
        assert_eq!(u64_at(&d, 8 + 15 * 8), 0x7061_7276_6d64_6d70); // r15
        assert_eq!(u64_at(&d, 8 + 16 * 8), 0x100234); // rip
                                                      // cs: selector 8, flags type 0xb | S | P | L.
        assert_eq!(u32::from_le_bytes(d[152..156].try_into().unwrap()), 8);
        assert_eq!(
            u32::from_le_bytes(d[160..164].try_into().unwrap()),
            (0xb << 8) | (1 << 12) | (1 << 15) | (1 << 21)
        );
        // cr[3] after cr[0..2].
        assert_eq!(u64_at(&d, 392 + 3 * 8), 0x9000);
    }

    #[test]
    fn layout_places_notes_then_data_at_4k() {
        let loads = [
            Load {
                paddr: 0,
                memsz: 0x2000,
                file: true,
            },
            Load {
                paddr: 0x2000,
                memsz: 0x10_0000,
                file: false,
            },
            Load {
                paddr: 0x10_2000,
                memsz: 0x1000,
                file: true,
            },
        ];
        let l = layout(&[cpu(0), cpu(1)], &loads);
        assert_eq!(l.head.len() % 4096, 0);
        assert_eq!(&l.head[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([l.head[56], l.head[57]]), 4);
        assert_eq!(l.loads[0].1, 4096);
        assert_eq!(l.loads[2].1, 4096 + 0x2000);
        assert_eq!(l.size, 4096 + 0x3000);
        // The third PT_LOAD's header: offset, vaddr = paddr, filesz, memsz.
        let ph = EHDR_SIZE + PHDR_SIZE * 3;
        assert_eq!(u64_at(&l.head, ph + 8), 4096 + 0x2000);
        assert_eq!(u64_at(&l.head, ph + 16), 0x10_2000);
        assert_eq!(u64_at(&l.head, ph + 24), 0x10_2000);
        // The zero run has no file bytes.
        let zph = EHDR_SIZE + PHDR_SIZE * 2;
        assert_eq!(u64_at(&l.head, zph + 32), 0);
        assert_eq!(u64_at(&l.head, zph + 40), 0x10_0000);
    }
}
