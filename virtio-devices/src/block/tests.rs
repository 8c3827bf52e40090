//! Block core tests: well-formed requests and hostile descriptor chains,
//! built with virtio-queue's `MockSplitQueue` over a `GuestMemoryMmap` and
//! executed against a temporary raw image.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::core::{BlockCore, BlockOptions, Completion, MAX_DESCRIPTORS};
use super::request::Transfer;

const MEM_SIZE: usize = 0x100_0000; // 16 MiB
const DISK_SECTORS: u64 = 512; // 256 KiB image
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const DATA2: u64 = 0x30_0000;
const STATUS: u64 = 0x40_0000;
const INDIRECT: u64 = 0x50_0000;
const R: u32 = 0;
const W: u32 = VRING_DESC_F_WRITE;
const STATUS_SENTINEL: u8 = 0xaa;

/// A raw image in the temp dir, removed on drop.
struct TempDisk {
    path: PathBuf,
}

impl TempDisk {
    fn new(len: u64) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "parvm-virtio-blk-{}-{}.img",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = File::create(&path).unwrap();
        file.set_len(len).unwrap();
        // A recognizable initial content: byte i of sector s is (s + i) as u8 | 1.
        let content: Vec<u8> = (0..len).map(|i| ((i / 512 + i) as u8) | 1).collect();
        file.write_all_at(&content, 0).unwrap();
        TempDisk { path }
    }

    fn open(&self, read_only: bool) -> File {
        OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&self.path)
            .unwrap()
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

impl Drop for TempDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

struct Fixture {
    mem: GuestMemoryMmap,
    disk: TempDisk,
    core: BlockCore<File>,
}

fn fixture_with(read_only: bool, acked: u64) -> Fixture {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let disk = TempDisk::new(DISK_SECTORS * 512);
    let mut core = BlockCore::new(
        disk.open(read_only),
        &BlockOptions {
            read_only,
            serial: "disk-serial-0123456789abcdef".to_string(),
        },
    )
    .unwrap();
    core.set_acked_features(acked);
    Fixture { mem, disk, core }
}

fn fixture() -> Fixture {
    fixture_with(
        false,
        (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES),
    )
}

fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags as u16, 0))
}

fn header(mem: &GuestMemoryMmap, request_type: u32, sector: u64) {
    let mut raw = [0u8; 16];
    raw[0..4].copy_from_slice(&request_type.to_le_bytes());
    raw[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&raw, GuestAddress(HDR)).unwrap();
}

