//! The frontend half of a vhost-user-blk connection, the same whoever
//! drives the queue: the guest, through
//! [`crate::vhost_user_blk::VhostUserBlkDevice`], or the VMM's pager, through
//! its private queue in [`crate::paging::PagingDisk`].
//!
//! [`handshake`] negotiates a fresh connection (owner, features, protocol
//! features), [`read_config`] fetches the virtio-blk configuration space,
//! [`start_rings`] sends the acknowledged features, the memory table and
//! each ring, and [`poll_fds`] waits on eventfds and the socket.

use std::io;

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use crate::block::{CONFIG_SPACE_LEN, QUEUE_SIZE};

/// Errors of connecting to a vhost-user-blk backend.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserBlkError {
    /// A vhost-user request failed.
    #[error("disk {id}: vhost-user {op} failed: {source}")]
    Request {
        /// Disk id.
        id: String,
        /// The request.
        op: &'static str,
        /// Underlying error.
        #[source]
        source: vhost::Error,
    },
    /// The backend lacks something a block device needs.
    #[error("disk {id}: the vhost-user backend {what}")]
    Backend {
        /// Disk id.
        id: String,
        /// What is missing.
        what: &'static str,
    },
    /// Connecting to the backend's socket failed.
    #[error("disk {id}: cannot connect to vhost-user socket {path}: {source}")]
    Connect {
        /// Disk id.
        id: String,
        /// Socket path.
        path: String,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
}

/// A ring as the driver configured it, kept to set it up again after a
/// reconnect.
#[derive(Clone, Copy)]
pub(crate) struct RingSetup {
    /// Queue index.
    pub(crate) index: usize,
    /// Queue size (entries).
    pub(crate) size: u16,
    /// Guest address of the descriptor table.
    pub(crate) desc: u64,
    /// Guest address of the available ring.
    pub(crate) avail: u64,
    /// Guest address of the used ring.
    pub(crate) used: u64,
}

/// Everything needed to (re)start the backend on the driver's rings.
pub(crate) struct Rings<M> {
    /// The memory the rings and buffers live in (guest RAM, or a driver's
    /// private memfd).
    pub(crate) mem: M,
    /// The rings, in queue order.
    pub(crate) rings: Vec<RingSetup>,
    /// One kick eventfd per ring (driver -> backend).
    pub(crate) kicks: Vec<EventFd>,
    /// One call eventfd per ring (backend -> driver).
    pub(crate) calls: Vec<EventFd>,
    /// Virtio features the driver acknowledged.
    pub(crate) acked_features: u64,
}

/// Negotiate with a fresh connection: owner, features, protocol features.
/// Returns the backend's features.
pub(crate) fn handshake(id: &str, frontend: &mut Frontend) -> Result<u64, VhostUserBlkError> {
    let req = |op: &'static str| {
        let id = id.to_owned();
        move |source| VhostUserBlkError::Request { id, op, source }
    };
    frontend.set_owner().map_err(req("SET_OWNER"))?;
    let backend_features = frontend.get_features().map_err(req("GET_FEATURES"))?;
    if backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
        return Err(VhostUserBlkError::Backend {
            id: id.to_owned(),
            what: "does not offer VHOST_USER_F_PROTOCOL_FEATURES",
        });
    }
    if backend_features & (1 << VIRTIO_F_VERSION_1) == 0 {
        return Err(VhostUserBlkError::Backend {
            id: id.to_owned(),
            what: "does not offer VIRTIO_F_VERSION_1",
        });
    }
    let offered = frontend
        .get_protocol_features()
        .map_err(req("GET_PROTOCOL_FEATURES"))?;
    if !offered.contains(VhostUserProtocolFeatures::CONFIG) {
        return Err(VhostUserBlkError::Backend {
            id: id.to_owned(),
            what: "does not offer VHOST_USER_PROTOCOL_F_CONFIG",
        });
    }
    let wanted = offered
        & (VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK);
    frontend
        .set_protocol_features(wanted)
        .map_err(req("SET_PROTOCOL_FEATURES"))?;
    if wanted.contains(VhostUserProtocolFeatures::REPLY_ACK) {
        // Every request is answered: errors surface where they happen.
        frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    }
    Ok(backend_features)
}

