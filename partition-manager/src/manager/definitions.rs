//! Operator requests about stored definitions and the event log: `show`
//! (the definition as stored), `update` (a new definition or restart
//! policy), `events` (following what happens).

use super::{checked_name, Manager};
use crate::error::ManagerError;
use crate::events::EventLog;
use parvm_config::Definition;
use parvm_protocol::{EventBatch, PartitionStatus, RestartPolicy, SegmentSpec};
use std::time::Duration;

/// A stored definition with the manager-side fields beside it.
pub struct Stored {
    pub definition: Definition,
    pub restart: RestartPolicy,
    /// The segments the partition owns now (declared, or created later).
    pub segments: Vec<SegmentSpec>,
}

impl Manager {
    /// The definition of `name` as stored (absolute paths).
    pub fn show(&self, name: &str) -> Result<Stored, ManagerError> {
        let state = self.lock();
        let (definition, restart) = state.partitions.stored(name)?;
        let segments = state
            .grants
            .listing()
            .0
            .into_iter()
            .filter(|s| s.owner == name)
            .map(|s| SegmentSpec {
                id: s.id,
                size_kib: None,
                size: Some(s.size),
                gpa: s.gpa,
            })
            .collect();
        Ok(Stored {
            definition,
            restart,
            segments,
        })
    }

    /// A new definition for `name` (same name, checked as for `define`;
    /// only while it is not active) and/or a new restart policy.
    pub fn update(
        &self,
        name: &str,
        definition: Option<Definition>,
        restart: Option<RestartPolicy>,
    ) -> Result<PartitionStatus, ManagerError> {
        if definition.is_none() && restart.is_none() {
            return Err(ManagerError::BadRequest(
                "nothing to update: give a definition, a restart policy or both".into(),
            ));
        }
        let definition = match definition {
            Some(mut d) => {
                let policy = match restart {
                    Some(r) => r,
                    None => self.lock().partitions.stored(name)?.1,
                };
                let new_name = checked_name(&mut d, policy)?;
                if new_name != name {
                    return Err(ManagerError::BadRequest(format!(
                        "the definition is of `{new_name}`, not of `{name}` (a partition cannot be renamed)"
                    )));
                }
                if d.is_vios() != self.lock().partitions.stored(name)?.0.is_vios() {
                    return Err(ManagerError::BadRequest(format!(
                        "`{name}` cannot change between a VIOS and a partition"
                    )));
                }
                Some(d)
            }
            None => None,
        };
        let mut state = self.lock();
        if let Some(Definition::Partition(def)) = &definition {
            state.pool.check_definition(&state.partitions, name, def)?;
        }
        let (store, partitions, grants) = state.parts();
        if let Some(d) = &definition {
            grants.register_blocks(d);
        }
        let status = partitions.update(store, name, definition, restart)?;
        tracing::info!(partition = %name, restart = %status.restart, "partition updated");
        Ok(state.decorate(status))
    }

    /// The events after `since`, waiting up to `wait` for one.
    pub fn events(&self, since: u64, wait: Duration) -> EventBatch {
        self.events.since(since, wait)
    }

    /// The event log itself (its counts, for metrics).
    pub fn event_log(&self) -> &EventLog {
        &self.events
    }
}
