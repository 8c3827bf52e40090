//! The pager's paging device: a vhost-user-blk export on a VIOS, reached
//! with [`virtio_devices::paging::PagingDisk`] (a private virtqueue in
//! memory the VMM shares with the VIOS; never guest RAM).
//!
//! After the VIOS goes away the device comes back in one of two ways: a
//! `vhost-user:SOCKET` device is dialled again by path (a VIOS restarted by
//! hand or by its service manager listens there again); a brokered
//! `vhost-user-fd:N` device waits for the partition manager to hand over a
//! new socket ([`Reconnector::hand_over`], from the control channel).

use super::{PagerError, PagingStore, StoreError};
use crate::config::DiskSource;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use virtio_devices::paging::{PagingDisk, PagingError};

/// Id of the paging device in logs (and its vhost-user GET_ID is the VIOS's).
const ID: &str = "paging";

/// A new socket for a brokered paging device, handed over from outside the
/// pager thread. Cheap to clone.
#[derive(Clone, Default)]
pub struct Reconnector(Arc<Mutex<Option<UnixStream>>>);

impl Reconnector {
    /// Gives the pager a new connection to its paging device; it is set up
    /// at the pager's next reconnect attempt (at most 100 ms later).
    pub fn hand_over(&self, stream: UnixStream) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream);
    }

    fn take(&self) -> Option<UnixStream> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A [`PagingDisk`] as the pager's store.
struct VhostUserStore {
    disk: PagingDisk,
    /// Where to dial again (`vhost-user:SOCKET`), or `None` (brokered).
    path: Option<PathBuf>,
    handed: Reconnector,
}

fn store_error(e: PagingError) -> StoreError {
    match e {
        PagingError::Disconnected { .. }
        | PagingError::Timeout { .. }
        | PagingError::Backend { .. } => StoreError::Disconnected,
        other => StoreError::Failed(other.to_string()),
    }
}

impl PagingStore for VhostUserStore {
    fn capacity(&self) -> u64 {
        self.disk.capacity()
    }

    fn write_pages(&mut self, pages: &[(u64, &[u8])]) -> Result<(), StoreError> {
        self.disk.write_pages(pages).map_err(store_error)
    }

    fn read_pages(&mut self, offsets: &[u64]) -> Result<&[u8], StoreError> {
        self.disk.read_pages(offsets).map_err(store_error)
    }

    fn reconnect(&mut self) -> Result<(), StoreError> {
        if let Some(stream) = self.handed.take() {
            return self.disk.reconnect(stream).map_err(store_error);
        }
        match &self.path {
            Some(path) => self.disk.reconnect_path(path).map_err(store_error),
            None if self.disk.is_connected() => Ok(()),
            None => Err(StoreError::Disconnected),
        }
    }
}

/// Connects to the paging device `source` (`vhost-user:SOCKET` or
/// `vhost-user-fd:N`); returns the store and the handle a new brokered
/// socket comes through.
pub fn connect(source: &DiskSource) -> Result<(Box<dyn PagingStore>, Reconnector), PagerError> {
    let failed = |message: String| PagerError::Device {
        source_text: source.to_string(),
        message,
    };
    let (disk, path) =
        match source {
            DiskSource::VhostUser(path) => (
                PagingDisk::connect_path(ID, path).map_err(|e| failed(e.to_string()))?,
                Some(path.clone()),
            ),
            DiskSource::VhostUserFd(fd) => {
                let stream = crate::devices::virtio::inherited_socket(ID, *fd)
                    .map_err(|e| failed(e.to_string()))?;
                (
                    PagingDisk::connect(ID, stream).map_err(|e| failed(e.to_string()))?,
                    None,
                )
            }
            DiskSource::Image(_) | DiskSource::Vios { .. } => return Err(failed(
                "a paging device is a vhost-user-blk export: vhost-user:SOCKET or vhost-user-fd:N"
                    .into(),
            )),
        };
    let handed = Reconnector::default();
    Ok((
        Box::new(VhostUserStore {
            disk,
            path,
            handed: handed.clone(),
        }),
        handed,
    ))
}
