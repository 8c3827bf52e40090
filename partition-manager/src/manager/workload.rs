//! The manager's side of workload management (docs/workload.md): vCPU
//! threads placed when a partition becomes ready, figures sampled once a
//! second, `parctl set` applied to the stored definition and the running
//! process.

use super::{Manager, State};
use crate::error::ManagerError;
use crate::process::spawn_thread;
use crate::workload::{run_ns, SAMPLE_INTERVAL};
use parvm_config::{CpuSpec, Definition, PartitionDefinition, ProcUnits, DEFAULT_VCPUS};
use parvm_protocol::{CpuMode, PartitionState, PartitionStatus, Policy, PolicyMove};
use std::sync::{Arc, Weak};
use std::time::Instant;

impl State {
    /// `name`'s `cpu` section (a VMM partition's).
    fn cpu_of(&self, name: &str) -> Option<CpuSpec> {
        match self.partitions.definition(name) {
            Some(Definition::Partition(d)) => d.cpu,
            _ => None,
        }
    }

    /// `name` became ready (or was found running): its vCPU threads go
    /// into its group. A failure is logged: the partition runs, and its
    /// status shows no cgroup.
    pub(super) fn place_vcpus(&mut self, name: &str) {
        let Some(live) = self.partitions.live(name) else {
            return;
        };
        let pid = live.pid;
        if matches!(
            self.partitions.definition(name),
            Some(Definition::Vios(_)) | None
        ) {
            return;
        }
        let cpu = self.cpu_of(name);
        if let Err(e) = self.workload.place(name, pid, cpu.as_ref()) {
            tracing::warn!(partition = %name, error = %e, "vCPUs not placed");
        }
    }

    /// Refuses a start whose entitlement cannot be enforced.
    pub(super) fn check_cpu(&self, name: &str) -> Result<(), ManagerError> {
        self.workload
            .check_start(self.cpu_of(name).as_ref())
            .map_err(|m| ManagerError::StartFailed(name.into(), m))
    }

    /// One round of the workload policy; each moved partition's group
    /// gets its new entitlement.
    fn run_policy(&mut self) -> Vec<PolicyMove> {
        let specs: Vec<(String, CpuSpec)> = self
            .partitions
            .names()
            .into_iter()
            // A paused partition keeps its entitlement (and lends it).
            .filter(|n| {
                matches!(
                    self.partitions.state(n),
                    Some(PartitionState::Running | PartitionState::Paused)
                )
            })
            .filter_map(|n| Some((n.clone(), self.cpu_of(&n)?)))
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let moves = self.workload.run_policy(&specs, now);
        let mut moved: Vec<&str> = moves.iter().map(|m| m.partition.as_str()).collect();
        moved.dedup();
        for name in moved {
            self.place_vcpus(name);
        }
        moves
    }

    pub(super) fn decorate_cpu(&self, status: &mut PartitionStatus) {
        status.cpu = self
            .workload
            .status(&status.name, self.cpu_of(&status.name).as_ref());
    }
}

/// `cpu` with the fields `parctl set` gave replaced, checked against the
/// definition's vCPUs and the section's min and max.
fn changed_cpu(
    name: &str,
    def: &PartitionDefinition,
    entitled: Option<ProcUnits>,
    mode: Option<CpuMode>,
    weight: Option<u8>,
) -> Result<CpuSpec, ManagerError> {
    let bad = |m: String| ManagerError::BadRequest(format!("partition `{name}`: cpu: {m}"));
    let mut cpu = match (def.cpu, entitled) {
        (Some(c), _) => c,
        (None, Some(e)) => CpuSpec {
            entitled: e,
            mode: CpuMode::default(),
            weight: None,
            min: None,
            max: None,
        },
        (None, None) => {
            return Err(bad(
                "no entitlement defined: give cpu.entitled=UNITS first".into()
            ))
        }
    };
    if let Some(e) = entitled {
        cpu.entitled = e;
    }
    if let Some(m) = mode {
        cpu.mode = m;
    }
    if weight.is_some() {
        cpu.weight = weight;
    }
    // A new section's range is its entitlement; a stored one keeps its own.
    if def.cpu.is_none() {
        cpu.min = None;
        cpu.max = None;
    }
    cpu.check(def.vcpus.unwrap_or(DEFAULT_VCPUS)).map_err(bad)?;
    Ok(cpu)
}