/// Read the backend's virtio-blk configuration space (GET_CONFIG); bytes
/// the backend does not return read as zero.
pub(crate) fn read_config(
    id: &str,
    frontend: &mut Frontend,
) -> Result<[u8; CONFIG_SPACE_LEN], VhostUserBlkError> {
    let (_, data) = frontend
        .get_config(
            0,
            CONFIG_SPACE_LEN as u32,
            VhostUserConfigFlags::WRITABLE,
            &[0u8; CONFIG_SPACE_LEN],
        )
        .map_err(|source| VhostUserBlkError::Request {
            id: id.to_owned(),
            op: "GET_CONFIG",
            source,
        })?;
    let mut config = [0u8; CONFIG_SPACE_LEN];
    let n = data.len().min(CONFIG_SPACE_LEN);
    config[..n].copy_from_slice(&data[..n]);
    Ok(config)
}

/// A `pollfd` waiting for `events` on `fd`.
pub(crate) fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// `poll(2)` on `fds`, retried on EINTR; the number of ready entries (0 on
/// timeout). `timeout_ms` < 0 waits for ever.
pub(crate) fn poll_fds(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    loop {
        // SAFETY: `fds` is a valid array of pollfd of the given length that
        // lives across the call; poll only writes `revents`.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if let Ok(n) = usize::try_from(n) {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Hand the driver's rings to the backend. With `resume`, each ring starts
/// at the used index found in guest memory: the backend completes a
/// queue's requests in order, so every chain between the used and the
/// available index is in flight and is executed again (block reads and
/// writes are idempotent).
pub(crate) fn start_rings<M>(
    frontend: &mut Frontend,
    r: &Rings<M>,
    resume: bool,
) -> Result<(), String>
where
    M: GuestAddressSpace,
    M::M: GuestMemoryBackend<R = vm_memory::GuestRegionMmap<()>>,
{
    let f = frontend;
    f.set_features(r.acked_features | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())
        .map_err(|e| format!("SET_FEATURES: {e}"))?;
    let mem = r.mem.memory();
    let mut regions = Vec::new();
    for region in mem.iter() {
        regions.push(
            VhostUserMemoryRegionInfo::from_guest_region(region)
                .map_err(|e| format!("guest memory is not shareable (not fd-backed): {e}"))?,
        );
    }
    f.set_mem_table(&regions)
        .map_err(|e| format!("SET_MEM_TABLE: {e}"))?;
    let host = |gpa: u64| -> Result<u64, String> {
        mem.get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|e| format!("queue address {gpa:#x}: {e}"))
    };
    for ((ring, kick), call) in r.rings.iter().zip(&r.kicks).zip(&r.calls) {
        let i = ring.index;
        f.set_vring_num(i, ring.size)
            .map_err(|e| format!("SET_VRING_NUM: {e}"))?;
        f.set_vring_addr(
            i,
            &VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: ring.size,
                flags: 0,
                desc_table_addr: host(ring.desc)?,
                used_ring_addr: host(ring.used)?,
                avail_ring_addr: host(ring.avail)?,
                log_addr: None,
            },
        )
        .map_err(|e| format!("SET_VRING_ADDR: {e}"))?;
        let base = if resume {
            mem.read_obj::<u16>(GuestAddress(ring.used.wrapping_add(2)))
                .map_err(|e| format!("used index of queue {i}: {e}"))?
        } else {
            0
        };
        f.set_vring_base(i, base)
            .map_err(|e| format!("SET_VRING_BASE: {e}"))?;
        f.set_vring_call(i, call)
            .map_err(|e| format!("SET_VRING_CALL: {e}"))?;
        f.set_vring_kick(i, kick)
            .map_err(|e| format!("SET_VRING_KICK: {e}"))?;
        f.set_vring_enable(i, true)
            .map_err(|e| format!("SET_VRING_ENABLE: {e}"))?;
        if resume {
            // Chains published while the backend was away.
            let _ = kick.write(1);
        }
    }
    Ok(())
}