fn status_byte(mem: &GuestMemoryMmap, addr: u64) -> u8 {
    mem.read_obj(GuestAddress(addr)).unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

impl Fixture {
    /// Run one chain made of `descs` (linked in order) through the core.
    fn run(&self, descs: &[RawDescriptor]) -> Completion {
        self.mem
            .write_obj(STATUS_SENTINEL, GuestAddress(STATUS))
            .unwrap();
        let queue = MockSplitQueue::new(&self.mem, 16);
        let chain = queue.build_desc_chain(descs).unwrap();
        self.core.process(chain)
    }

    /// Run a chain whose descriptors are stored as given (flags and next
    /// untouched), head at index 0.
    fn run_raw(&self, descs: &[RawDescriptor]) -> Completion {
        self.mem
            .write_obj(STATUS_SENTINEL, GuestAddress(STATUS))
            .unwrap();
        let mock = MockSplitQueue::new(&self.mem, 16);
        mock.add_desc_chains(descs, 0).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        let chain = queue.iter(&self.mem).unwrap().next().unwrap();
        self.core.process(chain)
    }

    fn write(&self, sector: u64, data: &[u8]) -> Completion {
        header(&self.mem, VIRTIO_BLK_T_OUT, sector);
        self.mem.write_slice(data, GuestAddress(DATA)).unwrap();
        self.run(&[
            desc(HDR, 16, R),
            desc(DATA, data.len() as u32, R),
            desc(STATUS, 1, W),
        ])
    }

    fn read(&self, sector: u64, len: usize) -> (Completion, Vec<u8>) {
        header(&self.mem, VIRTIO_BLK_T_IN, sector);
        self.mem
            .write_slice(&vec![0u8; len], GuestAddress(DATA2))
            .unwrap();
        let completion = self.run(&[
            desc(HDR, 16, R),
            desc(DATA2, len as u32, W),
            desc(STATUS, 1, W),
        ]);
        let mut out = vec![0u8; len];
        self.mem.read_slice(&mut out, GuestAddress(DATA2)).unwrap();
        (completion, out)
    }

    fn discard_like(&self, request_type: u32, segments: &[(u64, u32, u32)]) -> Completion {
        header(&self.mem, request_type, 0);
        let mut raw = Vec::new();
        for (sector, num, flags) in segments {
            raw.extend_from_slice(&sector.to_le_bytes());
            raw.extend_from_slice(&num.to_le_bytes());
            raw.extend_from_slice(&flags.to_le_bytes());
        }
        self.mem.write_slice(&raw, GuestAddress(DATA)).unwrap();
        self.run(&[
            desc(HDR, 16, R),
            desc(DATA, raw.len() as u32, R),
            desc(STATUS, 1, W),
        ])
    }
}

fn ok(used_len: u32) -> Completion {
    Completion {
        head_index: 0,
        used_len,
        status: Some(VIRTIO_BLK_S_OK as u8),
    }
}

fn ioerr() -> Completion {
    Completion {
        head_index: 0,
        used_len: 1,
        status: Some(VIRTIO_BLK_S_IOERR as u8),
    }
}

fn unsupp() -> Completion {
    Completion {
        head_index: 0,
        used_len: 1,
        status: Some(VIRTIO_BLK_S_UNSUPP as u8),
    }
}

fn dropped() -> Completion {
    Completion {
        head_index: 0,
        used_len: 0,
        status: None,
    }
}

// ---------------------------------------------------------------- positive

#[test]
fn write_then_read_back_pattern() {
    let f = fixture();
    let data = pattern(1024, 7);
    assert_eq!(f.write(2, &data), ok(1));
    assert_eq!(status_byte(&f.mem, STATUS), VIRTIO_BLK_S_OK as u8);
    assert_eq!(&f.disk.contents()[1024..2048], &data[..]);

    let (completion, back) = f.read(2, 1024);
    assert_eq!(completion, ok(1025));
    assert_eq!(back, data);
}

#[test]
fn process_counted_reports_the_bytes_each_way() {
    let f = fixture();
    let data = pattern(1536, 3);
    header(&f.mem, VIRTIO_BLK_T_OUT, 0);
    f.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    let queue = MockSplitQueue::new(&f.mem, 16);
    let chain = queue
        .build_desc_chain(&[desc(HDR, 16, R), desc(DATA, 1536, R), desc(STATUS, 1, W)])
        .unwrap();
    let (completion, transfer) = f.core.process_counted(chain);
    assert_eq!(completion, ok(1));
    assert_eq!(
        transfer,
        Transfer {
            read: 0,
            written: 1536
        }
    );
    header(&f.mem, VIRTIO_BLK_T_IN, 0);
    let queue = MockSplitQueue::new(&f.mem, 16);
    let chain = queue
        .build_desc_chain(&[desc(HDR, 16, R), desc(DATA, 1024, W), desc(STATUS, 1, W)])
        .unwrap();
    let (completion, transfer) = f.core.process_counted(chain);
    assert_eq!(completion, ok(1025));
    assert_eq!(
        transfer,
        Transfer {
            read: 1024,
            written: 0
        }
    );
    // A failed request moved nothing.
    header(&f.mem, VIRTIO_BLK_T_IN, DISK_SECTORS);
    let queue = MockSplitQueue::new(&f.mem, 16);
    let chain = queue
        .build_desc_chain(&[desc(HDR, 16, R), desc(DATA, 512, W), desc(STATUS, 1, W)])
        .unwrap();
    let (completion, transfer) = f.core.process_counted(chain);
    assert_eq!(completion, ioerr());
    assert_eq!(transfer, Transfer::default());
}

#[test]
fn read_last_sector_and_whole_disk() {
    let f = fixture();
    let disk = f.disk.contents();
    let (completion, back) = f.read(DISK_SECTORS - 1, 512);
    assert_eq!(completion, ok(513));
    assert_eq!(&back[..], &disk[disk.len() - 512..]);
    let (completion, back) = f.read(0, (DISK_SECTORS * 512) as usize);
    assert_eq!(completion, ok(DISK_SECTORS as u32 * 512 + 1));
    assert_eq!(back, disk);
}

#[test]
fn multi_segment_write_and_read() {
    let f = fixture();
    let a = pattern(512, 1);
    let b = pattern(1024, 2);
    let c = pattern(512, 3);
    header(&f.mem, VIRTIO_BLK_T_OUT, 4);
    f.mem.write_slice(&a, GuestAddress(DATA)).unwrap();
    f.mem.write_slice(&b, GuestAddress(DATA2)).unwrap();
    f.mem.write_slice(&c, GuestAddress(DATA + 0x8000)).unwrap();
    let completion = f.run(&[
        desc(HDR, 16, R),
        desc(DATA, 512, R),
        desc(DATA2, 1024, R),
        desc(DATA + 0x8000, 512, R),
        desc(STATUS, 1, W),
    ]);
    assert_eq!(completion, ok(1));
    let expected: Vec<u8> = [a.clone(), b.clone(), c.clone()].concat();
    assert_eq!(&f.disk.contents()[4 * 512..8 * 512], &expected[..]);

    // Read it back scattered over two buffers of 1536 and 512 bytes.
    header(&f.mem, VIRTIO_BLK_T_IN, 4);
    let completion = f.run(&[
        desc(HDR, 16, R),
        desc(0x60_0000, 1536, W),
        desc(0x70_0000, 512, W),
        desc(STATUS, 1, W),
    ]);
    assert_eq!(completion, ok(2049));
    let mut back = vec![0u8; 2048];
    f.mem
        .read_slice(&mut back[..1536], GuestAddress(0x60_0000))
        .unwrap();
    f.mem
        .read_slice(&mut back[1536..], GuestAddress(0x70_0000))
        .unwrap();
    assert_eq!(back, expected);
}

#[test]
fn header_and_status_share_no_framing() {
    // Header split over two descriptors, data and status in one writable
    // descriptor: virtio 1.x imposes no framing.
    let f = fixture();
    let data = pattern(512, 9);
    f.write(1, &data);
    header(&f.mem, VIRTIO_BLK_T_IN, 1);
    f.mem.write_obj(0u8, GuestAddress(DATA2 + 512)).unwrap();
    let completion = f.run(&[desc(HDR, 10, R), desc(HDR + 10, 6, R), desc(DATA2, 513, W)]);
    assert_eq!(completion, ok(513));
    let mut back = vec![0u8; 512];
    f.mem.read_slice(&mut back, GuestAddress(DATA2)).unwrap();
    assert_eq!(back, data);
    assert_eq!(status_byte(&f.mem, DATA2 + 512), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn flush() {
    let f = fixture();
    header(&f.mem, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(f.run(&[desc(HDR, 16, R), desc(STATUS, 1, W)]), ok(1));
    assert_eq!(status_byte(&f.mem, STATUS), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn get_id_returns_20_byte_serial() {
    let f = fixture();
    header(&f.mem, VIRTIO_BLK_T_GET_ID, 0);
    let completion = f.run(&[desc(HDR, 16, R), desc(DATA, 20, W), desc(STATUS, 1, W)]);
    assert_eq!(completion, ok(21));
    let mut id = [0u8; 20];
    f.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"disk-serial-01234567");

    // A short id is zero padded.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let disk = TempDisk::new(4096);
    let core = BlockCore::new(
        disk.open(false),
        &BlockOptions {
            read_only: false,
            serial: "d0".into(),
        },
    )
    .unwrap();
    header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    mem.write_slice(&[0xffu8; 20], GuestAddress(DATA)).unwrap();
    let queue = MockSplitQueue::new(&mem, 16);
    let chain = queue
        .build_desc_chain(&[desc(HDR, 16, R), desc(DATA, 20, W), desc(STATUS, 1, W)])
        .unwrap();
    assert_eq!(core.process(chain), ok(21));
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..2], b"d0");
    assert!(id[2..].iter().all(|&b| b == 0));
}

#[test]
fn discard_zeroes_the_range() {
    let f = fixture();
    let before = f.disk.contents();
    assert!(before[8 * 512..16 * 512].iter().all(|&b| b != 0));
    assert_eq!(f.discard_like(VIRTIO_BLK_T_DISCARD, &[(8, 8, 0)]), ok(1));
    let after = f.disk.contents();
    assert_eq!(after.len(), before.len(), "discard keeps the size");
    assert!(after[8 * 512..16 * 512].iter().all(|&b| b == 0));
    assert_eq!(&after[..8 * 512], &before[..8 * 512]);
    assert_eq!(&after[16 * 512..], &before[16 * 512..]);
}

#[test]
fn write_zeroes_with_and_without_unmap() {
    let f = fixture();
    let before = f.disk.contents();
    assert_eq!(
        f.discard_like(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 2, 0)]),
        ok(1)
    );
    assert_eq!(
        f.discard_like(
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[(10, 3, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)]
        ),
        ok(1)
    );
    let after = f.disk.contents();
    assert_eq!(after.len(), before.len());
    assert!(after[..1024].iter().all(|&b| b == 0));
    assert_eq!(&after[1024..10 * 512], &before[1024..10 * 512]);
    assert!(after[10 * 512..13 * 512].iter().all(|&b| b == 0));
    assert_eq!(&after[13 * 512..], &before[13 * 512..]);
}

#[test]
fn discard_and_write_zeroes_need_negotiation() {
    let f = fixture_with(false, 0);
    let before = f.disk.contents();
    assert_eq!(f.discard_like(VIRTIO_BLK_T_DISCARD, &[(0, 1, 0)]), unsupp());
    assert_eq!(
        f.discard_like(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 1, 0)]),
        unsupp()
    );
    assert_eq!(f.disk.contents(), before);
}

