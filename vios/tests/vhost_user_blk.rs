//! The VIOS vhost-user-blk server driven in-process by a vhost-user
//! frontend over memfd guest memory: data path, read-only exports, several
//! clients, several queues, EVENT_IDX, and hostile input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use common::*;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::VhostUserFrontend;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vios::{Export, ExportSpec, ServeOptions, Server};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const DISK_SIZE: u64 = 1 << 20;

struct Setup {
    dir: TempDir,
    image: std::path::PathBuf,
    socket: std::path::PathBuf,
    server: Option<Server>,
}

impl Setup {
    fn new(tag: &str, read_only: bool, queues: usize) -> Setup {
        let dir = TempDir::new(tag);
        let image = dir.path("disk.raw");
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(DISK_SIZE).unwrap();
        f.write_all_at(b"first sector of the image", 0).unwrap();
        let socket = dir.path("vios.sock");
        let spec = format!("{}{}", image.display(), if read_only { ",ro" } else { "" });
        let export = Arc::new(Export::open(ExportSpec::parse(&spec).unwrap()).unwrap());
        let server = Server::listen(
            &socket,
            export,
            ServeOptions {
                queues,
                read_only: false,
            },
        )
        .unwrap();
        Setup {
            dir,
            image,
            socket,
            server: Some(server),
        }
    }

    fn image_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        std::fs::File::open(&self.image)
            .unwrap()
            .read_exact_at(&mut buf, offset)
            .unwrap();
        buf
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
        let _ = &self.dir;
    }
}

