//! The pager's private queue: one sealed memfd holding a split virtqueue,
//! the request headers, the status bytes and the bounce area, mapped in
//! this process and handed to the backend as the whole of its memory
//! table. Addresses in descriptors are offsets in that memfd (its "guest
//! physical" space starts at 0); no guest RAM is involved.
//!
//! ```text
//! 0x00000  descriptor table   QUEUE_SIZE x 16 B
//! 0x01000  available ring     flags, idx, ring[QUEUE_SIZE]   (driver writes)
//! 0x02000  used ring          flags, idx, ring[QUEUE_SIZE] x 8 B   (backend writes)
//! 0x03000  request headers    MAX_REQUESTS x 16 B
//! 0x03400  status bytes       MAX_REQUESTS x 1 B            (backend writes)
//! 0x04000  bounce area        MAX_BATCH_PAGES x 4 KiB       (backend writes on reads)
//! ```
//!
//! Everything the backend writes (used index, used elements, status bytes)
//! is read through checked accessors and validated here or by the caller:
//! a backend moving the used index by more than what is outstanding is an
//! error, never an out-of-bounds access.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
};

/// Entries of the split queue.
pub const QUEUE_SIZE: u16 = 256;
/// The unit of paging I/O.
pub const PAGE_SIZE: usize = 4096;
/// Pages one batch can carry: the size of the bounce area.
pub const MAX_BATCH_PAGES: usize = 64;
/// Requests one batch can carry (each covers at least one page).
pub const MAX_REQUESTS: usize = MAX_BATCH_PAGES;
/// Descriptors per request: header, data, status.
pub const DESCRIPTORS_PER_REQUEST: u16 = 3;

/// Offset of the descriptor table.
pub const DESC_TABLE: u64 = 0x0;
/// Offset of the available ring.
pub const AVAIL_RING: u64 = 0x1000;
/// Offset of the used ring.
pub const USED_RING: u64 = 0x2000;
/// Offset of the request headers (16 bytes each).
pub const HEADERS: u64 = 0x3000;
/// Offset of the status bytes (one per request).
pub const STATUS: u64 = 0x3400;
/// Offset of the bounce area.
pub const BOUNCE: u64 = 0x4000;
/// Size of the memfd.
pub const MEMORY_SIZE: usize = BOUNCE as usize + MAX_BATCH_PAGES * PAGE_SIZE;

const HEADER_LEN: u64 = 16;

// The layout above does not overlap, and every request fits the ring.
const _: () = {
    let q = QUEUE_SIZE as u64;
    assert!(DESC_TABLE + 16 * q <= AVAIL_RING);
    assert!(AVAIL_RING + 4 + 2 * q + 2 <= USED_RING);
    assert!(USED_RING + 4 + 8 * q + 2 <= HEADERS);
    assert!(HEADERS + HEADER_LEN * MAX_REQUESTS as u64 <= STATUS);
    assert!(STATUS + MAX_REQUESTS as u64 <= BOUNCE);
    assert!(MAX_REQUESTS * DESCRIPTORS_PER_REQUEST as usize <= QUEUE_SIZE as usize);
};

/// Failures of the private queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Creating or mapping the memfd failed.
    #[error("cannot create the queue memory ({what}): {source}")]
    Create {
        /// The step that failed.
        what: &'static str,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// An access inside the queue memory failed (never expected: every
    /// address is a constant of the layout).
    #[error("queue memory access at {addr:#x}: {source}")]
    Access {
        /// Offset in the memfd.
        addr: u64,
        /// Underlying error.
        #[source]
        source: GuestMemoryError,
    },
    /// The backend moved the used index further than the requests
    /// outstanding.
    #[error(
        "the backend moved the used index by {moved}, only {outstanding} requests were outstanding"
    )]
    UsedIndex {
        /// How far the index moved since the last completion seen.
        moved: u16,
        /// Requests submitted and not yet completed.
        outstanding: u16,
    },
}

