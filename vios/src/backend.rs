//! The vhost-user-blk backend of one client connection.
//!
//! vhost-user-backend runs the vhost-user protocol (features, memory table,
//! vrings, kick/call eventfds) and one worker thread per queue; this module
//! supplies what is specific to a block device: features, configuration
//! space, and the queue drain, which hands every descriptor chain to the
//! shared [`BlockCore`] of `virtio-devices` (the same code the in-VMM
//! virtio-blk runs) and puts its completion on the used ring.
//!
//! The client is not trusted: its memory table is checked before anything
//! touches it (each region inside its fd, each fd sealed against shrinking:
//! a mapping past the end of a memfd would raise SIGBUS in the VIOS), bad
//! chains complete with an error status, and no error here ends the worker
//! thread. vhost-user-backend publishes a new table to its vrings *before*
//! it asks this backend to accept it, so the queue workers never use the
//! crate's memory handle: they use the snapshot [`VhostUserBlk`] keeps,
//! which only a checked table reaches (ring reads, used-ring writes and the
//! notification check all go through it).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tracing::{debug, warn};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::message::VhostUserVirtioFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_MQ, VIRTIO_BLK_S_OK};
use virtio_devices::block::{BlockCore, CONFIG_SPACE_LEN, QUEUE_SIZE};
use virtio_queue::QueueT;
use vm_memory::{
    GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// Guest memory as vhost-user-backend hands it over.
pub type ClientMemory = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// Largest number of queues a client may use.
pub const MAX_QUEUES: usize = parvm_config::MAX_VIOS_QUEUES;

/// Offset of `num_queues` (u16) in `struct virtio_blk_config`.
const NUM_QUEUES_OFFSET: usize = 34;
/// Most chains one drain of a queue pops before it yields: a driver that
/// keeps publishing (a busy guest, or a hostile client whose used ring
/// overlaps its available index, so that every completion publishes a new
/// chain) is served in turns, and the worker thread gets back to its event
/// loop (a stop, the other queues) in between.
pub const MAX_CHAINS_PER_DRAIN: usize = 4 * QUEUE_SIZE as usize;

/// Why a client's memory table was refused.
#[derive(Debug, thiserror::Error)]
pub enum MemoryTableError {
    /// A region is not backed by a file descriptor.
    #[error("memory region at guest address {gpa:#x} has no file descriptor")]
    NoFd {
        /// Guest physical address of the region.
        gpa: u64,
    },
    /// A region's size could not be checked.
    #[error("cannot stat the fd of the memory region at {gpa:#x}: {source}")]
    Stat {
        /// Guest physical address of the region.
        gpa: u64,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// A region's fd can shrink under the VIOS's mapping (an access would
    /// then raise SIGBUS in the VIOS).
    #[error(
        "memory region at {gpa:#x}: its fd is not sealed against shrinking (use a memfd with F_SEAL_SHRINK, e.g. QEMU's memory-backend-memfd)"
    )]
    NotSealed {
        /// Guest physical address of the region.
        gpa: u64,
    },
    /// A region maps bytes past the end of its fd.
    #[error(
        "memory region at {gpa:#x} maps {len:#x} bytes at fd offset {offset:#x}, past the end of its {file_len:#x}-byte fd"
    )]
    PastEof {
        /// Guest physical address of the region.
        gpa: u64,
        /// Region length.
        len: u64,
        /// Offset in the fd.
        offset: u64,
        /// Size of the fd.
        file_len: u64,
    },
}

