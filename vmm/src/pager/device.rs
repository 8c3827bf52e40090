//! The pager's paging device: a vhost-user-blk export on a VIOS, reached
//! with [`virtio_devices::paging::PagingDisk`] (a private virtqueue in
//! memory the VMM shares with the VIOS; never guest RAM).
//!
//! After the VIOS goes away the device comes back in one of two ways: a
//! `vhost-user:SOCKET` device is dialled again by path (a VIOS restarted by
//! hand or by its service manager listens there again); a brokered
//! `vhost-user-fd:N` device waits for the partition manager to hand over a
//! new socket (`HandOver::hand_over`, from the control channel).

use super::{PagerError, PagingStore, Reconnectors, StoreError, Stores};
use crate::config::DiskSource;
use std::path::PathBuf;
use virtio_devices::paging::{HandOver, PagingDisk, PagingError};

/// Id of the paging device in logs (and its vhost-user GET_ID is the VIOS's).
const ID: &str = "paging";

/// A [`PagingDisk`] as the pager's store.
struct VhostUserStore {
    disk: PagingDisk,
    /// Where to dial again (`vhost-user:SOCKET`), or `None` (brokered).
    path: Option<PathBuf>,
    handed: HandOver,
}

fn store_error(e: PagingError) -> StoreError {
    if e.is_lost() {
        StoreError::Disconnected
    } else {
        StoreError::Failed(e.to_string())
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
        self.disk
            .reconnect_via(&self.handed, self.path.as_deref())
            .map_err(store_error)
    }
}

/// Connects to the paging device twice: `source` (`vhost-user:SOCKET` or
/// `vhost-user-fd:N`) for the fault thread and `evictor` for the evictor,
/// or, without it, `source` dialled again (a brokered `vhost-user-fd:N`
/// cannot be: the manager gives a second socket, `memory.paging_evictor`);
/// returns the stores and the handles new brokered sockets come through.
pub fn connect(
    source: &DiskSource,
    evictor: Option<&DiskSource>,
) -> Result<(Stores, Reconnectors), PagerError> {
    let evictor = match (evictor, source) {
        (Some(e), _) => e,
        (None, DiskSource::VhostUser(_)) => source,
        (None, _) => {
            return Err(PagerError::Device {
                source_text: source.to_string(),
                message: "a brokered paging device needs a second connection for the evictor: give paging_evictor (vhost-user-fd:M) in the memory section, or --paging-evictor".into(),
            })
        }
    };
    let reconnectors = Reconnectors::default();
    let stores = Stores {
        faults: open(source, &reconnectors.faults)?,
        evictor: open(evictor, &reconnectors.evictor)?,
    };
    Ok((stores, reconnectors))
}

/// One connection to the paging device `source`.
fn open(source: &DiskSource, handed: &HandOver) -> Result<Box<dyn PagingStore>, PagerError> {
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
    Ok(Box::new(VhostUserStore {
        disk,
        path,
        handed: handed.clone(),
    }))
}
