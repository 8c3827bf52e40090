//! Paging devices: the pager's own virtio-blk driver over vhost-user-blk.
//!
//! For Active Memory Sharing the VMM's pager evicts guest pages to a disk
//! the VIOS serves, and reads them back on userfaultfd faults. The VMM is
//! then both the vhost-user frontend and the virtio *driver*: a
//! [`PagingDisk`] owns one split queue in a private memfd (never guest
//! RAM) that it shares with the backend through SET_MEM_TABLE as the whole
//! of its memory table (private addresses from 0):
//!
//! ```text
//! 0x00000  descriptor table   256 x 16 B     request r: descriptors 3r (header),
//! 0x01000  available ring     driver writes              3r+1 (data), 3r+2 (status)
//! 0x02000  used ring          backend writes
//! 0x03000  request headers    64 x 16 B
//! 0x03400  status bytes       64 x 1 B       backend writes
//! 0x04000  bounce area        64 x 4 KiB     page i of a batch in slot i
//! 0x44000  end (272 KiB)
//! ```
//!
//! ```text
//! write_pages: pages ──copy──> bounce slots ── OUT chains ──> avail ring ── kick ──> VIOS
//! read_pages:  VIOS ── IN chains fill bounce slots ── used ring + call ──> &[u8] (UFFDIO_COPY source)
//! ```
//!
//! One batch is in flight at a time and every call is synchronous: the
//! batch is validated (4 KiB aligned, inside the capacity, at most
//! [`MAX_BATCH_PAGES`] pages; a bigger batch is refused, not split, so that
//! [`PagingDisk::read_pages`] can return one slice), cut into one request
//! per maximal run of consecutive offsets (header, one data descriptor over
//! the run's contiguous bounce slots, status byte), published, kicked, and
//! waited for on the call eventfd and the socket together (no spinning).
//! Every used element and status byte is checked: a backend that completes
//! a chain it was never given, twice, or short, is an error, not a panic.
//!
//! Errors and reconnection: a status other than OK fails the call with the
//! offset and status, and the disk stays usable. A hang-up of the socket
//! (the VIOS died), a timeout or a protocol violation fail the call with
//! [`PagingError::Disconnected`], [`PagingError::Timeout`] or
//! [`PagingError::Backend`] and drop the connection (the ring state is then
//! unknown); later calls fail with `Disconnected` until
//! [`PagingDisk::reconnect`] sets up a new socket on a *fresh* memfd (rings
//! at index 0; an old backend still holding the previous memfd cannot
//! write into the new one). The interrupted call is not replayed: page
//! reads and writes are idempotent, so the caller simply calls again.

mod disk;
mod error;
mod handover;
mod queue;

pub use disk::{BouncedDisk, RETRY_FOR, RETRY_INTERVAL};
pub use handover::HandOver;

use std::collections::HashSet;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use vhost::vhost_user::Frontend;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::block::SECTOR_SIZE;
use crate::vhost_user_frontend::{
    handshake, poll_fds, pollfd, read_config, start_rings, RingSetup, Rings,
};
pub use error::PagingError;
use queue::{Descriptor, PrivateQueue, QueueError, DESCRIPTORS_PER_REQUEST, DESC_TABLE, USED_RING};
pub use queue::{MAX_BATCH_PAGES, PAGE_SIZE, QUEUE_SIZE};

/// Most bytes one [`PagingDisk::read_at`] or [`PagingDisk::write_at`]
/// moves: the bounce area.
pub const MAX_TRANSFER: usize = MAX_BATCH_PAGES * PAGE_SIZE;

/// How long a batch (or a connection's set-up) may take before the backend
/// is given up on.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One virtio-blk request of a batch: `pages` pages (0 for a flush) from
/// bounce slot `slot`, at byte `offset` of the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    offset: u64,
    slot: usize,
    /// Bytes of data (a multiple of the sector size; 0 for a flush).
    len: usize,
}

/// Cut a batch into maximal runs of consecutive offsets; page `i` of the
/// batch is bounce slot `i`, so a run's slots are contiguous too.
fn runs(offsets: impl Iterator<Item = u64>) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for (slot, offset) in offsets.enumerate() {
        match out.last_mut() {
            Some(run) if run.offset + run.len as u64 == offset => run.len += PAGE_SIZE,
            _ => out.push(Run {
                offset,
                slot,
                len: PAGE_SIZE,
            }),
        }
    }
    out
}

