//! Reconnecting a paging disk after its backend was lost: a socket handed
//! over from another thread, or the socket path dialled again.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{PagingDisk, PagingError};

/// A new socket for a paging disk (or a disk served through the VMM),
/// handed over from another thread: the partition manager's re-brokered
/// connection after its VIOS came back. Taken by
/// [`PagingDisk::reconnect_via`]. Cheap to clone.
#[derive(Clone, Default)]
pub struct HandOver(Arc<Mutex<Option<UnixStream>>>);

impl HandOver {
    /// The next reconnect attempt sets up the disk on `stream`.
    pub fn hand_over(&self, stream: UnixStream) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream);
    }

    fn take(&self) -> Option<UnixStream> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl PagingDisk {
    /// After a lost connection: set up on the socket `handed` holds (the
    /// partition manager re-brokered it), else dial `path` again (a
    /// `vhost-user:SOCKET` backend); with neither, `Ok` only if still
    /// connected.
    pub fn reconnect_via(
        &mut self,
        handed: &HandOver,
        path: Option<&Path>,
    ) -> Result<(), PagingError> {
        match (handed.take(), path) {
            (Some(stream), _) => self.reconnect(stream),
            (None, Some(path)) => self.reconnect_path(path),
            (None, None) if self.is_connected() => Ok(()),
            (None, None) => Err(PagingError::Disconnected {
                id: self.id.clone(),
            }),
        }
    }
}
