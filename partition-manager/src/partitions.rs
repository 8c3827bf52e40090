//! The partition table: every partition's stored [`Record`] and, while its
//! process lives, its runtime (generation, pid, the write side of its
//! control channel, what the operator asked of it). Each change is written
//! through to the [`Store`] by the method making it.
//!
//! A *generation* numbers the runs of the manager's lifetime: messages and
//! events of an older run than the current one are ignored. An *epoch*
//! counts operator actions: a pending automatic restart of an older epoch
//! is dropped.

use crate::config::ManagerConfig;
use crate::error::ManagerError;
use crate::events::EventLog;
use crate::process::{constant_time_eq, now_secs, process_alive, send_signal};
use crate::restart::{self, RunEnd, MAX_RESTARTS};
use crate::store::{Record, Store};
use parvm_config::{
    Definition, MemorySpec, PartitionDefinition, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS,
};
use parvm_protocol::{
    Channel, ExitStatus, ExportInfo, ManagerToVios, ManagerToVmm, PartitionState, PartitionStatus,
    RestartPolicy, ToManager,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A live VMM (or VIOS) process.
struct Runtime {
    generation: u64,
    pid: u32,
    /// Write side of the control channel; `None` until a VMM found at
    /// manager start re-attaches.
    writer: Option<Channel>,
    ready_at: Option<Instant>,
    stop_requested: bool,
    killed: bool,
    /// Set when the manager itself decides how this run ends.
    outcome: Option<(PartitionState, String)>,
    /// The last `Failed` message of the VMM.
    failure: Option<String>,
}

impl Runtime {
    fn new(generation: u64, pid: u32, writer: Option<Channel>) -> Self {
        Runtime {
            generation,
            pid,
            writer,
            ready_at: None,
            stop_requested: false,
            killed: false,
            outcome: None,
            failure: None,
        }
    }
}

struct Partition {
    rec: Record,
    run: Option<Runtime>,
    /// Bumped by every operator action: a pending automatic restart from
    /// an older epoch is dropped.
    epoch: u64,
    /// The last generation that reported ready.
    ready_generation: u64,
    /// A VIOS's exports and their sizes, as its process last reported
    /// them (`Exports`, before `Ready`).
    exports: Option<Vec<ExportInfo>>,
}

/// A live process's control channel.
pub(crate) struct Live<'a> {
    pub(crate) writer: &'a Channel,
    pub(crate) generation: u64,
    pub(crate) pid: u32,
}

/// What [`PartitionTable::recover`] found of a partition left active.
pub(crate) enum Recovered {
    /// Its process still runs: to be watched until it re-attaches.
    Detached {
        generation: u64,
        pid: u32,
        start: Option<u64>,
    },
    /// Its process is gone: crashed; restart after `restarts` if `Some`.
    Dead { restart: Option<(u64, u32)> },
}

/// Where a start stands.
pub(crate) enum StartProgress {
    Ready(Box<PartitionStatus>),
    Starting,
    Failed(String),
}

pub(crate) struct PartitionTable {
    cfg: ManagerConfig,
    parts: BTreeMap<String, Partition>,
    next_generation: u64,
    /// Where its state changes are told (`parctl events`).
    events: Arc<EventLog>,
}

fn status_of(cfg: &ManagerConfig, p: &Partition) -> PartitionStatus {
    // A VIOS partition (docs/vios.md) has no vCPUs or guest RAM: 0.
    let (vcpus, memory_mib, kernel, exports) = match &p.rec.definition {
        Definition::Partition(d) => (
            d.vcpus.unwrap_or(DEFAULT_VCPUS),
            // A shared-memory partition's logical size.
            MemorySpec::resolve(d.memory.as_deref(), d.memory_mib)
                .ok()
                .and_then(|(m, _)| m)
                .unwrap_or(DEFAULT_MEMORY_MIB),
            d.kernel
                .as_ref()
                .map(|k| k.display().to_string())
                .unwrap_or_default(),
            Vec::new(),
        ),
        Definition::Vios(v) => (0, 0, String::new(), v.export_names()),
    };
    PartitionStatus {
        name: p.rec.name.clone(),
        state: p.rec.state,
        pid: p.rec.pid,
        vcpus,
        memory_mib,
        kernel,
        restart: p.rec.restart,
        restarts: p.rec.restarts,
        last_exit: p.rec.last_exit.clone(),
        attached: p.run.as_ref().is_some_and(|r| r.writer.is_some()),
        // A VIOS has no console: its log is its own output.
        console_log: match p.rec.definition.is_vios() {
            true => cfg.vmm_log(&p.rec.name),
            false => cfg.console_log(&p.rec.name),
        }
        .display()
        .to_string(),
        since: p.rec.since,
        kind: p.rec.definition.kind().map(str::to_string),
        exports,
        memory: None,
        cpu: None,
    }
}

