//! A minimal vhost-user-blk frontend for tests: vhost's `Frontend` over
//! memfd guest memory, and a split-virtqueue driver that writes descriptors
//! and rings by hand (so tests can also write bad ones).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

pub const MEM_SIZE: usize = 4 << 20;
pub const QUEUE_SIZE: u16 = 64;
/// Guest addresses of each queue's rings: queue q at q * 0x10000.
pub const DESC: u64 = 0x0;
pub const AVAIL: u64 = 0x1000;
pub const USED: u64 = 0x2000;
/// Data buffers start here.
pub const DATA: u64 = 0x100000;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// A memfd of `size` bytes sealed against shrinking and growing (what the
/// VIOS requires of guest memory).
pub fn memfd(name: &str, size: u64) -> File {
    let file = unsealed_memfd(name, size);
    // SAFETY: F_ADD_SEALS on a valid memfd we own.
    let r = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW,
        )
    };
    assert_eq!(r, 0, "F_ADD_SEALS: {}", std::io::Error::last_os_error());
    file
}

pub fn unsealed_memfd(name: &str, size: u64) -> File {
    let name = CString::new(name).unwrap();
    // SAFETY: memfd_create with a valid NUL-terminated name; the returned fd
    // is checked and then owned by the File.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).unwrap();
    file
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vios-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Wait until `path` exists (the server bound its socket).
pub fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub struct Queue {
    pub index: u16,
    pub kick: EventFd,
    pub call: EventFd,
    next_avail: u16,
    base: u64,
}

/// A connected, configured vhost-user-blk client.
pub struct Client {
    pub frontend: Frontend,
    pub mem: GuestMemoryMmap<()>,
    pub features: u64,
    pub queues: Vec<Queue>,
    pub host_addr: u64,
}

pub fn connect(path: &Path) -> Frontend {
    let frontend = Frontend::connect(path, 16).unwrap();
    frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    frontend
}

pub fn guest_memory() -> GuestMemoryMmap<()> {
    let file = memfd("guest", MEM_SIZE as u64);
    GuestMemoryMmap::<()>::from_ranges_with_files(&[(
        GuestAddress(0),
        MEM_SIZE,
        Some(FileOffset::new(file, 0)),
    )])
    .unwrap()
}

pub fn region_info(mem: &GuestMemoryMmap<()>) -> VhostUserMemoryRegionInfo {
    let region = mem.find_region(GuestAddress(0)).unwrap();
    VhostUserMemoryRegionInfo::from_guest_region(region).unwrap()
}

impl Client {
    /// Negotiate (all offered features, `drop_features` removed), send the
    /// memory table and set up `nqueues` queues.
    pub fn setup(path: &Path, nqueues: u16, drop_features: u64) -> Client {
        Client::setup_with(connect(path), nqueues, drop_features)
    }

    /// The same over an already connected stream (a brokered socketpair).
    pub fn setup_stream(stream: std::os::unix::net::UnixStream, nqueues: u16) -> Client {
        let frontend = Frontend::from_stream(stream, 16);
        frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        Client::setup_with(frontend, nqueues, 0)
    }

    pub fn setup_with(mut frontend: Frontend, nqueues: u16, drop_features: u64) -> Client {
        frontend.set_owner().unwrap();
        let offered = frontend.get_features().unwrap();
        let features = offered & !drop_features;
        frontend.set_features(features).unwrap();
        let proto = frontend.get_protocol_features().unwrap();
        assert!(proto.contains(VhostUserProtocolFeatures::CONFIG));
        frontend.set_protocol_features(proto).unwrap();
        let mem = guest_memory();
        let info = region_info(&mem);
        frontend.set_mem_table(&[info]).unwrap();
        let host_addr = info.userspace_addr;
        let mut client = Client {
            frontend,
            mem,
            features,
            queues: Vec::new(),
            host_addr,
        };
        for q in 0..nqueues {
            client.add_queue(q);
        }
        client
    }

    pub fn add_queue(&mut self, q: u16) {
        let base = u64::from(q) * 0x10000;
        let kick = EventFd::new(0).unwrap();
        let call = EventFd::new(0).unwrap();
        let f = &mut self.frontend;
        let qi = usize::from(q);
        f.set_vring_num(qi, QUEUE_SIZE).unwrap();
        f.set_vring_addr(
            qi,
            &VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: QUEUE_SIZE,
                flags: 0,
                desc_table_addr: self.host_addr + base + DESC,
                used_ring_addr: self.host_addr + base + USED,
                avail_ring_addr: self.host_addr + base + AVAIL,
                log_addr: None,
            },
        )
        .unwrap();
        f.set_vring_base(qi, 0).unwrap();
        f.set_vring_call(qi, &call).unwrap();
        f.set_vring_kick(qi, &kick).unwrap();
        f.set_vring_enable(qi, true).unwrap();
        self.queues.push(Queue {
            index: q,
            kick,
            call,
            next_avail: 0,
            base,
        });
    }
}

