//! What of guest RAM a dump writes: the pieces of RAM (guest-physical
//! ranges and where they sit in the memfd), the runs of pages that are not
//! zero (holes of the memfd are never read: `SEEK_DATA`/`SEEK_HOLE`; pages
//! that are allocated but zero are found by reading them), and the PT_LOADs
//! that describe both.

use super::elf::{Load, MAX_PHDRS};
use crate::memory::{ram_ranges, GuestMemoryMmap, GuestRam};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

pub const PAGE: u64 = 4096;

/// A guest-physical range of RAM and its place in the memfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamPiece {
    pub gpa: u64,
    pub len: u64,
    pub memfd_offset: u64,
}

/// The pieces of a partition's RAM, in guest-physical order (the memfd
/// holds them back to back, see `memory::GuestRam::new`).
pub fn pieces(ram: &GuestRam) -> Vec<RamPiece> {
    let mut offset = 0;
    ram_ranges(ram.size)
        .into_iter()
        .map(|(gpa, len)| {
            let p = RamPiece {
                gpa: gpa.0,
                len,
                memfd_offset: offset,
            };
            offset += len;
            p
        })
        .collect()
}

impl RamPiece {
    /// The memfd offset of guest-physical `gpa` (inside this piece).
    pub fn memfd_at(&self, gpa: u64) -> u64 {
        self.memfd_offset + (gpa - self.gpa)
    }
}

