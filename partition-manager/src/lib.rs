//! parvm's partition manager: the daemon that owns the table of partitions
//! and runs one supervised `vmm` process per partition, and the library
//! behind its CLI `parctl`.
//!
//! Module map (data flows top to bottom):
//! - [`protocol`]: every message between processes and the frames carrying
//!   them (the `parvm-protocol` crate, shared with `vmm` and `vios`).
//! - [`client`]: connecting to the manager and making one request.
//! - [`daemon`]: the listening socket (mode 0600, `SO_PEERCRED`), one thread
//!   per connection dispatching requests to the [`supervisor`].
//! - [`supervisor`]: the partition table, spawning VMMs with a socketpair as
//!   their control channel, reading those channels, restart policy,
//!   re-attaching VMMs after a manager restart.
//! - [`definition`]: reading and checking partition and VIOS definitions
//!   (the `parvm-config` types; `restart` and `segments` beside them).
//! - [`grants`]: the grant table (segments, cookies, the checks of each
//!   operation); [`sharing`]: those operations carried out with the VMMs
//!   (map, unmap, acks, hcalls).
//! - [`store`]: the persistent registry in SQLite under the state directory.
//! - [`vios`]: VIOS partitions (kind `vios`, run with the `vios` binary;
//!   the manager never links it) and the brokering of their disks to client
//!   partitions.
//! - [`bench`]: a scratch manager for the benchmark binaries
//!   (`bench-manager`, `bench-grants`).
//!
//! See docs/manager.md (operators) and docs/protocol.md (the wire format).

pub use parvm_protocol as protocol;

pub mod bench;
pub mod client;
pub mod daemon;
pub mod definition;
pub mod grants;
pub mod sharing;
pub mod store;
pub mod supervisor;
pub mod vios;

pub use parvm_protocol::cli::one_line;
