//! virtio-blk behind the virtio-mmio transport, driven like a guest driver
//! would: registers through `MmioTransport::read/write`, a split virtqueue in
//! guest memory, notifications on the queue eventfd, interrupts counted on
//! an eventfd standing in for the VMM's irqfd. The queue handler runs in a
//! real `EventManager` on its own thread, as in the VMM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
};
use virtio_devices::block::{Block, BlockConfig, BlockCoreError, BlockError, BlockHandler};
use virtio_devices::{InterruptKind, InterruptSignal, MmioTransport, QUEUE_NOTIFY_OFFSET};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

const MEM_SIZE: usize = 0x100_0000;
const QUEUE_BASE: u64 = 0x1_0000;
const QUEUE_SIZE: u16 = 128;
const BUFFERS: u64 = 0x10_0000;

const ACK: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;

// ------------------------------------------------------------------ helpers

struct TempImage {
    path: PathBuf,
}

impl TempImage {
    fn new(len: u64) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "parvm-mmio-blk-{}-{}.img",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        File::create(&path).unwrap().set_len(len).unwrap();
        TempImage { path }
    }

    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        File::open(&self.path)
            .unwrap()
            .read_exact_at(&mut buf, offset)
            .unwrap();
        buf
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The VMM's irqfd stand-in.
struct IrqFd(EventFd);

impl InterruptSignal for IrqFd {
    fn trigger(&self, _kind: InterruptKind) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Wait until the eventfd has been written; returns the count.
fn wait_irq(irq: &EventFd) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(n) = irq.read() {
            return n;
        }
        assert!(Instant::now() < deadline, "no interrupt within 10 s");
        thread::sleep(Duration::from_millis(1));
    }
}

/// The driver side of a split virtqueue: descriptor table at `base`,
/// available ring at `base + 0x1000`, used ring at `base + 0x2000`.
struct DriverRing {
    mem: Mem,
    base: u64,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
}

