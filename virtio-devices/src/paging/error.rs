//! The errors of a paging disk.

use std::io;
use std::time::Duration;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};

use super::queue::PAGE_SIZE;
use crate::vhost_user_frontend::VhostUserBlkError;

/// Errors of a paging disk. Messages name the disk and the offending input.
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    /// Connecting to the backend's socket failed.
    #[error("paging disk {id}: cannot connect to vhost-user socket {path}: {source}")]
    Connect {
        /// Disk id.
        id: String,
        /// Socket path.
        path: String,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The vhost-user handshake or configuration read failed.
    #[error(transparent)]
    Handshake(#[from] VhostUserBlkError),
    /// Setting up the private queue (memory, eventfds, rings) failed.
    #[error("paging disk {id}: queue set-up failed: {reason}")]
    Setup {
        /// Disk id.
        id: String,
        /// What failed.
        reason: String,
    },
    /// The backend exports the disk read-only.
    #[error("paging disk {id}: the backend exports the disk read-only (VIRTIO_BLK_F_RO); a paging device must be writable")]
    ReadOnly {
        /// Disk id.
        id: String,
    },
    /// A new backend connection reports another capacity than the first.
    #[error("paging disk {id}: the new backend reports {now} sectors, the disk had {before}")]
    CapacityChanged {
        /// Disk id.
        id: String,
        /// Capacity before, in sectors.
        before: u64,
        /// Capacity now, in sectors.
        now: u64,
    },
    /// An offset is not a multiple of the page size.
    #[error("paging disk {id}: offset {offset:#x} is not {PAGE_SIZE}-byte aligned")]
    Misaligned {
        /// Disk id.
        id: String,
        /// The offset.
        offset: u64,
    },
    /// A page does not fit in the disk.
    #[error("paging disk {id}: page at offset {offset:#x} is past the end of the disk ({capacity} bytes)")]
    OutOfRange {
        /// Disk id.
        id: String,
        /// The offset.
        offset: u64,
        /// Disk size in bytes.
        capacity: u64,
    },
    /// A page to write is not exactly one page long.
    #[error("paging disk {id}: page for offset {offset:#x} is {len} bytes, not {PAGE_SIZE}")]
    PageLength {
        /// Disk id.
        id: String,
        /// The offset.
        offset: u64,
        /// Its length.
        len: usize,
    },
    /// More pages than the bounce area holds.
    #[error("paging disk {id}: batch of {pages} pages, at most {max} per call")]
    BatchTooLarge {
        /// Disk id.
        id: String,
        /// Pages asked for.
        pages: usize,
        /// The limit ([`super::MAX_BATCH_PAGES`]).
        max: usize,
    },
    /// The same offset twice in one write batch (which copy wins would
    /// depend on the backend's order).
    #[error("paging disk {id}: offset {offset:#x} appears twice in one write batch")]
    DuplicateOffset {
        /// Disk id.
        id: String,
        /// The offset.
        offset: u64,
    },
    /// The backend completed a request with a status other than OK.
    #[error("paging disk {id}: {op} of {pages} page(s) at offset {offset:#x} failed: status {status} ({})", status_name(*status))]
    Status {
        /// Disk id.
        id: String,
        /// "read", "write" or "flush".
        op: &'static str,
        /// First byte of the request.
        offset: u64,
        /// Pages in the request.
        pages: usize,
        /// The status byte.
        status: u8,
    },
    /// The backend hung up (or an earlier failure dropped the connection):
    /// [`PagingDisk::reconnect`], then call again.
    #[error("paging disk {id}: the backend is disconnected; reconnect and retry")]
    Disconnected {
        /// Disk id.
        id: String,
    },
    /// The backend did not complete the batch, or answer the set-up, in
    /// time; the connection is dropped.
    #[error("paging disk {id}: the backend did not answer within {waited:?}")]
    Timeout {
        /// Disk id.
        id: String,
        /// How long the call waited.
        waited: Duration,
    },
    /// The backend broke the virtqueue protocol; the connection is dropped.
    #[error("paging disk {id}: the backend broke the virtqueue protocol: {what}")]
    Backend {
        /// Disk id.
        id: String,
        /// What it did.
        what: String,
    },
    /// Kicking or waiting failed in this process.
    #[error("paging disk {id}: {op} failed: {source}")]
    Io {
        /// Disk id.
        id: String,
        /// The operation.
        op: &'static str,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
}

pub(super) fn status_name(status: u8) -> &'static str {
    match u32::from(status) {
        VIRTIO_BLK_S_OK => "OK",
        VIRTIO_BLK_S_IOERR => "IOERR",
        VIRTIO_BLK_S_UNSUPP => "UNSUPP",
        0xff => "never written by the backend",
        _ => "unknown",
    }
}

impl PagingError {
    /// Whether the connection is gone (the backend died, stopped answering
    /// or broke the protocol): the caller waits for a new one and retries;
    /// any other error is about the request itself.
    pub fn is_lost(&self) -> bool {
        matches!(
            self,
            PagingError::Disconnected { .. }
                | PagingError::Timeout { .. }
                | PagingError::Backend { .. }
        )
    }
}
