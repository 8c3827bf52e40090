//! The pager's paging device: a vhost-user-blk export on a VIOS, reached
//! with `virtio_devices::paging` (a private virtqueue in memory the VMM
//! shares with the VIOS; never guest RAM).

use super::{PagerError, PagingStore};
use crate::config::DiskSource;

/// Connects to the paging device `source` (`vhost-user:SOCKET` or
/// `vhost-user-fd:N`).
pub fn connect(source: &DiskSource) -> Result<Box<dyn PagingStore>, PagerError> {
    Err(PagerError::Device {
        source_text: source.to_string(),
        message: "the vhost-user paging driver is not built into this vmm yet".into(),
    })
}
