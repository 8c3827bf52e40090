//! The shared memory pool (Active Memory Sharing, docs/ams.md): a part of
//! the manager with private state.
//!
//! - Stored (the store's `pool` row): the pool's physical size and its
//!   paging devices (VIOS exports `vios:<vios>/<disk>`), each with the
//!   partition it is assigned to while that partition runs.
//! - In memory: the *members*, the running shared-memory partitions, each
//!   with its paging device, weight, logical size, minimum, goal, target
//!   and its VMM's last [`MemoryReport`].
//!
//! The façade calls it on its events: a shared-memory partition starts
//! ([`Pool::admit`]: a device assigned, room reserved, then
//! [`Pool::spawning`]), a report arrives ([`Pool::report`]), a second
//! passes ([`Pool::tick`]: demand), a partition ends ([`Pool::release`]).
//! Each returns the [`TargetChange`]s to send (`MemoryTarget`); the
//! arithmetic is in [`targets`]. The pool never talks to a process itself.

mod member;
pub mod targets;
#[cfg(test)]
mod tests;

use crate::error::ManagerError;
use crate::partitions::PartitionTable;
use crate::store::Store;
pub use member::IDLE_AFTER;
use member::{disk_users, mib, min_pages, wants, Member};
use parvm_config::{Definition, DiskSource, PartitionDefinition, MIN_RESIDENT_MIB};
use parvm_protocol::{
    MemoryReport, PagingDevice, PagingDeviceInfo, PartitionState, PoolInfo, PoolMemberInfo,
    SharedMemoryStatus, PAGES_PER_MIB,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use targets::{Claim, Slot};

/// How long a start waits for its full goal before it starts with what
/// room there is (at least its minimum).
pub const START_GRACE: Duration = Duration::from_secs(1);
/// Largest pool (1 TiB, like the largest partition).
pub const MAX_POOL_MIB: u64 = parvm_config::MAX_MEMORY_MIB;

/// A target to send to a partition's VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TargetChange {
    pub(crate) partition: String,
    pub(crate) pages: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PagingRow {
    device: PagingDevice,
    /// The partition running with it.
    #[serde(default)]
    assigned: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolRow {
    size_mib: u64,
    paging: Vec<PagingRow>,
}

pub(crate) struct Pool {
    row: Option<PoolRow>,
    members: BTreeMap<String, Member>,
}

impl Pool {
    pub(crate) fn load(store: &Store) -> Result<Self, ManagerError> {
        Ok(Pool {
            row: store.pool()?,
            members: BTreeMap::new(),
        })
    }

    fn save(&self, store: &Store) -> Result<(), ManagerError> {
        if let Some(row) = &self.row {
            store.put_pool(row)?;
        }
        Ok(())
    }

    fn row(&self) -> Result<&PoolRow, ManagerError> {
        self.row.as_ref().ok_or_else(|| {
            ManagerError::BadRequest(
                "there is no shared memory pool (parctl pool create --size MIB --paging vios:VIOS/DISK)"
                    .into(),
            )
        })
    }

    fn budget(&self) -> u64 {
        self.row
            .as_ref()
            .map(|r| r.size_mib * PAGES_PER_MIB)
            .unwrap_or(0)
    }

    fn has_device(&self, device: &PagingDevice) -> bool {
        self.row
            .as_ref()
            .is_some_and(|r| r.paging.iter().any(|p| p.device == *device))
    }

    // ---- the operator's requests ---------------------------------------

    /// A device that may join the pool: an existing, writable export of a
    /// VIOS, nobody's disk, not in the pool yet.
    fn check_new_device(
        &self,
        partitions: &PartitionTable,
        device: &PagingDevice,
    ) -> Result<(), ManagerError> {
        let bad = |m: String| {
            Err(ManagerError::BadRequest(format!(
                "paging device {device}: {m}"
            )))
        };
        match partitions.definition(&device.vios) {
            None => return bad(format!("no partition named `{}`", device.vios)),
            Some(Definition::Partition(_)) => {
                return bad(format!("partition `{}` is not a VIOS", device.vios))
            }
            Some(Definition::Vios(v)) => match v.disk(&device.disk) {
                None => {
                    return bad(format!(
                        "VIOS `{}` exports no disk `{}`",
                        v.name, device.disk
                    ))
                }
                Some(d) if d.read_only => return bad("the export is read-only".into()),
                Some(_) => {}
            },
        }
        if self.has_device(device) {
            return bad("already in the pool".into());
        }
        let users = disk_users(partitions, device, "");
        if !users.is_empty() {
            return bad(format!(
                "it is a disk of partition `{}`; a paging device is no one's disk",
                users.join("`, `")
            ));
        }
        Ok(())
    }

    pub(crate) fn create(
        &mut self,
        store: &Store,
        partitions: &PartitionTable,
        size_mib: u64,
        paging: Vec<PagingDevice>,
    ) -> Result<(), ManagerError> {
        if self.row.is_some() {
            return Err(ManagerError::BadRequest(
                "the shared memory pool exists already (parctl pool resize, add-paging)".into(),
            ));
        }
        check_size(size_mib)?;
        let mut pool = Pool {
            row: Some(PoolRow {
                size_mib,
                paging: Vec::new(),
            }),
            members: BTreeMap::new(),
        };
        for device in paging {
            pool.check_new_device(partitions, &device)?;
            if let Some(row) = pool.row.as_mut() {
                row.paging.push(PagingRow {
                    device,
                    assigned: None,
                });
            }
        }
        pool.save(store)?;
        self.row = pool.row;
        Ok(())
    }

    /// A new size: refused under the running partitions' minimums; the
    /// targets above the new goals come down at once.
    pub(crate) fn resize(
        &mut self,
        store: &Store,
        size_mib: u64,
    ) -> Result<Vec<TargetChange>, ManagerError> {
        self.row()?;
        check_size(size_mib)?;
        let mins: u64 = self.members.values().map(|m| m.min).sum();
        if mins > size_mib * PAGES_PER_MIB {
            return Err(ManagerError::BadRequest(format!(
                "the running shared-memory partitions need at least {} (their minimums): the pool cannot shrink to {size_mib} MiB",
                mib(mins)
            )));
        }
        if let Some(row) = self.row.as_mut() {
            row.size_mib = size_mib;
        }
        self.save(store)?;
        Ok(self.recompute(Instant::now()))
    }

    pub(crate) fn add_paging(
        &mut self,
        store: &Store,
        partitions: &PartitionTable,
        device: PagingDevice,
    ) -> Result<(), ManagerError> {
        self.row()?;
        self.check_new_device(partitions, &device)?;
        if let Some(row) = self.row.as_mut() {
            row.paging.push(PagingRow {
                device,
                assigned: None,
            });
        }
        self.save(store)
    }

    pub(crate) fn remove_paging(
        &mut self,
        store: &Store,
        device: &PagingDevice,
    ) -> Result<(), ManagerError> {
        let row = self.row()?;
        let Some(p) = row.paging.iter().find(|p| p.device == *device) else {
            return Err(ManagerError::NotFound(format!(
                "paging device {device} (not in the pool)"
            )));
        };
        if let Some(partition) = &p.assigned {
            return Err(ManagerError::BadRequest(format!(
                "paging device {device} is assigned to running partition `{partition}`: stop it first"
            )));
        }
        if let Some(row) = self.row.as_mut() {
            row.paging.retain(|p| p.device != *device);
        }
        self.save(store)
    }

    /// The pool's paging devices that VIOS `vios` exports (an undefine of
    /// that VIOS is refused while there are any).
    pub(crate) fn devices_on(&self, vios: &str) -> Vec<String> {
        self.row
            .iter()
            .flat_map(|r| r.paging.iter())
            .filter(|p| p.device.vios == vios)
            .map(|p| p.device.to_string())
            .collect()
    }

    /// `parctl pool show`.
    pub(crate) fn info(&self, partitions: &PartitionTable) -> Result<PoolInfo, ManagerError> {
        let row = self.row()?;
        let pages = self.budget();
        let resident: u64 = self.members.values().map(|m| m.resident).sum();
        let held: u64 = self.members.values().map(Member::holds).sum();
        Ok(PoolInfo {
            size_mib: row.size_mib,
            pages,
            resident_pages: resident,
            loaned_pages: pages.saturating_sub(resident),
            free_pages: pages.saturating_sub(held),
            paging: row
                .paging
                .iter()
                .map(|p| PagingDeviceInfo {
                    device: p.device.clone(),
                    size: partitions.export_size(&p.device.vios, &p.device.disk),
                    partition: p.assigned.clone(),
                })
                .collect(),
            members: self
                .members
                .iter()
                .map(|(name, m)| PoolMemberInfo {
                    partition: name.clone(),
                    weight: m.weight,
                    logical_pages: m.logical,
                    goal_pages: m.goal,
                    target_pages: m.target,
                    resident_pages: m.resident,
                })
                .collect(),
        })
    }

    /// What a partition's status shows of its shared memory (`None` for
    /// dedicated memory).
    pub(crate) fn status(
        &self,
        name: &str,
        def: &PartitionDefinition,
    ) -> Option<SharedMemoryStatus> {
        let w = wants(def)?;
        let mut s = SharedMemoryStatus {
            logical_mib: w.logical / PAGES_PER_MIB,
            weight: w.weight,
            paging: w.paging,
            ..Default::default()
        };
        if let Some(m) = self.members.get(name) {
            s.paging = Some(m.device.clone());
            s.target_pages = m.target;
            s.resident_pages = m.resident;
            if let Some(r) = &m.report {
                s.reported = true;
                s.page_ins = r.page_ins;
                s.page_in_us = r.page_in_ns / 1000;
                s.page_outs = r.page_outs;
                s.zero_fills = r.zero_fills;
                s.zero_outs = r.zero_outs;
                s.stalled = r.stalled;
            }
        }
        Some(s)
    }

    // ---- definitions and starts -----------------------------------------

    /// What `define` (and every start) checks of a VMM partition: none of
    /// its disks is a paging device of the pool; in shared mode, a pool
    /// exists that can hold its minimum, and the device its definition
    /// names is one of the pool's and large enough as far as is known.
    pub(crate) fn check_definition(
        &self,
        partitions: &PartitionTable,
        name: &str,
        def: &PartitionDefinition,
    ) -> Result<(), ManagerError> {
        for d in def.disks.iter().flatten() {
            if let DiskSource::Vios { vios, disk } = &d.source {
                let device = PagingDevice {
                    vios: vios.clone(),
                    disk: disk.clone(),
                };
                if self.has_device(&device) {
                    return Err(ManagerError::BadRequest(format!(
                        "partition `{name}`: disk `{}`: {device} is a paging device of the shared memory pool",
                        d.id
                    )));
                }
            }
        }
        let Some(w) = wants(def) else {
            return Ok(());
        };
        let foreign = def.memory.as_ref().and_then(|m| m.paging.as_ref());
        if let Some(source @ (DiskSource::VhostUser(_) | DiskSource::VhostUserFd(_))) = foreign {
            // Outside the pool it would page outside the pool's budget.
            return Err(ManagerError::BadRequest(format!(
                "partition `{name}`: paging device {source}: a partition run by the manager pages on a device of the shared memory pool (give vios:VIOS/DISK, or nothing to have one assigned)"
            )));
        }
        let row = self.row.as_ref().ok_or_else(|| {
            ManagerError::BadRequest(format!(
                "partition `{name}` has shared memory, but there is no shared memory pool (parctl pool create --size MIB --paging vios:VIOS/DISK)"
            ))
        })?;
        let min = min_pages(w.logical);
        if row.size_mib * PAGES_PER_MIB < min {
            return Err(ManagerError::BadRequest(format!(
                "partition `{name}` needs at least {} of the shared memory pool, which has {} MiB",
                mib(min),
                row.size_mib
            )));
        }
        if let Some(device) = &w.paging {
            if !self.has_device(device) {
                return Err(ManagerError::BadRequest(format!(
                    "partition `{name}`: paging device {device} is not in the shared memory pool (parctl pool add-paging {device})"
                )));
            }
            if let Some(size) = partitions.export_size(&device.vios, &device.disk) {
                if size < w.logical * parvm_protocol::pool::PAGE_SIZE {
                    return Err(ManagerError::BadRequest(format!(
                        "partition `{name}`: paging device {device} holds {} bytes, less than its {} of logical memory",
                        size,
                        mib(w.logical)
                    )));
                }
            }
        }
        Ok(())
    }

    /// Why `device` cannot page for `name` (`None`: it can).
    fn unfit(
        &self,
        partitions: &PartitionTable,
        name: &str,
        device: &PagingRow,
        logical: u64,
    ) -> Option<String> {
        let d = &device.device;
        if let Some(other) = device.assigned.as_ref().filter(|o| *o != name) {
            return Some(format!("{d} is assigned to `{other}`"));
        }
        let users = disk_users(partitions, d, "");
        if !users.is_empty() {
            return Some(format!("{d} is a disk of `{}`", users.join("`, `")));
        }
        match partitions.state(&d.vios) {
            Some(PartitionState::Running) if partitions.is_attached(&d.vios) => {}
            Some(state) => return Some(format!("{d}: VIOS `{}` is {state}, not running", d.vios)),
            None => return Some(format!("{d}: no partition named `{}`", d.vios)),
        }
        match partitions.export_size(&d.vios, &d.disk) {
            None => Some(format!("{d}: VIOS `{}` reports no such export", d.vios)),
            Some(size) if size < logical * parvm_protocol::pool::PAGE_SIZE => Some(format!(
                "{d} holds {size} bytes, less than the {} of logical memory",
                mib(logical)
            )),
            Some(_) => None,
        }
    }

    /// A shared-memory partition is about to start: checks the pool holds
    /// everyone's minimum, assigns it a paging device (the one its
    /// definition names, else the smallest that fits), reserves its room
    /// and returns the targets to lower (or raise) elsewhere. `Ok(None)`:
    /// dedicated memory. Nothing is held when it fails.
    pub(crate) fn admit(
        &mut self,
        store: &Store,
        partitions: &PartitionTable,
        name: &str,
        def: &PartitionDefinition,
    ) -> Result<Option<Vec<TargetChange>>, ManagerError> {
        let fail = |m: String| ManagerError::StartFailed(name.into(), m);
        self.check_definition(partitions, name, def)
            .map_err(|e| fail(e.to_string()))?;
        let Some(w) = wants(def) else {
            return Ok(None);
        };
        if self.members.contains_key(name) {
            // Another start of it waits for room (the lock is released
            // meanwhile).
            return Err(fail("it is already starting".into()));
        }
        let row = self.row().map_err(|e| fail(e.to_string()))?;
        let min = min_pages(w.logical);
        let others: u64 = self
            .members
            .iter()
            .filter(|(n, _)| *n != name)
            .map(|(_, m)| m.min)
            .sum();
        if others + min > self.budget() {
            return Err(fail(format!(
                "the shared memory pool ({} MiB) is too small: the running shared-memory partitions need {} and this one {} at least",
                row.size_mib,
                mib(others),
                mib(min)
            )));
        }
        let candidates: Vec<&PagingRow> = match &w.paging {
            Some(d) => row.paging.iter().filter(|p| p.device == *d).collect(),
            None => row.paging.iter().collect(),
        };
        if candidates.is_empty() {
            return Err(fail("the shared memory pool has no paging device (parctl pool add-paging vios:VIOS/DISK)".into()));
        }
        let mut why = Vec::new();
        let mut best: Option<(u64, PagingDevice)> = None;
        for p in candidates {
            match self.unfit(partitions, name, p, w.logical) {
                Some(reason) => why.push(reason),
                None => {
                    let size = partitions
                        .export_size(&p.device.vios, &p.device.disk)
                        .unwrap_or(u64::MAX);
                    if best.as_ref().is_none_or(|(s, _)| size < *s) {
                        best = Some((size, p.device.clone()));
                    }
                }
            }
        }
        let Some((_, device)) = best else {
            return Err(fail(format!("no paging device fits: {}", why.join("; "))));
        };
        if let Some(row) = self.row.as_mut() {
            for p in row.paging.iter_mut().filter(|p| p.device == device) {
                p.assigned = Some(name.into());
            }
        }
        if let Err(e) = self.save(store) {
            self.unassign(name);
            return Err(e);
        }
        let now = Instant::now();
        self.members.insert(
            name.into(),
            Member {
                device,
                weight: w.weight,
                logical: w.logical,
                min,
                goal: 0,
                target: 0,
                resident: 0,
                spawned: false,
                recovered: false,
                admitted: now,
                report: None,
                faults: 0,
                quiet_since: now,
            },
        );
        Ok(Some(self.recompute(now)))
    }

    /// The target `name` may start with, once its reserved room is there:
    /// its whole goal, or after [`START_GRACE`] at least its minimum
    /// (whole MiB: the definition's `resident_mib`). `None`: wait.
    pub(crate) fn start_target(&self, name: &str) -> Option<u64> {
        let m = self.members.get(name)?;
        let whole = m.target / PAGES_PER_MIB * PAGES_PER_MIB;
        let full = m.target >= m.goal;
        let late = m.admitted.elapsed() >= START_GRACE;
        (whole >= m.min && (full || late)).then_some(whole)
    }

    /// `name`'s VMM is spawned with `pages` as its target on `device`.
    pub(crate) fn spawning(&mut self, name: &str, pages: u64) -> Option<PagingDevice> {
        let m = self.members.get_mut(name)?;
        m.target = pages;
        m.spawned = true;
        Some(m.device.clone())
    }

    /// Whether `name` waits in [`Pool::admit`] (not spawned yet).
    pub(crate) fn reserving(&self, name: &str) -> bool {
        self.members.get(name).is_some_and(|m| !m.spawned)
    }

    fn unassign(&mut self, name: &str) {
        if let Some(row) = self.row.as_mut() {
            for p in row
                .paging
                .iter_mut()
                .filter(|p| p.assigned.as_deref() == Some(name))
            {
                p.assigned = None;
            }
        }
    }

    /// `name` ended (or did not start): its device and its share are free;
    /// the targets to raise elsewhere.
    pub(crate) fn release(&mut self, store: &Store, name: &str) -> Vec<TargetChange> {
        let assigned = self
            .row
            .as_ref()
            .is_some_and(|r| r.paging.iter().any(|p| p.assigned.as_deref() == Some(name)));
        if self.members.remove(name).is_none() && !assigned {
            return Vec::new();
        }
        self.unassign(name);
        if let Err(e) = self.save(store) {
            tracing::error!(partition = %name, error = %e, "cannot record the release of a paging device");
        }
        tracing::info!(partition = %name, "shared memory released to the pool");
        self.recompute(Instant::now())
    }

    /// A shared-memory partition found running after a manager restart
    /// (its device assignment is in the store): a member again, assumed to
    /// hold its logical size until its VMM reports.
    pub(crate) fn recover(&mut self, name: &str, def: &PartitionDefinition) {
        let Some(w) = wants(def) else { return };
        let device = self.row.as_ref().and_then(|r| {
            r.paging
                .iter()
                .find(|p| p.assigned.as_deref() == Some(name))
                .map(|p| p.device.clone())
        });
        let Some(device) = device else {
            tracing::warn!(partition = %name, "running shared-memory partition without a paging device in the pool's record");
            return;
        };
        let now = Instant::now();
        self.members.insert(
            name.into(),
            Member {
                device,
                weight: w.weight,
                logical: w.logical,
                min: min_pages(w.logical),
                goal: 0,
                target: w.logical,
                resident: w.logical,
                spawned: true,
                recovered: true,
                admitted: now,
                report: None,
                faults: 0,
                quiet_since: now,
            },
        );
    }

    /// The members paging on a device of VIOS `vios`.
    pub(crate) fn members_on(&self, vios: &str) -> Vec<(String, PagingDevice)> {
        self.members
            .iter()
            .filter(|(_, m)| m.spawned && m.device.vios == vios)
            .map(|(n, m)| (n.clone(), m.device.clone()))
            .collect()
    }

    // ---- reports and targets --------------------------------------------

    /// A VMM's report: what it holds now; targets raised into room it gave
    /// back.
    pub(crate) fn report(&mut self, name: &str, report: MemoryReport) -> Vec<TargetChange> {
        let now = Instant::now();
        let Some(m) = self.members.get_mut(name) else {
            return Vec::new();
        };
        let faults = report.page_ins + report.zero_fills;
        let was_idle = m.cap(now) < m.logical;
        if m.report.is_none() || faults != m.faults {
            m.faults = faults;
            m.quiet_since = now;
        }
        if m.recovered {
            // The first report of a VMM found after a manager restart:
            // what it was told before.
            m.target = report.target_pages;
            m.recovered = false;
        }
        m.resident = report.resident_pages;
        m.report = Some(report);
        match was_idle && m.cap(now) == m.logical {
            // Busy again: its goal goes back up at once.
            true => self.recompute(now),
            false => self.settle(),
        }
    }

    /// Once a second: goals from demand (idle partitions capped).
    pub(crate) fn tick(&mut self) -> Vec<TargetChange> {
        if self.members.is_empty() {
            return Vec::new();
        }
        self.recompute(Instant::now())
    }

    /// Goals by weight, then targets toward them.
    fn recompute(&mut self, now: Instant) -> Vec<TargetChange> {
        let names: Vec<String> = self.members.keys().cloned().collect();
        let claims: Vec<Claim> = names
            .iter()
            .filter_map(|n| self.members.get(n))
            .map(|m| Claim {
                weight: m.weight,
                min: m.min,
                max: m.cap(now),
            })
            .collect();
        let goals = targets::water_fill(self.budget(), &claims);
        for (n, g) in names.iter().zip(goals) {
            if let Some(m) = self.members.get_mut(n) {
                m.goal = g;
            }
        }
        self.settle()
    }

    /// Targets toward the goals without ever promising more than the pool
    /// (starting partitions first); the changes for spawned VMMs.
    fn settle(&mut self) -> Vec<TargetChange> {
        let mut order: Vec<String> = self.members.keys().cloned().collect();
        order.sort_by_key(|n| self.members.get(n).is_some_and(|m| m.spawned));
        let slots: Vec<Slot> = order
            .iter()
            .filter_map(|n| self.members.get(n))
            .map(|m| Slot {
                goal: m.goal,
                target: m.target,
                resident: m.resident,
            })
            .collect();
        let new = targets::settle(self.budget(), &slots);
        let mut changes = Vec::new();
        for (n, t) in order.iter().zip(new) {
            let Some(m) = self.members.get_mut(n) else {
                continue;
            };
            if m.target != t {
                m.target = t;
                if m.spawned {
                    changes.push(TargetChange {
                        partition: n.clone(),
                        pages: t,
                    });
                }
            }
        }
        changes
    }

    /// What all members hold (for a resize that waits until the pool's
    /// partitions are under the new size).
    pub(crate) fn held(&self) -> u64 {
        self.members.values().map(Member::holds).sum()
    }

    pub(crate) fn budget_pages(&self) -> u64 {
        self.budget()
    }
}

fn check_size(size_mib: u64) -> Result<(), ManagerError> {
    if !(MIN_RESIDENT_MIB..=MAX_POOL_MIB).contains(&size_mib) {
        return Err(ManagerError::BadRequest(format!(
            "pool size {size_mib} MiB: use {MIN_RESIDENT_MIB} to {MAX_POOL_MIB} MiB"
        )));
    }
    Ok(())
}
