//! What the manager tells its followers (`parctl events`, the HTTP API's
//! `/v1/events`): every state change and the other things an operator
//! would otherwise only find in the logs, as typed [`Event`]s numbered by
//! a sequence number the manager gives out in order, from 1.
//!
//! A follower asks for the events after the last one it saw
//! ([`crate::Request::Events`]) and gets an [`EventBatch`]: what the
//! manager's bounded ring still holds from there on, and how many it had
//! to drop ([`EventBatch::lost`]) when the ring overflowed in between.

use crate::{PartitionState, Rights};
use serde::{Deserialize, Serialize};

/// One event, `{"seq": 7, "time_ms": ..., "type": "state", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// 1, 2, 3, ... in the order the manager saw them (per manager run).
    pub seq: u64,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A partition (or VIOS) was defined.
    Defined { partition: String },
    /// Its stored definition or restart policy changed.
    Updated { partition: String },
    /// It was removed from the registry.
    Undefined { partition: String },
    /// A state change; `reason` is the last exit for `stopped`/`crashed`.
    State {
        partition: String,
        from: PartitionState,
        to: PartitionState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The restart policy will start a crashed partition again.
    RestartScheduled {
        partition: String,
        /// 1 for the first automatic restart of a series.
        attempt: u32,
        delay_ms: u64,
    },
    /// A VMM found running at manager start took its control channel
    /// back.
    Reattached { partition: String, pid: u32 },
    /// A grant ended by a revoke (its descendants too, one event each).
    GrantRevoked {
        id: u64,
        segment: String,
        grantor: String,
        grantee: String,
    },
    /// The grantee's VMM reported accesses it refused: after a revoke, or
    /// writes to a read-only grant.
    GrantFault {
        id: u64,
        segment: String,
        grantee: String,
        gpa: u64,
        write: bool,
        /// The grant's total so far.
        faults: u64,
    },
    /// A grant was accepted (mapped in the grantee, or a VIOS disk).
    GrantAccepted {
        id: u64,
        segment: String,
        grantee: String,
        rights: Rights,
    },
    /// A VIOS came back: a running client was given a fresh connection
    /// to one of its disks.
    ViosReconnect {
        vios: String,
        client: String,
        disk: String,
    },
    /// The workload policy moved a partition's processor entitlement
    /// (docs/workload.md), with its reason.
    EntitlementMoved {
        partition: String,
        #[cfg_attr(feature = "openapi", schema(value_type = f64))]
        from: parvm_config::ProcUnits,
        #[cfg_attr(feature = "openapi", schema(value_type = f64))]
        to: parvm_config::ProcUnits,
        reason: String,
    },
    /// The shared memory pool changed: `created`, `resized`,
    /// `paging_added`, `paging_removed`.
    Pool {
        change: String,
        size_mib: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
}

impl EventKind {
    /// The `type` tag, e.g. for metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Defined { .. } => "defined",
            EventKind::Updated { .. } => "updated",
            EventKind::Undefined { .. } => "undefined",
            EventKind::State { .. } => "state",
            EventKind::RestartScheduled { .. } => "restart_scheduled",
            EventKind::Reattached { .. } => "reattached",
            EventKind::GrantRevoked { .. } => "grant_revoked",
            EventKind::GrantFault { .. } => "grant_fault",
            EventKind::GrantAccepted { .. } => "grant_accepted",
            EventKind::ViosReconnect { .. } => "vios_reconnect",
            EventKind::EntitlementMoved { .. } => "entitlement_moved",
            EventKind::Pool { .. } => "pool",
        }
    }

    /// The partition it is about, if one.
    pub fn partition(&self) -> Option<&str> {
        match self {
            EventKind::Defined { partition }
            | EventKind::Updated { partition }
            | EventKind::Undefined { partition }
            | EventKind::State { partition, .. }
            | EventKind::RestartScheduled { partition, .. }
            | EventKind::Reattached { partition, .. }
            | EventKind::EntitlementMoved { partition, .. } => Some(partition),
            EventKind::GrantRevoked { grantee, .. }
            | EventKind::GrantFault { grantee, .. }
            | EventKind::GrantAccepted { grantee, .. } => Some(grantee),
            EventKind::ViosReconnect { client, .. } => Some(client),
            EventKind::Pool { .. } => None,
        }
    }
}

impl std::fmt::Display for Event {
    /// One line for `parctl events`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{} ", self.seq)?;
        match &self.kind {
            EventKind::Defined { partition } => write!(f, "{partition}: defined"),
            EventKind::Updated { partition } => write!(f, "{partition}: definition updated"),
            EventKind::Undefined { partition } => write!(f, "{partition}: undefined"),
            EventKind::State {
                partition,
                from,
                to,
                reason,
            } => {
                write!(f, "{partition}: {from} -> {to}")?;
                match reason {
                    Some(r) => write!(f, " ({r})"),
                    None => Ok(()),
                }
            }
            EventKind::RestartScheduled {
                partition,
                attempt,
                delay_ms,
            } => write!(
                f,
                "{partition}: automatic restart #{attempt} in {delay_ms} ms"
            ),
            EventKind::Reattached { partition, pid } => {
                write!(f, "{partition}: VMM (pid {pid}) re-attached")
            }
            EventKind::GrantRevoked {
                id,
                segment,
                grantor,
                grantee,
            } => write!(f, "grant #{id} {segment} {grantor} -> {grantee}: revoked"),
            EventKind::GrantFault {
                id,
                segment,
                grantee,
                gpa,
                write,
                faults,
            } => write!(
                f,
                "grant #{id} {segment}: {grantee} faulted ({} at {gpa:#x}; {faults} in all)",
                if *write { "write" } else { "read" }
            ),
            EventKind::GrantAccepted {
                id,
                segment,
                grantee,
                rights,
            } => write!(f, "grant #{id} {segment}: accepted by {grantee} ({rights})"),
            EventKind::ViosReconnect { vios, client, disk } => {
                write!(f, "{vios}: reconnected {client} to disk {disk}")
            }
            EventKind::EntitlementMoved {
                partition,
                from,
                to,
                reason,
            } => write!(f, "{partition}: entitlement {from} -> {to} ({reason})"),
            EventKind::Pool {
                change,
                size_mib,
                device,
            } => {
                write!(f, "pool: {change} ({size_mib} MiB")?;
                match device {
                    Some(d) => write!(f, ", {d})"),
                    None => write!(f, ")"),
                }
            }
        }
    }
}

/// The answer to [`crate::Request::Events`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    /// In order, each `seq` one more than the one before.
    pub events: Vec<Event>,
    /// The `since` to ask with next: the last `seq` returned (or the
    /// `since` asked with, when none came).
    pub next: u64,
    /// Events after `since` that the ring no longer held (it keeps the
    /// newest ones): 0 unless the follower fell that far behind.
    pub lost: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_event_is_flat_json_with_its_type() {
        let e = Event {
            seq: 3,
            time_ms: 1,
            kind: EventKind::State {
                partition: "a".into(),
                from: PartitionState::Running,
                to: PartitionState::Crashed,
                reason: Some("vmm killed by signal 9".into()),
            },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "state");
        assert_eq!(v["to"], "crashed");
        assert_eq!(v["seq"], 3);
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
        assert_eq!(
            e.to_string(),
            "#3 a: running -> crashed (vmm killed by signal 9)"
        );
    }
}
