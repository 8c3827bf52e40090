//! parvm's VIOS (virtual I/O server): serves exported raw disk images to
//! client partitions, QEMU or any other vhost-user frontend with the
//! standard vhost-user-blk protocol.
//!
//! Module map (a client request flows top to bottom):
//!
//! - [`server`]: [`server::Server`] accepts clients on a Unix socket
//!   (`vios --listen PATH`) and runs one vhost-user-backend daemon per
//!   connection: a protocol thread for the vhost-user messages (features,
//!   memory table as memfds, vring addresses, kick/call eventfds) and one
//!   worker thread per queue.
//! - [`backend`]: [`backend::VhostUserBlk`], the block device behind one
//!   connection: features, configuration space, the client's memory table
//!   (checked against its fds), and the queue drain that hands each
//!   descriptor chain to `virtio_devices::block::BlockCore`, the same
//!   request code the in-VMM virtio-blk runs.
//! - [`relay`]: serving an already connected socket (the VIOS end of a
//!   socketpair brokered by the partition manager) through a private
//!   listener and a message-by-message relay that keeps file descriptors
//!   with their messages.
//! - [`managed`]: the VIOS as a partition of kind `vios` run by the
//!   partition manager (`vios --config FILE --control-fd N`): its
//!   definition, the control channel (`Hello`, `Ready`, `ViosConnect` with
//!   a brokered socket, `Stop`).
//! - [`export`]: [`export::Export`], an open image named by
//!   `--disk FILE[,ro]`; every connection gets its own core over a clone of
//!   the file.
//! - [`stats`]: per-export counters (requests, errors, bytes, latency)
//!   the queue workers keep and a managed VIOS reports.
//! - [`seccomp`]: the syscall filters of the VIOS's threads (the server
//!   threads, and the narrower one of queue workers).
//!
//! Clients are not trusted: a malformed message, a memory table that points
//! past its fds, or descriptors outside the client's memory end that
//! request or that connection, never the VIOS.

pub mod backend;
pub mod export;
pub mod managed;
pub mod relay;
pub mod seccomp;
pub mod server;
pub mod stats;

pub use backend::{check_memory_table, MemoryTableError, VhostUserBlk, MAX_QUEUES};
pub use export::{Export, ExportError, ExportSpec};
pub use server::{serve_stream, ServeOptions, Server, ServerError};