#[test]
fn write_read_flush_and_config() {
    let s = Setup::new("rw", false, 1);
    let mut c = Client::setup(&s.socket, 1, 0);
    assert_ne!(c.features & (1 << VIRTIO_BLK_F_FLUSH), 0);
    assert_ne!(c.features & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
    assert_eq!(c.features & (1 << VIRTIO_BLK_F_RO), 0);

    // Configuration space: capacity and blk_size.
    let (_, cfg) = c
        .frontend
        .get_config(0, 24, VhostUserConfigFlags::WRITABLE, &[0u8; 24])
        .unwrap();
    assert_eq!(
        u64::from_le_bytes(cfg[0..8].try_into().unwrap()),
        DISK_SIZE / 512
    );
    assert_eq!(u32::from_le_bytes(cfg[20..24].try_into().unwrap()), 512);

    // What the image holds is read.
    let (st, data) = c.read(0, 0, 512);
    assert_eq!(st, S_OK);
    assert_eq!(&data[..25], b"first sector of the image");

    // A write reaches the image, a read returns it.
    let pat = pattern(7, 8192);
    assert_eq!(c.write(0, 16, &pat), S_OK);
    assert_eq!(s.image_bytes(16 * 512, 8192), pat);
    let (st, back) = c.read(0, 16, 8192);
    assert_eq!(st, S_OK);
    assert_eq!(back, pat);

    assert_eq!(c.flush(0), S_OK);
    let (st, id) = c.get_id(0);
    assert_eq!(st, S_OK);
    assert_eq!(&id[..8], b"disk.raw");

    // Past the end of the disk: IOERR, and the connection keeps working.
    assert_eq!(c.write(0, DISK_SIZE / 512, &pat[..512]), S_IOERR);
    let (st, _) = c.read(0, 16, 512);
    assert_eq!(st, S_OK);

    // Many requests in a row wrap the 64-entry ring several times.
    for i in 0..200u64 {
        let p = pattern(i as u8, 512);
        assert_eq!(c.write(0, 100 + i % 50, &p), S_OK);
        assert_eq!(c.read(0, 100 + i % 50, 512).1, p);
    }
}

#[test]
fn without_event_idx() {
    let s = Setup::new("noidx", false, 1);
    let mut c = Client::setup(&s.socket, 1, 1 << VIRTIO_RING_F_EVENT_IDX);
    assert_eq!(c.features & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
    let pat = pattern(3, 4096);
    assert_eq!(c.write(0, 8, &pat), S_OK);
    assert_eq!(c.read(0, 8, 4096).1, pat);
    // Without EVENT_IDX every completion signals the call eventfd.
    assert!(c.queues[0].call.read().unwrap() >= 1);
}

#[test]
fn read_only_export() {
    let s = Setup::new("ro", true, 1);
    let mut c = Client::setup(&s.socket, 1, 0);
    assert_ne!(c.features & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(c.write(0, 0, &[0xaa; 512]), S_IOERR);
    assert_eq!(&s.image_bytes(0, 25), b"first sector of the image");
    let (st, data) = c.read(0, 0, 512);
    assert_eq!(st, S_OK);
    assert_eq!(&data[..25], b"first sector of the image");
}

#[test]
fn several_clients_at_once() {
    let s = Setup::new("multi", false, 1);
    let socket = s.socket.clone();
    let threads: Vec<_> = (0..4u8)
        .map(|n| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut c = Client::setup(&socket, 1, 0);
                for round in 0..50u64 {
                    let sector = u64::from(n) * 256 + (round % 16) * 8;
                    let p = pattern(n.wrapping_add(round as u8), 4096);
                    assert_eq!(c.write(0, sector, &p), S_OK);
                    assert_eq!(c.read(0, sector, 4096).1, p);
                }
                c.flush(0)
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), S_OK);
    }
}

#[test]
fn multiple_queues() {
    let s = Setup::new("mq", false, 2);
    let mut c = Client::setup(&s.socket, 2, 0);
    assert_ne!(c.features & (1 << VIRTIO_BLK_F_MQ), 0);
    assert_eq!(c.frontend.get_queue_num().unwrap(), 2);
    let (_, cfg) = c
        .frontend
        .get_config(34, 2, VhostUserConfigFlags::WRITABLE, &[0u8; 2])
        .unwrap();
    assert_eq!(u16::from_le_bytes([cfg[0], cfg[1]]), 2);
    let a = pattern(1, 4096);
    let b = pattern(2, 4096);
    assert_eq!(c.write(0, 0, &a), S_OK);
    assert_eq!(c.write(1, 8, &b), S_OK);
    assert_eq!(c.read(1, 0, 4096).1, a);
    assert_eq!(c.read(0, 8, 4096).1, b);
}

/// A second, well-behaved client must still be served.
fn still_serves(s: &Setup) {
    let mut c = Client::setup(&s.socket, 1, 0);
    let p = pattern(99, 1024);
    assert_eq!(c.write(0, 40, &p), S_OK);
    assert_eq!(c.read(0, 40, 1024).1, p);
}

#[test]
fn memory_table_past_the_fd_is_refused() {
    let s = Setup::new("pasteof", false, 1);
    let mut f = connect(&s.socket);
    f.set_owner().unwrap();
    let features = f.get_features().unwrap();
    f.set_features(features).unwrap();
    let proto = f.get_protocol_features().unwrap();
    f.set_protocol_features(proto).unwrap();
    // A 64 KiB memfd announced as 4 MiB: touching the tail would SIGBUS.
    let small = memfd("small", 0x10000);
    let mem = guest_memory();
    let mut info = region_info(&mem);
    info.mmap_handle = small.as_raw_fd();
    let e = f.set_mem_table(&[info]).unwrap_err();
    eprintln!("past EOF refused: {e}");
    // A memfd that could shrink later (not sealed) is refused.
    let loose = unsealed_memfd("loose", MEM_SIZE as u64);
    let mut info = region_info(&mem);
    info.mmap_handle = loose.as_raw_fd();
    let e = f.set_mem_table(&[info]).unwrap_err();
    eprintln!("unsealed refused: {e}");
    // An offset beyond the fd, too.
    let mut info = region_info(&mem);
    info.mmap_offset = 1 << 40;
    assert!(f.set_mem_table(&[info]).is_err());
    // Rings "in" the refused memory: nothing is touched, errors only.
    let r = f.set_vring_addr(
        0,
        &VringConfigData {
            queue_max_size: 64,
            queue_size: 64,
            flags: 0,
            desc_table_addr: info.userspace_addr,
            used_ring_addr: info.userspace_addr + USED,
            avail_ring_addr: info.userspace_addr + AVAIL,
            log_addr: None,
        },
    );
    assert!(r.is_err());
    drop(f);
    still_serves(&s);
}

#[test]
fn overlapping_regions_are_refused() {
    let s = Setup::new("overlap", false, 1);
    let mut f = connect(&s.socket);
    f.set_owner().unwrap();
    let features = f.get_features().unwrap();
    f.set_features(features).unwrap();
    let proto = f.get_protocol_features().unwrap();
    f.set_protocol_features(proto).unwrap();
    let mem = guest_memory();
    let a = region_info(&mem);
    let mut b = a;
    b.guest_phys_addr = 0x1000; // overlaps [0, 4 MiB)
    b.memory_size = 0x10000;
    assert!(f.set_mem_table(&[a, b]).is_err());
    drop(f);
    still_serves(&s);
}

#[test]
fn out_of_order_messages() {
    let s = Setup::new("order", false, 1);
    // Before any negotiation (no REPLY_ACK yet, so no answers to check):
    // vring messages and a kick must not hurt.
    let mut raw = connect(&s.socket);
    let evt0 = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    let _ = raw.set_vring_num(0, 64);
    let _ = raw.set_vring_kick(0, &evt0);
    let _ = raw.set_vring_enable(0, true);
    evt0.write(1).unwrap();
    let _ = raw.get_features();
    drop(raw);

    let mut f = connect(&s.socket);
    let features = f.get_features().unwrap();
    f.set_features(features).unwrap();
    let proto = f.get_protocol_features().unwrap();
    f.set_protocol_features(proto).unwrap();
    // Vring setup before the memory table: errors, no crash.
    let evt = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    let _ = f.set_vring_kick(0, &evt);
    assert!(f
        .set_vring_addr(
            0,
            &VringConfigData {
                queue_max_size: 64,
                queue_size: 64,
                flags: 0,
                desc_table_addr: 0x1000,
                used_ring_addr: 0x2000,
                avail_ring_addr: 0x3000,
                log_addr: None,
            },
        )
        .is_err());
    evt.write(1).unwrap(); // a kick with no memory
    assert!(f.set_vring_num(0, 1000).is_err()); // above the maximum
    assert!(f.set_vring_num(0, 0).is_err());
    let _ = f.get_vring_base(0);
    // A queue the device does not have.
    assert!(f.set_vring_enable(5, true).is_err());
    // Configuration writes are refused.
    assert!(f
        .set_config(32, VhostUserConfigFlags::WRITABLE, &[1])
        .is_err());
    // A region with zero size is refused by the frontend already; a memory
    // region remove for something never added fails.
    let mem = guest_memory();
    let info: VhostUserMemoryRegionInfo = region_info(&mem);
    assert!(f.remove_mem_region(&info).is_err());
    drop(f);
    still_serves(&s);
}

#[test]
fn garbage_and_truncated_messages() {
    let s = Setup::new("garbage", false, 1);
    // Random bytes.
    let mut raw = UnixStream::connect(&s.socket).unwrap();
    raw.write_all(&[0xde; 100]).unwrap();
    drop(raw);
    // A header announcing a huge body, then hang up.
    let mut raw = UnixStream::connect(&s.socket).unwrap();
    let mut hdr = Vec::new();
    hdr.extend_from_slice(&5u32.to_le_bytes()); // SET_MEM_TABLE
    hdr.extend_from_slice(&1u32.to_le_bytes()); // version 1
    hdr.extend_from_slice(&0xffff_fff0u32.to_le_bytes());
    raw.write_all(&hdr).unwrap();
    drop(raw);
    // SET_MEM_TABLE claiming 8 regions with fds for 1, truncated body.
    let raw = UnixStream::connect(&s.socket).unwrap();
    let mut msg = Vec::new();
    msg.extend_from_slice(&5u32.to_le_bytes());
    msg.extend_from_slice(&1u32.to_le_bytes());
    msg.extend_from_slice(&(8u32 + 8 * 32).to_le_bytes());
    msg.extend_from_slice(&8u32.to_le_bytes()); // num_regions
    msg.extend_from_slice(&0u32.to_le_bytes());
    msg.extend_from_slice(&[0x11u8; 40]);
    let fd = memfd("x", 4096);
    raw.send_with_fds(&[&msg[..]], &[fd.as_raw_fd()]).unwrap();
    drop(raw);
    // A request code that does not exist.
    let mut raw = UnixStream::connect(&s.socket).unwrap();
    let mut msg = Vec::new();
    msg.extend_from_slice(&9999u32.to_le_bytes());
    msg.extend_from_slice(&1u32.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes());
    raw.write_all(&msg).unwrap();
    drop(raw);
    still_serves(&s);
}

#[test]
fn descriptors_outside_client_memory() {
    let s = Setup::new("baddesc", false, 1);
    let mut c = Client::setup(&s.socket, 1, 0);
    let hdr = DATA;
    c.mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(hdr)).unwrap();
    c.mem.write_obj(0u64, GuestAddress(hdr + 8)).unwrap();
    c.mem.write_obj(0xffu8, GuestAddress(hdr + 0x100)).unwrap();
    // Data buffer far outside the 4 MiB of memory: IOERR.
    let used = c.submit(
        0,
        &[
            (hdr, 16, false),
            (1 << 40, 512, true),
            (hdr + 0x100, 1, true),
        ],
    );
    assert_eq!(used, 1);
    assert_eq!(
        c.mem.read_obj::<u8>(GuestAddress(hdr + 0x100)).unwrap(),
        S_IOERR
    );
    // Data buffer straddling the end of memory: IOERR.
    let end = MEM_SIZE as u64 - 256;
    c.submit(
        0,
        &[(hdr, 16, false), (end, 512, true), (hdr + 0x100, 1, true)],
    );
    assert_eq!(
        c.mem.read_obj::<u8>(GuestAddress(hdr + 0x100)).unwrap(),
        S_IOERR
    );
    // Status byte outside memory: completed with length 0.
    let used = c.submit(
        0,
        &[
            (hdr, 16, false),
            (hdr + 0x1000, 512, true),
            (1 << 40, 1, true),
        ],
    );
    assert_eq!(used, 0);
    // Header outside memory.
    c.submit(0, &[(1 << 40, 16, false), (hdr + 0x100, 1, true)]);
    assert_eq!(
        c.mem.read_obj::<u8>(GuestAddress(hdr + 0x100)).unwrap(),
        S_IOERR
    );
    // Unknown request type: UNSUPP.
    c.mem.write_obj(77u32, GuestAddress(hdr)).unwrap();
    c.submit(0, &[(hdr, 16, false), (hdr + 0x100, 1, true)]);
    assert_eq!(
        c.mem.read_obj::<u8>(GuestAddress(hdr + 0x100)).unwrap(),
        S_UNSUPP
    );
    // The connection still works.
    let p = pattern(5, 512);
    assert_eq!(c.write(0, 1, &p), S_OK);
    assert_eq!(c.read(0, 1, 512).1, p);
    still_serves(&s);
}