#[test]
fn discard_segment_errors() {
    let f = fixture();
    let before = f.disk.contents();
    // Discard must not carry UNMAP; unknown flags are unsupported.
    assert_eq!(
        f.discard_like(
            VIRTIO_BLK_T_DISCARD,
            &[(0, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)]
        ),
        unsupp()
    );
    assert_eq!(
        f.discard_like(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 1, 0x8)]),
        unsupp()
    );
    // More segments than max_discard_seg (1).
    assert_eq!(
        f.discard_like(VIRTIO_BLK_T_DISCARD, &[(0, 1, 0), (4, 1, 0)]),
        ioerr()
    );
    // Past the end, overflowing, too large.
    assert_eq!(
        f.discard_like(VIRTIO_BLK_T_DISCARD, &[(DISK_SECTORS - 1, 2, 0)]),
        ioerr()
    );
    assert_eq!(
        f.discard_like(VIRTIO_BLK_T_WRITE_ZEROES, &[(u64::MAX, 1, 0)]),
        ioerr()
    );
    assert_eq!(
        f.discard_like(VIRTIO_BLK_T_DISCARD, &[(0, u32::MAX, 0)]),
        ioerr()
    );
    // Payload not a whole segment, or empty.
    header(&f.mem, VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(
        f.run(&[desc(HDR, 16, R), desc(DATA, 15, R), desc(STATUS, 1, W)]),
        ioerr()
    );
    assert_eq!(f.run(&[desc(HDR, 16, R), desc(STATUS, 1, W)]), ioerr());
    assert_eq!(f.disk.contents(), before);
}