/// One element of the used ring, as the backend wrote it (unchecked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor index of the completed chain.
    pub id: u32,
    /// Bytes the backend says it wrote into the chain.
    pub len: u32,
}

/// A descriptor to put in the table.
#[derive(Clone, Copy, Debug)]
pub struct Descriptor {
    /// Offset in the queue memory.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (else device-readable).
    pub write: bool,
    /// The next descriptor of the chain, if any.
    pub next: Option<u16>,
}

/// The private queue and its memory.
pub struct PrivateQueue {
    mem: Arc<GuestMemoryMmap<()>>,
    /// The available index the next published chain gets.
    next_avail: u16,
    /// Used entries consumed so far.
    last_used: u16,
}

fn access(addr: u64) -> impl FnOnce(GuestMemoryError) -> QueueError {
    move |source| QueueError::Access { addr, source }
}

/// A zeroed memfd of `size` bytes sealed against shrinking and growing (the
/// VIOS refuses memory it could lose under its feet).
fn sealed_memfd(name: &str, size: usize) -> Result<File, QueueError> {
    let create = |what| move |source| QueueError::Create { what, source };
    let name = CString::new(name).map_err(|e| QueueError::Create {
        what: "memfd name",
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    // SAFETY: memfd_create with a valid NUL-terminated name; the result is
    // checked before use.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(create("memfd_create")(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64).map_err(create("ftruncate"))?;
    // SAFETY: F_ADD_SEALS on a valid memfd this function owns; no pointer
    // is involved.
    let r = unsafe {
        libc::fcntl(
            file.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    };
    if r != 0 {
        return Err(create("F_ADD_SEALS")(io::Error::last_os_error()));
    }
    Ok(file)
}

impl PrivateQueue {
    /// A fresh memfd (rings zeroed: indices 0, interrupts wanted), mapped
    /// shared at address 0.
    pub fn new(id: &str) -> Result<Self, QueueError> {
        let file = sealed_memfd(&format!("parvm-paging-{id}"), MEMORY_SIZE)?;
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
            GuestAddress(0),
            MEMORY_SIZE,
            Some(FileOffset::new(file, 0)),
        )])
        .map_err(|e| QueueError::Create {
            what: "mmap",
            source: io::Error::other(e),
        })?;
        Ok(PrivateQueue {
            mem: Arc::new(mem),
            next_avail: 0,
            last_used: 0,
        })
    }

    /// The memory to hand to the backend (SET_MEM_TABLE).
    pub fn memory(&self) -> &Arc<GuestMemoryMmap<()>> {
        &self.mem
    }

    /// Write descriptor `index`.
    pub fn set_descriptor(&self, index: u16, d: Descriptor) -> Result<(), QueueError> {
        let at = DESC_TABLE + 16 * u64::from(index % QUEUE_SIZE);
        let mut flags = 0u16;
        if d.write {
            flags |= VRING_DESC_F_WRITE as u16;
        }
        if d.next.is_some() {
            flags |= VRING_DESC_F_NEXT as u16;
        }
        let m = &self.mem;
        m.write_obj(d.addr.to_le(), GuestAddress(at))
            .map_err(access(at))?;
        m.write_obj(d.len.to_le(), GuestAddress(at + 8))
            .map_err(access(at))?;
        m.write_obj(flags.to_le(), GuestAddress(at + 12))
            .map_err(access(at))?;
        m.write_obj(d.next.unwrap_or(0).to_le(), GuestAddress(at + 14))
            .map_err(access(at))
    }

    /// Offset of request `r`'s header.
    pub fn header_addr(r: usize) -> u64 {
        HEADERS + HEADER_LEN * (r % MAX_REQUESTS) as u64
    }

    /// Offset of request `r`'s status byte.
    pub fn status_addr(r: usize) -> u64 {
        STATUS + (r % MAX_REQUESTS) as u64
    }

    /// Offset of bounce slot `slot`.
    pub fn slot_addr(slot: usize) -> u64 {
        BOUNCE + (PAGE_SIZE * (slot % MAX_BATCH_PAGES)) as u64
    }

    /// Write request `r`'s header (`struct virtio_blk_outhdr`) and set its
    /// status byte to 0xff, a value no backend answers with.
    pub fn write_header(&self, r: usize, kind: u32, sector: u64) -> Result<(), QueueError> {
        let at = Self::header_addr(r);
        let m = &self.mem;
        m.write_obj(kind.to_le(), GuestAddress(at))
            .map_err(access(at))?;
        m.write_obj(0u32, GuestAddress(at + 4))
            .map_err(access(at))?;
        m.write_obj(sector.to_le(), GuestAddress(at + 8))
            .map_err(access(at))?;
        let status = Self::status_addr(r);
        m.write_obj(0xffu8, GuestAddress(status))
            .map_err(access(status))
    }

    /// The status bytes of the first `n` requests as the backend left
    /// them.
    pub fn statuses(&self, n: usize) -> Result<Vec<u8>, QueueError> {
        let mut out = vec![0u8; n.min(MAX_REQUESTS)];
        self.mem
            .read_slice(&mut out, GuestAddress(STATUS))
            .map_err(access(STATUS))?;
        Ok(out)
    }

    /// Copy pages into the bounce slots, the i-th page into slot i (at
    /// most [`MAX_BATCH_PAGES`]; each page truncated to [`PAGE_SIZE`]).
    pub fn copy_to_slots<'a>(
        &self,
        pages: impl Iterator<Item = &'a [u8]>,
    ) -> Result<(), QueueError> {
        for (slot, page) in pages.take(MAX_BATCH_PAGES).enumerate() {
            let at = Self::slot_addr(slot);
            let len = page.len().min(PAGE_SIZE);
            self.mem
                .write_slice(&page[..len], GuestAddress(at))
                .map_err(access(at))?;
        }
        Ok(())
    }

    /// The first `pages` bounce slots, in this process's address space.
    pub fn bounce(&self, pages: usize) -> Result<&[u8], QueueError> {
        let pages = pages.min(MAX_BATCH_PAGES);
        let ptr = self
            .mem
            .get_host_address(GuestAddress(BOUNCE))
            .map_err(access(BOUNCE))?;
        // SAFETY: `ptr` is the start of the bounce area inside the mapping
        // that `self.mem` owns, which stays mapped as long as `self` lives
        // (the returned slice borrows `self`); the area is
        // MAX_BATCH_PAGES * PAGE_SIZE bytes and `pages` is clamped to it.
        // The memory is shared with the backend: a backend that keeps
        // writing after completing a request changes the bytes seen here,
        // as it could change any byte it was given, but cannot make the
        // slice dangle or move.
        Ok(unsafe { std::slice::from_raw_parts(ptr.cast_const(), pages * PAGE_SIZE) })
    }

    /// Put the chains starting at `heads` on the available ring, in order,
    /// and publish them (release: the descriptors are visible first).
    pub fn publish(&mut self, heads: impl Iterator<Item = u16>) -> Result<(), QueueError> {
        let mut idx = self.next_avail;
        for head in heads {
            let at = AVAIL_RING + 4 + 2 * u64::from(idx % QUEUE_SIZE);
            self.mem
                .write_obj(head.to_le(), GuestAddress(at))
                .map_err(access(at))?;
            idx = idx.wrapping_add(1);
        }
        let at = AVAIL_RING + 2;
        self.mem
            .store(idx.to_le(), GuestAddress(at), Ordering::Release)
            .map_err(access(at))?;
        self.next_avail = idx;
        Ok(())
    }

    /// The next completion, if the backend published one. `outstanding`
    /// is the number of chains submitted and not yet seen completed: a
    /// used index ahead of that is refused.
    pub fn pop_used(&mut self, outstanding: u16) -> Result<Option<UsedElem>, QueueError> {
        let at = USED_RING + 2;
        let used = u16::from_le(
            self.mem
                .load::<u16>(GuestAddress(at), Ordering::Acquire)
                .map_err(access(at))?,
        );
        let moved = used.wrapping_sub(self.last_used);
        if moved == 0 {
            return Ok(None);
        }
        if moved > outstanding {
            return Err(QueueError::UsedIndex { moved, outstanding });
        }
        let at = USED_RING + 4 + 8 * u64::from(self.last_used % QUEUE_SIZE);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).map_err(access(at))?;
        let len: u32 = self
            .mem
            .read_obj(GuestAddress(at + 4))
            .map_err(access(at))?;
        self.last_used = self.last_used.wrapping_add(1);
        Ok(Some(UsedElem {
            id: u32::from_le(id),
            len: u32::from_le(len),
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Play the backend: complete `id` with `len` at used slot `slot` and
    /// move the used index to `idx`.
    fn complete(q: &PrivateQueue, slot: u16, id: u32, len: u32, idx: u16) {
        let at = USED_RING + 4 + 8 * u64::from(slot % QUEUE_SIZE);
        q.mem.write_obj(id, GuestAddress(at)).unwrap();
        q.mem.write_obj(len, GuestAddress(at + 4)).unwrap();
        q.mem
            .store(idx, GuestAddress(USED_RING + 2), Ordering::Release)
            .unwrap();
    }

    #[test]
    fn memory_is_a_sealed_memfd_of_the_layout_size() {
        let q = PrivateQueue::new("t0").unwrap();
        let region = q.memory().find_region(GuestAddress(0)).unwrap();
        let fd = region.file_offset().unwrap().file();
        assert_eq!(fd.metadata().unwrap().len(), MEMORY_SIZE as u64);
        // SAFETY: F_GET_SEALS on a valid fd.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        assert_ne!(seals & libc::F_SEAL_SHRINK, 0);
        assert_eq!(q.bounce(MAX_BATCH_PAGES).unwrap().len(), 256 << 10);
        // Clamped, never past the area.
        assert_eq!(q.bounce(1000).unwrap().len(), 256 << 10);
    }

    #[test]
    fn publish_writes_heads_and_index() {
        let mut q = PrivateQueue::new("t1").unwrap();
        q.publish([0u16, 3, 6].into_iter()).unwrap();
        let idx: u16 = q.mem.read_obj(GuestAddress(AVAIL_RING + 2)).unwrap();
        assert_eq!(idx, 3);
        let second: u16 = q.mem.read_obj(GuestAddress(AVAIL_RING + 6)).unwrap();
        assert_eq!(second, 3);
    }

    #[test]
    fn used_index_ahead_of_outstanding_is_refused() {
        let mut q = PrivateQueue::new("t2").unwrap();
        assert_eq!(q.pop_used(2).unwrap(), None);
        complete(&q, 0, 0, 1, 5);
        let e = q.pop_used(2).unwrap_err();
        assert!(
            matches!(
                e,
                QueueError::UsedIndex {
                    moved: 5,
                    outstanding: 2
                }
            ),
            "{e}"
        );
        // A wrapped-around index is a huge move, refused the same way.
        complete(&q, 0, 0, 1, u16::MAX);
        assert!(q.pop_used(64).is_err());
    }

    #[test]
    fn completions_pop_in_order_across_the_ring_end() {
        let mut q = PrivateQueue::new("t3").unwrap();
        q.last_used = QUEUE_SIZE - 1;
        complete(&q, QUEUE_SIZE - 1, 3, 4097, QUEUE_SIZE);
        complete(&q, QUEUE_SIZE, 0, 1, QUEUE_SIZE + 1);
        assert_eq!(q.pop_used(2).unwrap(), Some(UsedElem { id: 3, len: 4097 }));
        assert_eq!(q.pop_used(1).unwrap(), Some(UsedElem { id: 0, len: 1 }));
        assert_eq!(q.pop_used(0).unwrap(), None);
    }
}
