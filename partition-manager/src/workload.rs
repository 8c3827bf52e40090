//! Workload management (docs/workload.md): processor entitlement enforced
//! with the host's CPU controller, and what each partition's vCPUs use.
//!
//! A part of the manager like the pool: it holds, per running partition,
//! the cgroup its vCPU threads were placed in and the last sample of their
//! run time; the manager calls it when a partition becomes ready
//! ([`Workload::place`]), when its `cpu` section changes
//! ([`Workload::place`] again), when its process ends
//! ([`Workload::release`]) and once a second from its sampling thread
//! ([`Workload::to_sample`], [`Workload::record`]).

pub mod cgroup;
pub mod policy;

use cgroup::{Controller, Limits, PERIOD_US};
use parvm_config::{CpuMode, CpuSpec, ProcUnits};
use parvm_protocol::{CpuStatus, Policy, PolicyMove};
use policy::{Plan, Track, View};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Policy moves kept for `parctl policy show`.
pub const MOVES_KEPT: usize = 100;

/// How often the manager samples the vCPU threads' run time.
pub const SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A running partition's vCPU threads and what they used.
struct Placed {
    pid: u32,
    tids: Vec<u32>,
    /// The cgroup they run in (a partition with a `cpu` section).
    group: Option<PathBuf>,
    /// Run time summed over the threads at the last sample.
    last: Option<(u64, Instant)>,
    used: Option<ProcUnits>,
    /// The entitlement in force when the policy moved it from the
    /// definition's.
    current: Option<ProcUnits>,
}

pub struct Workload {
    controller: Controller,
    /// The manager's directory in the hierarchy, one per state directory
    /// (`parvm-<hash>`), so that two managers never share groups.
    base: String,
    placed: BTreeMap<String, Placed>,
    policy: Policy,
    tracks: BTreeMap<String, Track>,
    moves: VecDeque<PolicyMove>,
}

/// FNV-1a: a stable short name for the state directory.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn limits(cpu: &CpuSpec) -> Limits {
    Limits {
        quota_us: match cpu.mode {
            CpuMode::Capped => Some(u64::from(cpu.entitled.0) * PERIOD_US / 100),
            CpuMode::Uncapped => None,
        },
        weight: cpu.weight(),
    }
}

impl Workload {
    pub fn new(state_dir: &Path) -> Self {
        Self::with_controller(state_dir, Controller::detect())
    }

    pub fn with_controller(state_dir: &Path, controller: Controller) -> Self {
        Workload {
            controller,
            base: format!("parvm-{:08x}", fnv(&state_dir.display().to_string()) as u32),
            placed: BTreeMap::new(),
            policy: Policy::default(),
            tracks: BTreeMap::new(),
            moves: VecDeque::new(),
        }
    }

    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// Refuses to start a partition whose entitlement cannot be enforced.
    pub fn check_start(&self, cpu: Option<&CpuSpec>) -> Result<(), String> {
        match (&self.controller, cpu) {
            (Controller::None(why), Some(_)) => {
                Err(format!("its cpu entitlement cannot be enforced: {why}"))
            }
            _ => Ok(()),
        }
    }

    /// Partition `name`'s process `pid` runs its vCPUs: they are found,
    /// and with a `cpu` section put in the partition's group with its
    /// limits (again after a change of the section).
    pub fn place(&mut self, name: &str, pid: u32, cpu: Option<&CpuSpec>) -> Result<(), String> {
        let tids = cgroup::vcpu_threads(pid);
        if tids.is_empty() {
            return Err(format!("no vCPU threads found in process {pid}"));
        }
        let keep = self.placed.get(name).filter(|p| p.pid == pid);
        let (last, used, current) =
            keep.map_or((None, None, None), |p| (p.last, p.used, p.current));
        let group = match cpu {
            Some(cpu) => {
                // What the policy moved it to, for this process.
                let cpu = &CpuSpec {
                    entitled: current.unwrap_or(cpu.entitled),
                    ..*cpu
                };
                self.check_start(Some(cpu))?;
                let group = self
                    .controller
                    .group(&self.base, name)
                    .ok_or("no CPU controller")?;
                self.controller.place(&group, pid, &tids, limits(cpu))?;
                tracing::info!(partition = %name, entitled = %cpu.entitled, mode = %cpu.mode, weight = cpu.weight(), group = %group.display(), "vCPUs placed");
                Some(group)
            }
            None => None,
        };
        self.placed.insert(
            name.to_string(),
            Placed {
                pid,
                tids,
                group,
                last,
                used,
                current,
            },
        );
        Ok(())
    }

    /// Whether `name`'s process `pid` has been placed.
    pub fn is_placed(&self, name: &str, pid: u32) -> bool {
        self.placed.get(name).is_some_and(|p| p.pid == pid)
    }

    /// `name`'s process ended: its group goes.
    pub fn release(&mut self, name: &str) {
        if let Some(p) = self.placed.remove(name) {
            if let Some(group) = p.group {
                self.controller.remove(&group);
            }
        }
    }

    /// What the sampler reads: each placed partition's process and
    /// vCPU threads.
    pub fn to_sample(&self) -> Vec<(String, u32, Vec<u32>)> {
        self.placed
            .iter()
            .map(|(n, p)| (n.clone(), p.pid, p.tids.clone()))
            .collect()
    }