#[test]
fn read_only_disk_refuses_writes() {
    let f = fixture_with(true, u64::MAX);
    assert!(f.core.features() & (1 << VIRTIO_BLK_F_RO) != 0);
    assert!(f.core.features() & (1 << VIRTIO_BLK_F_DISCARD) == 0);
    let before = f.disk.contents();
    assert_eq!(f.write(0, &pattern(512, 1)), ioerr());
    assert_eq!(status_byte(&f.mem, STATUS), VIRTIO_BLK_S_IOERR as u8);
    // DISCARD/WRITE_ZEROES are not offered on a read-only disk.
    assert_eq!(f.discard_like(VIRTIO_BLK_T_DISCARD, &[(0, 1, 0)]), unsupp());
    assert_eq!(
        f.discard_like(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 1, 0)]),
        unsupp()
    );
    assert_eq!(f.disk.contents(), before);
    // Reads and flushes still work.
    let (completion, back) = f.read(1, 512);
    assert_eq!(completion, ok(513));
    assert_eq!(&back[..], &before[512..1024]);
    header(&f.mem, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(f.run(&[desc(HDR, 16, R), desc(STATUS, 1, W)]), ok(1));
}

#[test]
fn indirect_descriptors() {
    let f = fixture();
    let data = pattern(2048, 5);
    f.write(8, &data);
    header(&f.mem, VIRTIO_BLK_T_IN, 8);
    // Indirect table: header, two data buffers, status.
    let table = [
        RawDescriptor::from(Descriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1)),
        RawDescriptor::from(Descriptor::new(
            DATA2,
            1024,
            (VRING_DESC_F_NEXT | W) as u16,
            2,
        )),
        RawDescriptor::from(Descriptor::new(
            DATA2 + 0x1000,
            1024,
            (VRING_DESC_F_NEXT | W) as u16,
            3,
        )),
        RawDescriptor::from(Descriptor::new(STATUS, 1, W as u16, 0)),
    ];
    for (i, d) in table.iter().enumerate() {
        f.mem
            .write_obj(*d, GuestAddress(INDIRECT + 16 * i as u64))
            .unwrap();
    }
    let completion = f.run(&[desc(INDIRECT, 64, VRING_DESC_F_INDIRECT)]);
    assert_eq!(completion, ok(2049));
    let mut back = vec![0u8; 2048];
    f.mem
        .read_slice(&mut back[..1024], GuestAddress(DATA2))
        .unwrap();
    f.mem
        .read_slice(&mut back[1024..], GuestAddress(DATA2 + 0x1000))
        .unwrap();
    assert_eq!(back, data);
}

#[test]
fn unknown_request_type_is_unsupported() {
    let f = fixture();
    header(&f.mem, 0x1234, 0);
    assert_eq!(f.run(&[desc(HDR, 16, R), desc(STATUS, 1, W)]), unsupp());
    assert_eq!(status_byte(&f.mem, STATUS), VIRTIO_BLK_S_UNSUPP as u8);
}

#[test]
fn config_space_layout() {
    let f = fixture();
    let config = f.core.config_space();
    assert_eq!(
        u64::from_le_bytes(config[0..8].try_into().unwrap()),
        DISK_SECTORS
    );
    assert_eq!(
        u32::from_le_bytes(config[12..16].try_into().unwrap()),
        super::SEG_MAX
    );
    assert_eq!(u32::from_le_bytes(config[20..24].try_into().unwrap()), 512);
    assert_eq!(u32::from_le_bytes(config[40..44].try_into().unwrap()), 1);
    assert_eq!(u32::from_le_bytes(config[52..56].try_into().unwrap()), 1);
    assert_eq!(config[56], 1);
}