fn seek(fd: &File, offset: u64, whence: i32) -> io::Result<Option<u64>> {
    // SAFETY: lseek on a descriptor we own; no memory is passed.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset as libc::off_t, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    // ENXIO: no data (or hole) at or after the offset.
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

fn is_zero(page: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: any bytes are valid u128s; align_to only reinterprets.
        unsafe { page.align_to::<u128>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Guest RAM as the dump reads it.
pub struct RamSource<'a> {
    pub memfd: &'a File,
    pub pieces: &'a [RamPiece],
    /// Punch each written chunk out of the memfd (after a crash: the
    /// memory goes back to the host as the dump proceeds). Never for a
    /// shared-memory partition (the pager owns what is resident).
    pub release: bool,
    /// A shared-memory partition's mapping of guest RAM: read through it,
    /// so that a page the pager evicted faults and comes back from the
    /// paging device (a hole of the memfd is not a zero page there).
    pub mapped: Option<&'a GuestMemoryMmap>,
    /// The partition's mapping, to look at pages in place (no copy) when
    /// telling zero pages from data; without it they are read into a buffer.
    pub view: Option<&'a GuestMemoryMmap>,
}

/// Whether the page at `gpa` of `view` is all zero, read in place with
/// volatile loads (another thread, a VIOS completing a request, may write
/// guest RAM: no reference to it is made). `None` if it is not in `view`.
fn zero_in_place(view: &GuestMemoryMmap, gpa: u64) -> Option<bool> {
    let slice = view.get_slice(GuestAddress(gpa), PAGE as usize).ok()?;
    let guard = slice.ptr_guard();
    let words = guard.as_ptr().cast::<u64>();
    if !words.is_aligned() {
        return None;
    }
    Some((0..PAGE as usize / 8).all(|i| {
        // SAFETY: the guard keeps the page's mapping alive, the page is
        // PAGE bytes from an aligned start (checked), so each of the
        // PAGE / 8 words is inside it and aligned.
        unsafe { words.add(i).read_volatile() == 0 }
    }))
}

impl RamSource<'_> {
    /// Reads `buf.len()` bytes of guest RAM at `gpa` (inside `piece`).
    pub fn read(&self, piece: &RamPiece, gpa: u64, buf: &mut [u8]) -> io::Result<()> {
        match self.mapped {
            Some(m) => m
                .read_slice(buf, GuestAddress(gpa))
                .map_err(|e| io::Error::other(format!("guest RAM at {gpa:#x}: {e}"))),
            None => self.memfd.read_exact_at(buf, piece.memfd_at(gpa)),
        }
    }

    /// The memfd offset of the first hole at or after `gpa` (inside
    /// `piece`), for dedicated memory; `u64::MAX` for a shared-memory
    /// partition (read through the mapping whatever the memfd holds). The
    /// kernel walks the page cache to answer, so a caller asks once per
    /// run, not per chunk (holes punched behind it do not move it).
    pub fn next_hole(&self, piece: &RamPiece, gpa: u64) -> u64 {
        if self.mapped.is_some() {
            return u64::MAX;
        }
        let at = piece.memfd_at(gpa);
        match seek(self.memfd, at, libc::SEEK_HOLE) {
            Ok(Some(h)) => h,
            _ => at,
        }
    }

    /// Calls `f` with `len` bytes of guest RAM at `gpa` (inside `piece`)
    /// as they are in the mapping, without a copy; `None` (and `f` not
    /// called) when there is no mapping. For dedicated memory the caller
    /// makes sure the range has no hole of the memfd ([`Self::next_hole`]):
    /// reading a hole through the mapping would allocate it.
    pub fn with_direct<T>(&self, gpa: u64, len: usize, f: &mut dyn FnMut(&[u8]) -> T) -> Option<T> {
        let view = self.mapped.or(self.view)?;
        let slice = view.get_slice(GuestAddress(gpa), len).ok()?;
        let guard = slice.ptr_guard();
        // SAFETY: the guard keeps the `len` bytes at the slice's start
        // mapped (the mapping is owned by `view`, borrowed for this call),
        // and get_slice checked they lie inside one region. Guest RAM is
        // shared (a VIOS completing a request may write it): the bytes may
        // change under the reader, as guest RAM may, but cannot move or go
        // away while `f` runs; a shared-memory partition's evicted pages
        // fault and are brought back by the pager.
        let bytes = unsafe { std::slice::from_raw_parts(guard.as_ptr(), len) };
        Some(f(bytes))
    }

    /// The memfd ranges of `piece` that may hold data: its extents (holes
    /// are zero), or all of it for a shared-memory partition.
    fn extents(&self, p: &RamPiece) -> io::Result<Vec<(u64, u64)>> {
        let end = p.memfd_offset + p.len;
        if self.mapped.is_some() {
            return Ok(vec![(p.memfd_offset, end)]);
        }
        let mut out = Vec::new();
        let mut pos = p.memfd_offset;
        while pos < end {
            let Some(data) = seek(self.memfd, pos, libc::SEEK_DATA)? else {
                break;
            };
            if data >= end {
                break;
            }
            let data = data - data % PAGE;
            let hole = seek(self.memfd, data, libc::SEEK_HOLE)?
                .unwrap_or(end)
                .min(end);
            out.push((data, hole));
            pos = hole.max(data + PAGE);
        }
        Ok(out)
    }
}

/// The non-zero pages of each piece, as guest-physical runs
/// `(gpa, bytes)` in ascending order. `buf` is scratch (a multiple of 4 KiB).
pub fn scan(src: &RamSource<'_>, buf: &mut [u8]) -> io::Result<Vec<(u64, u64)>> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for p in src.pieces {
        for (data, hole) in src.extents(p)? {
            let mut at = data;
            while at < hole {
                let n = ((hole - at) as usize).min(buf.len());
                let gpa = p.gpa + (at - p.memfd_offset);
                if let Some(view) = src.view.filter(|_| src.mapped.is_none()) {
                    // Dedicated memory: the extents hold no hole, so looking
                    // through the mapping allocates nothing.
                    for i in 0..n as u64 / PAGE {
                        let page = gpa + i * PAGE;
                        let zero = match zero_in_place(view, page) {
                            Some(z) => z,
                            None => {
                                src.read(p, page, &mut buf[..PAGE as usize])?;
                                is_zero(&buf[..PAGE as usize])
                            }
                        };
                        if !zero {
                            match runs.last_mut() {
                                Some((start, len)) if *start + *len == page => *len += PAGE,
                                _ => runs.push((page, PAGE)),
                            }
                        }
                    }
                    at += n as u64;
                    continue;
                }
                src.read(p, gpa, &mut buf[..n])?;
                for (i, page) in buf[..n].chunks(PAGE as usize).enumerate() {
                    if is_zero(page) {
                        continue;
                    }
                    let gpa = p.gpa + (at - p.memfd_offset) + i as u64 * PAGE;
                    match runs.last_mut() {
                        Some((start, len)) if *start + *len == gpa => *len += PAGE,
                        _ => runs.push((gpa, PAGE)),
                    }
                }
                at += n as u64;
            }
        }
    }
    Ok(runs)
}

/// PT_LOADs covering every piece: the data runs (written) and the zero
/// runs between them (not written). Zero gaps shorter than `min_gap` are
/// written as data; the smallest power-of-two `min_gap` (from one page)
/// that keeps the count under the ELF limit is used.
pub fn loads(pieces: &[RamPiece], data: &[(u64, u64)]) -> Vec<Load> {
    let mut min_gap = PAGE;
    loop {
        let l = loads_with(pieces, data, min_gap);
        if l.len() < MAX_PHDRS || min_gap >= 1 << 40 {
            return l;
        }
        min_gap *= 2;
    }
}