/// Write a chain of `(gpa, len, device_writable)` buffers at the start of
/// the descriptor table of the queue at `base` and publish it; returns the
/// new available index.
pub fn put_chain(
    mem: &GuestMemoryMmap<()>,
    base: u64,
    next_avail: u16,
    bufs: &[(u64, u32, bool)],
) -> u16 {
    for (i, &(addr, len, write)) in bufs.iter().enumerate() {
        let mut flags = if write { F_WRITE } else { 0 };
        if i + 1 < bufs.len() {
            flags |= F_NEXT;
        }
        let d = base + DESC + 16 * i as u64;
        mem.write_obj(addr, GuestAddress(d)).unwrap();
        mem.write_obj(len, GuestAddress(d + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
        mem.write_obj((i + 1) as u16, GuestAddress(d + 14)).unwrap();
    }
    let slot = next_avail % QUEUE_SIZE;
    mem.write_obj(0u16, GuestAddress(base + AVAIL + 4 + 2 * u64::from(slot)))
        .unwrap();
    let next = next_avail.wrapping_add(1);
    // used_event (EVENT_IDX): interrupt once this chain is used.
    mem.write_obj(
        next_avail,
        GuestAddress(base + AVAIL + 4 + 2 * u64::from(QUEUE_SIZE)),
    )
    .unwrap();
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    mem.write_obj(next, GuestAddress(base + AVAIL + 2)).unwrap();
    next
}

/// Wait until the used index of the queue at `base` reaches `avail`;
/// returns the length of the last used element.
pub fn wait_used(mem: &GuestMemoryMmap<()>, base: u64, avail: u16) -> u32 {
    let start = Instant::now();
    loop {
        let used: u16 = mem.read_obj(GuestAddress(base + USED + 2)).unwrap();
        if used == avail {
            let slot = u64::from(used.wrapping_sub(1) % QUEUE_SIZE);
            let id: u32 = mem
                .read_obj(GuestAddress(base + USED + 4 + 8 * slot))
                .unwrap();
            assert_eq!(id, 0, "used element id");
            return mem
                .read_obj(GuestAddress(base + USED + 8 + 8 * slot))
                .unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "queue at {base:#x}: no completion (used {used}, avail {avail})"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A virtio-blk driver: something that can run a chain on queue `q`.
pub trait BlkDriver {
    fn mem(&self) -> &GuestMemoryMmap<()>;
    /// Run the chain and wait for it; returns the used length.
    fn submit(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u32;

    fn header(&self, at: u64, kind: u32, sector: u64) {
        self.mem().write_obj(kind, GuestAddress(at)).unwrap();
        self.mem().write_obj(0u32, GuestAddress(at + 4)).unwrap();
        self.mem().write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    fn status(&self, at: u64) -> u8 {
        self.mem().read_obj(GuestAddress(at)).unwrap()
    }

    fn write(&mut self, q: usize, sector: u64, data: &[u8]) -> u8 {
        let s = scratch(q);
        self.header(s, VIRTIO_BLK_T_OUT, sector);
        self.mem()
            .write_slice(data, GuestAddress(s + 0x1000))
            .unwrap();
        self.mem()
            .write_obj(0xffu8, GuestAddress(s + 0x100))
            .unwrap();
        let used = self.submit(
            q,
            &[
                (s, 16, false),
                (s + 0x1000, data.len() as u32, false),
                (s + 0x100, 1, true),
            ],
        );
        assert_eq!(used, 1);
        self.status(s + 0x100)
    }

    fn read(&mut self, q: usize, sector: u64, len: usize) -> (u8, Vec<u8>) {
        let s = scratch(q);
        self.header(s, VIRTIO_BLK_T_IN, sector);
        self.mem()
            .write_obj(0xffu8, GuestAddress(s + 0x100))
            .unwrap();
        let used = self.submit(
            q,
            &[
                (s, 16, false),
                (s + 0x1000, len as u32, true),
                (s + 0x100, 1, true),
            ],
        );
        let status = self.status(s + 0x100);
        if status == S_OK {
            assert_eq!(used as usize, len + 1);
        }
        let mut buf = vec![0u8; len];
        self.mem()
            .read_slice(&mut buf, GuestAddress(s + 0x1000))
            .unwrap();
        (status, buf)
    }

    fn flush(&mut self, q: usize) -> u8 {
        let s = scratch(q);
        self.header(s, VIRTIO_BLK_T_FLUSH, 0);
        self.mem()
            .write_obj(0xffu8, GuestAddress(s + 0x100))
            .unwrap();
        self.submit(q, &[(s, 16, false), (s + 0x100, 1, true)]);
        self.status(s + 0x100)
    }

    fn get_id(&mut self, q: usize) -> (u8, Vec<u8>) {
        let s = scratch(q);
        self.header(s, VIRTIO_BLK_T_GET_ID, 0);
        self.mem()
            .write_obj(0xffu8, GuestAddress(s + 0x100))
            .unwrap();
        self.submit(
            q,
            &[(s, 16, false), (s + 0x1000, 20, true), (s + 0x100, 1, true)],
        );
        let mut buf = vec![0u8; 20];
        self.mem()
            .read_slice(&mut buf, GuestAddress(s + 0x1000))
            .unwrap();
        (self.status(s + 0x100), buf)
    }
}

/// Scratch area of queue `q` (requests on different queues in parallel
/// must not share buffers).
pub fn scratch(q: usize) -> u64 {
    DATA + q as u64 * 0x80000
}

impl BlkDriver for Client {
    fn mem(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    fn submit(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u32 {
        let queue = &mut self.queues[q];
        queue.next_avail = put_chain(&self.mem, queue.base, queue.next_avail, bufs);
        queue.kick.write(1).unwrap();
        wait_used(&self.mem, queue.base, queue.next_avail)
    }
}

/// Bytes `len` of a deterministic pattern seeded by `seed`.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8))
        .collect()
}

/// A standalone `vios --listen SOCKET --disk DISK`, killed (SIGKILL) on drop.
pub struct Vios {
    child: std::process::Child,
}

impl Vios {
    /// Starts it and waits until it accepts connections on `socket`.
    pub fn spawn(socket: &Path, disk: &str) -> Vios {
        let _ = std::fs::remove_file(socket);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_vios"))
            .arg("--listen")
            .arg(socket)
            .arg("--disk")
            .arg(disk)
            .env("PARVM_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn vios");
        let vios = Vios { child };
        drop(dial(socket));
        vios
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vios {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Dial the VIOS's socket; the file appears (bind) a moment before the
/// server listens, so a missing or refused socket is tried again for 10 s.
pub fn dial(socket: &Path) -> std::os::unix::net::UnixStream {
    let start = Instant::now();
    loop {
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(stream) => return stream,
            Err(e) if start.elapsed() < Duration::from_secs(10) => {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                    ),
                    "{e}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("vios never accepted on {}: {e}", socket.display()),
        }
    }
}

/// The `vmm` binary of this build (another package of the workspace,
/// built on first use).
pub fn vmm_binary() -> PathBuf {
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(vmm) = built.as_ref() {
        return vmm.clone();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let vmm = profile_dir.join("vmm");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.args(["build", "-p", "vmm", "--bin", "vmm"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build -p vmm");
    assert!(status.success(), "cargo build -p vmm failed");
    assert!(vmm.exists(), "{} missing after the build", vmm.display());
    *built = Some(vmm.clone());
    vmm
}
