//! virtio-blk served by a vhost-user backend (the VIOS, or any
//! vhost-user-blk server): the VMM keeps the transport (virtio-mmio
//! registers, feature negotiation, configuration space) and hands the queues
//! to the backend.
//!
//! ```text
//! guest QueueNotify ──ioeventfd (the kick fd)──────────────> backend worker
//! guest memory (memfd) ──SET_MEM_TABLE──> backend maps it, reads chains, does the I/O
//! backend ──call eventfd──> CallRelay thread ──MmioInterrupt (sets ISR bit 0)──> irqfd
//! ```
//!
//! The call eventfd is not the irqfd: a virtio-mmio driver reads
//! InterruptStatus to learn why it was interrupted, and a vhost-user backend
//! cannot set that bit. The relay thread wakes on the call eventfd and raises
//! the interrupt through the transport, which sets the bit first.
//!
//! Connection set-up ([`VhostUserBlkDevice::connect`]) negotiates the
//! protocol features and reads the configuration space once; activation
//! (DRIVER_OK) sends the acknowledged features, the memory table and each
//! queue; a driver reset stops the rings (GET_VRING_BASE).
//!
//! Reconnection: the relay also watches the socket for hang-up. A disk
//! connected by path ([`VhostUserBlkDevice::connect_path`]) is dialled again
//! every [`RECONNECT_INTERVAL`]; on success the set-up is replayed with
//! each ring's base at the used index found in guest memory, so the chains
//! the dead backend had not completed run again, and the queue is kicked.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{debug, info, warn};
use vhost::vhost_user::Frontend;
use vhost::VhostBackend;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::block::{CONFIG_SPACE_LEN, QUEUE_SIZE};
use crate::device::{ActivateError, Activation, InterruptKind, InterruptSignal, VirtioDevice};
pub use crate::vhost_user_frontend::VhostUserBlkError;
use crate::vhost_user_frontend::{
    handshake, poll_fds, pollfd, read_config, start_rings, RingSetup, Rings,
};

/// Feature bits the VMM lets through from the backend to the guest.
const FORWARDED_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_BLK_F_SEG_MAX)
    | (1 << VIRTIO_BLK_F_RO)
    | (1 << VIRTIO_BLK_F_BLK_SIZE)
    | (1 << VIRTIO_BLK_F_FLUSH)
    | (1 << VIRTIO_BLK_F_DISCARD)
    | (1 << VIRTIO_BLK_F_WRITE_ZEROES)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << VIRTIO_RING_F_EVENT_IDX);

/// How often a lost backend is dialled again.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(100);

/// The live vhost-user connection, shared by the device (vCPU thread) and
/// its call relay (which replaces it after a reconnect).
struct Connection {
    frontend: Frontend,
    /// A duplicate of the socket, watched for hang-up by the relay.
    watch: Option<UnixStream>,
    /// Where to dial again when the backend goes away (`vhost-user:PATH`
    /// disks); `None` for a brokered socket.
    path: Option<PathBuf>,
    /// A new connection handed over by [`ReconnectHandle::reconnect`] for
    /// the relay to start the rings on.
    pending: Option<(Frontend, UnixStream)>,
    /// Whether the rings run (between activation and reset).
    active: bool,
}