impl Manager {
    /// `parctl set NAME cpu.…`: the stored definition changes, and a
    /// running partition's group at once.
    pub fn set_cpu(
        &self,
        name: &str,
        entitled: Option<ProcUnits>,
        mode: Option<CpuMode>,
        weight: Option<u8>,
    ) -> Result<PartitionStatus, ManagerError> {
        let mut state = self.lock();
        let st = &mut *state;
        let def = match st.partitions.definition(name) {
            Some(Definition::Partition(d)) => d.clone(),
            Some(Definition::Vios(_)) => {
                return Err(ManagerError::BadRequest(format!(
                    "partition `{name}` is a VIOS: it has no processor entitlement"
                )))
            }
            None => return Err(ManagerError::NotFound(name.into())),
        };
        let cpu = changed_cpu(name, &def, entitled, mode, weight)?;
        // The operator's figure replaces what the policy moved it to.
        st.workload.forget_move(name);
        if let Some(live) = st.partitions.live(name) {
            let pid = live.pid;
            st.workload
                .place(name, pid, Some(&cpu))
                .map_err(|m| ManagerError::BadRequest(format!("partition `{name}`: {m}")))?;
        }
        st.partitions.set_cpu(&st.store, name, cpu)?;
        tracing::info!(partition = %name, entitled = %cpu.entitled, mode = %cpu.mode, weight = cpu.weight(), "cpu entitlement changed");
        let status = st.partitions.status(name)?;
        Ok(st.decorate(status))
    }

    /// `parctl policy set`: checked, stored, in force from the next sample.
    pub fn set_policy(&self, policy: Policy) -> Result<(Policy, Vec<PolicyMove>), ManagerError> {
        policy
            .check()
            .map_err(|m| ManagerError::BadRequest(format!("workload policy: {m}")))?;
        let mut state = self.lock();
        state.store.put_policy(&policy)?;
        state.workload.set_policy(policy);
        tracing::info!(enabled = policy.enabled, "workload policy set");
        Ok((policy, state.workload.moves()))
    }

    pub fn policy(&self) -> (Policy, Vec<PolicyMove>) {
        let state = self.lock();
        (state.workload.policy(), state.workload.moves())
    }

    /// Starts the sampling thread, which ends with the manager: every
    /// running partition's vCPU run time once a second (read without the
    /// lock), and any running partition not placed yet (found after a
    /// manager restart) placed.
    pub(super) fn start_workload_sampler(self: &Arc<Self>) {
        let weak: Weak<Manager> = Arc::downgrade(self);
        spawn_thread("workload", move || loop {
            std::thread::sleep(SAMPLE_INTERVAL);
            let Some(mgr) = weak.upgrade() else { return };
            let todo = {
                let mut state = mgr.lock();
                for name in state.partitions.names() {
                    let running = matches!(
                        state.partitions.state(&name),
                        Some(PartitionState::Running | PartitionState::Paused)
                    );
                    let pid = state.partitions.live(&name).map(|l| l.pid);
                    if let (true, Some(pid)) = (running, pid) {
                        if !state.workload.is_placed(&name, pid) {
                            state.place_vcpus(&name);
                        }
                    }
                }
                state.workload.to_sample()
            };
            let samples: Vec<_> = todo
                .into_iter()
                .map(|(name, pid, tids)| (name, pid, run_ns(pid, &tids), Instant::now()))
                .collect();
            let mut state = mgr.lock();
            for (name, pid, ns, at) in samples {
                state.workload.record(&name, pid, ns, at);
            }
            for m in state.run_policy() {
                mgr.events
                    .push(parvm_protocol::EventKind::EntitlementMoved {
                        partition: m.partition,
                        from: m.from,
                        to: m.to,
                        reason: m.reason,
                    });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn set_keeps_the_range_and_refuses_what_leaves_it() {
        let def: PartitionDefinition = serde_json::from_str(
            r#"{"kernel":"k","vcpus":2,"cpu":{"entitled":0.5,"min":0.2,"max":1.5}}"#,
        )
        .unwrap();
        let c = changed_cpu(
            "a",
            &def,
            Some(ProcUnits(120)),
            Some(CpuMode::Capped),
            Some(9),
        )
        .unwrap();
        assert_eq!(
            (c.entitled.0, c.mode, c.weight(), c.min().0, c.max().0),
            (120, CpuMode::Capped, 9, 20, 150)
        );
        let e = changed_cpu("a", &def, Some(ProcUnits(160)), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside min 0.20 .. max 1.50"), "{e}");
        let bare: PartitionDefinition = serde_json::from_str(r#"{"kernel":"k"}"#).unwrap();
        let e = changed_cpu("a", &bare, None, Some(CpuMode::Capped), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cpu.entitled"), "{e}");
        let c = changed_cpu("a", &bare, Some(ProcUnits(30)), None, None).unwrap();
        assert_eq!((c.entitled.0, c.min().0, c.max().0), (30, 30, 30));
    }
}