fn loads_with(pieces: &[RamPiece], data: &[(u64, u64)], min_gap: u64) -> Vec<Load> {
    let mut out: Vec<Load> = Vec::new();
    for p in pieces {
        let end = p.gpa + p.len;
        let mut at = p.gpa;
        let push = |out: &mut Vec<Load>, paddr: u64, memsz: u64, file: bool| {
            if memsz == 0 {
                return;
            }
            match out.last_mut() {
                Some(l) if l.file == file && l.paddr + l.memsz == paddr => l.memsz += memsz,
                _ => out.push(Load { paddr, memsz, file }),
            }
        };
        for &(gpa, len) in data.iter().filter(|(g, _)| *g >= p.gpa && *g < end) {
            let gap = gpa - at;
            // A short gap between two data runs is written as data.
            let short = gap < min_gap && at != p.gpa;
            push(&mut out, at, gap, short);
            push(&mut out, gpa, len, true);
            at = gpa + len;
        }
        push(&mut out, at, end - at, false);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn memfd(len: u64) -> File {
        // SAFETY: memfd_create with a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"dump-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor nobody else owns.
        let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.set_len(len).unwrap();
        f
    }

    #[test]
    fn scan_finds_non_zero_pages_and_skips_holes_and_zero_pages() {
        let f = memfd(64 << 20);
        let pieces = [
            RamPiece {
                gpa: 0,
                len: 32 << 20,
                memfd_offset: 0,
            },
            RamPiece {
                gpa: 1 << 32,
                len: 32 << 20,
                memfd_offset: 32 << 20,
            },
        ];
        f.write_all_at(&[1; 8192], 0x10_0000).unwrap();
        f.write_all_at(&[0; 4096], 0x20_0000).unwrap(); // allocated, zero
        f.write_all_at(&[2], 0x20_1000 + 4095).unwrap();
        f.write_all_at(&[3], (32 << 20) + 0x5000).unwrap();
        let mut buf = vec![0; 64 << 10];
        let src = RamSource {
            memfd: &f,
            pieces: &pieces,
            release: false,
            mapped: None,
            view: None,
        };
        let runs = scan(&src, &mut buf).unwrap();
        // The same through a mapping of the memfd (pages looked at in place).
        let ranges = pieces
            .iter()
            .map(|p| {
                let file = f.try_clone().unwrap();
                let offset = vm_memory::FileOffset::new(file, p.memfd_offset);
                (GuestAddress(p.gpa), p.len as usize, Some(offset))
            })
            .collect::<Vec<_>>();
        let view = GuestMemoryMmap::from_ranges_with_files(ranges).unwrap();
        let mapped = RamSource {
            view: Some(&view),
            ..src
        };
        assert_eq!(scan(&mapped, &mut buf).unwrap(), runs);
        // Where the memfd's next hole is (the caller reads straight from
        // the mapping only before it: a hole would be allocated there).
        assert_eq!(mapped.next_hole(&pieces[0], 0x10_0000), 0x10_2000);
        assert_eq!(mapped.next_hole(&pieces[0], 0x30_0000), 0x30_0000);
        let len = |b: &[u8]| b.len();
        assert_eq!(
            mapped.with_direct(0x10_0000, 0x2000, &mut { len }),
            Some(0x2000)
        );
        assert_eq!(src.with_direct(0x10_0000, 0x1000, &mut { len }), None);
        let mut seen = Vec::new();
        mapped.with_direct((1 << 32) + 0x5000, 0x1000, &mut |b: &[u8]| {
            seen.extend_from_slice(&b[..2])
        });
        assert_eq!(seen, [3, 0]);
        assert_eq!(
            runs,
            vec![
                (0x10_0000, 0x2000),
                (0x20_1000, 0x1000),
                ((1 << 32) + 0x5000, 0x1000)
            ]
        );
        let l = loads(&pieces, &runs);
        let total: u64 = l.iter().map(|l| l.memsz).sum();
        assert_eq!(total, 64 << 20);
        let written: u64 = l.iter().filter(|l| l.file).map(|l| l.memsz).sum();
        assert_eq!(written, 0x4000);
        assert_eq!(
            l[0],
            Load {
                paddr: 0,
                memsz: 0x10_0000,
                file: false
            }
        );
        assert!(l.iter().all(|x| x.memsz > 0));
    }

    #[test]
    fn too_many_runs_merge_short_gaps() {
        let pieces = [RamPiece {
            gpa: 0,
            len: 1 << 30,
            memfd_offset: 0,
        }];
        // Every other page: 131072 data runs.
        let data: Vec<(u64, u64)> = (0..(1u64 << 17)).map(|i| (i * 2 * PAGE, PAGE)).collect();
        let l = loads(&pieces, &data);
        assert!(l.len() < MAX_PHDRS, "{}", l.len());
        let total: u64 = l.iter().map(|l| l.memsz).sum();
        assert_eq!(total, 1 << 30);
        // Every data page is still inside a written load.
        for &(g, _) in data.iter().step_by(997) {
            assert!(l
                .iter()
                .any(|x| x.file && x.paddr <= g && g < x.paddr + x.memsz));
        }
    }
}
