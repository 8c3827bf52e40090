//! parvm's seccomp mechanism, shared by `vmm` and `vios`: each binary
//! declares its thread roles and their allow-lists (`vmm/src/seccomp.rs`,
//! `vios/src/seccomp.rs`); this crate turns them into filters and installs
//! them. Why each call is allowed is in docs/security.md.
//!
//! Module map:
//! - [`filter`]: [`SeccompMode`], [`SeccompError`], the [`Role`] trait a
//!   binary's role type implements, [`Allow`] entries, and [`build`] /
//!   [`install`] of a role's [`RoleFilter`] (the allow-list plus the filter
//!   that answers `clone3` with ENOSYS).
//! - [`lists`]: the entries every Rust thread needs ([`rust_runtime`]: std,
//!   the allocator, `tracing`, signals, exit and abort) and those of a role
//!   that starts threads ([`thread_spawning`]).
//! - [`registry`]: the process's compiled filters, keyed by role name:
//!   `main` calls [`configure`] once, each thread calls [`apply`] (or
//!   [`apply_once`]) with its role.
//! - `test_support` (feature `test-support`): a forked child that installs
//!   a role's filter and makes one system call, for the binaries' tests.
//!
//! A leaf crate: it depends on no other parvm crate, and the partition
//! manager does not depend on it.

pub mod filter;
pub mod lists;
pub mod registry;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;

pub use filter::{build, install, syscalls, Allow, Role, RoleFilter, SeccompError, SeccompMode};
pub use lists::{rust_runtime, thread_spawning, THREAD_CLONE_FLAGS};
pub use registry::{apply, apply_once, configure};

#[cfg(test)]
mod tests;