impl Partition {
    /// A partition just defined: no process yet.
    fn defined(name: &str, definition: Definition, restart: RestartPolicy) -> Self {
        Partition {
            rec: Record {
                name: name.into(),
                definition,
                restart,
                state: PartitionState::Defined,
                last_exit: None,
                pid: None,
                pid_start: None,
                token: None,
                restarts: 0,
                since: now_secs(),
            },
            run: None,
            epoch: 0,
            ready_generation: 0,
            exports: None,
        }
    }
}

fn put(store: &Store, rec: &Record, what: &str) {
    if let Err(e) = store.put(rec) {
        tracing::error!(partition = %rec.name, error = %e, "cannot record the {what}");
    }
}

impl PartitionTable {
    /// The table of the stored records (no process known yet).
    pub(crate) fn load(cfg: &ManagerConfig, records: Vec<Record>, events: Arc<EventLog>) -> Self {
        let parts = records
            .into_iter()
            .map(|rec| {
                let p = Partition {
                    rec,
                    run: None,
                    epoch: 0,
                    ready_generation: 0,
                    exports: None,
                };
                (p.rec.name.clone(), p)
            })
            .collect();
        PartitionTable {
            cfg: cfg.clone(),
            parts,
            next_generation: 1,
            events,
        }
    }

    pub(crate) fn next_generation(&mut self) -> u64 {
        let generation = self.next_generation;
        self.next_generation += 1;
        generation
    }

    // ---- queries --------------------------------------------------------

    pub(crate) fn names(&self) -> Vec<String> {
        self.parts.keys().cloned().collect()
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.parts.contains_key(name)
    }

    /// `NotFound` unless `name` is defined.
    pub(crate) fn known(&self, name: &str) -> Result<(), ManagerError> {
        match self.parts.contains_key(name) {
            true => Ok(()),
            false => Err(ManagerError::NotFound(name.into())),
        }
    }

    fn get(&self, name: &str) -> Result<&Partition, ManagerError> {
        self.parts
            .get(name)
            .ok_or_else(|| ManagerError::NotFound(name.into()))
    }

    fn get_mut(&mut self, name: &str) -> Result<&mut Partition, ManagerError> {
        self.parts
            .get_mut(name)
            .ok_or_else(|| ManagerError::NotFound(name.into()))
    }

    pub(crate) fn definition(&self, name: &str) -> Option<&Definition> {
        self.parts.get(name).map(|p| &p.rec.definition)
    }

    pub(crate) fn state(&self, name: &str) -> Option<PartitionState> {
        self.parts.get(name).map(|p| p.rec.state)
    }

    pub(crate) fn status(&self, name: &str) -> Result<PartitionStatus, ManagerError> {
        self.get(name).map(|p| status_of(&self.cfg, p))
    }

    /// The status `name` would have if `definition` were defined now.
    pub(crate) fn preview(
        &self,
        name: &str,
        definition: Definition,
        restart: RestartPolicy,
    ) -> PartitionStatus {
        status_of(&self.cfg, &Partition::defined(name, definition, restart))
    }

    /// The stored definition and restart policy of `name`.
    pub(crate) fn stored(&self, name: &str) -> Result<(Definition, RestartPolicy), ManagerError> {
        self.get(name)
            .map(|p| (p.rec.definition.clone(), p.rec.restart))
    }

    pub(crate) fn list(&self) -> Vec<PartitionStatus> {
        self.parts
            .values()
            .map(|p| status_of(&self.cfg, p))
            .collect()
    }

