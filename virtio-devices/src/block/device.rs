//! The virtio-blk device: features, configuration space and activation.
//!
//! [`Block`] is the transport-facing half (it implements [`VirtioDevice`] and
//! lives inside the `MmioTransport`, driven from vCPU threads);
//! [`BlockHandler`] is the event-loop half that serves the queue. Creating a
//! block device returns both; they talk over a channel plus an eventfd.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::Duration;

use tracing::{debug, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::core::{
    BlockCore, BlockCoreError, BlockOptions, DiskBackend, CONFIG_SPACE_LEN, QUEUE_SIZE,
};
use super::handler::{BlockHandler, HandlerCommand};
use crate::device::{ActivateError, Activation, VirtioDevice};

/// How long a device reset waits for the handler to let go of the queue.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// A disk as the partition definition describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// Disk id, unique in the partition; also the GET_ID serial (first 20
    /// bytes).
    pub id: String,
    /// Raw image file (or block device).
    pub path: PathBuf,
    /// Open read-only and offer VIRTIO_BLK_F_RO.
    pub read_only: bool,
}

/// Errors creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened.
    #[error("disk {id}: cannot open {path}: {source}")]
    Open {
        /// Disk id.
        id: String,
        /// Image path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The image is not usable as a disk.
    #[error("disk {id}: {path}: {source}")]
    Image {
        /// Disk id.
        id: String,
        /// Image path.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: BlockCoreError,
    },
    /// The command eventfd could not be created.
    #[error("disk {id}: cannot create an eventfd: {source}")]
    EventFd {
        /// Disk id.
        id: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The transport-facing half of a virtio-blk device.
pub struct Block<M: GuestAddressSpace> {
    id: String,
    features: u64,
    acked_features: u64,
    config: [u8; CONFIG_SPACE_LEN],
    queue_sizes: [u16; 1],
    commands: Sender<HandlerCommand<M>>,
    wake: EventFd,
    active: bool,
}

impl<M: GuestAddressSpace + Send + 'static> Block<M> {
    /// Open the raw image of `config` (read-only if asked) and create the
    /// device and its queue handler.
    pub fn open(config: &BlockConfig) -> Result<(Self, BlockHandler<M, File>), BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!config.read_only)
            .open(&config.path)
            .map_err(|source| BlockError::Open {
                id: config.id.clone(),
                path: config.path.clone(),
                source,
            })?;
        let options = BlockOptions {
            read_only: config.read_only,
            serial: config.id.clone(),
        };
        let core = BlockCore::new(file, &options).map_err(|source| BlockError::Image {
            id: config.id.clone(),
            path: config.path.clone(),
            source,
        })?;
        Self::with_core(&config.id, core)
    }

    /// Create the device and its queue handler around an existing core.
    pub fn with_core<D: DiskBackend>(
        id: &str,
        core: BlockCore<D>,
    ) -> Result<(Self, BlockHandler<M, D>), BlockError> {
        let eventfd_error = |source| BlockError::EventFd {
            id: id.to_string(),
            source,
        };
        let wake = EventFd::new(EFD_NONBLOCK).map_err(eventfd_error)?;
        let handler_wake = wake.try_clone().map_err(eventfd_error)?;
        let (commands, receiver) = mpsc::channel();
        let block = Block {
            id: id.to_string(),
            features: core.features(),
            acked_features: 0,
            config: core.config_space(),
            queue_sizes: [QUEUE_SIZE],
            commands,
            wake,
            active: false,
        };
        let handler = BlockHandler::new(id.to_string(), core, receiver, handler_wake);
        Ok((block, handler))
    }

    /// The disk id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn send(&self, command: HandlerCommand<M>) -> Result<(), ActivateError> {
        self.commands
            .send(command)
            .map_err(|_| ActivateError::HandlerGone(self.id.clone()))?;
        self.wake.write(1).map_err(ActivateError::Signal)
    }
}

impl<M: GuestAddressSpace + Send + 'static> VirtioDevice<M> for Block<M> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match self.config.get(start..) {
            Some(tail) if !tail.is_empty() => {
                let n = tail.len().min(data.len());
                data[..n].copy_from_slice(&tail[..n]);
            }
            _ => warn!(disk = %self.id, offset, "virtio-blk: config read past the end"),
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        warn!(
            disk = %self.id,
            offset,
            len = data.len(),
            "virtio-blk: the configuration space is read-only, write ignored"
        );
    }

    fn activate(&mut self, activation: Activation<M>) -> Result<(), ActivateError> {
        if self.active {
            return Err(ActivateError::AlreadyActive);
        }
        if activation.queues.len() != 1 || activation.notify_evts.len() != 1 {
            return Err(ActivateError::QueueCount {
                expected: 1,
                queues: activation.queues.len(),
                evts: activation.notify_evts.len(),
            });
        }
        if !activation.queues.iter().all(virtio_queue::QueueT::ready) {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.send(HandlerCommand::Activate {
            activation,
            acked_features: self.acked_features,
        })?;
        self.active = true;
        Ok(())
    }

    fn reset(&mut self) {
        self.acked_features = 0;
        if !self.active {
            return;
        }
        self.active = false;
        let (done, wait) = mpsc::sync_channel(1);
        if let Err(e) = self.send(HandlerCommand::Reset { done }) {
            debug!(disk = %self.id, error = %e, "virtio-blk: reset without a handler");
            return;
        }
        match wait.recv_timeout(RESET_TIMEOUT) {
            Ok(()) => {}
            Err(RecvTimeoutError::Timeout) => warn!(
                disk = %self.id,
                "virtio-blk: the queue handler did not acknowledge the reset in time"
            ),
            Err(RecvTimeoutError::Disconnected) => {
                debug!(disk = %self.id, "virtio-blk: handler gone during reset")
            }
        }
    }
}