/// A live connection: the vhost-user socket, its hang-up watch, the
/// private queue and its eventfds.
struct Connection {
    /// Kept for the socket: dropping it hangs up on the backend.
    _frontend: Frontend,
    watch: UnixStream,
    queue: PrivateQueue,
    kick: EventFd,
    call: EventFd,
}

/// A connection and what the backend's configuration said.
struct Opened {
    conn: Connection,
    capacity_sectors: u64,
    flush: bool,
    read_only: bool,
}

/// Hangs up a socket whose vhost-user set-up outlives its deadline: the
/// frontend's requests block on the reply and retry on EAGAIN, so a socket
/// timeout cannot end them, a shutdown does.
struct SetupDeadline {
    done: Option<mpsc::Sender<()>>,
    fired: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SetupDeadline {
    fn start(id: &str, stream: &UnixStream, timeout: Duration) -> io::Result<Self> {
        let socket = stream.try_clone()?;
        let (done, wait) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let fired2 = fired.clone();
        let thread = std::thread::Builder::new()
            .name(format!("paging-setup-{id}"))
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(timeout) {
                    fired2.store(true, Ordering::Release);
                    let _ = socket.shutdown(Shutdown::Both);
                }
            })?;
        Ok(SetupDeadline {
            done: Some(done),
            fired,
            thread: Some(thread),
        })
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}

impl Drop for SetupDeadline {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread at once.
        self.done = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Negotiate on `stream` and start the private queue on a fresh memfd; a
/// backend that has not answered within `timeout` is hung up on and the
/// set-up fails with [`PagingError::Timeout`].
fn open(
    id: &str,
    stream: UnixStream,
    timeout: Duration,
    allow_read_only: bool,
) -> Result<Opened, PagingError> {
    let start = Instant::now();
    let deadline = SetupDeadline::start(id, &stream, timeout).map_err(|e| PagingError::Setup {
        id: id.to_owned(),
        reason: format!("cannot start the set-up deadline: {e}"),
    })?;
    let result = open_now(id, stream, allow_read_only);
    if result.is_err() && deadline.fired() {
        return Err(PagingError::Timeout {
            id: id.to_owned(),
            waited: start.elapsed(),
        });
    }
    result
}

fn open_now(id: &str, stream: UnixStream, allow_read_only: bool) -> Result<Opened, PagingError> {
    let setup = |reason: String| PagingError::Setup {
        id: id.to_owned(),
        reason,
    };
    let watch = stream
        .try_clone()
        .map_err(|e| setup(format!("cannot duplicate the socket: {e}")))?;
    let mut frontend = Frontend::from_stream(stream, 1);
    let offered = handshake(id, &mut frontend)?;
    let read_only = offered & (1 << VIRTIO_BLK_F_RO) != 0;
    if read_only && !allow_read_only {
        return Err(PagingError::ReadOnly { id: id.to_owned() });
    }
    let config = read_config(id, &mut frontend)?;
    let mut capacity = [0u8; 8];
    capacity.copy_from_slice(&config[..8]);
    let capacity_sectors = u64::from_le_bytes(capacity);
    let flush = offered & (1 << VIRTIO_BLK_F_FLUSH) != 0;
    // No EVENT_IDX (a call after every drain), no indirect descriptors.
    let acked = (1 << VIRTIO_F_VERSION_1) | (offered & (1 << VIRTIO_BLK_F_FLUSH));
    let queue = PrivateQueue::new(id).map_err(|e| setup(e.to_string()))?;
    let eventfd =
        |what: &str| EventFd::new(EFD_NONBLOCK).map_err(|e| setup(format!("{what} eventfd: {e}")));
    let (kick, call) = (eventfd("kick")?, eventfd("call")?);
    let dup = |fd: &EventFd| {
        fd.try_clone()
            .map_err(|e| setup(format!("eventfd dup: {e}")))
    };
    let rings = Rings {
        mem: queue.memory().clone(),
        rings: vec![RingSetup {
            index: 0,
            size: QUEUE_SIZE,
            desc: DESC_TABLE,
            avail: queue::AVAIL_RING,
            used: USED_RING,
        }],
        kicks: vec![dup(&kick)?],
        calls: vec![dup(&call)?],
        acked_features: acked,
    };
    start_rings(&mut frontend, &rings, false).map_err(setup)?;
    Ok(Opened {
        conn: Connection {
            _frontend: frontend,
            watch,
            queue,
            kick,
            call,
        },
        capacity_sectors,
        flush,
        read_only,
    })
}

/// The pager's paging device: a virtio-blk driver on a private queue over
/// a vhost-user-blk connection. One batch at a time (`&mut self`).
pub struct PagingDisk {
    id: String,
    capacity_sectors: u64,
    flush: bool,
    /// The export is read-only (only allowed by [`PagingDisk::connect_disk`]).
    read_only: bool,
    allow_read_only: bool,
    timeout: Duration,
    /// `None` after a failure that left the ring state unknown.
    conn: Option<Connection>,
}

impl PagingDisk {
    /// Set up the paging disk on an already connected socket (the VMM's
    /// end of a socketpair the partition manager brokered): handshake,
    /// configuration (a read-only export is refused), the private memfd as
    /// the whole memory table, queue 0 with its own kick and call eventfds.
    pub fn connect(id: &str, stream: UnixStream) -> Result<PagingDisk, PagingError> {
        Self::connect_with(id, stream, false)
    }