    /// The control channel of `name`'s process, if it is attached.
    pub(crate) fn writer(&self, name: &str) -> Option<&Channel> {
        self.parts
            .get(name)
            .and_then(|p| p.run.as_ref())
            .and_then(|r| r.writer.as_ref())
    }

    /// The same, only for run `generation`.
    pub(crate) fn writer_of(&self, name: &str, generation: u64) -> Option<&Channel> {
        self.parts
            .get(name)
            .and_then(|p| p.run.as_ref())
            .filter(|r| r.generation == generation)
            .and_then(|r| r.writer.as_ref())
    }

    pub(crate) fn live(&self, name: &str) -> Option<Live<'_>> {
        let run = self.parts.get(name)?.run.as_ref()?;
        Some(Live {
            writer: run.writer.as_ref()?,
            generation: run.generation,
            pid: run.pid,
        })
    }

    /// The size in bytes of export `disk` as VIOS `vios` last reported it.
    pub(crate) fn export_size(&self, vios: &str, disk: &str) -> Option<u64> {
        self.parts
            .get(vios)?
            .exports
            .as_ref()?
            .iter()
            .find(|e| e.id == disk)
            .map(|e| e.size)
    }

    pub(crate) fn is_attached(&self, name: &str) -> bool {
        self.writer(name).is_some()
    }

    /// The control channel of `name` for a request that needs its process
    /// (`not_running`: why it cannot be done otherwise), and its generation.
    pub(crate) fn control(
        &self,
        name: &str,
        not_running: &'static str,
    ) -> Result<(&Channel, u64), ManagerError> {
        let p = self.get(name)?;
        let run = p.run.as_ref().ok_or_else(|| ManagerError::InvalidState {
            name: name.into(),
            state: p.rec.state,
            message: not_running,
        })?;
        let w = run
            .writer
            .as_ref()
            .ok_or_else(|| ManagerError::InvalidState {
                name: name.into(),
                state: p.rec.state,
                message: "its VMM has not re-attached yet",
            })?;
        Ok((w, run.generation))
    }

    /// The generation of the live process of `name`, if any.
    pub(crate) fn live_generation(&self, name: &str) -> Option<u64> {
        self.parts
            .get(name)
            .and_then(|p| p.run.as_ref())
            .map(|r| r.generation)
    }

    /// Whether no process of run `generation` of `name` lives any more.
    pub(crate) fn gone(&self, name: &str, generation: u64) -> bool {
        self.live_generation(name) != Some(generation)
    }

    /// Whether `name`'s process is still the detached one of `generation`
    /// found at manager start (not re-attached, not ended).
    pub(crate) fn detached(&self, name: &str, generation: u64) -> bool {
        self.parts
            .get(name)
            .and_then(|p| p.run.as_ref())
            .is_some_and(|r| r.generation == generation && r.writer.is_none())
    }

    /// The control channels of the running, attached VIOS partitions.
    pub(crate) fn running_vios(&self) -> Vec<(&str, &Channel)> {
        self.parts
            .iter()
            .filter(|(_, p)| p.rec.definition.is_vios() && p.rec.state == PartitionState::Running)
            .filter_map(|(name, p)| {
                let w = p.run.as_ref().and_then(|r| r.writer.as_ref())?;
                Some((name.as_str(), w))
            })
            .collect()
    }

    /// Running (or paused) attached partitions (not VIOS): their names and
    /// definitions.
    pub(crate) fn attached_partitions(&self) -> Vec<(&str, &PartitionDefinition)> {
        self.parts
            .iter()
            .filter(|(_, p)| {
                p.run.as_ref().is_some_and(|r| r.writer.is_some())
                    && matches!(
                        p.rec.state,
                        PartitionState::Running | PartitionState::Paused
                    )
            })
            .filter_map(|(name, p)| match &p.rec.definition {
                Definition::Partition(def) => Some((name.as_str(), def)),
                Definition::Vios(_) => None,
            })
            .collect()
    }

    fn active(
        &mut self,
        name: &str,
        message: &'static str,
    ) -> Result<&mut Partition, ManagerError> {
        let p = self.get_mut(name)?;
        if p.run.is_none() {
            return Err(ManagerError::InvalidState {
                name: name.into(),
                state: p.rec.state,
                message,
            });
        }
        Ok(p)
    }
}

mod changes;
