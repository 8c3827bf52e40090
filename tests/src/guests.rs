//! The tiny guest kernels, built from tests/guests/ by this crate's build
//! script (see docs/guests.md for what they do and print).

use std::path::PathBuf;

/// Path of a built guest image: `tiny.elf`, `tiny64.elf`, `tiny.bzImage`.
pub fn guest_path(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/guests/")).join(name)
}

/// FNV-1a 64-bit, the checksum the guests print for their initrd.
pub fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// First address `parvm.test=memtest` writes (4 MiB); it runs to the end of
/// the RAM entry holding 2 MiB (at most 4 GiB), see docs/guests.md.
pub const MEMTEST_START: u64 = 0x40_0000;

/// The qword `parvm.test=memtest` writes at guest-physical address `addr`
/// (a multiple of 8) with `parvm.seed=seed`:
/// `addr * 0x9e3779b97f4a7c15 ^ seed * 0xd1b54a32d192ed03` (mod 2^64).
pub fn memtest_qword(addr: u64, seed: u64) -> u64 {
    addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed.wrapping_mul(0xd1b5_4a32_d192_ed03)
}

#[cfg(test)]
mod tests {
    use super::guest_path;

    /// The value the guest itself printed as `want=` when a test build
    /// corrupted the qword at 0x1234560 under `parvm.seed=7`.
    #[test]
    fn memtest_qword_matches_the_guest() {
        assert_eq!(super::memtest_qword(0x123_4560, 7), 0x1d8d_51ea_603b_4bf5);
        assert_eq!(super::memtest_qword(0, 0), 0);
        assert_ne!(
            super::memtest_qword(super::MEMTEST_START, 1),
            super::memtest_qword(super::MEMTEST_START, 2)
        );
    }

    fn read(name: &str) -> Vec<u8> {
        let p = guest_path(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn u16_at(d: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([d[o], d[o + 1]])
    }

    fn u32_at(d: &[u8], o: usize) -> u32 {
        u32::from_le_bytes([d[o], d[o + 1], d[o + 2], d[o + 3]])
    }

    fn u64_at(d: &[u8], o: usize) -> u64 {
        u64::from(u32_at(d, o)) | (u64::from(u32_at(d, o + 4)) << 32)
    }

    /// (p_type, p_offset, p_paddr, p_filesz, p_memsz) of each program header.
    fn phdrs(elf: &[u8]) -> Vec<(u32, usize, u64, usize, u64)> {
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 2, "ELF64");
        let phoff = u64_at(elf, 0x20) as usize;
        let phentsize = usize::from(u16_at(elf, 0x36));
        let phnum = usize::from(u16_at(elf, 0x38));
        assert_eq!(phentsize, 56);
        (0..phnum)
            .map(|i| {
                let p = phoff + i * phentsize;
                (
                    u32_at(elf, p),
                    u64_at(elf, p + 8) as usize,
                    u64_at(elf, p + 24),
                    u64_at(elf, p + 32) as usize,
                    u64_at(elf, p + 40),
                )
            })
            .collect()
    }

    /// The 32-bit entry of a XEN_ELFNOTE_PHYS32_ENTRY ("Xen", type 18) note.
    fn pvh_entry(elf: &[u8]) -> Option<u32> {
        for (ty, off, _, filesz, _) in phdrs(elf) {
            if ty != 4 {
                continue; // PT_NOTE only
            }
            let mut p = off;
            while p + 12 <= off + filesz {
                let namesz = u32_at(elf, p) as usize;
                let descsz = u32_at(elf, p + 4) as usize;
                let ntype = u32_at(elf, p + 8);
                let name = &elf[p + 12..p + 12 + namesz];
                let desc = p + 12 + namesz.next_multiple_of(4);
                if ntype == 18 && name == b"Xen\0" && descsz >= 4 {
                    return Some(u32_at(elf, desc));
                }
                p = desc + descsz.next_multiple_of(4);
            }
        }
        None
    }

    /// The bytes loaded at 0x100000 by the first PT_LOAD.
    fn kernel_bytes(elf: &[u8]) -> &[u8] {
        let (_, off, paddr, filesz, _) = phdrs(elf)
            .into_iter()
            .find(|p| p.0 == 1)
            .unwrap_or_else(|| panic!("no PT_LOAD"));
        assert_eq!(paddr, 0x10_0000, "kernel linked at 1 MiB");
        &elf[off..off + filesz]
    }

    #[test]
    fn fnv1a64_known_values() {
        assert_eq!(super::fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn tiny_elf_has_pvh_note_and_64bit_entry() {
        let elf = read("tiny.elf");
        assert_eq!(u64_at(&elf, 0x18), 0x10_0200, "e_entry = 64-bit entry");
        assert_eq!(pvh_entry(&elf), Some(0x10_0000), "PVH entry at 1 MiB");
    }

    #[test]
    fn tiny64_elf_has_no_pvh_note() {
        let elf = read("tiny64.elf");
        assert_eq!(u64_at(&elf, 0x18), 0x10_0200);
        assert_eq!(pvh_entry(&elf), None);
    }

    #[test]
    fn all_three_images_carry_the_same_code() {
        let elf = read("tiny.elf");
        let elf64 = read("tiny64.elf");
        let bz = read("tiny.bzImage");
        let setup = (usize::from(bz[0x1f1]) + 1) * 512;
        assert_eq!(kernel_bytes(&elf), kernel_bytes(&elf64));
        assert_eq!(kernel_bytes(&elf), &bz[setup..]);
    }

    /// The header fields linux-loader's BzImage loader and the Linux boot
    /// protocol (Documentation/arch/x86/boot.rst) care about.
    #[test]
    fn bzimage_setup_header() {
        let bz = read("tiny.bzImage");
        let setup_sects = usize::from(bz[0x1f1]);
        let setup = (setup_sects + 1) * 512;
        assert!(setup_sects >= 1);
        assert_eq!(u16_at(&bz, 0x1fe), 0xaa55, "boot_flag");
        assert_eq!(&bz[0x202..0x206], b"HdrS");
        assert!(u16_at(&bz, 0x206) >= 0x020c, "protocol >= 2.12");
        assert_eq!(bz[0x211] & 0x01, 0x01, "loadflags LOADED_HIGH");
        assert_eq!(u32_at(&bz, 0x214), 0x10_0000, "code32_start");
        let kernel_len = bz.len() - setup;
        assert_eq!(
            u32_at(&bz, 0x1f4) as usize,
            kernel_len.div_ceil(16),
            "syssize"
        );
        let align = u32_at(&bz, 0x230);
        assert!(
            align.is_power_of_two() && 0x10_0000 % align == 0,
            "kernel_alignment"
        );
        assert_eq!(u16_at(&bz, 0x236) & 0x1, 0x1, "xloadflags XLF_KERNEL_64");
        assert!(u32_at(&bz, 0x238) >= 255, "cmdline_size");
        assert_eq!(u64_at(&bz, 0x258), 0x10_0000, "pref_address");
        assert!(u32_at(&bz, 0x260) as usize >= kernel_len, "init_size");
        // startup_64 at +0x200 starts with `cli` (0xfa), like the ELFs' e_entry.
        assert_eq!(bz[setup + 0x200], 0xfa);
    }
}