fn lock(c: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// Raises the guest interrupt whenever the backend signals a call eventfd,
/// and dials a lost backend again.
struct CallRelay {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl CallRelay {
    fn spawn<M>(
        id: &str,
        conn: Arc<Mutex<Connection>>,
        wake: Arc<EventFd>,
        rings: Rings<M>,
        interrupt: Arc<dyn InterruptSignal>,
    ) -> io::Result<Self>
    where
        M: GuestAddressSpace + Send + 'static,
        M::M: GuestMemoryBackend<R = vm_memory::GuestRegionMmap<()>>,
    {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stop2 = stop.try_clone()?;
        let id = id.to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("vhost-call-{id}"))
            .spawn(move || relay_calls(&id, &conn, &wake, &rings, &stop2, interrupt.as_ref()))?;
        Ok(CallRelay {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for CallRelay {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Wait for `fds`; false when `poll` failed for good.
fn wait(id: &str, fds: &mut [libc::pollfd], timeout_ms: i32) -> bool {
    match poll_fds(fds, timeout_ms) {
        Ok(_) => true,
        Err(e) => {
            warn!(disk = %id, error = %e, "vhost-user-blk: call relay poll failed; interrupts stop");
            false
        }
    }
}

fn relay_calls<M>(
    id: &str,
    conn: &Mutex<Connection>,
    wake: &EventFd,
    rings: &Rings<M>,
    stop: &EventFd,
    interrupt: &dyn InterruptSignal,
) where
    M: GuestAddressSpace,
    M::M: GuestMemoryBackend<R = vm_memory::GuestRegionMmap<()>>,
{
    let calls = &rings.calls;
    loop {
        let watch = lock(conn).watch.as_ref().and_then(|w| w.try_clone().ok());
        let mut fds: Vec<libc::pollfd> = calls
            .iter()
            .map(|c| pollfd(c.as_raw_fd(), libc::POLLIN))
            .collect();
        fds.push(pollfd(stop.as_raw_fd(), libc::POLLIN));
        fds.push(pollfd(wake.as_raw_fd(), libc::POLLIN));
        if let Some(w) = &watch {
            // Hang-up only: replies are the frontend's to read.
            fds.push(pollfd(w.as_raw_fd(), libc::POLLRDHUP));
        }
        if !wait(id, &mut fds, -1) {
            return;
        }
        if fds[calls.len()].revents != 0 {
            return;
        }
        let mut raise = false;
        for (pfd, call) in fds.iter().zip(calls) {
            if pfd.revents & libc::POLLIN != 0 && call.read().is_ok() {
                raise = true;
            }
        }
        if raise {
            if let Err(e) = interrupt.trigger(InterruptKind::UsedRing) {
                warn!(disk = %id, error = %e, "vhost-user-blk: cannot raise the interrupt");
            }
        }
        if fds[calls.len() + 1].revents != 0 {
            let _ = wake.read();
            adopt_pending(id, conn, rings);
        }
        let hung_up = watch.is_some() && fds.last().is_some_and(|p| p.revents != 0);
        if hung_up && !reconnect(id, conn, rings, stop) {
            return;
        }
    }
}

/// Start the rings on a connection handed over by the partition manager
/// (a new brokered socket after the VIOS came back).
fn adopt_pending<M>(id: &str, conn: &Mutex<Connection>, rings: &Rings<M>)
where
    M: GuestAddressSpace,
    M::M: GuestMemoryBackend<R = vm_memory::GuestRegionMmap<()>>,
{
    let Some((mut frontend, watch)) = lock(conn).pending.take() else {
        return;
    };
    match start_rings(&mut frontend, rings, true) {
        Ok(()) => {
            let mut c = lock(conn);
            c.frontend = frontend;
            c.watch = Some(watch);
            info!(disk = %id, "vhost-user-blk: new backend connection; in-flight requests replayed");
        }
        Err(e) => {
            warn!(disk = %id, error = %e, "vhost-user-blk: the new backend connection failed")
        }
    }
}

/// Hands a vhost-user-blk device a new connection to its backend (the
/// partition manager's re-brokered socket after a VIOS restart). Usable
/// from any thread; cheap to clone.
#[derive(Clone)]
pub struct ReconnectHandle {
    id: String,
    conn: Arc<Mutex<Connection>>,
    wake: Arc<EventFd>,
}

impl ReconnectHandle {
    /// Negotiate on `stream` and make it the device's connection: at once
    /// if the driver has not started the device, else through the relay,
    /// which starts the rings on it and replays the in-flight requests.
    pub fn reconnect(&self, stream: UnixStream) -> Result<(), VhostUserBlkError> {
        let watch = stream
            .try_clone()
            .map_err(|source| VhostUserBlkError::Connect {
                id: self.id.clone(),
                path: "(brokered socket)".into(),
                source,
            })?;
        let mut frontend = Frontend::from_stream(stream, 1);
        handshake(&self.id, &mut frontend)?;
        let mut c = lock(&self.conn);
        if c.active {
            c.pending = Some((frontend, watch));
            drop(c);
            let _ = self.wake.write(1);
        } else {
            c.frontend = frontend;
            c.watch = Some(watch);
        }
        info!(disk = %self.id, "vhost-user-blk: reconnect handed a new backend socket");
        Ok(())
    }
}

/// The backend hung up: dial it again every [`RECONNECT_INTERVAL`] until it
/// answers and the rings run again, or the device stops (false).
fn reconnect<M>(id: &str, conn: &Mutex<Connection>, rings: &Rings<M>, stop: &EventFd) -> bool
where
    M: GuestAddressSpace,
    M::M: GuestMemoryBackend<R = vm_memory::GuestRegionMmap<()>>,
{
    let path = {
        let mut c = lock(conn);
        c.watch = None;
        c.path.clone()
    };
    let Some(path) = path else {
        warn!(disk = %id, "vhost-user-blk: backend hung up; waiting for the partition manager to broker a new connection");
        return true;
    };
    warn!(disk = %id, socket = %path.display(), "vhost-user-blk: backend hung up; reconnecting");
    let mut attempts: u64 = 0;
    loop {
        let mut stop_fd = [pollfd(stop.as_raw_fd(), libc::POLLIN)];
        let ms = i32::try_from(RECONNECT_INTERVAL.as_millis()).unwrap_or(100);
        if !wait(id, &mut stop_fd, ms) || stop_fd[0].revents != 0 {
            return false;
        }
        attempts += 1;
        let attempt = UnixStream::connect(&path)
            .map_err(|e| e.to_string())
            .and_then(|stream| {
                let watch = stream.try_clone().map_err(|e| e.to_string())?;
                let mut frontend = Frontend::from_stream(stream, 1);
                handshake(id, &mut frontend).map_err(|e| e.to_string())?;
                start_rings(&mut frontend, rings, true)?;
                Ok((frontend, watch))
            });
        match attempt {
            Ok((frontend, watch)) => {
                let mut c = lock(conn);
                c.frontend = frontend;
                c.watch = Some(watch);
                info!(disk = %id, attempts, "vhost-user-blk: reconnected; in-flight requests replayed");
                return true;
            }
            Err(e) => debug!(disk = %id, attempts, error = %e, "vhost-user-blk: reconnect failed"),
        }
    }
}

/// A virtio-blk device whose queues a vhost-user backend serves.
pub struct VhostUserBlkDevice {
    id: String,
    conn: Arc<Mutex<Connection>>,
    wake: Arc<EventFd>,
    /// Features the backend offers (before filtering).
    backend_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_SPACE_LEN],
    queue_sizes: Vec<u16>,
    relay: Option<CallRelay>,
    started_queues: usize,
}

impl VhostUserBlkDevice {
    /// Connect to a backend listening on a Unix socket (standalone VIOS,
    /// QEMU's storage daemon, ...). If the backend goes away later, the
    /// device dials the socket again and replays the in-flight requests.
    pub fn connect_path(id: &str, path: &Path) -> Result<Self, VhostUserBlkError> {
        let stream = UnixStream::connect(path).map_err(|source| VhostUserBlkError::Connect {
            id: id.to_owned(),
            path: path.display().to_string(),
            source,
        })?;
        let device = Self::connect(id, stream)?;
        lock(&device.conn).path = Some(path.to_owned());
        Ok(device)
    }

    /// Set up the vhost-user connection on `stream` (e.g. the VMM's end of
    /// a socketpair brokered by the partition manager): owner, features,
    /// protocol features, configuration space.
    pub fn connect(id: &str, stream: UnixStream) -> Result<Self, VhostUserBlkError> {
        let watch = stream.try_clone().ok();
        let mut frontend = Frontend::from_stream(stream, 1);
        let backend_features = handshake(id, &mut frontend)?;
        let mut config = read_config(id, &mut frontend)?;
        // One queue: the guest sees num_queues = 1 whatever the backend has.
        config[34..36].copy_from_slice(&1u16.to_le_bytes());
        let device = VhostUserBlkDevice {
            id: id.to_owned(),
            conn: Arc::new(Mutex::new(Connection {
                frontend,
                watch,
                path: None,
                pending: None,
                active: false,
            })),
            wake: Arc::new(EventFd::new(EFD_NONBLOCK).map_err(|source| {
                VhostUserBlkError::Connect {
                    id: id.to_owned(),
                    path: "(eventfd)".into(),
                    source,
                }
            })?),
            backend_features,
            acked_features: 0,
            config,
            queue_sizes: vec![QUEUE_SIZE],
            relay: None,
            started_queues: 0,
        };
        info!(
            disk = %id,
            features = format_args!("{backend_features:#x}"),
            capacity = device.capacity(),
            "vhost-user-blk: connected"
        );
        Ok(device)
    }

    /// A handle to give the device a new backend connection later.
    pub fn reconnect_handle(&self) -> ReconnectHandle {
        ReconnectHandle {
            id: self.id.clone(),
            conn: self.conn.clone(),
            wake: self.wake.clone(),
        }
    }

    /// Capacity in sectors as the backend reported it.
    pub fn capacity(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.config[..8]);
        u64::from_le_bytes(b)
    }
}

impl<M> VirtioDevice<M> for VhostUserBlkDevice
where
    M: GuestAddressSpace + Send + 'static,
    M::M: GuestMemoryBackend<R = vm_memory::GuestRegionMmap<()>>,
{
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.backend_features & FORWARDED_FEATURES
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.backend_features & FORWARDED_FEATURES;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(disk = %self.id, offset, len = data.len(), "vhost-user-blk: configuration write ignored");
    }

    fn activate(&mut self, activation: Activation<M>) -> Result<(), ActivateError> {
        if self.relay.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let expected = self.queue_sizes.len();
        if activation.queues.len() != expected || activation.notify_evts.len() != expected {
            return Err(ActivateError::QueueCount {
                expected,
                queues: activation.queues.len(),
                evts: activation.notify_evts.len(),
            });
        }
        if !activation.queues[0].ready() {
            return Err(ActivateError::QueueNotReady(0));
        }
        let gone = |e: String| {
            ActivateError::HandlerGone(format!("disk {}: vhost-user backend: {e}", self.id))
        };
        let mut rings = Rings {
            mem: activation.mem.clone(),
            rings: Vec::new(),
            kicks: Vec::new(),
            calls: Vec::new(),
            acked_features: self.acked_features,
        };
        for (index, (queue, kick)) in activation
            .queues
            .iter()
            .zip(&activation.notify_evts)
            .enumerate()
        {
            if !queue.ready() {
                continue;
            }
            let q: &Queue = queue;
            rings.rings.push(RingSetup {
                index,
                size: q.size(),
                desc: q.desc_table(),
                avail: q.avail_ring(),
                used: q.used_ring(),
            });
            rings.kicks.push(
                kick.try_clone()
                    .map_err(|e| gone(format!("kick eventfd: {e}")))?,
            );
            rings
                .calls
                .push(EventFd::new(EFD_NONBLOCK).map_err(|e| gone(format!("call eventfd: {e}")))?);
        }
        {
            let mut conn = lock(&self.conn);
            start_rings(&mut conn.frontend, &rings, false).map_err(gone)?;
            conn.active = true;
        }
        self.started_queues = rings.rings.iter().map(|r| r.index + 1).max().unwrap_or(0);
        let relay = CallRelay::spawn(
            &self.id,
            self.conn.clone(),
            self.wake.clone(),
            rings,
            activation.interrupt.clone(),
        )
        .map_err(ActivateError::Signal)?;
        self.relay = Some(relay);
        debug!(disk = %self.id, features = format_args!("{:#x}", self.acked_features), "vhost-user-blk: activated");
        Ok(())
    }

    fn reset(&mut self) {
        // Stop the relay first: it may be swapping the connection.
        self.relay = None;
        let mut conn = lock(&self.conn);
        conn.active = false;
        conn.pending = None;
        for index in 0..self.started_queues {
            // GET_VRING_BASE stops the ring in the backend.
            if let Err(e) = conn.frontend.get_vring_base(index) {
                warn!(disk = %self.id, queue = index, error = %e, "vhost-user-blk: cannot stop the ring");
            }
        }
        self.started_queues = 0;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use vhost::vhost_user::message::VhostUserVirtioFeatures;

    #[test]
    fn forwarded_features_drop_vhost_bits() {
        let f = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() | (1 << VIRTIO_BLK_F_FLUSH);
        assert_eq!(f & FORWARDED_FEATURES, 1 << VIRTIO_BLK_F_FLUSH);
    }

    #[test]
    fn connect_fails_cleanly_on_a_dead_peer() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let e = VhostUserBlkDevice::connect("d0", a).err().unwrap();
        assert!(
            e.to_string()
                .contains("disk d0: vhost-user SET_OWNER failed"),
            "{e}"
        );
    }
}
