#![allow(clippy::unwrap_used)]
//! A dump written to a disk in memory, read back as the manager would
//! (the table) and as an ELF reader would (headers, notes, loads).

use super::cpu::CpuState;
use super::ram::RamPiece;
use super::ram::RamSource;
use super::writer::{write_dump, DumpMeta, DumpSink};
use super::DumpError;
use parvm_protocol::dump::{self, DumpState, DumpTrigger, TABLE_BYTES};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// A disk in memory that can be made to fail after some writes.
struct MemDisk {
    bytes: Vec<u8>,
    writes_left: Option<usize>,
}

impl DumpSink for MemDisk {
    fn capacity(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        Ok(self.bytes[offset as usize..offset as usize + len].to_vec())
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        assert_eq!(offset % 512, 0);
        assert!(data.len() <= virtio_devices::paging::MAX_TRANSFER);
        if let Some(n) = self.writes_left.as_mut() {
            if *n == 0 {
                return Err("paging disk dump: the backend hung up".into());
            }
            *n -= 1;
        }
        self.bytes[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), String> {
        Ok(())
    }
}

fn memfd(len: u64) -> File {
    // SAFETY: memfd_create with a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"dump-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor nobody else owns.
    let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    f
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn meta() -> DumpMeta {
    DumpMeta {
        partition: "lpar1".into(),
        trigger: DumpTrigger::TripleFault,
        reason: "guest triple fault on vCPU 0".into(),
    }
}

#[test]
fn a_dump_holds_the_pattern_at_its_physical_address_and_the_registers() {
    let ram = memfd(16 << 20);
    let pieces = [RamPiece {
        gpa: 0,
        len: 16 << 20,
        memfd_offset: 0,
    }];
    ram.write_all_at(&0x0123_4567_89ab_cdefu64.to_le_bytes(), 0x40_0000)
        .unwrap();
    ram.write_all_at(&[7; 4096], 0x10_0000).unwrap();
    ram.write_all_at(&[9; 4096], 0x10_2000).unwrap();
    let mut cpu = CpuState::default();
    cpu.regs.r15 = 0xfeed_f00d;
    let mut disk = MemDisk {
        bytes: vec![0xaa; 32 << 20],
        writes_left: None,
    };
    let mut seen = Vec::new();
    // Through a mapping of the memfd, as the VMM has one: zero pages told
    // in place, data written straight from it.
    let view = crate::memory::GuestMemoryMmap::from_ranges_with_files([(
        vm_memory::GuestAddress(0),
        16 << 20,
        Some(vm_memory::FileOffset::new(ram.try_clone().unwrap(), 0)),
    )])
    .unwrap();
    let source = RamSource {
        memfd: &ram,
        pieces: &pieces,
        release: true,
        mapped: None,
        view: Some(&view),
    };
    let rec = write_dump(&mut disk, &meta(), &[cpu], &source, &mut |r| {
        seen.push(r.state)
    })
    .unwrap();
    assert_eq!(rec.state, DumpState::Complete);
    assert_eq!(seen.first(), Some(&DumpState::Writing));
    assert_eq!(seen.last(), Some(&DumpState::Complete));
    assert_eq!(rec.zero_bytes, (16 << 20) - 0x3000);
    // Released: the memfd holds nothing any more.
    // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&ram);
    // SAFETY: fstat writes only into the local stat.
    assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
    assert_eq!(st.st_blocks, 0);
    // The table lists it.
    let table = dump::decode(&disk.bytes[..TABLE_BYTES as usize], disk.bytes.len() as u64).unwrap();
    assert_eq!(table.dumps, vec![rec.clone()]);
    // The core: find the PT_LOAD holding 0x400000 and read the pattern.
    let core = &disk.bytes[rec.offset as usize..(rec.offset + rec.size) as usize];
    assert_eq!(&core[..4], b"\x7fELF");
    let phnum = u16::from_le_bytes([core[56], core[57]]) as usize;
    let mut found = false;
    for i in 0..phnum {
        let ph = 64 + 56 * i;
        let kind = u32::from_le_bytes(core[ph..ph + 4].try_into().unwrap());
        let (off, paddr, filesz) = (
            u64_at(core, ph + 8),
            u64_at(core, ph + 24),
            u64_at(core, ph + 32),
        );
        if kind == 4 {
            // PT_NOTE: the prstatus's r15.
            let desc = off as usize + 12 + 8;
            assert_eq!(u64_at(core, desc + 112), 0xfeed_f00d);
        }
        if kind == 1 && paddr <= 0x40_0000 && 0x40_0000 < paddr + filesz {
            let at = (off + 0x40_0000 - paddr) as usize;
            assert_eq!(u64_at(core, at), 0x0123_4567_89ab_cdef);
            found = true;
        }
    }
    assert!(found);
    // The pages on either side of the hole at 0x101000 (one PT_LOAD, the
    // gap merged only if runs were too many: here they are apart).
    let at = |gpa: u64| -> u8 {
        (0..phnum)
            .find_map(|i| {
                let ph = 64 + 56 * i;
                let (off, paddr, filesz) = (
                    u64_at(core, ph + 8),
                    u64_at(core, ph + 24),
                    u64_at(core, ph + 32),
                );
                (u32::from_le_bytes(core[ph..ph + 4].try_into().unwrap()) == 1
                    && paddr <= gpa
                    && gpa < paddr + filesz)
                    .then(|| core[(off + gpa - paddr) as usize])
            })
            .unwrap_or(0)
    };
    assert_eq!((at(0x10_0000), at(0x10_1000), at(0x10_2fff)), (7, 0, 9));
    // A second dump goes after the first.
    ram.write_all_at(&[1; 4096], 0).unwrap();
    let source = RamSource {
        release: false,
        ..source
    };
    let second = write_dump(&mut disk, &meta(), &[], &source, &mut |_| {}).unwrap();
    assert_eq!(second.id, 2);
    assert!(second.offset >= rec.offset + rec.size);
}

#[test]
fn a_disk_failing_mid_dump_gives_a_failed_record() {
    let ram = memfd(8 << 20);
    ram.write_all_at(&[5; 1 << 20], 0).unwrap();
    let pieces = [RamPiece {
        gpa: 0,
        len: 8 << 20,
        memfd_offset: 0,
    }];
    let mut disk = MemDisk {
        bytes: vec![0; 16 << 20],
        writes_left: Some(3),
    };
    let mut last = None;
    let source = RamSource {
        memfd: &ram,
        pieces: &pieces,
        release: false,
        mapped: None,
        view: None,
    };
    let err = write_dump(&mut disk, &meta(), &[], &source, &mut |r| {
        last = Some(r.clone())
    })
    .unwrap_err();
    let DumpError::Failed(rec, msg) = err else {
        panic!("{err}")
    };
    assert_eq!(rec.state, DumpState::Failed);
    assert!(msg.contains("hung up"), "{msg}");
    assert_eq!(last.unwrap().state, DumpState::Failed);
    // The disk came back: the next dump marks nothing wrong and succeeds;
    // the table (written as "writing" before the failure) now says failed.
    disk.writes_left = None;
    let next = write_dump(&mut disk, &meta(), &[], &source, &mut |_| {}).unwrap();
    let table = dump::decode(&disk.bytes[..TABLE_BYTES as usize], 16 << 20).unwrap();
    assert_eq!(table.get(rec.id).unwrap().state, DumpState::Failed);
    assert_eq!(table.get(next.id).unwrap().state, DumpState::Complete);
}

#[test]
fn a_disk_too_small_for_the_core_is_refused_before_writing() {
    let ram = memfd(8 << 20);
    ram.write_all_at(&[5; 4 << 20], 0).unwrap();
    let pieces = [RamPiece {
        gpa: 0,
        len: 8 << 20,
        memfd_offset: 0,
    }];
    let mut disk = MemDisk {
        bytes: vec![0; 4 << 20],
        writes_left: Some(0),
    };
    let source = RamSource {
        memfd: &ram,
        pieces: &pieces,
        release: false,
        mapped: None,
        view: None,
    };
    let err = write_dump(&mut disk, &meta(), &[], &source, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("needs"), "{err}");
}
