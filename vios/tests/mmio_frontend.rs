//! The VMM's side of the VIOS: `virtio_devices::vhost_user_blk`'s
//! `VhostUserBlkDevice` behind the virtio-mmio transport, driven through the
//! transport's registers as a guest driver would, talking vhost-user to an
//! in-process VIOS server. Checks the data path end to end and that every
//! interrupt finds bit 0 set in InterruptStatus (the backend never sets it:
//! the device's call relay does).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use vios::{Export, ExportSpec, ServeOptions, Server};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO};
use virtio_devices::vhost_user_blk::VhostUserBlkDevice;
use virtio_devices::{InterruptKind, InterruptSignal, MmioTransport, QUEUE_NOTIFY_OFFSET};
use vm_memory::{Bytes, GuestMemoryAtomic, GuestMemoryMmap};

type Mem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

const ACK: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;

/// Stands in for the irqfd: counts interrupts.
struct Irq {
    count: AtomicUsize,
    isr_zero: AtomicU32,
}

impl InterruptSignal for Irq {
    fn trigger(&self, _kind: InterruptKind) -> std::io::Result<()> {
        self.count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct MmioDriver {
    mem: GuestMemoryMmap<()>,
    transport: MmioTransport<Mem>,
    irq: Arc<Irq>,
    next_avail: u16,
    /// Interrupts seen so far.
    seen: usize,
}

impl MmioDriver {
    fn r(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(&mut self, offset: u64, v: u32) {
        self.transport.write(offset, &v.to_le_bytes());
    }

    fn new(device: VhostUserBlkDevice, drop_features: u64) -> (MmioDriver, u64) {
        let mem = guest_memory();
        let atomic = GuestMemoryAtomic::new(mem.clone());
        let irq = Arc::new(Irq {
            count: AtomicUsize::new(0),
            isr_zero: AtomicU32::new(0),
        });
        let transport = MmioTransport::new(Box::new(device), atomic, irq.clone()).unwrap();
        let mut d = MmioDriver {
            mem,
            transport,
            irq,
            next_avail: 0,
            seen: 0,
        };
        assert_eq!(d.r(0x0), 0x7472_6976);
        assert_eq!(d.r(0x8), 2, "block device");
        d.w(0x70, ACK);
        d.w(0x70, ACK | DRIVER);
        d.w(0x14, 0);
        let lo = d.r(0x10);
        d.w(0x14, 1);
        let hi = d.r(0x10);
        let features = ((u64::from(hi) << 32) | u64::from(lo)) & !drop_features;
        d.w(0x24, 0);
        d.w(0x20, features as u32);
        d.w(0x24, 1);
        d.w(0x20, (features >> 32) as u32);
        d.w(0x70, ACK | DRIVER | FEATURES_OK);
        assert_ne!(d.r(0x70) & FEATURES_OK, 0, "features refused");
        d.w(0x30, 0);
        assert!(d.r(0x34) >= u32::from(QUEUE_SIZE));
        d.w(0x38, u32::from(QUEUE_SIZE));
        d.w(0x80, DESC as u32);
        d.w(0x84, 0);
        d.w(0x90, AVAIL as u32);
        d.w(0x94, 0);
        d.w(0xa0, USED as u32);
        d.w(0xa4, 0);
        d.w(0x44, 1);
        d.w(0x70, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
        assert_eq!(d.r(0x70) & 0x40, 0, "device needs reset");
        (d, features)
    }

    fn capacity(&mut self) -> u64 {
        u64::from(self.r(0x100)) | (u64::from(self.r(0x104)) << 32)
    }
}

impl BlkDriver for MmioDriver {
    fn mem(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    fn submit(&mut self, _q: usize, bufs: &[(u64, u32, bool)]) -> u32 {
        self.next_avail = put_chain(&self.mem, 0, self.next_avail, bufs);
        // QueueNotify reaching the transport (no ioeventfd here) goes to the
        // kick eventfd the backend waits on.
        self.w(QUEUE_NOTIFY_OFFSET, 0);
        let used = wait_used(&self.mem, 0, self.next_avail);
        // The interrupt follows the used ring update. As a guest would, read
        // InterruptStatus once it arrived (bit 0 must be set), then ack.
        let start = Instant::now();
        while self.irq.count.load(Ordering::SeqCst) == self.seen {
            if start.elapsed() > Duration::from_secs(5) {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        let now = self.irq.count.load(Ordering::SeqCst);
        if now != self.seen {
            self.seen = now;
            let isr = self.r(0x60);
            if isr & 1 == 0 {
                self.irq.isr_zero.fetch_add(1, Ordering::SeqCst);
            }
            self.w(0x64, isr);
        }
        used
    }
}

fn server(dir: &TempDir, read_only: bool) -> (Server, std::path::PathBuf, std::path::PathBuf) {
    let image = dir.path("disk.raw");
    let f = std::fs::File::create(&image).unwrap();
    f.set_len(1 << 20).unwrap();
    f.write_all_at(b"vios image", 0).unwrap();
    let socket = dir.path("vios.sock");
    let spec = format!("{}{}", image.display(), if read_only { ",ro" } else { "" });
    let export = Arc::new(Export::open(ExportSpec::parse(&spec).unwrap()).unwrap());
    let s = Server::listen(&socket, export, ServeOptions::default()).unwrap();
    (s, socket, image)
}

#[test]
fn guest_driver_through_mmio_and_vhost_user() {
    let dir = TempDir::new("mmio");
    let (srv, socket, image) = server(&dir, false);
    let device = VhostUserBlkDevice::connect_path("d0", &socket).unwrap();
    assert_eq!(device.capacity(), 2048);
    let (mut d, features) = MmioDriver::new(device, 0);
    assert_ne!(features & (1 << VIRTIO_BLK_F_FLUSH), 0);
    assert_eq!(
        features & (1 << 30),
        0,
        "vhost-user bit leaked to the guest"
    );
    assert_eq!(d.capacity(), 2048);

    let (st, data) = d.read(0, 0, 512);
    assert_eq!(st, S_OK);
    assert_eq!(&data[..10], b"vios image");
    let p = pattern(11, 16384);
    assert_eq!(d.write(0, 32, &p), S_OK);
    assert_eq!(d.flush(0), S_OK);
    let mut on_disk = vec![0u8; p.len()];
    std::fs::File::open(&image)
        .unwrap()
        .read_exact_at(&mut on_disk, 32 * 512)
        .unwrap();
    assert_eq!(on_disk, p);
    assert_eq!(d.read(0, 32, 16384).1, p);
    let (st, id) = d.get_id(0);
    assert_eq!(st, S_OK);
    assert_eq!(&id[..8], b"disk.raw");
    for i in 0..100u8 {
        let p = pattern(i, 512);
        assert_eq!(d.write(0, u64::from(i), &p), S_OK);
        assert_eq!(d.read(0, u64::from(i), 512).1, p);
    }
    assert!(
        d.irq.count.load(Ordering::SeqCst) > 0,
        "no interrupt at all"
    );
    assert_eq!(
        d.irq.isr_zero.load(Ordering::SeqCst),
        0,
        "interrupt with ISR 0"
    );

    // Driver reset, then a second activation on the same connection.
    d.w(0x70, 0);
    assert_eq!(d.r(0x70), 0);
    let MmioDriver { transport, .. } = d;
    drop(transport);
    drop(srv);
}

#[test]
fn reset_and_reinitialise() {
    let dir = TempDir::new("mmio-reset");
    let (_srv, socket, _image) = server(&dir, false);
    let device = VhostUserBlkDevice::connect_path("d0", &socket).unwrap();
    let (mut d, _) = MmioDriver::new(device, 0);
    let p = pattern(1, 4096);
    assert_eq!(d.write(0, 8, &p), S_OK);
    // The guest resets the device (as Linux does on reboot or module
    // reload) and brings it up again with fresh rings.
    d.w(0x70, 0);
    d.mem
        .write_slice(&[0u8; 0x3000], vm_memory::GuestAddress(0))
        .unwrap();
    d.next_avail = 0;
    d.w(0x70, ACK);
    d.w(0x70, ACK | DRIVER);
    d.w(0x24, 1);
    d.w(0x20, 1); // VERSION_1
    d.w(0x70, ACK | DRIVER | FEATURES_OK);
    d.w(0x30, 0);
    d.w(0x38, u32::from(QUEUE_SIZE));
    d.w(0x80, DESC as u32);
    d.w(0x90, AVAIL as u32);
    d.w(0xa0, USED as u32);
    d.w(0x44, 1);
    d.w(0x70, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(d.r(0x70) & 0x40, 0, "device needs reset");
    assert_eq!(d.read(0, 8, 4096).1, p);
}

#[test]
fn read_only_export_is_read_only_for_the_guest() {
    let dir = TempDir::new("mmio-ro");
    let (_srv, socket, _image) = server(&dir, true);
    let device = VhostUserBlkDevice::connect_path("d0", &socket).unwrap();
    let (mut d, features) = MmioDriver::new(device, 0);
    assert_ne!(features & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(d.write(0, 0, &[1u8; 512]), S_IOERR);
}

#[test]
fn connecting_to_nothing_names_the_socket() {
    let e = VhostUserBlkDevice::connect_path("d9", std::path::Path::new("/nonexistent/vios.sock"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("disk d9") && e.contains("/nonexistent/vios.sock"),
        "{e}"
    );
}

fn spawn_vios(socket: &std::path::Path, image: &std::path::Path) -> std::process::Child {
    let _ = std::fs::remove_file(socket);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_vios"))
        .arg("--listen")
        .arg(socket)
        .arg("--disk")
        .arg(image)
        .env("PARVM_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "vios never listened"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// Issue item 5 for a `vhost-user:PATH` disk: the VIOS is killed with
/// SIGKILL while the driver writes, and started again on the same socket.
/// The device reconnects, replays what was in flight, and every write the
/// driver saw completed is in the image.
#[test]
fn vios_killed_mid_write_loses_no_acknowledged_write() {
    let dir = TempDir::new("mmio-kill");
    let image = dir.path("disk.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let socket = dir.path("vios.sock");
    let first = spawn_vios(&socket, &image);
    let device = VhostUserBlkDevice::connect_path("d0", &socket).unwrap();
    let (mut d, _) = MmioDriver::new(device, 0);

    let socket2 = socket.clone();
    let image2 = image.clone();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done2 = done.clone();
    let killer = std::thread::spawn(move || {
        let mut first = first;
        std::thread::sleep(Duration::from_millis(200));
        first.kill().unwrap(); // SIGKILL
        first.wait().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let second = spawn_vios(&socket2, &image2);
        done2.store(true, Ordering::SeqCst);
        second
    });
    // Slot s (8 sectors) last holds pattern(seed) for the last acknowledged
    // write of that slot.
    let slots = 512u64;
    let mut last: std::collections::HashMap<u64, u8> = Default::default();
    let mut i: u64 = 0;
    let mut after_restart = 0;
    let start = Instant::now();
    while after_restart < 300 {
        let slot = (i * 7919) % slots;
        let seed = (i % 251) as u8;
        assert_eq!(
            d.write(0, slot * 8, &pattern(seed, 4096)),
            S_OK,
            "write {i}"
        );
        last.insert(slot, seed);
        if done.load(Ordering::SeqCst) {
            after_restart += 1;
        }
        i += 1;
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
    }
    let mut second = killer.join().unwrap();
    // Reads go through the new VIOS too.
    let (st, data) = d.read(0, 0, 4096);
    assert_eq!(st, S_OK);
    assert_eq!(data, pattern(last[&0], 4096));
    let f = std::fs::File::open(&image).unwrap();
    for (slot, seed) in &last {
        let mut buf = vec![0u8; 4096];
        f.read_exact_at(&mut buf, slot * 8 * 512).unwrap();
        assert!(
            buf == pattern(*seed, 4096),
            "slot {slot} lost its acknowledged write"
        );
    }
    eprintln!("{i} acknowledged writes across a SIGKILL of the VIOS, none lost");
    second.kill().unwrap();
    second.wait().unwrap();
}
