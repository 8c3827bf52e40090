//! The process's compiled filters: `main` fills the registry once with
//! [`configure`], each thread installs its role's filter with [`apply`].
//! Without `configure` (a crate used as a library, its tests) `apply` does
//! nothing. A process has one role type, so the filters are keyed by role
//! name.

use crate::filter::{build, install, Role, RoleFilter, SeccompError, SeccompMode};
use std::cell::Cell;
use std::sync::OnceLock;

/// The compiled filters, set once by [`configure`].
static FILTERS: OnceLock<Vec<(&'static str, RoleFilter)>> = OnceLock::new();

/// Compiles every role's filter for `mode`, so a filter that cannot be
/// built is a start-up error; from then on [`apply`] installs them. Called
/// once, by `main`.
pub fn configure<R: Role>(mode: SeccompMode) -> Result<(), SeccompError> {
    let mut filters = Vec::new();
    for &role in R::ALL {
        if let Some(f) = build(role, mode)? {
            filters.push((role.name(), f));
        }
    }
    tracing::debug!(?mode, "seccomp filters compiled");
    let _ = FILTERS.set(filters);
    Ok(())
}

/// Installs `role`'s filter on the calling thread, if [`configure`] set one.
/// A thread that cannot filter itself must not run: the process exits.
pub fn apply<R: Role>(role: R) {
    let Some(filter) = FILTERS
        .get()
        .and_then(|all| all.iter().find(|(r, _)| *r == role.name()))
    else {
        return;
    };
    match install(role, &filter.1) {
        Ok(()) => {
            let thread = std::thread::current();
            tracing::debug!(
                role = role.name(),
                thread = thread.name().unwrap_or("?"),
                "seccomp filter installed"
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "exiting: a thread runs only with its filter");
            std::process::exit(1);
        }
    }
}

/// [`apply`] once per thread, for threads a library creates: they call
/// into the binary when they first have work, and filter themselves then.
pub fn apply_once<R: Role>(role: R) {
    thread_local!(static DONE: Cell<bool> = const { Cell::new(false) });
    if !DONE.with(|d| d.replace(true)) {
        apply(role);
    }
}