    /// The same driver for a guest's disk served through the VMM (a
    /// shared-memory partition's VIOS disk, docs/ams.md): a read-only
    /// export is accepted (writes then fail before anything is sent).
    pub fn connect_disk(id: &str, stream: UnixStream) -> Result<PagingDisk, PagingError> {
        Self::connect_with(id, stream, true)
    }

    fn connect_with(
        id: &str,
        stream: UnixStream,
        allow_read_only: bool,
    ) -> Result<PagingDisk, PagingError> {
        let opened = open(id, stream, DEFAULT_TIMEOUT, allow_read_only)?;
        info!(
            disk = %id,
            capacity = opened.capacity_sectors,
            flush = opened.flush,
            "paging disk: connected"
        );
        Ok(PagingDisk {
            id: id.to_owned(),
            capacity_sectors: opened.capacity_sectors,
            flush: opened.flush,
            read_only: opened.read_only,
            allow_read_only,
            timeout: DEFAULT_TIMEOUT,
            conn: Some(opened.conn),
        })
    }

    /// Dial a backend listening on `path` (standalone `vios --listen`),
    /// then [`PagingDisk::connect`].
    pub fn connect_path(id: &str, path: &Path) -> Result<PagingDisk, PagingError> {
        Self::connect(id, Self::dial(id, path)?)
    }

    /// Replace the connection with one on `stream` (a new VIOS, a new
    /// brokered socket): a fresh memfd, rings at index 0. Nothing is
    /// replayed: call the interrupted `write_pages`/`read_pages` again.
    /// The backend must report the same capacity.
    pub fn reconnect(&mut self, stream: UnixStream) -> Result<(), PagingError> {
        // The old backend is forgotten first, whatever happens next.
        self.conn = None;
        let opened = open(&self.id, stream, self.timeout, self.allow_read_only)?;
        if opened.capacity_sectors != self.capacity_sectors {
            return Err(PagingError::CapacityChanged {
                id: self.id.clone(),
                before: self.capacity_sectors,
                now: opened.capacity_sectors,
            });
        }
        self.flush = opened.flush;
        self.read_only = opened.read_only;
        self.conn = Some(opened.conn);
        info!(disk = %self.id, "paging disk: reconnected");
        Ok(())
    }

    /// [`PagingDisk::reconnect`] on a socket dialled at `path`.
    pub fn reconnect_path(&mut self, path: &Path) -> Result<(), PagingError> {
        let stream = Self::dial(&self.id, path)?;
        self.reconnect(stream)
    }

    fn dial(id: &str, path: &Path) -> Result<UnixStream, PagingError> {
        UnixStream::connect(path).map_err(|source| PagingError::Connect {
            id: id.to_owned(),
            path: path.display().to_string(),
            source,
        })
    }

    /// The disk id given at connection.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Disk size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity_sectors.saturating_mul(SECTOR_SIZE)
    }

