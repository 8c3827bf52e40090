//! virtio-blk on raw image files.
//!
//! - [`request`]: a descriptor chain → a [`Request`] (header, payload
//!   buffers, status byte), validated against guest memory.
//! - [`core`]: the [`BlockCore`] executes requests on a [`DiskBackend`] and
//!   writes the status byte. Transport-agnostic: the VIOS vhost-user-blk
//!   server reuses it unchanged.
//! - [`device`]: [`Block`], the [`crate::VirtioDevice`] (features, config
//!   space, activation).
//! - [`handler`]: [`BlockHandler`], the event-manager subscriber that waits
//!   on the queue's notify eventfd and drains the queue through the core.

pub mod core;
pub mod device;
pub mod handler;
pub mod request;

pub use self::core::{
    BlockCore, BlockCoreError, BlockOptions, Completion, DiskBackend, ExecuteError,
    CONFIG_SPACE_LEN, MAX_DESCRIPTORS, QUEUE_SIZE, SECTOR_SIZE, SEG_MAX, SERIAL_LEN,
};
pub use self::device::{Block, BlockConfig, BlockError};
pub use self::handler::{BlockHandler, QueueRun};
pub use self::request::{GuestBuffer, ParseError, Request, RequestError, RequestType, Transfer};

#[cfg(test)]
mod tests;