/// Check that every region lies inside its fd and that the fd cannot
/// shrink later (F_SEAL_SHRINK). Overlapping guest ranges are already
/// refused by vm-memory when the table is built.
pub fn check_memory_table(mem: &GuestMemoryMmap<()>) -> Result<(), MemoryTableError> {
    for region in mem.iter() {
        let gpa = region.start_addr().0;
        let Some(fd) = region.file_offset() else {
            return Err(MemoryTableError::NoFd { gpa });
        };
        // SAFETY: F_GET_SEALS only reads the seals of a valid fd we hold.
        let seals = unsafe { libc::fcntl(fd.file().as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(MemoryTableError::NotSealed { gpa });
        }
        let file_len = fd
            .file()
            .metadata()
            .map_err(|source| MemoryTableError::Stat { gpa, source })?
            .len();
        let len = region.len();
        let offset = fd.start();
        if offset.checked_add(len).is_none_or(|end| end > file_len) {
            return Err(MemoryTableError::PastEof {
                gpa,
                len,
                offset,
                file_len,
            });
        }
    }
    Ok(())
}

/// The backend of one vhost-user-blk connection (shared by the protocol
/// thread and the queue worker threads through an `Arc`).
pub struct VhostUserBlk {
    /// Disk id for logs.
    id: String,
    /// Client name for logs (the socket path or the partition name).
    client: String,
    core: RwLock<BlockCore<File>>,
    queues: usize,
    event_idx: AtomicBool,
    /// The client's memory: a snapshot of the last table that passed
    /// [`check_memory_table`], never the crate's live (unchecked) handle.
    mem: Mutex<Option<Arc<GuestMemoryMmap<()>>>>,
    guest_errors: AtomicU64,
    /// Requests completed (for tests and logs).
    completed: AtomicU64,
    /// The export's counters (over all its connections).
    stats: Option<Arc<crate::stats::DiskCounters>>,
    /// The exit eventfds handed to vhost-user-backend's queue workers, as
    /// the raw fds of their consumer ends: the crate (0.24) registers a
    /// consumer with the worker's epoll through `into_raw_fd` and never
    /// closes it, so without [`VhostUserBlk::close_exit_events`] every
    /// session would leak one eventfd per queue, until the VIOS runs out of
    /// descriptors (and `exit_event` fails, leaving a worker no way to stop:
    /// the session's teardown then waits for it forever).
    exit_fds: Mutex<Vec<RawFd>>,
}

impl VhostUserBlk {
    /// A backend serving `core` with `queues` queues (1..=[`MAX_QUEUES`]).
    pub fn new(id: &str, client: &str, core: BlockCore<File>, queues: usize) -> Self {
        VhostUserBlk {
            id: id.to_owned(),
            client: client.to_owned(),
            core: RwLock::new(core),
            queues: queues.clamp(1, MAX_QUEUES),
            event_idx: AtomicBool::new(false),
            mem: Mutex::new(None),
            guest_errors: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            stats: None,
            exit_fds: Mutex::new(Vec::new()),
        }
    }

    /// Counts every request in `stats` too (the export's, shared by its
    /// connections).
    pub fn with_stats(mut self, stats: Arc<crate::stats::DiskCounters>) -> Self {
        self.stats = Some(stats);
        self
    }

    /// Close the consumer ends of the exit eventfds [`VhostUserBackend::exit_event`]
    /// handed out. Only once the daemon built on this backend is dropped
    /// (its workers joined, their epolls closed): vhost-user-backend 0.24
    /// gives up those fds (`into_raw_fd`) and never touches them again, so
    /// they are this backend's to close. The `vios` test
    /// `exit_eventfds_do_not_leak` checks the crate still leaves them open
    /// (a version that closes them itself would make this a double close).
    pub fn close_exit_events(&self) {
        let fds = match self.exit_fds.lock() {
            Ok(mut guard) => std::mem::take(&mut *guard),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for fd in fds {
            // SAFETY: `fd` is the consumer end of an eventfd created by
            // `exit_event`, whose ownership vhost-user-backend released with
            // `into_raw_fd` and which nothing else closes or uses once the
            // daemon is gone (see above); it is taken from the list, so it is
            // closed once.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }

    /// The recorded exit eventfds (for tests).
    #[doc(hidden)]
    pub fn exit_fds(&self) -> Vec<RawFd> {
        match self.exit_fds.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Requests completed on this connection.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    fn memory(&self) -> Option<Arc<GuestMemoryMmap<()>>> {
        match self.mem.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_memory(&self, mem: Option<Arc<GuestMemoryMmap<()>>>) {
        match self.mem.lock() {
            Ok(mut guard) => *guard = mem,
            Err(poisoned) => *poisoned.into_inner() = mem,
        }
    }

    /// Log a failure caused by the client; rate limited.
    fn client_error(&self, what: &str, error: &dyn std::fmt::Display) {
        let n = self.guest_errors.fetch_add(1, Ordering::Relaxed);
        if n < 16 || n.is_power_of_two() {
            warn!(disk = %self.id, client = %self.client, failures = n + 1, error = %error, "vios: {what}");
        } else {
            debug!(disk = %self.id, client = %self.client, error = %error, "vios: {what}");
        }
    }

    /// Drain one queue: pop every chain, run it through the block core, put
    /// the completions on the used ring, and signal the call eventfd once if
    /// the driver wants it.
    fn process_vring(&self, vring: &VringRwLock) {
        let Some(mem) = self.memory() else {
            self.client_error("queue kicked before a memory table", &"no memory");
            return;
        };
        let core = match self.core.read() {
            Ok(core) => core,
            Err(poisoned) => poisoned.into_inner(),
        };
        let event_idx = self.event_idx.load(Ordering::Acquire);
        let mut used = false;
        let mut popped = 0usize;
        let notify = {
            let mut state = vring.get_mut();
            let kick = state.get_kick().as_ref().map(|k| k.as_raw_fd());
            let queue = state.get_queue_mut();
            'drain: loop {
                if event_idx {
                    if let Err(e) = queue.disable_notification(&*mem) {
                        self.client_error("cannot disable notifications", &e);
                        break;
                    }
                }
                let mut progressed = false;
                while let Some(chain) = queue.pop_descriptor_chain(&*mem) {
                    progressed = true;
                    popped += 1;
                    let started = std::time::Instant::now();
                    let (completion, transfer) = core.process_counted(chain);
                    let took = started.elapsed();
                    match queue.add_used(&*mem, completion.head_index, completion.used_len) {
                        Ok(()) => {
                            used = true;
                            self.completed.fetch_add(1, Ordering::Relaxed);
                            if let Some(stats) = &self.stats {
                                let ok = completion.status == Some(VIRTIO_BLK_S_OK as u8);
                                stats.record(ok, transfer, took);
                            }
                        }
                        Err(e) => self.client_error("cannot add to the used ring", &e),
                    }
                    if popped >= MAX_CHAINS_PER_DRAIN {
                        // Come back after the event loop's turn: a kick
                        // of our own, so nothing published is left behind
                        // (with EVENT_IDX the driver will not kick again).
                        if let Some(fd) = kick {
                            let one = 1u64.to_ne_bytes();
                            // SAFETY: an 8-byte write from a local buffer
                            // to the queue's kick eventfd, which the vring
                            // state holds open while its guard is alive.
                            unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
                        }
                        debug!(disk = %self.id, client = %self.client, popped, "vios: drain yields");
                        break 'drain;
                    }
                }
                if !event_idx {
                    break;
                }
                match queue.enable_notification(&*mem) {
                    Ok(true) if progressed => continue,
                    Ok(true) => {
                        // The available index is ahead by more than the queue
                        // size: nothing can be popped; do not spin on it.
                        self.client_error(
                            "available ring index is invalid",
                            &"the driver published more chains than the queue holds",
                        );
                        break;
                    }
                    Ok(false) => break,
                    Err(e) => {
                        self.client_error("cannot enable notifications", &e);
                        break;
                    }
                }
            }
            // Not `vring.needs_notification()`: that reads used_event
            // through the crate's memory handle, which may already hold an
            // unchecked table.
            used && match queue.needs_notification(&*mem) {
                Ok(notify) => notify,
                Err(e) => {
                    self.client_error("cannot read used_event", &e);
                    false
                }
            }
        };
        if notify {
            if let Err(e) = vring.signal_used_queue() {
                warn!(disk = %self.id, client = %self.client, error = %e, "vios: cannot signal the call eventfd");
            }
        }
    }
}

impl VhostUserBackend for VhostUserBlk {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.queues
    }

    fn max_queue_size(&self) -> usize {
        usize::from(QUEUE_SIZE)
    }

    fn features(&self) -> u64 {
        let core_features = match self.core.read() {
            Ok(core) => core.features(),
            Err(poisoned) => poisoned.into_inner().features(),
        };
        let mut features = core_features | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.queues > 1 {
            features |= 1 << VIRTIO_BLK_F_MQ;
        }
        features
    }

    fn acked_features(&self, features: u64) {
        match self.core.write() {
            Ok(mut core) => core.set_acked_features(features),
            Err(poisoned) => poisoned.into_inner().set_acked_features(features),
        }
        debug!(disk = %self.id, client = %self.client, features = format_args!("{features:#x}"), "vios: features acked");
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn reset_device(&self) {
        self.event_idx.store(false, Ordering::Release);
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Release);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut config = match self.core.read() {
            Ok(core) => core.config_space(),
            Err(poisoned) => poisoned.into_inner().config_space(),
        };
        let queues = u16::try_from(self.queues).unwrap_or(1);
        config[NUM_QUEUES_OFFSET..NUM_QUEUES_OFFSET + 2].copy_from_slice(&queues.to_le_bytes());
        // Bytes past the configuration space read as zero.
        let mut out = vec![0u8; size as usize];
        let start = (offset as usize).min(CONFIG_SPACE_LEN);
        let end = (offset as usize)
            .saturating_add(size as usize)
            .min(CONFIG_SPACE_LEN);
        out[..end - start].copy_from_slice(&config[start..end]);
        out
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Only `writeback` is writable in virtio-blk, and CONFIG_WCE is not
        // offered: the configuration is read-only.
        self.client_error(
            "configuration write refused",
            &format_args!("{} bytes at offset {offset}", buf.len()),
        );
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "virtio-blk configuration space is read-only",
        ))
    }

    fn update_memory(&self, mem: ClientMemory) -> io::Result<()> {
        // The table checked is the very one the workers get.
        let table = mem.memory().into_inner();
        match check_memory_table(&table) {
            Ok(()) => {
                debug!(disk = %self.id, client = %self.client, regions = table.num_regions(), "vios: memory table");
                self.set_memory(Some(table));
                Ok(())
            }
            Err(e) => {
                self.client_error("memory table refused", &e);
                // vhost-user-backend has already installed the table for its
                // vrings: replace it with nothing so that no access ever
                // reaches the bad mapping.
                match mem.lock() {
                    Ok(guard) => guard.replace(GuestMemoryMmap::new()),
                    Err(poisoned) => poisoned.into_inner().replace(GuestMemoryMmap::new()),
                }
                self.set_memory(None);
                Err(io::Error::new(io::ErrorKind::InvalidInput, e))
            }
        }
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.queues).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => {
                match self.exit_fds.lock() {
                    Ok(mut guard) => guard.push(pair.0.as_raw_fd()),
                    Err(poisoned) => poisoned.into_inner().push(pair.0.as_raw_fd()),
                }
                Some(pair)
            }
            Err(e) => {
                warn!(disk = %self.id, error = %e, "vios: cannot create a worker exit eventfd");
                None
            }
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        // A queue worker's first event: it narrows its own filter.
        crate::seccomp::apply_once(crate::seccomp::Role::Worker);
        if evset != EventSet::IN {
            self.client_error("unexpected event", &format_args!("{evset:?}"));
            return Ok(());
        }
        // One queue per worker thread: `device_event` indexes this thread's
        // vrings.
        match vrings.get(usize::from(device_event)) {
            Some(vring) => self.process_vring(vring),
            None => self.client_error("event for an unknown queue", &device_event),
        }
        // Never an error: it would end the worker thread for good.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use vhost_user_backend::VhostUserDaemon;
    use virtio_devices::block::BlockOptions;

    fn eventfd_open(fd: RawFd) -> bool {
        std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .is_ok_and(|p| p.to_string_lossy() == "anon_inode:[eventfd]")
    }

    /// vhost-user-backend leaves the exit eventfds it was given open after
    /// its daemon is dropped (so `close_exit_events` is the only close);
    /// if a new version closes them itself, this fails and
    /// `close_exit_events` must go.
    #[test]
    fn exit_eventfds_do_not_leak() {
        // SAFETY: memfd_create with a valid name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"vios-exit-fds".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor nobody else owns.
        let image = unsafe { File::from_raw_fd(fd) };
        image.set_len(4096).unwrap();
        let core = BlockCore::new(image, &BlockOptions::default()).unwrap();
        let backend = Arc::new(VhostUserBlk::new("d0", "test", core, 2));
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
        let daemon = VhostUserDaemon::new("vios-test".into(), backend.clone(), mem).unwrap();
        let fds = backend.exit_fds();
        assert_eq!(fds.len(), 2, "one exit eventfd per queue worker");
        for handler in daemon.get_epoll_handlers() {
            handler.send_exit_event();
        }
        drop(daemon);
        for &fd in &fds {
            assert!(
                eventfd_open(fd),
                "vhost-user-backend closed exit eventfd {fd} itself"
            );
        }
        backend.close_exit_events();
        assert!(backend.exit_fds().is_empty());
    }
}
