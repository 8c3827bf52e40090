//! parvm's partition manager: the daemon that owns the table of partitions
//! and runs one supervised `vmm` process per partition, and the library
//! behind its CLI `parctl`.
//!
//! Module map (each module uses only those listed before it; the façade
//! [`manager`] routes events between the parts, whose state is private):
//! - [`protocol`]: every message between processes and the frames carrying
//!   them (the `parvm-protocol` crate, shared with `vmm` and `vios`).
//! - [`definition`]: reading and checking partition and VIOS definitions
//!   (the `parvm-config` types; `restart` and `segments` beside them).
//! - [`store`]: the persistent registry in SQLite under the state directory.
//! - [`grants`]: the grant table (segments, block resources, cookies, the
//!   checks of each operation; private fields, queries and transitions as
//!   methods).
//! - [`run_as`]: the user VMMs and VIOS partitions run as (`--run-as`):
//!   ids resolved once, file access checked as that user, the privilege
//!   drop a spawned child makes before `exec`.
//! - [`config`]: [`ManagerConfig`], paths, timeouts, the run-as user;
//!   [`error`]: [`ManagerError`].
//! - [`events`]: the event log (a bounded ring of numbered
//!   [`protocol::Event`]s the parts report, and counts per type) that
//!   `parctl events` and the HTTP API follow.
//! - [`process`]: spawning a `vmm`/`vios` with a socketpair as its control
//!   channel; pids, signals, tokens, helper threads.
//! - [`logrotate`]: console and VMM logs rotated by size (copy, then
//!   truncate: their writers append).
//! - [`ratelimit`]: bounded logging ([`ratelimit::LogLimiter`]) and the
//!   per-caller count of failed cookie guesses.
//! - [`restart`]: restart policy (how a run ended, backoff, giving up).
//! - [`channel`]: reading a control channel and dispatching its messages
//!   to the manager's `ControlEvents`.
//! - [`partitions`]: the partition table part (records, runtimes,
//!   write-through to the store).
//! - [`grant_engine`]: the grant engine part (the grant table, pending
//!   acks, maps/unmaps/doorbells sent to VMMs, shared configurations).
//! - [`vios`]: the VIOS broker (VIOS partitions run with the `vios`
//!   binary, which the manager never links; their disks brokered to
//!   client partitions).
//! - [`pool`]: the shared memory pool part (Active Memory Sharing: its
//!   size and paging devices, stored; the running shared-memory
//!   partitions' goals and targets; the arithmetic in [`pool::targets`]).
//! - [`workload`]: processor entitlement (cgroups holding each partition's
//!   vCPU threads) and the vCPUs' use, sampled once a second.
//! - [`manager`]: the façade [`Manager`]: operator requests, process
//!   events, routed to the parts under one lock.
//! - [`daemon`]: the listening socket (mode 0600, `SO_PEERCRED`), one
//!   thread per connection dispatching requests to the [`Manager`];
//!   [`client`]: connecting to it and making one request.
//! - [`api`]: the HTTP API (REST resources carried out by
//!   [`daemon::handle`], the event stream, `/metrics`, the OpenAPI
//!   document) on a second Unix socket and optionally a loopback port.
//!
//! The benchmark binaries share their scratch-manager harness from
//! `src/bin/common/` (not part of the library).
//!
//! See docs/manager.md (operators) and docs/protocol.md (the wire format).

pub use parvm_protocol as protocol;

pub mod api;
pub mod channel;
pub mod client;
pub mod config;
pub mod daemon;
pub mod definition;
pub mod error;
pub mod events;
pub mod grant_engine;
pub mod grants;
pub mod logrotate;
pub mod manager;
pub mod partitions;
pub mod pool;
pub mod process;
pub mod ratelimit;
pub mod restart;
pub mod run_as;
pub mod store;
pub mod vios;
pub mod workload;

pub use config::ManagerConfig;
pub use error::ManagerError;
pub use manager::Manager;
pub use parvm_protocol::cli::one_line;