    /// The run time `total_ns` of `name`'s vCPU threads read at `at`.
    pub fn record(&mut self, name: &str, pid: u32, total_ns: u64, at: Instant) {
        let Some(p) = self.placed.get_mut(name).filter(|p| p.pid == pid) else {
            return;
        };
        if let Some((ns, t)) = p.last {
            let secs = at.duration_since(t).as_secs_f64();
            if secs > 0.0 {
                let cores = total_ns.saturating_sub(ns) as f64 / 1e9 / secs;
                p.used = Some(ProcUnits((cores * 100.0).round() as u32));
            }
        }
        p.last = Some((total_ns, at));
    }

    /// The figures of `name` (with `cpu` its section), if it has a
    /// section or a placed process.
    pub fn status(&self, name: &str, cpu: Option<&CpuSpec>) -> Option<CpuStatus> {
        let placed = self.placed.get(name);
        if cpu.is_none() && placed.is_none() {
            return None;
        }
        Some(CpuStatus {
            entitled: cpu.map(|c| placed.and_then(|p| p.current).unwrap_or(c.entitled)),
            desired: cpu.map(|c| c.entitled),
            mode: cpu.map(|c| c.mode),
            weight: cpu.map(|c| c.weight()),
            used: placed.and_then(|p| p.used),
            cgroup: placed
                .and_then(|p| p.group.as_ref())
                .map(|g| g.display().to_string()),
        })
    }
}

impl Workload {
    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// The last moves, oldest first.
    pub fn moves(&self) -> Vec<PolicyMove> {
        self.moves.iter().cloned().collect()
    }

    /// `parctl set` gave `name` a new entitlement: the policy's is dropped.
    pub fn forget_move(&mut self, name: &str) {
        if let Some(p) = self.placed.get_mut(name) {
            p.current = None;
        }
    }

    /// One round of the policy over the running partitions with a `cpu`
    /// section whose min and max differ (`specs`): the moves made, each
    /// recorded with the time `now` (Unix seconds). The caller re-places
    /// each moved partition ([`Workload::place`] takes the new figure).
    pub fn run_policy(&mut self, specs: &[(String, CpuSpec)], now: u64) -> Vec<PolicyMove> {
        let views: Vec<View> = specs
            .iter()
            .filter(|(_, c)| c.min() < c.max())
            .filter_map(|(name, c)| {
                let p = self.placed.get(name)?;
                Some(View {
                    name: name.clone(),
                    current: p.current.unwrap_or(c.entitled),
                    desired: c.entitled,
                    min: c.min(),
                    max: c.max(),
                    used: p.used?,
                })
            })
            .collect();
        let pool = self.policy.pool.unwrap_or_else(host_cores);
        let moves = self.policy.plan(&views, &mut self.tracks, pool);
        for m in &moves {
            if let Some(p) = self.placed.get_mut(&m.partition) {
                p.current = Some(m.to);
            }
            let mut m = m.clone();
            m.at = now;
            tracing::info!(partition = %m.partition, from = %m.from, to = %m.to, reason = %m.reason, "workload policy: entitlement moved");
            if self.moves.len() == MOVES_KEPT {
                self.moves.pop_front();
            }
            self.moves.push_back(m);
        }
        moves
    }
}

/// The host's online processors as processing units.
fn host_cores() -> ProcUnits {
    // SAFETY: sysconf reads a system value; no memory is passed.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    ProcUnits::cores(u64::try_from(n).unwrap_or(1).max(1))
}

/// The summed run time of `tids` of `pid` (threads that are gone count 0).
pub fn run_ns(pid: u32, tids: &[u32]) -> u64 {
    tids.iter().filter_map(|&t| cgroup::run_ns(pid, t)).sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn limits_follow_the_mode_and_weight() {
        let cpu = |json: &str| serde_json::from_str::<CpuSpec>(json).unwrap();
        let l = limits(&cpu(r#"{"entitled":0.25,"mode":"capped"}"#));
        assert_eq!((l.quota_us, l.weight), (Some(25_000), 128));
        let l = limits(&cpu(r#"{"entitled":0.25,"weight":3}"#));
        assert_eq!((l.quota_us, l.weight), (None, 3));
    }

    #[test]
    fn without_a_controller_an_entitlement_is_refused_and_the_rest_runs() {
        let w = Workload::with_controller(Path::new("/x"), Controller::None("none here".into()));
        let cpu = serde_json::from_str::<CpuSpec>(r#"{"entitled":0.5}"#).unwrap();
        let e = w.check_start(Some(&cpu)).unwrap_err();
        assert!(e.contains("none here"), "{e}");
        assert!(w.check_start(None).is_ok());
    }

    #[test]
    fn usage_is_the_run_time_over_the_sample_interval() {
        let mut w = Workload::with_controller(Path::new("/x"), Controller::None("-".into()));
        // This test's own process stands in for a VMM: no vCPU threads.
        assert!(w.place("a", std::process::id(), None).is_err());
        w.placed.insert(
            "a".into(),
            Placed {
                pid: 7,
                tids: vec![8],
                group: None,
                last: None,
                used: None,
                current: None,
            },
        );
        let t = Instant::now();
        w.record("a", 7, 1_000_000_000, t);
        assert_eq!(w.status("a", None).unwrap().used, None);
        w.record("a", 7, 1_500_000_000, t + std::time::Duration::from_secs(2));
        assert_eq!(w.status("a", None).unwrap().used, Some(ProcUnits(25)));
        // Another process of the same name: not its figures.
        w.record("a", 9, 9_000_000_000, t + std::time::Duration::from_secs(3));
        assert_eq!(w.status("a", None).unwrap().used, Some(ProcUnits(25)));
        assert_ne!(fnv("/a"), fnv("/b"));
    }
}