    /// Whether the backend offers VIRTIO_BLK_F_FLUSH.
    pub fn has_flush(&self) -> bool {
        self.flush
    }

    /// Whether a connection is up (false after `Disconnected`, `Timeout`
    /// or `Backend` until a reconnect).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// How long one batch, and the whole set-up of a
    /// [`PagingDisk::reconnect`], may take (default [`DEFAULT_TIMEOUT`],
    /// which also bounds the set-up of [`PagingDisk::connect`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Write `pages` (`(byte offset, exactly 4096 bytes)`), at most
    /// [`MAX_BATCH_PAGES`], no offset twice. Returns once the backend has
    /// completed every request with OK. On any error nothing is known of
    /// which pages reached the disk: write the batch again.
    pub fn write_pages(&mut self, pages: &[(u64, &[u8])]) -> Result<(), PagingError> {
        self.check_batch(pages.len(), pages.iter().map(|p| p.0))?;
        let mut seen = HashSet::with_capacity(pages.len());
        for &(offset, data) in pages {
            if data.len() != PAGE_SIZE {
                return Err(PagingError::PageLength {
                    id: self.id.clone(),
                    offset,
                    len: data.len(),
                });
            }
            if !seen.insert(offset) {
                return Err(PagingError::DuplicateOffset {
                    id: self.id.clone(),
                    offset,
                });
            }
        }
        if pages.is_empty() {
            return Ok(());
        }
        let copied = self
            .connection()?
            .queue
            .copy_to_slots(pages.iter().map(|p| p.1));
        if let Err(e) = copied {
            return Err(self.drop_connection(e));
        }
        let runs = runs(pages.iter().map(|p| p.0));
        self.run_batch(VIRTIO_BLK_T_OUT, "write", &runs)
    }

    /// Read the pages at `offsets` (at most [`MAX_BATCH_PAGES`]; repeats
    /// allowed) and return them in the order asked, `offsets.len() * 4096`
    /// bytes of the bounce area: memory of this process (shared with the
    /// backend) that stays where it is and holds these bytes until the
    /// next call on this disk, which the borrow enforces. A source for
    /// `UFFDIO_COPY` as it is.
    pub fn read_pages(&mut self, offsets: &[u64]) -> Result<&[u8], PagingError> {
        self.check_batch(offsets.len(), offsets.iter().copied())?;
        if !offsets.is_empty() {
            self.connection()?;
            let runs = runs(offsets.iter().copied());
            self.run_batch(VIRTIO_BLK_T_IN, "read", &runs)?;
        }
        let bounce = self.connection()?.queue.bounce(offsets.len());
        bounce.map_err(|e| PagingError::Backend {
            id: self.id.clone(),
            what: e.to_string(),
        })
    }

    /// Whether the export is read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Read `len` bytes at byte `offset` (both multiples of 512, `len` at
    /// most [`MAX_TRANSFER`]) in one request; the bytes are the start of
    /// the bounce area, valid until the next call.
    pub fn read_at(&mut self, offset: u64, len: usize) -> Result<&[u8], PagingError> {
        self.check_range(offset, len)?;
        if len > 0 {
            self.connection()?;
            let run = Run {
                offset,
                slot: 0,
                len,
            };
            self.run_batch(VIRTIO_BLK_T_IN, "read", &[run])?;
        }
        let bounce = self.connection()?.queue.bounce(len.div_ceil(PAGE_SIZE));
        match bounce {
            Ok(b) => Ok(&b[..len]),
            Err(e) => Err(PagingError::Backend {
                id: self.id.clone(),
                what: e.to_string(),
            }),
        }
    }