#[test]
fn image_smaller_than_a_sector_is_refused() {
    let disk = TempDisk::new(511);
    let err = BlockCore::new(disk.open(false), &BlockOptions::default()).err();
    assert!(
        matches!(err, Some(super::BlockCoreError::TooSmall(511))),
        "{err:?}"
    );
    // The capacity rounds down to whole sectors.
    let disk = TempDisk::new(1000);
    let core = BlockCore::new(disk.open(false), &BlockOptions::default()).unwrap();
    assert_eq!(core.capacity(), 1);
}

// --------------------------------------------------------------- malicious

/// Every hostile test ends by checking the core still serves a good request.
fn still_serves(f: &Fixture) {
    let data = pattern(512, 42);
    assert_eq!(f.write(3, &data), ok(1));
    let (completion, back) = f.read(3, 512);
    assert_eq!(completion, ok(513));
    assert_eq!(back, data);
}

#[test]
fn data_outside_guest_memory() {
    let f = fixture();
    let before = f.disk.contents();
    header(&f.mem, VIRTIO_BLK_T_IN, 0);
    let beyond = MEM_SIZE as u64;
    assert_eq!(
        f.run(&[desc(HDR, 16, R), desc(beyond, 512, W), desc(STATUS, 1, W)]),
        ioerr()
    );
    // Straddling the end of memory.
    assert_eq!(
        f.run(&[
            desc(HDR, 16, R),
            desc(beyond - 256, 512, W),
            desc(STATUS, 1, W)
        ]),
        ioerr()
    );
    header(&f.mem, VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        f.run(&[
            desc(HDR, 16, R),
            desc(beyond - 256, 512, R),
            desc(STATUS, 1, W)
        ]),
        ioerr()
    );
    // Address + length wraps around the 64-bit space.
    assert_eq!(
        f.run(&[
            desc(HDR, 16, R),
            desc(u64::MAX - 100, 512, R),
            desc(STATUS, 1, W)
        ]),
        ioerr()
    );
    assert_eq!(f.disk.contents(), before);
    still_serves(&f);
}

#[test]
fn header_outside_guest_memory() {
    let f = fixture();
    assert_eq!(
        f.run(&[desc(MEM_SIZE as u64 + 0x1000, 16, R), desc(STATUS, 1, W)]),
        ioerr()
    );
    assert_eq!(status_byte(&f.mem, STATUS), VIRTIO_BLK_S_IOERR as u8);
    still_serves(&f);
}

