//! parvm's virtio device models, independent of the VMM process.
//!
//! Module map (data flows top to bottom for a guest request):
//!
//! - [`transport::mmio`]: [`MmioTransport`], the virtio-mmio (version 2)
//!   register block. The VMM forwards MMIO exits to it; it negotiates
//!   features, runs the status state machine, collects the queue
//!   configuration and, on DRIVER_OK, activates the device with the queues,
//!   per-queue notify eventfds (the VMM's ioeventfds) and an interrupt
//!   (the VMM's irqfd, behind the transport's interrupt status register).
//! - [`device`]: the [`VirtioDevice`] trait between transport and device,
//!   [`InterruptSignal`] implemented by the VMM.
//! - [`block`]: virtio-blk. [`block::Block`] (device side: features,
//!   config space) sends the activated queue to [`block::BlockHandler`], an
//!   event-manager subscriber that wakes on the notify eventfd and drains the
//!   queue through [`block::BlockCore`], which parses each descriptor chain
//!   ([`block::request`]) and executes it on a [`block::DiskBackend`] (a raw
//!   image `File`). The core knows no transport; the VIOS reuses it.
//! - [`vhost_user_blk`]: [`vhost_user_blk::VhostUserBlkDevice`], virtio-blk
//!   whose queues a vhost-user backend (the VIOS) serves: the transport
//!   stays in the VMM, the kick eventfd is the ioeventfd, and a relay thread
//!   turns the backend's call eventfd into an interrupt with the ISR bit set.
//! - [`paging`]: [`paging::PagingDisk`], the pager's own virtio-blk driver
//!   over vhost-user-blk: a private split queue in a memfd shared with the
//!   backend (not guest RAM), synchronous page batches in and out of a
//!   bounce area (docs/paging.md).
//! - `vhost_user_frontend`: what both vhost-user-blk frontends share (the
//!   handshake, the configuration read, starting the rings, polling).
//!
//! Guest input is hostile: bad registers are ignored with a warning, bad
//! chains complete with VIRTIO_BLK_S_IOERR/UNSUPP (or length 0 when no
//! status byte can be written), and nothing panics.

pub mod block;
pub mod device;
pub mod paging;
pub mod transport;
pub mod vhost_user_blk;
mod vhost_user_frontend;

pub use device::{ActivateError, Activation, InterruptKind, InterruptSignal, VirtioDevice};
pub use transport::mmio::{
    kernel_cmdline_device, MmioError, MmioInterrupt, MmioTransport, MMIO_REGION_SIZE,
    QUEUE_NOTIFY_OFFSET,
};