    /// Write `data` at byte `offset` (both multiples of 512, at most
    /// [`MAX_TRANSFER`] bytes) in one request.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), PagingError> {
        self.check_range(offset, data.len())?;
        if self.read_only {
            return Err(PagingError::ReadOnly {
                id: self.id.clone(),
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        let copied = self
            .connection()?
            .queue
            .copy_to_slots(data.chunks(PAGE_SIZE));
        if let Err(e) = copied {
            return Err(self.drop_connection(e));
        }
        let run = Run {
            offset,
            slot: 0,
            len: data.len(),
        };
        self.run_batch(VIRTIO_BLK_T_OUT, "write", &[run])
    }

    /// Refuse a byte range before anything is submitted.
    fn check_range(&self, offset: u64, len: usize) -> Result<(), PagingError> {
        if !offset.is_multiple_of(SECTOR_SIZE) || !(len as u64).is_multiple_of(SECTOR_SIZE) {
            return Err(PagingError::Misaligned {
                id: self.id.clone(),
                offset,
            });
        }
        if len > MAX_TRANSFER {
            return Err(PagingError::BatchTooLarge {
                id: self.id.clone(),
                pages: len.div_ceil(PAGE_SIZE),
                max: MAX_BATCH_PAGES,
            });
        }
        let capacity = self.capacity();
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > capacity)
        {
            return Err(PagingError::OutOfRange {
                id: self.id.clone(),
                offset,
                capacity,
            });
        }
        Ok(())
    }

    /// Make completed writes durable (VIRTIO_BLK_T_FLUSH). A backend that
    /// does not offer FLUSH has no write cache the driver can reach:
    /// nothing to do.
    pub fn flush(&mut self) -> Result<(), PagingError> {
        if !self.flush {
            return Ok(());
        }
        self.connection()?;
        let run = Run {
            offset: 0,
            slot: 0,
            len: 0,
        };
        self.run_batch(VIRTIO_BLK_T_FLUSH, "flush", &[run])
    }

    /// Refuse a batch before anything is submitted.
    fn check_batch(
        &self,
        len: usize,
        offsets: impl Iterator<Item = u64>,
    ) -> Result<(), PagingError> {
        if len > MAX_BATCH_PAGES {
            return Err(PagingError::BatchTooLarge {
                id: self.id.clone(),
                pages: len,
                max: MAX_BATCH_PAGES,
            });
        }
        let capacity = self.capacity();
        for offset in offsets {
            if offset % PAGE_SIZE as u64 != 0 {
                return Err(PagingError::Misaligned {
                    id: self.id.clone(),
                    offset,
                });
            }
            let fits = match offset.checked_add(PAGE_SIZE as u64) {
                Some(end) => end <= capacity,
                None => false,
            };
            if !fits {
                return Err(PagingError::OutOfRange {
                    id: self.id.clone(),
                    offset,
                    capacity,
                });
            }
        }
        Ok(())
    }

    fn connection(&self) -> Result<&Connection, PagingError> {
        self.conn.as_ref().ok_or_else(|| PagingError::Disconnected {
            id: self.id.clone(),
        })
    }

    /// Drop the connection after a failure that leaves the ring state
    /// unknown; the error to return.
    fn drop_connection(&mut self, what: impl std::fmt::Display) -> PagingError {
        self.conn = None;
        PagingError::Backend {
            id: self.id.clone(),
            what: what.to_string(),
        }
    }

    /// Submit `runs` as requests of type `kind`, wait for all of them and
    /// check their status bytes. Drops the connection on any failure but a
    /// status.
    fn run_batch(&mut self, kind: u32, op: &'static str, runs: &[Run]) -> Result<(), PagingError> {
        let result = self.submit_and_wait(kind, runs);
        let lens = match result {
            Ok(lens) => lens,
            Err(e) => {
                warn!(disk = %self.id, error = %e, "paging disk: connection dropped");
                self.conn = None;
                return Err(e);
            }
        };
        let statuses = self.connection()?.queue.statuses(runs.len());
        let statuses = match statuses {
            Ok(statuses) => statuses,
            Err(e) => return Err(self.drop_connection(e)),
        };
        for ((run, len), status) in runs.iter().zip(lens).zip(statuses) {
            if u32::from(status) != VIRTIO_BLK_S_OK {
                return Err(PagingError::Status {
                    id: self.id.clone(),
                    op,
                    offset: run.offset,
                    pages: run.len.div_ceil(PAGE_SIZE),
                    status,
                });
            }
            let data = run.len as u32;
            if kind == VIRTIO_BLK_T_IN && len != data + 1 {
                return Err(self.drop_connection(format_args!(
                    "read at offset {:#x}: used length {len}, expected {}",
                    run.offset,
                    data + 1
                )));
            }
        }
        Ok(())
    }

    /// Put the chains on the ring, kick, and collect each request's used
    /// length.
    fn submit_and_wait(&mut self, kind: u32, runs: &[Run]) -> Result<Vec<u32>, PagingError> {
        let id = self.id.clone();
        let timeout = self.timeout;
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| PagingError::Disconnected { id: id.clone() })?;
        let lost = |e: QueueError| PagingError::Backend {
            id: id.clone(),
            what: e.to_string(),
        };
        let q = &mut conn.queue;
        for (r, run) in runs.iter().enumerate() {
            let head = (r as u16) * DESCRIPTORS_PER_REQUEST;
            q.write_header(r, kind, run.offset / SECTOR_SIZE)
                .map_err(lost)?;
            let data = Descriptor {
                addr: PrivateQueue::slot_addr(run.slot),
                len: run.len as u32,
                write: kind == VIRTIO_BLK_T_IN,
                next: Some(head + 2),
            };
            let first = if run.len > 0 { head + 1 } else { head + 2 };
            q.set_descriptor(
                head,
                Descriptor {
                    addr: PrivateQueue::header_addr(r),
                    len: 16,
                    write: false,
                    next: Some(first),
                },
            )
            .map_err(lost)?;
            if run.len > 0 {
                q.set_descriptor(head + 1, data).map_err(lost)?;
            }
            q.set_descriptor(
                head + 2,
                Descriptor {
                    addr: PrivateQueue::status_addr(r),
                    len: 1,
                    write: true,
                    next: None,
                },
            )
            .map_err(lost)?;
        }
        q.publish((0..runs.len() as u16).map(|r| r * DESCRIPTORS_PER_REQUEST))
            .map_err(lost)?;
        conn.kick.write(1).map_err(|source| PagingError::Io {
            id: id.clone(),
            op: "kick",
            source,
        })?;
        wait_completions(&id, conn, runs.len(), timeout)
    }
}