#[test]
fn status_outside_guest_memory_consumes_chain() {
    let f = fixture();
    header(&f.mem, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(
        f.run(&[desc(HDR, 16, R), desc(MEM_SIZE as u64, 1, W)]),
        dropped()
    );
    // The last byte of a long status descriptor is what counts.
    assert_eq!(
        f.run(&[desc(HDR, 16, R), desc(MEM_SIZE as u64 - 4, 8, W)]),
        dropped()
    );
    assert_eq!(f.run(&[desc(HDR, 16, R), desc(u64::MAX, 2, W)]), dropped());
    still_serves(&f);
}

#[test]
fn in_with_device_readable_data_is_refused() {
    let f = fixture();
    header(&f.mem, VIRTIO_BLK_T_IN, 0);
    let guard = pattern(512, 77);
    f.mem.write_slice(&guard, GuestAddress(DATA)).unwrap();
    assert_eq!(
        f.run(&[desc(HDR, 16, R), desc(DATA, 512, R), desc(STATUS, 1, W)]),
        ioerr()
    );
    // Nothing was written into the read-only buffer.
    let mut after = vec![0u8; 512];
    f.mem.read_slice(&mut after, GuestAddress(DATA)).unwrap();
    assert_eq!(after, guard);
    still_serves(&f);
}

#[test]
fn out_with_device_writable_data_is_refused() {
    let f = fixture();
    let before = f.disk.contents();
    header(&f.mem, VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        f.run(&[desc(HDR, 16, R), desc(DATA, 512, W), desc(STATUS, 1, W)]),
        ioerr()
    );
    assert_eq!(f.disk.contents(), before);
    still_serves(&f);
}

#[test]
fn writable_header_is_refused() {
    let f = fixture();
    header(&f.mem, VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        f.run(&[desc(HDR, 16, W), desc(DATA, 512, W), desc(STATUS, 1, W)]),
        ioerr()
    );
    // Too short a header.
    assert_eq!(f.run(&[desc(HDR, 8, R), desc(STATUS, 1, W)]), ioerr());
    still_serves(&f);
}

#[test]
fn readable_after_writable_is_refused() {
    let f = fixture();
    let before = f.disk.contents();
    header(&f.mem, VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        f.run(&[
            desc(HDR, 16, R),
            desc(DATA2, 512, W),
            desc(DATA, 512, R),
            desc(STATUS, 1, W)
        ]),
        ioerr()
    );
    assert_eq!(f.disk.contents(), before);
    still_serves(&f);
}

#[test]
fn missing_or_bad_status_descriptor() {
    let f = fixture();
    let before = f.disk.contents();
    header(&f.mem, VIRTIO_BLK_T_OUT, 0);
    // Last descriptor device-readable: no status byte.
    assert_eq!(f.run(&[desc(HDR, 16, R), desc(DATA, 512, R)]), dropped());
    // Status descriptor of length 0.
    assert_eq!(
        f.run(&[desc(HDR, 16, R), desc(DATA, 512, R), desc(STATUS, 0, W)]),
        dropped()
    );
    // Header alone.
    assert_eq!(f.run(&[desc(HDR, 16, R)]), dropped());
    assert_eq!(status_byte(&f.mem, STATUS), STATUS_SENTINEL);
    assert_eq!(f.disk.contents(), before);
    still_serves(&f);
}

#[test]
fn looping_chain_is_consumed_without_io() {
    let f = fixture();
    let before = f.disk.contents();
    header(&f.mem, VIRTIO_BLK_T_OUT, 0);
    let next = VRING_DESC_F_NEXT as u16;
    // 0 -> 1 -> 2 -> 1 -> 2 ...
    let descs = [
        RawDescriptor::from(Descriptor::new(HDR, 16, next, 1)),
        RawDescriptor::from(Descriptor::new(DATA, 512, next, 2)),
        RawDescriptor::from(Descriptor::new(STATUS, 1, next | W as u16, 1)),
    ];
    assert_eq!(f.run_raw(&descs), dropped());
    assert_eq!(status_byte(&f.mem, STATUS), STATUS_SENTINEL);
    // A descriptor pointing to itself.
    let descs = [RawDescriptor::from(Descriptor::new(
        STATUS,
        1,
        next | W as u16,
        0,
    ))];
    assert_eq!(f.run_raw(&descs), dropped());
    assert_eq!(f.disk.contents(), before);
    still_serves(&f);
}

#[test]
fn next_index_outside_the_queue() {
    let f = fixture();
    header(&f.mem, VIRTIO_BLK_T_FLUSH, 0);
    let descs = [RawDescriptor::from(Descriptor::new(
        HDR,
        16,
        VRING_DESC_F_NEXT as u16,
        500,
    ))];
    assert_eq!(f.run_raw(&descs), dropped());
    still_serves(&f);
}

#[test]
fn looping_indirect_table() {
    let f = fixture();
    let next = VRING_DESC_F_NEXT as u16;
    header(&f.mem, VIRTIO_BLK_T_FLUSH, 0);
    let table = [
        RawDescriptor::from(Descriptor::new(HDR, 16, next, 1)),
        RawDescriptor::from(Descriptor::new(STATUS, 1, next | W as u16, 0)),
    ];
    for (i, d) in table.iter().enumerate() {
        f.mem
            .write_obj(*d, GuestAddress(INDIRECT + 16 * i as u64))
            .unwrap();
    }
    assert_eq!(
        f.run(&[desc(INDIRECT, 32, VRING_DESC_F_INDIRECT)]),
        dropped()
    );
    // A table length that is not a multiple of 16, and an empty table.
    assert_eq!(
        f.run(&[desc(INDIRECT, 20, VRING_DESC_F_INDIRECT)]),
        dropped()
    );
    assert_eq!(
        f.run(&[desc(INDIRECT, 0, VRING_DESC_F_INDIRECT)]),
        dropped()
    );
    // A nested indirect descriptor.
    f.mem
        .write_obj(
            RawDescriptor::from(Descriptor::new(
                INDIRECT,
                16,
                VRING_DESC_F_INDIRECT as u16,
                0,
            )),
            GuestAddress(INDIRECT),
        )
        .unwrap();
    assert_eq!(
        f.run(&[desc(INDIRECT, 16, VRING_DESC_F_INDIRECT)]),
        dropped()
    );
    // An indirect table outside guest memory.
    assert_eq!(
        f.run(&[desc(MEM_SIZE as u64, 64, VRING_DESC_F_INDIRECT)]),
        dropped()
    );
    still_serves(&f);
}

#[test]
fn too_many_descriptors() {
    let f = fixture();
    let before = f.disk.contents();
    header(&f.mem, VIRTIO_BLK_T_OUT, 0);
    // An indirect table longer than MAX_DESCRIPTORS: header, data, status.
    let count = MAX_DESCRIPTORS + 1;
    let next = VRING_DESC_F_NEXT as u16;
    for i in 0..count {
        let d = if i == 0 {
            Descriptor::new(HDR, 16, next, 1)
        } else if i == count - 1 {
            Descriptor::new(STATUS, 1, W as u16, 0)
        } else {
            Descriptor::new(DATA + 512 * (i as u64 - 1), 512, next, i as u16 + 1)
        };
        f.mem
            .write_obj(
                RawDescriptor::from(d),
                GuestAddress(INDIRECT + 16 * i as u64),
            )
            .unwrap();
    }
    // The walk stops at the descriptor past the limit: no status byte.
    assert_eq!(
        f.run(&[desc(INDIRECT, 16 * count as u32, VRING_DESC_F_INDIRECT)]),
        dropped()
    );
    assert_eq!(status_byte(&f.mem, STATUS), STATUS_SENTINEL);
    assert_eq!(f.disk.contents(), before);

    // One fewer is the largest request accepted.
    let count = MAX_DESCRIPTORS;
    f.mem
        .write_obj(
            RawDescriptor::from(Descriptor::new(STATUS, 1, W as u16, 0)),
            GuestAddress(INDIRECT + 16 * (count as u64 - 1)),
        )
        .unwrap();
    assert_eq!(
        f.run(&[desc(INDIRECT, 16 * count as u32, VRING_DESC_F_INDIRECT)]),
        ok(1)
    );
    still_serves(&f);
}

#[test]
fn chain_over_4gib_is_consumed() {
    let f = fixture();
    header(&f.mem, VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        f.run(&[
            desc(HDR, 16, R),
            desc(DATA, u32::MAX, W),
            desc(DATA, u32::MAX, W),
            desc(STATUS, 1, W)
        ]),
        dropped()
    );
    // A single huge descriptor is outside guest memory.
    assert_eq!(
        f.run(&[
            desc(HDR, 16, R),
            desc(DATA, u32::MAX - 32, W),
            desc(STATUS, 1, W)
        ]),
        ioerr()
    );
    still_serves(&f);
}

#[test]
fn sector_range_past_the_end() {
    let f = fixture();
    let before = f.disk.contents();
    let data = pattern(1024, 3);
    assert_eq!(f.write(DISK_SECTORS, &data[..512]), ioerr());
    assert_eq!(f.write(DISK_SECTORS - 1, &data), ioerr());
    assert_eq!(f.write(u64::MAX, &data[..512]), ioerr());
    assert_eq!(f.write(u64::MAX / 512 + 1, &data[..512]), ioerr());
    assert_eq!(f.read(DISK_SECTORS, 512).0, ioerr());
    assert_eq!(f.read(u64::MAX - 1, 1024).0, ioerr());
    assert_eq!(f.disk.contents(), before);
    still_serves(&f);
}

#[test]
fn unaligned_data_length() {
    let f = fixture();
    let before = f.disk.contents();
    assert_eq!(f.write(0, &pattern(100, 1)), ioerr());
    assert_eq!(f.read(0, 513).0, ioerr());
    assert_eq!(f.disk.contents(), before);
    still_serves(&f);
}

#[test]
fn get_id_without_buffer() {
    let f = fixture();
    header(&f.mem, VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(f.run(&[desc(HDR, 16, R), desc(STATUS, 1, W)]), ioerr());
    // A short buffer gets a truncated id.
    assert_eq!(
        f.run(&[desc(HDR, 16, R), desc(DATA, 4, W), desc(STATUS, 1, W)]),
        ok(5)
    );
    still_serves(&f);
}

#[test]
fn image_truncated_behind_the_devices_back() {
    let f = fixture();
    // The host shrinks the image after the device sized it.
    f.disk.open(false).set_len(512).unwrap();
    assert_eq!(f.read(4, 512).0, ioerr());
    let data = pattern(512, 1);
    assert_eq!(f.write(0, &data), ok(1));
}

// ------------------------------------------------------ parse error reasons

mod parse_errors {
    use super::*;
    use crate::block::request::{ParseError, Request, RequestError, RequestType};

    fn parse(mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Result<Request, ParseError> {
        let queue = MockSplitQueue::new(mem, 16);
        let mut chain = queue.build_desc_chain(descs).unwrap();
        Request::parse(&mut chain, MAX_DESCRIPTORS)
    }

    fn parse_raw(mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Result<Request, ParseError> {
        let mock = MockSplitQueue::new(mem, 16);
        mock.add_desc_chains(descs, 0).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        let mut chain = queue.iter(mem).unwrap().next().unwrap();
        Request::parse(&mut chain, MAX_DESCRIPTORS)
    }

    fn error(result: Result<Request, ParseError>) -> (RequestError, bool) {
        let e = result.unwrap_err();
        (e.error, e.status.is_some())
    }

    #[test]
    fn well_formed_request() {
        let f = fixture();
        header(&f.mem, VIRTIO_BLK_T_OUT, 77);
        let request = parse(
            &f.mem,
            &[desc(HDR, 16, R), desc(DATA, 1024, R), desc(STATUS, 1, W)],
        )
        .unwrap();
        assert_eq!(request.request_type, RequestType::Out);
        assert_eq!(request.sector, 77);
        assert_eq!(request.readable.len(), 1);
        assert_eq!(request.readable[0].len, 1024);
        assert!(request.writable.is_empty());
        assert_eq!(request.status, GuestAddress(STATUS));
    }

    #[test]
    fn reasons() {
        let f = fixture();
        let m = &f.mem;
        header(m, VIRTIO_BLK_T_IN, 0);
        let next = VRING_DESC_F_NEXT as u16;
        let looping = [
            RawDescriptor::from(Descriptor::new(HDR, 16, next, 1)),
            RawDescriptor::from(Descriptor::new(STATUS, 1, next | W as u16, 0)),
        ];
        assert_eq!(
            error(parse_raw(m, &looping)),
            (RequestError::Unterminated, false)
        );
        assert_eq!(
            error(parse(m, &[desc(HDR, 16, R), desc(DATA, 512, R)])),
            (RequestError::NoStatusByte { flags: 0, len: 512 }, false)
        );
        assert!(matches!(
            error(parse(m, &[desc(HDR, 16, R), desc(MEM_SIZE as u64, 1, W)])),
            (RequestError::StatusOutsideMemory(_), false)
        ));
        assert_eq!(
            error(parse(m, &[desc(HDR, 8, R), desc(STATUS, 1, W)])),
            (RequestError::HeaderTooShort(8), true)
        );
        assert_eq!(
            error(parse(m, &[desc(HDR, 16, W), desc(STATUS, 1, W)])),
            (RequestError::HeaderTooShort(0), true)
        );
        assert_eq!(
            error(parse(
                m,
                &[
                    desc(HDR, 16, R),
                    desc(DATA, 512, W),
                    desc(DATA2, 512, R),
                    desc(STATUS, 1, W)
                ]
            )),
            (RequestError::ReadableAfterWritable, true)
        );
        assert!(matches!(
            error(parse(
                m,
                &[
                    desc(HDR, 16, R),
                    desc(MEM_SIZE as u64, 512, W),
                    desc(STATUS, 1, W)
                ]
            )),
            (RequestError::BufferOutsideMemory { .. }, true)
        ));
        assert_eq!(
            error(parse(
                m,
                &[desc(MEM_SIZE as u64, 64, VRING_DESC_F_INDIRECT)]
            )),
            (RequestError::EmptyChain, false)
        );
    }

    #[test]
    fn too_many_descriptors_reason() {
        let f = fixture();
        let next = VRING_DESC_F_NEXT as u16;
        let count = MAX_DESCRIPTORS + 5;
        for i in 0..count {
            let d = if i == count - 1 {
                Descriptor::new(STATUS, 1, W as u16, 0)
            } else {
                Descriptor::new(HDR, 16, next, i as u16 + 1)
            };
            f.mem
                .write_obj(
                    RawDescriptor::from(d),
                    GuestAddress(INDIRECT + 16 * i as u64),
                )
                .unwrap();
        }
        assert_eq!(
            error(parse(
                &f.mem,
                &[desc(INDIRECT, 16 * count as u32, VRING_DESC_F_INDIRECT)]
            )),
            (
                RequestError::TooManyDescriptors {
                    max: MAX_DESCRIPTORS
                },
                false
            )
        );
    }

    /// An indirect table claiming 65535 entries, two of them empty and
    /// pointing at each other: the walk ends after MAX_DESCRIPTORS + 1
    /// descriptors (it used to go on until the table's 65535, for every
    /// chain; fuzz/regressions/block/indirect-loop-65535).
    #[test]
    fn looping_indirect_table_ends_at_the_limit() {
        let f = fixture();
        let next = VRING_DESC_F_NEXT as u16;
        for (i, other) in [(0u64, 1u16), (1, 0)] {
            f.mem
                .write_obj(
                    RawDescriptor::from(Descriptor::new(HDR, 0, next, other)),
                    GuestAddress(INDIRECT + 16 * i),
                )
                .unwrap();
        }
        let queue = MockSplitQueue::new(&f.mem, 16);
        let mut chain = queue
            .build_desc_chain(&[desc(INDIRECT, 16 * 0xffff, VRING_DESC_F_INDIRECT)])
            .unwrap();
        assert_eq!(
            error(Request::parse(&mut chain, MAX_DESCRIPTORS)),
            (
                RequestError::TooManyDescriptors {
                    max: MAX_DESCRIPTORS
                },
                false
            )
        );
        // The chain is left where the walk stopped, not run to its end.
        assert!(chain.next().is_some());
    }
}
