//! Restart policy: how a run ended (stopped or crashed, and why) and
//! whether, and after how long, an `on-failure` partition is restarted.
//!
//! A crash of a partition that had reported ready is restarted after
//! [`backoff`] (doubling from [`RESTART_BACKOFF`] to [`RESTART_BACKOFF_MAX`]);
//! a run of [`HEALTHY_RUN`] or more starts a new series; after
//! [`MAX_RESTARTS`] in a row the manager gives up.

use crate::process::last_line;
use parvm_protocol::{ExitStatus, PartitionState, RestartPolicy};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Most automatic restarts in a row before the manager gives up.
pub const MAX_RESTARTS: u32 = 10;
/// First restart delay; doubled for each further restart in a row.
pub const RESTART_BACKOFF: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A partition that ran this long before crashing starts a new series.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

pub(crate) fn backoff(restarts: u32) -> Duration {
    RESTART_BACKOFF
        .saturating_mul(1u32 << restarts.min(16))
        .min(RESTART_BACKOFF_MAX)
}

/// What the manager knows of a run that just ended.
pub(crate) struct RunEnd<'a> {
    /// Set when the manager itself decided how this run ends.
    pub(crate) outcome: Option<&'a (PartitionState, String)>,
    pub(crate) killed: bool,
    pub(crate) stop_requested: bool,
    /// When it reported ready, if it did.
    pub(crate) ready_at: Option<Instant>,
    /// Whether its control channel was attached.
    pub(crate) attached: bool,
}

/// Stopped or crashed, and why: from what the manager decided, what the
/// VMM reported (`Exit`), how the process ended, or (a failed start) the
/// last line of its log.
pub(crate) fn classify(
    run: &RunEnd<'_>,
    reported: Option<ExitStatus>,
    process: Option<std::process::ExitStatus>,
    vmm_log: &Path,
) -> (PartitionState, String) {
    use PartitionState::{Crashed, Stopped};
    if let Some(outcome) = run.outcome {
        return outcome.clone();
    }
    if run.killed {
        return (Stopped, "killed by the operator".into());
    }
    if let Some(status) = reported {
        let state = if status.is_failure() {
            Crashed
        } else {
            Stopped
        };
        return (state, status.describe());
    }
    match process {
        Some(st) => match (st.code(), st.signal()) {
            (Some(0), _) => (Stopped, "vmm exited".into()),
            (_, Some(libc::SIGKILL)) if run.stop_requested => {
                (Stopped, "stopped (killed after the stop timeout)".into())
            }
            (Some(1), _) if run.ready_at.is_none() => {
                let why = last_line(vmm_log).unwrap_or_else(|| "vmm exited with status 1".into());
                (Crashed, why)
            }
            (Some(code), _) => (Crashed, format!("vmm exited with status {code}")),
            (_, Some(sig)) => (Crashed, format!("vmm killed by signal {sig}")),
            _ => (Crashed, format!("vmm ended: {st}")),
        },
        None if run.stop_requested => (Stopped, "stopped".into()),
        None if !run.attached => (Crashed, "vmm exited while detached from the manager".into()),
        None => (
            Crashed,
            "vmm closed its control channel without an exit status".into(),
        ),
    }
}

/// The restart policy that applies: `on_crash.then: reboot` in the
/// definition (docs/dump.md) restarts after a crash like `on-failure`.
pub(crate) fn policy(
    restart: RestartPolicy,
    definition: &parvm_config::Definition,
) -> RestartPolicy {
    match definition {
        parvm_config::Definition::Partition(d)
            if d.on_crash
                .as_ref()
                .is_some_and(|c| c.then == parvm_config::CrashAction::Reboot) =>
        {
            RestartPolicy::OnFailure
        }
        _ => restart,
    }
}

/// Whether a run that ended in `state` is restarted automatically: a
/// crash of an `on-failure` partition that had reported ready.
pub(crate) fn is_automatic(
    state: PartitionState,
    policy: RestartPolicy,
    ready_at: Option<Instant>,
) -> bool {
    state == PartitionState::Crashed && policy == RestartPolicy::OnFailure && ready_at.is_some()
}

/// Whether a run that reported ready at `ready_at` was healthy long enough
/// to start a new series of restarts.
pub(crate) fn was_healthy(ready_at: Option<Instant>) -> bool {
    ready_at.is_some_and(|t| t.elapsed() >= HEALTHY_RUN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0), RESTART_BACKOFF);
        assert_eq!(backoff(1), RESTART_BACKOFF * 2);
        assert_eq!(backoff(3), RESTART_BACKOFF * 8);
        assert_eq!(backoff(40), RESTART_BACKOFF_MAX);
    }
}
