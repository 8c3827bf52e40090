//! The façade's share of Active Memory Sharing (docs/ams.md): the
//! operator's pool requests, the start of a shared-memory partition (room
//! in the pool, then its paging device brokered beside its disks), the
//! VMMs' reports, the pool's tick, and the targets sent back.

use super::{Manager, State};
use crate::error::ManagerError;
use crate::pool::TargetChange;
use parvm_config::{Definition, DiskSource, PartitionDefinition};
use parvm_protocol::{
    ManagerToVmm, MemoryReport, PagingDevice, PartitionStatus, PoolInfo, PAGES_PER_MIB,
};
use std::os::fd::OwnedFd;
use std::sync::{Arc, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// How often the pool recomputes goals from demand.
pub const POOL_TICK: Duration = Duration::from_secs(1);

impl State {
    /// Sends each VMM its new target (`MemoryTarget`); a VMM that is not
    /// attached gets it from its next report's answer.
    pub(super) fn send_targets(&self, changes: &[TargetChange]) {
        for c in changes {
            let Some(w) = self.partitions.writer(&c.partition) else {
                continue;
            };
            match w.send(&ManagerToVmm::MemoryTarget { pages: c.pages }, &[]) {
                Ok(()) => {
                    tracing::debug!(partition = %c.partition, pages = c.pages, "memory target sent")
                }
                Err(e) => {
                    tracing::warn!(partition = %c.partition, error = %e, "cannot send a memory target")
                }
            }
        }
    }

    /// `name`'s run ended (or never began): its pool share and paging
    /// device are free; the others may grow.
    pub(super) fn release_memory(&mut self, name: &str) {
        let changes = self.pool.release(&self.store, name);
        self.send_targets(&changes);
    }

    /// A partition's status with its shared-memory figures.
    pub(super) fn decorate(&self, mut status: PartitionStatus) -> PartitionStatus {
        if let Some(Definition::Partition(def)) = self.partitions.definition(&status.name) {
            status.memory = self.pool.status(&status.name, def);
        }
        self.decorate_cpu(&mut status);
        status
    }

    /// A VIOS (re)became ready: the partitions paging on it get fresh
    /// connections.
    pub(super) fn rebroker_paging(&self, vios: &str) {
        for (client, device) in self.pool.members_on(vios) {
            if let Err(e) = crate::vios::rebroker_paging(&self.partitions, &client, &device) {
                tracing::warn!(partition = %client, %device, error = %e, "paging device not re-brokered");
            }
        }
    }

    /// The paging device of a partition whose room is there: brokered
    /// twice, as inherited fds `fd` (the pager's fault thread) and `fd + 1`
    /// (its evictor), and the definition the VMM reads set to use them
    /// (`memory.paging = vhost-user-fd:N`, `memory.paging_evictor`,
    /// `memory.resident_mib`).
    pub(super) fn broker_paging(
        &mut self,
        name: &str,
        def: &mut PartitionDefinition,
        fd: i32,
    ) -> Result<Vec<OwnedFd>, ManagerError> {
        let Some(pages) = self.pool.start_target(name) else {
            return Ok(Vec::new());
        };
        let Some(device) = self.pool.spawning(name, pages) else {
            return Ok(Vec::new());
        };
        let ends = vec![
            crate::vios::broker_paging(&self.partitions, name, &device, fd)?,
            crate::vios::broker_paging(&self.partitions, name, &device, fd + 1)?,
        ];
        if let Some(memory) = def.memory.as_mut() {
            memory.paging = Some(DiskSource::VhostUserFd(fd));
            memory.paging_evictor = Some(DiskSource::VhostUserFd(fd + 1));
            memory.resident_mib = Some(pages / PAGES_PER_MIB);
        }
        tracing::info!(partition = %name, %device, resident_mib = pages / PAGES_PER_MIB, "shared memory: starting");
        Ok(ends)
    }
}

impl Manager {
    /// Starts the pool's tick thread (demand), which ends with the manager.
    pub(super) fn start_pool_tick(self: &Arc<Self>) {
        let weak: Weak<Manager> = Arc::downgrade(self);
        crate::process::spawn_thread("pool", move || loop {
            std::thread::sleep(POOL_TICK);
            let Some(mgr) = weak.upgrade() else { return };
            let mut state = mgr.lock();
            let changes = state.pool.tick();
            state.send_targets(&changes);
        });
    }

    /// Spawns `name`'s process (lock held, released while a shared-memory
    /// partition waits for its room in the pool). Nothing is held when it
    /// fails: no process, no paging device, no share of the pool.
    pub(super) fn start_process<'a>(
        self: &Arc<Self>,
        mut state: MutexGuard<'a, State>,
        name: &str,
    ) -> (MutexGuard<'a, State>, Result<u64, ManagerError>) {
        let def = match state.partitions.definition(name) {
            Some(Definition::Partition(d)) => Some(d.clone()),
            _ => None,
        };
        if let Some(def) = &def {
            let st = &mut *state;
            match st.pool.admit(&st.store, &st.partitions, name, def) {
                Err(e) => return (state, Err(e)),
                Ok(None) => {}
                Ok(Some(changes)) => {
                    st.send_targets(&changes);
                    let (s, room) = self.wait_for_room(state, name);
                    state = s;
                    if let Err(e) = room {
                        state.release_memory(name);
                        return (state, Err(e));
                    }
                }
            }
        }
        let spawned = self.spawn(&mut state, name);
        if spawned.is_err() {
            state.release_memory(name);
        }
        (state, spawned)
    }

    /// Waits (lock released) until the partitions above their lowered
    /// targets have given back the room `name` starts with.
    fn wait_for_room<'a>(
        &self,
        mut state: MutexGuard<'a, State>,
        name: &str,
    ) -> (MutexGuard<'a, State>, Result<(), ManagerError>) {
        let deadline = Instant::now() + self.cfg.ready_timeout;
        loop {
            if state.pool.start_target(name).is_some() {
                return (state, Ok(()));
            }
            if !state.pool.reserving(name) {
                let e =
                    ManagerError::StartFailed(name.into(), "its pool share was released".into());
                return (state, Err(e));
            }
            let now = Instant::now();
            if now >= deadline {
                let e = ManagerError::StartFailed(
                    name.into(),
                    format!(
                        "the shared memory pool's partitions did not give back room for it within {} ms",
                        self.cfg.ready_timeout.as_millis()
                    ),
                );
                return (state, Err(e));
            }
            let step = (deadline - now).min(Duration::from_millis(100));
            state = self.wait(state, step);
        }
    }

    pub fn pool_create(
        &self,
        size_mib: u64,
        paging: Vec<PagingDevice>,
    ) -> Result<PoolInfo, ManagerError> {
        let mut state = self.lock();
        let st = &mut *state;
        st.pool
            .create(&st.store, &st.partitions, size_mib, paging)?;
        tracing::info!(size_mib, "shared memory pool created");
        self.pool_event("created", size_mib, None);
        st.pool.info(&st.partitions)
    }

    /// A new size; answers once the partitions hold no more than it (up to
    /// the ready timeout: they are paging out meanwhile).
    pub fn pool_resize(&self, size_mib: u64) -> Result<PoolInfo, ManagerError> {
        let mut state = self.lock();
        let st = &mut *state;
        let changes = st.pool.resize(&st.store, size_mib)?;
        st.send_targets(&changes);
        tracing::info!(size_mib, "shared memory pool resized");
        self.pool_event("resized", size_mib, None);
        let deadline = Instant::now() + self.cfg.ready_timeout;
        while state.pool.held() > state.pool.budget_pages() {
            let now = Instant::now();
            if now >= deadline {
                return Err(ManagerError::Control(
                    "pool".into(),
                    format!(
                        "resized to {size_mib} MiB, but its partitions still hold {} pages after {} ms (paging out)",
                        state.pool.held(),
                        self.cfg.ready_timeout.as_millis()
                    ),
                ));
            }
            state = self.wait(state, (deadline - now).min(Duration::from_millis(100)));
        }
        state.pool.info(&state.partitions)
    }

    pub fn pool_add_paging(&self, device: PagingDevice) -> Result<PoolInfo, ManagerError> {
        let mut state = self.lock();
        let st = &mut *state;
        st.pool
            .add_paging(&st.store, &st.partitions, device.clone())?;
        tracing::info!(%device, "paging device added to the pool");
        let info = st.pool.info(&st.partitions)?;
        self.pool_event("paging_added", info.size_mib, Some(&device));
        Ok(info)
    }

    pub fn pool_remove_paging(&self, device: &PagingDevice) -> Result<PoolInfo, ManagerError> {
        let mut state = self.lock();
        let st = &mut *state;
        st.pool.remove_paging(&st.store, device)?;
        tracing::info!(%device, "paging device removed from the pool");
        let info = st.pool.info(&st.partitions)?;
        self.pool_event("paging_removed", info.size_mib, Some(device));
        Ok(info)
    }

    fn pool_event(&self, change: &str, size_mib: u64, device: Option<&PagingDevice>) {
        self.events.push(parvm_protocol::EventKind::Pool {
            change: change.into(),
            size_mib,
            device: device.map(|d| d.to_string()),
        });
    }

    pub fn pool_show(&self) -> Result<PoolInfo, ManagerError> {
        let state = self.lock();
        state.pool.info(&state.partitions)
    }

    /// A VMM's pager figures: the pool's view of it, and targets raised
    /// into what it gave back.
    pub(super) fn memory_report(&self, name: &str, generation: u64, report: MemoryReport) {
        let mut state = self.lock();
        if !state.partitions.is_current(name, generation) {
            return;
        }
        let changes = state.pool.report(name, report);
        state.send_targets(&changes);
        self.changed.notify_all();
    }
}
