//! Target `block`: the virtio-blk request parser and executor
//! (`virtio_devices::block::BlockCore::process`) on descriptor chains the
//! fuzzer writes into guest memory.
//!
//! Input: one options byte, then the bytes of guest memory from address 0.
//! The split queue's rings sit at the bottom of that memory, packed for the
//! queue size the options choose (descriptor table at 0, available ring
//! right after it, used ring after that), so a few hundred bytes of input
//! describe the descriptors, the available ring (and its index), the
//! request headers and the payload. Guest memory is 60 KiB in two regions
//! with a hole between them; the disk is 16 sectors in memory, moved in
//! short transfers when the options say so (the core must loop).
//!
//! Every available chain is popped and processed as the in-VMM handler does
//! (`pop_descriptor_chain`, `process`, `add_used`). Checked: the completion
//! names the chain's head; it claims no more bytes than the chain's
//! device-writable buffers hold, 0 without a status byte and at least 1
//! with one; the disk never grows, is never touched outside its capacity,
//! and a read-only disk is never modified.

use std::io;
use std::sync::Mutex;

use virtio_devices::block::{
    BlockCore, BlockOptions, DiskBackend, MAX_DESCRIPTORS, QUEUE_SIZE, SECTOR_SIZE,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, VolatileSlice};

/// Guest memory: [0, 32 KiB) and [36 KiB, 64 KiB).
const LOW: (u64, usize) = (0, 0x8000);
const HIGH: (u64, usize) = (0x9000, 0x7000);
const DISK_LEN: usize = 16 * SECTOR_SIZE as usize;

/// A disk in memory that checks every access against its fixed length.
struct MemDisk {
    bytes: Mutex<Vec<u8>>,
    /// Most bytes moved by one read or write call (0: no limit).
    chunk: usize,
}

impl MemDisk {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        match self.bytes.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn range(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        let end = offset.checked_add(len);
        assert!(
            end.is_some_and(|e| e <= DISK_LEN as u64),
            "the core touched bytes {offset}+{len} of a {DISK_LEN}-byte disk"
        );
        offset as usize..(offset + len) as usize
    }

    fn budget(&self, total: usize) -> usize {
        if self.chunk == 0 {
            total
        } else {
            total.min(self.chunk)
        }
    }
}

impl DiskBackend for MemDisk {
    fn len(&self) -> io::Result<u64> {
        Ok(DISK_LEN as u64)
    }

    fn read_at<B: BitmapSlice>(
        &self,
        offset: u64,
        bufs: &[VolatileSlice<'_, B>],
    ) -> io::Result<usize> {
        let disk = self.lock();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut left = self.budget(total);
        let mut done = 0usize;
        for buf in bufs {
            let n = buf.len().min(left);
            if n == 0 {
                break;
            }
            let r = self.range(offset + done as u64, n as u64);
            buf.write_slice(&disk[r], 0)
                .map_err(|e| io::Error::other(e.to_string()))?;
            done += n;
            left -= n;
        }
        Ok(done)
    }

    fn write_at<B: BitmapSlice>(
        &self,
        offset: u64,
        bufs: &[VolatileSlice<'_, B>],
    ) -> io::Result<usize> {
        let mut disk = self.lock();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut left = self.budget(total);
        let mut done = 0usize;
        for buf in bufs {
            let n = buf.len().min(left);
            if n == 0 {
                break;
            }
            let r = self.range(offset + done as u64, n as u64);
            buf.read_slice(&mut disk[r], 0)
                .map_err(|e| io::Error::other(e.to_string()))?;
            done += n;
            left -= n;
        }
        Ok(done)
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let r = self.range(offset, len);
        self.lock()[r].fill(0);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        self.discard(offset, len)
    }
}

/// What the options byte selects.
struct Options {
    read_only: bool,
    acked: u64,
    event_idx: bool,
    size: u16,
    chunk: usize,
}

impl Options {
    fn from(b: u8) -> Self {
        // Queue sizes 1..=256, powers of two; 16 when the bits say 0.
        let log = u32::from(b >> 4) & 0x7;
        let size = if log == 0 { 16 } else { 1 << log };
        Options {
            read_only: b & 1 != 0,
            // Bits 1 and 2 ack DISCARD and WRITE_ZEROES (set_acked_features
            // masks what a read-only disk does not offer).
            acked: (u64::from(b & 2) << 12) | (u64::from(b & 4) << 12),
            event_idx: b & 8 != 0,
            size: if b & 0x80 != 0 { QUEUE_SIZE } else { size },
            chunk: if b & 0x40 != 0 { 100 } else { 0 },
        }
    }
}

pub fn block(data: &[u8]) {
    let Some((&options, memory)) = data.split_first() else {
        return;
    };
    let o = Options::from(options);
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(LOW.0), LOW.1),
        (GuestAddress(HIGH.0), HIGH.1),
    ]) else {
        return;
    };
    let low = &memory[..memory.len().min(LOW.1)];
    if mem.write_slice(low, GuestAddress(0)).is_err() {
        return;
    }
    let initial: Vec<u8> = (0..DISK_LEN).map(|i| (i / 512 + i) as u8 | 1).collect();
    let disk = MemDisk {
        bytes: Mutex::new(initial.clone()),
        chunk: o.chunk,
    };
    let Ok(mut core) = BlockCore::new(
        disk,
        &BlockOptions {
            read_only: o.read_only,
            serial: "fuzz-disk".into(),
        },
    ) else {
        return;
    };
    // VIRTIO_BLK_F_DISCARD is bit 13, WRITE_ZEROES bit 14.
    core.set_acked_features(o.acked);

    let size = u64::from(o.size);
    let desc = 0u64;
    let avail = size * 16;
    let used = (avail + 6 + 2 * size + 3) & !3;
    let Ok(mut queue) = Queue::new(QUEUE_SIZE) else {
        return;
    };
    queue.set_size(o.size);
    queue.set_desc_table_address(Some(desc as u32), Some(0));
    queue.set_avail_ring_address(Some(avail as u32), Some(0));
    queue.set_used_ring_address(Some(used as u32), Some(0));
    queue.set_event_idx(o.event_idx);
    queue.set_ready(true);
    if !queue.is_valid(&mem) {
        return;
    }

    let mut popped = 0u32;
    while let Some(chain) = queue.pop_descriptor_chain(&mem) {
        popped += 1;
        assert!(
            popped <= u32::from(o.size),
            "more chains than the queue holds"
        );
        let head = chain.head_index();
        // No further than the core walks: an indirect table may loop
        // through 65535 entries, and walking them here would make the
        // harness the slow part.
        let writable: u64 = chain
            .clone()
            .take(MAX_DESCRIPTORS + 1)
            .filter(|d| d.is_write_only())
            .map(|d| u64::from(d.len()))
            .sum();
        let c = core.process(chain);
        assert_eq!(c.head_index, head);
        match c.status {
            None => assert_eq!(c.used_len, 0, "{c:?}"),
            Some(_) => assert!(c.used_len >= 1, "{c:?}"),
        }
        assert!(
            u64::from(c.used_len) <= writable,
            "{c:?} claims more than the {writable} device-writable bytes"
        );
        let _ = queue.add_used(&mem, c.head_index, c.used_len);
    }
    let _ = queue.needs_notification(&mem);
    let config = core.config_space();
    assert_eq!(config[..8], (DISK_LEN as u64 / SECTOR_SIZE).to_le_bytes());
    if o.read_only {
        assert!(
            *core.disk().lock() == initial,
            "a read-only disk was modified"
        );
    }
}