impl DriverRing {
    fn new(mem: &Mem, base: u64, size: u16) -> Self {
        let guard = mem.memory();
        guard
            .write_slice(&vec![0u8; 0x3000], GuestAddress(base))
            .unwrap();
        DriverRing {
            mem: mem.clone(),
            base,
            size,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    fn desc_addr(&self) -> u64 {
        self.base
    }
    fn avail_addr(&self) -> u64 {
        self.base + 0x1000
    }
    fn used_addr(&self) -> u64 {
        self.base + 0x2000
    }

    /// Add a chain of (addr, len, device-writable) buffers; returns its head.
    fn add(&mut self, buffers: &[(u64, u32, bool)]) -> u16 {
        let mem = self.mem.memory();
        let head = self.next_desc;
        for (i, &(addr, len, write)) in buffers.iter().enumerate() {
            let index = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < buffers.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&self.next_desc.to_le_bytes());
            mem.write_slice(&raw, GuestAddress(self.desc_addr() + 16 * u64::from(index)))
                .unwrap();
        }
        self.publish(head);
        head
    }

    /// Put `head` on the available ring, whatever it is.
    fn publish(&mut self, head: u16) {
        let mem = self.mem.memory();
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail_addr() + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    fn set_avail_idx(&self, idx: u16) {
        self.mem
            .memory()
            .write_obj(idx, GuestAddress(self.avail_addr() + 2))
            .unwrap();
    }

    fn set_used_event(&self, value: u16) {
        let addr = self.avail_addr() + 4 + 2 * u64::from(self.size);
        self.mem
            .memory()
            .write_obj(value, GuestAddress(addr))
            .unwrap();
    }

    fn avail_event(&self) -> u16 {
        let addr = self.used_addr() + 4 + 8 * u64::from(self.size);
        self.mem.memory().read_obj(GuestAddress(addr)).unwrap()
    }

    fn used_flags(&self) -> u16 {
        self.mem
            .memory()
            .read_obj(GuestAddress(self.used_addr()))
            .unwrap()
    }

    fn used_idx(&self) -> u16 {
        self.mem
            .memory()
            .read_obj(GuestAddress(self.used_addr() + 2))
            .unwrap()
    }

    /// (id, len) of used ring entry `i`.
    fn used(&self, i: u16) -> (u32, u32) {
        let addr = self.used_addr() + 4 + 8 * u64::from(i % self.size);
        let mem = self.mem.memory();
        (
            mem.read_obj(GuestAddress(addr)).unwrap(),
            mem.read_obj(GuestAddress(addr + 4)).unwrap(),
        )
    }
}

/// A guest driver talking to an `MmioTransport`.
struct Driver {
    transport: MmioTransport<Mem>,
}

impl Driver {
    fn r(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn w(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    fn config_u64(&mut self, offset: u64) -> u64 {
        let mut data = [0u8; 8];
        self.transport.read(0x100 + offset, &mut data);
        u64::from_le_bytes(data)
    }

    fn device_features(&mut self) -> u64 {
        self.w(0x14, 0);
        let low = self.r(0x10);
        self.w(0x14, 1);
        let high = self.r(0x10);
        (u64::from(high) << 32) | u64::from(low)
    }

    /// The Linux virtio-mmio probe sequence; returns the negotiated features.
    fn init(&mut self, ring: &DriverRing, wanted: u64) -> u64 {
        assert_eq!(self.r(0x000), 0x7472_6976);
        assert_eq!(self.r(0x004), 2);
        assert_eq!(self.r(0x008), 2, "virtio-blk");
        self.w(0x070, 0);
        self.w(0x070, ACK);
        self.w(0x070, ACK | DRIVER);
        let features = self.device_features() & wanted;
        self.w(0x24, 0);
        self.w(0x20, features as u32);
        self.w(0x24, 1);
        self.w(0x20, (features >> 32) as u32);
        self.w(0x070, ACK | DRIVER | FEATURES_OK);
        assert_eq!(self.r(0x070) & FEATURES_OK, FEATURES_OK);
        self.w(0x030, 0);
        assert_eq!(self.r(0x044), 0);
        assert!(self.r(0x034) >= u32::from(ring.size));
        self.w(0x038, u32::from(ring.size));
        for (low, addr) in [
            (0x080, ring.desc_addr()),
            (0x090, ring.avail_addr()),
            (0x0a0, ring.used_addr()),
        ] {
            self.w(low, addr as u32);
            self.w(low + 4, (addr >> 32) as u32);
        }
        self.w(0x044, 1);
        self.w(0x070, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_eq!(self.r(0x070), ACK | DRIVER | FEATURES_OK | DRIVER_OK);
        features
    }

    fn notify(&mut self) {
        self.w(QUEUE_NOTIFY_OFFSET, 0);
    }
}

fn header(mem: &Mem, addr: u64, request_type: u32, sector: u64) {
    let mut raw = [0u8; 16];
    raw[0..4].copy_from_slice(&request_type.to_le_bytes());
    raw[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.memory().write_slice(&raw, GuestAddress(addr)).unwrap();
}

fn status(mem: &Mem, addr: u64) -> u8 {
    mem.memory().read_obj(GuestAddress(addr)).unwrap()
}

fn new_mem() -> Mem {
    GuestMemoryAtomic::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
    )
}

const ALL_FEATURES: u64 = u64::MAX;

/// The event loop thread of the VMM, reduced to the block handler.
struct EventLoop {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EventLoop {
    fn start(handler: BlockHandler<Mem, File>) -> Self {
        let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
        manager.add_subscriber(Arc::new(Mutex::new(handler)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = thread::spawn(move || {
            while !thread_stop.load(Ordering::SeqCst) {
                manager.run_with_timeout(20).unwrap();
            }
        });
        EventLoop {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

// -------------------------------------------------------------------- tests

#[test]
fn vmm_facing_types_are_send() {
    fn assert_send<T: Send>() {}
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send::<MmioTransport<Mem>>();
    assert_send::<BlockHandler<Mem, File>>();
    assert_send_sync::<virtio_devices::block::BlockCore<File>>();
}

#[test]
fn guest_io_through_mmio_and_event_manager() {
    let image = TempImage::new(1 << 20);
    let mem = new_mem();
    let (block, handler) = Block::<Mem>::open(&BlockConfig {
        id: "vda".into(),
        path: image.path.clone(),
        read_only: false,
    })
    .unwrap();
    let _event_loop = EventLoop::start(handler);
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let transport = MmioTransport::new(
        Box::new(block),
        mem.clone(),
        Arc::new(IrqFd(irq.try_clone().unwrap())),
    )
    .unwrap();
    let mut driver = Driver { transport };
    let mut ring = DriverRing::new(&mem, QUEUE_BASE, QUEUE_SIZE);
    let features = driver.init(&ring, ALL_FEATURES);
    assert!(features & (1 << VIRTIO_F_VERSION_1) != 0);
    assert!(features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
    assert!(features & (1 << VIRTIO_RING_F_INDIRECT_DESC) != 0);
    assert_eq!(driver.config_u64(0), 2048, "capacity in sectors");

    // Write a 4 KiB pattern at sector 8, flush, read it back, get the id,
    // with a hostile chain in the middle: four chains, one notification.
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let (hdr, data, st) = (BUFFERS, BUFFERS + 0x1000, BUFFERS + 0x3000);
    header(&mem, hdr, VIRTIO_BLK_T_OUT, 8);
    mem.memory()
        .write_slice(&pattern, GuestAddress(data))
        .unwrap();
    ring.add(&[(hdr, 16, false), (data, 4096, false), (st, 1, true)]);
    // Hostile: data outside guest memory.
    let (hdr2, st2) = (BUFFERS + 0x4000, BUFFERS + 0x4100);
    header(&mem, hdr2, VIRTIO_BLK_T_IN, 0);
    ring.add(&[
        (hdr2, 16, false),
        (MEM_SIZE as u64 + 0x1000, 512, true),
        (st2, 1, true),
    ]);
    let (hdr3, st3) = (BUFFERS + 0x5000, BUFFERS + 0x5100);
    header(&mem, hdr3, VIRTIO_BLK_T_FLUSH, 0);
    ring.add(&[(hdr3, 16, false), (st3, 1, true)]);
    let (hdr4, id, st4) = (BUFFERS + 0x6000, BUFFERS + 0x6100, BUFFERS + 0x6200);
    header(&mem, hdr4, VIRTIO_BLK_T_GET_ID, 0);
    ring.add(&[(hdr4, 16, false), (id, 20, true), (st4, 1, true)]);
    driver.notify();
    wait_irq(&irq);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ring.used_idx() != 4 {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(status(&mem, st), VIRTIO_BLK_S_OK as u8);
    assert_eq!(status(&mem, st2), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(status(&mem, st3), VIRTIO_BLK_S_OK as u8);
    assert_eq!(status(&mem, st4), VIRTIO_BLK_S_OK as u8);
    assert_eq!(ring.used(0), (0, 1));
    assert_eq!(ring.used(1), (3, 1));
    assert_eq!(ring.used(2), (6, 1));
    assert_eq!(ring.used(3), (8, 21));
    let mut serial = [0u8; 20];
    mem.memory()
        .read_slice(&mut serial, GuestAddress(id))
        .unwrap();
    assert_eq!(&serial[..4], b"vda\0");
    assert_eq!(image.read(8 * 512, 4096), pattern);
    assert_eq!(driver.r(0x060), 1, "used-ring interrupt pending");
    driver.w(0x064, 1);
    assert_eq!(driver.r(0x060), 0);

    // Read back into a buffer with the ioeventfd path (the eventfd itself).
    // With EVENT_IDX the driver asks for the next interrupt by publishing
    // the used index it has seen (Linux does this when it re-enables
    // callbacks).
    ring.set_used_event(ring.used_idx());
    let back = BUFFERS + 0x8000;
    header(&mem, hdr, VIRTIO_BLK_T_IN, 8);
    ring.add(&[(hdr, 16, false), (back, 4096, true), (st, 1, true)]);
    driver.transport.queue_notify_evts()[0].write(1).unwrap();
    wait_irq(&irq);
    assert_eq!(ring.used_idx(), 5);
    assert_eq!(ring.used(4).1, 4097);
    let mut read = vec![0u8; 4096];
    mem.memory()
        .read_slice(&mut read, GuestAddress(back))
        .unwrap();
    assert_eq!(read, pattern);

    // Reset with the handler running, then bring the device up again on a
    // fresh ring: the old queue state is gone.
    let start = Instant::now();
    driver.w(0x070, 0);
    assert!(start.elapsed() < Duration::from_secs(2), "reset is prompt");
    assert_eq!(driver.r(0x070), 0);
    assert_eq!(driver.r(0x044), 0);
    let mut ring = DriverRing::new(&mem, QUEUE_BASE + 0x4000, QUEUE_SIZE);
    driver.init(&ring, 1 << VIRTIO_F_VERSION_1);
    header(&mem, hdr, VIRTIO_BLK_T_IN, 8);
    mem.memory()
        .write_slice(&[0u8; 512], GuestAddress(back))
        .unwrap();
    ring.add(&[(hdr, 16, false), (back, 512, true), (st, 1, true)]);
    driver.notify();
    wait_irq(&irq);
    assert_eq!(ring.used_idx(), 1);
    assert_eq!(status(&mem, st), VIRTIO_BLK_S_OK as u8);
    mem.memory()
        .read_slice(&mut read[..512], GuestAddress(back))
        .unwrap();
    assert_eq!(&read[..512], &pattern[..512]);
}

/// A transport + block device + handler driven synchronously (no event
/// loop): the test calls the handler itself.
struct Direct {
    driver: Driver,
    handler: BlockHandler<Mem, File>,
    ring: DriverRing,
    mem: Mem,
    irq: EventFd,
    _image: TempImage,
}

fn direct(wanted: u64) -> Direct {
    let image = TempImage::new(1 << 20);
    let mem = new_mem();
    let (block, handler) = Block::<Mem>::open(&BlockConfig {
        id: "vdb".into(),
        path: image.path.clone(),
        read_only: false,
    })
    .unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let transport = MmioTransport::new(
        Box::new(block),
        mem.clone(),
        Arc::new(IrqFd(irq.try_clone().unwrap())),
    )
    .unwrap();
    let mut driver = Driver { transport };
    let ring = DriverRing::new(&mem, QUEUE_BASE, 16);
    driver.init(&ring, wanted);
    let mut d = Direct {
        driver,
        handler,
        ring,
        mem,
        irq,
        _image: image,
    };
    d.handler.handle_commands_now();
    assert!(d.handler.is_active());
    d
}

impl Direct {
    fn flush_request(&mut self) {
        header(&self.mem, BUFFERS, VIRTIO_BLK_T_FLUSH, 0);
        self.ring
            .add(&[(BUFFERS, 16, false), (BUFFERS + 0x100, 1, true)]);
    }
}

#[test]
fn event_idx_suppresses_interrupts() {
    let mut d = direct((1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX));
    // used_event = 0: the first completion interrupts.
    d.flush_request();
    let run = d.handler.process_queue();
    assert_eq!((run.chains, run.interrupted), (1, true));
    assert_eq!(d.ring.avail_event(), 1, "device asks to be notified at 1");
    // The driver wants an interrupt only after used index 5.
    d.ring.set_used_event(5);
    d.flush_request();
    let run = d.handler.process_queue();
    assert_eq!((run.chains, run.interrupted), (1, false));
    for _ in 0..4 {
        d.flush_request();
    }
    let run = d.handler.process_queue();
    assert_eq!((run.chains, run.interrupted), (4, true));
    assert_eq!(d.ring.used_idx(), 6);
    assert_eq!(d.irq.read().unwrap(), 2);
    assert_eq!(d.ring.avail_event(), 6);
}

#[test]
fn without_event_idx_every_batch_interrupts() {
    let mut d = direct(1 << VIRTIO_F_VERSION_1);
    d.ring.set_used_event(100); // ignored without EVENT_IDX
    d.flush_request();
    d.flush_request();
    let run = d.handler.process_queue();
    assert_eq!((run.chains, run.interrupted), (2, true));
    // Notifications re-enabled once the queue is drained.
    assert_eq!(u32::from(d.ring.used_flags()) & VRING_USED_F_NO_NOTIFY, 0);
    d.flush_request();
    assert!(d.handler.process_queue().interrupted);
    assert_eq!(d.irq.read().unwrap(), 2);
}

#[test]
fn corrupt_available_index_does_not_spin() {
    let mut d = direct(1 << VIRTIO_F_VERSION_1);
    d.ring.set_avail_idx(16 + 50);
    let start = Instant::now();
    let run = d.handler.process_queue();
    assert_eq!(run.chains, 0);
    assert!(!run.interrupted);
    assert!(start.elapsed() < Duration::from_secs(1));
    // Once the driver repairs its index the device serves again.
    d.ring.set_avail_idx(0);
    d.flush_request();
    assert_eq!(d.handler.process_queue().chains, 1);
    assert_eq!(status(&d.mem, BUFFERS + 0x100), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn bogus_head_index_is_skipped() {
    let mut d = direct(1 << VIRTIO_F_VERSION_1);
    d.ring.publish(500);
    d.flush_request();
    let run = d.handler.process_queue();
    assert_eq!(run.chains, 2);
    // Only the valid chain is on the used ring.
    assert_eq!(d.ring.used_idx(), 1);
    assert_eq!(status(&d.mem, BUFFERS + 0x100), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn chain_without_status_is_returned_with_length_zero() {
    let mut d = direct(1 << VIRTIO_F_VERSION_1);
    header(&d.mem, BUFFERS, VIRTIO_BLK_T_OUT, 0);
    let head = d
        .ring
        .add(&[(BUFFERS, 16, false), (BUFFERS + 0x1000, 512, false)]);
    d.flush_request();
    assert_eq!(d.handler.process_queue().chains, 2);
    assert_eq!(d.ring.used(0), (u32::from(head), 0));
    assert_eq!(d.ring.used(1).1, 1);
}

#[test]
fn reset_waits_for_the_handler_to_let_go() {
    let mut d = direct(1 << VIRTIO_F_VERSION_1);
    d.flush_request();
    assert_eq!(d.handler.process_queue().chains, 1);
    // Reset with nobody running the handler: the device waits for it with a
    // timeout; here the test processes the command from another thread.
    let handler = Arc::new(Mutex::new(d.handler));
    let stop = Arc::new(AtomicBool::new(false));
    let pump = {
        let handler = handler.clone();
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                handler.lock().unwrap().handle_commands_now();
                thread::sleep(Duration::from_millis(1));
            }
        })
    };
    d.driver.w(0x070, 0);
    stop.store(true, Ordering::SeqCst);
    pump.join().unwrap();
    let mut handler = handler.lock().unwrap();
    assert!(!handler.is_active());
    assert_eq!(handler.process_queue().chains, 0);
    d.driver.notify(); // ignored: not DRIVER_OK
}

#[test]
fn read_only_disk_through_the_device() {
    let image = TempImage::new(4096);
    let (block, mut handler) = Block::<Mem>::open(&BlockConfig {
        id: "ro".into(),
        path: image.path.clone(),
        read_only: true,
    })
    .unwrap();
    assert!(handler.core().read_only());
    let mem = new_mem();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let transport = MmioTransport::new(Box::new(block), mem.clone(), Arc::new(IrqFd(irq))).unwrap();
    let mut driver = Driver { transport };
    assert!(driver.device_features() & (1 << VIRTIO_BLK_F_RO) != 0);
    let mut ring = DriverRing::new(&mem, QUEUE_BASE, 16);
    driver.init(&ring, ALL_FEATURES);
    handler.handle_commands_now();
    header(&mem, BUFFERS, VIRTIO_BLK_T_OUT, 0);
    mem.memory()
        .write_slice(&[0x55u8; 512], GuestAddress(BUFFERS + 0x1000))
        .unwrap();
    ring.add(&[
        (BUFFERS, 16, false),
        (BUFFERS + 0x1000, 512, false),
        (BUFFERS + 0x100, 1, true),
    ]);
    assert_eq!(handler.process_queue().chains, 1);
    assert_eq!(status(&mem, BUFFERS + 0x100), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(image.read(0, 512), vec![0u8; 512]);
}

#[test]
fn open_errors_name_the_disk() {
    let missing = Block::<Mem>::open(&BlockConfig {
        id: "gone".into(),
        path: "/nonexistent/parvm/disk.img".into(),
        read_only: false,
    })
    .err()
    .unwrap();
    assert!(matches!(missing, BlockError::Open { .. }));
    let message = missing.to_string();
    assert!(message.contains("gone") && message.contains("/nonexistent/parvm/disk.img"));

    let tiny = TempImage::new(100);
    let err = Block::<Mem>::open(&BlockConfig {
        id: "tiny".into(),
        path: tiny.path.clone(),
        read_only: true,
    })
    .err()
    .unwrap();
    assert!(matches!(
        err,
        BlockError::Image {
            source: BlockCoreError::TooSmall(100),
            ..
        }
    ));
}