/// Wait until the backend completed the `n` requests just published; their
/// used lengths, by request. Polls the call eventfd and the socket (for
/// hang-up) with no spinning.
fn wait_completions(
    id: &str,
    conn: &mut Connection,
    n: usize,
    timeout: Duration,
) -> Result<Vec<u32>, PagingError> {
    let mut lens: Vec<Option<u32>> = vec![None; n];
    let mut outstanding = n as u16;
    let start = Instant::now();
    let mut hung_up = false;
    loop {
        while let Some(elem) =
            conn.queue
                .pop_used(outstanding)
                .map_err(|e| PagingError::Backend {
                    id: id.to_owned(),
                    what: e.to_string(),
                })?
        {
            let r = usize::try_from(elem.id / u32::from(DESCRIPTORS_PER_REQUEST)).unwrap_or(n);
            let slot = (elem.id % u32::from(DESCRIPTORS_PER_REQUEST) == 0)
                .then(|| lens.get_mut(r))
                .flatten();
            match slot {
                Some(slot @ None) => *slot = Some(elem.len),
                _ => {
                    return Err(PagingError::Backend {
                        id: id.to_owned(),
                        what: format!(
                            "used element names descriptor {} (not the head of a pending request)",
                            elem.id
                        ),
                    })
                }
            }
            outstanding -= 1;
        }
        if outstanding == 0 {
            return Ok(lens.into_iter().map(|l| l.unwrap_or(0)).collect());
        }
        if hung_up {
            return Err(PagingError::Disconnected { id: id.to_owned() });
        }
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(PagingError::Timeout {
                id: id.to_owned(),
                waited: start.elapsed(),
            });
        }
        let ms = i32::try_from(left.as_millis().saturating_add(1)).unwrap_or(i32::MAX);
        let mut fds = [
            pollfd(conn.call.as_raw_fd(), libc::POLLIN),
            // Hang-up only: replies are the frontend's to read.
            pollfd(conn.watch.as_raw_fd(), libc::POLLRDHUP),
        ];
        poll_fds(&mut fds, ms).map_err(|source| PagingError::Io {
            id: id.to_owned(),
            op: "poll",
            source,
        })?;
        if fds[0].revents & libc::POLLIN != 0 {
            // Resets the counter; the used ring says what completed.
            let _ = conn.call.read();
        }
        // Look at the used ring once more: the backend may have completed
        // the batch just before it went away.
        hung_up = fds[1].revents != 0;
    }
}

#[cfg(test)]
mod tests;