#[test]
fn client_disconnect_and_reconnect() {
    let s = Setup::new("reconnect", false, 1);
    for round in 0..5u8 {
        let mut c = Client::setup(&s.socket, 1, 0);
        let p = pattern(round, 2048);
        assert_eq!(c.write(0, 64, &p), S_OK);
        assert_eq!(c.read(0, 64, 2048).1, p);
    }
    assert_eq!(s.image_bytes(64 * 512, 2048), pattern(4, 2048));
}

#[test]
fn brokered_socketpair_is_served() {
    let dir = TempDir::new("pair");
    let image = dir.path("disk.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(DISK_SIZE)
        .unwrap();
    let spec = format!("{},id=paired", image.display());
    let export = Arc::new(Export::open(ExportSpec::parse(&spec).unwrap()).unwrap());
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    // Two clients at once, each on its own socketpair.
    for n in 0..2u8 {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let export = export.clone();
        servers.push(std::thread::spawn(move || {
            vios::serve_stream(
                theirs,
                &export,
                &format!("client{n}"),
                &ServeOptions::default(),
            )
        }));
        clients.push(Client::setup_stream(ours, 1));
    }
    for (n, c) in clients.iter_mut().enumerate() {
        let p = pattern(n as u8, 4096);
        assert_eq!(c.write(0, 8 * n as u64, &p), S_OK);
        assert_eq!(c.read(0, 8 * n as u64, 4096).1, p);
        let (st, id) = c.get_id(0);
        assert_eq!(st, S_OK);
        assert_eq!(&id[..6], b"paired");
    }
    // A bad memory table on a brokered connection is refused there too.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let export2 = export.clone();
    let bad = std::thread::spawn(move || {
        vios::serve_stream(theirs, &export2, "bad", &ServeOptions::default())
    });
    let mut f = vhost::vhost_user::Frontend::from_stream(ours, 1);
    f.set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);
    f.set_owner().unwrap();
    let features = f.get_features().unwrap();
    f.set_features(features).unwrap();
    let proto = f.get_protocol_features().unwrap();
    f.set_protocol_features(proto).unwrap();
    let small = memfd("small", 0x1000);
    let mem = guest_memory();
    let mut info = region_info(&mem);
    info.mmap_handle = small.as_raw_fd();
    assert!(f.set_mem_table(&[info]).is_err());
    drop(f);
    bad.join().unwrap().unwrap();
    // Disconnecting ends each server call.
    drop(clients);
    for s in servers {
        s.join().unwrap().unwrap();
    }
}
