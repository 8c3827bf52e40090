//! The façade: [`Manager`] owns the parts under one lock and routes the
//! requests of operators and the events of processes between them. Each
//! part keeps its state private and is reached through its methods:
//!
//! - [`PartitionTable`]: records, runtimes, write-through to the store;
//! - [`GrantEngine`]: the grant table and its rules, pending acks;
//! - the VIOS broker ([`crate::vios`]): disks of VIOS partitions brokered
//!   to their clients;
//! - [`Pool`]: the shared memory pool, its paging devices, the members'
//!   goals and targets (Active Memory Sharing, in [`memory`](self));
//! - process spawning ([`crate::process`]), restart policy
//!   ([`crate::restart`]) and the control channel ([`crate::channel`]) in
//!   modules of their own.
//!
//! Events the façade routes: *a partition became ready* → the grant engine
//! maps its segments, wires its doorbells and its standing grants are
//! accepted; the broker re-brokers a VIOS's clients. *A partition exited*
//! → the partition table classifies the end, the grant engine releases
//! what it held, the restart policy may schedule a restart. *Grants of VIOS
//! disks ended* → the broker disconnects the clients. *A shared-memory
//! partition starts* → the pool assigns a paging device and reserves room
//! (lowering others' targets), the broker connects it; *a VMM reports its
//! pager* or *a partition ends* → the pool's targets are sent.
//!
//! Threads: one *channel thread* per live process ([`crate::channel`]); a
//! *watcher thread* per VMM found alive at manager start polls its pid
//! until the VMM re-attaches; a *restart thread* sleeps out the backoff of
//! an on-failure restart. Operator requests run on the client's thread and
//! wait on the condition variable (lock released) for the state they
//! expect. Grant requests are in [`sharing`](self).

use crate::channel::{self, ControlEvents};
use crate::config::ManagerConfig;
use crate::error::ManagerError;
use crate::events::EventLog;
use crate::grant_engine::{Ended, GrantEngine};
use crate::partitions::{PartitionTable, Recovered, StartProgress};
use crate::pool::Pool;
use crate::process::{process_alive, send_signal, spawn_thread};
use crate::ratelimit::FailedGuesses;
use crate::restart::backoff;
use crate::store::Store;
use parvm_config::Definition;
use parvm_protocol::{
    Channel, ExitStatus, Hcall, MemoryReport, PartitionStatus, RestartPolicy, ToManager,
};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod definitions;
mod disk_stats;
mod dumps;
mod memory;
mod sharing;
mod workload;

/// Everything under the manager's one lock: the parts and the store they
/// write through to.
struct State {
    store: Store,
    partitions: PartitionTable,
    grants: GrantEngine,
    pool: Pool,
    workload: crate::workload::Workload,
    /// What VMMs reported of their dumps (docs/dump.md).
    dumps: dumps::DumpLog,
}

impl State {
    /// The three parts at once, each borrowed on its own.
    fn parts(&mut self) -> (&mut Store, &mut PartitionTable, &mut GrantEngine) {
        (&mut self.store, &mut self.partitions, &mut self.grants)
    }

    /// Grants of VIOS disks ended: the broker disconnects their clients.
    fn after_ended(&self, ended: &Ended) {
        for (resource, client) in &ended.disconnects {
            crate::vios::disconnect(&self.partitions, self.grants.table(), resource, client);
        }
    }

    /// A partition's process ended: the grants it held are released, and
    /// its share of the pool and its paging device.
    fn partition_exited(&mut self, name: &str) {
        let (store, partitions, grants) = self.parts();
        let ended = grants.release_held(store, partitions, name);
        self.after_ended(&ended);
        self.release_memory(name);
        self.workload.release(name);
        self.dumps.on_exit(name);
    }
}

pub struct Manager {
    pub cfg: ManagerConfig,
    state: Mutex<State>,
    changed: Condvar,
    /// Failed cookie guesses per caller.
    guesses: FailedGuesses,
    /// What followers of `parctl events` see.
    events: Arc<EventLog>,
    /// Each running VIOS's last export figures (for `/metrics`).
    disk_stats: Mutex<std::collections::BTreeMap<String, Vec<parvm_protocol::DiskStats>>>,
}

impl Manager {
    /// Loads the registry and recovers partitions left active by an earlier
    /// manager: live VMMs are awaited (they re-attach), dead ones crashed.
    pub fn open(cfg: ManagerConfig) -> Result<Arc<Self>, ManagerError> {
        for dir in [cfg.logs_dir(), cfg.state_dir.join("partitions")] {
            std::fs::create_dir_all(&dir).map_err(|source| ManagerError::Io {
                what: format!("cannot create {}", dir.display()),
                source,
            })?;
        }
        let store = Store::open(&cfg.state_dir)?;
        let mut grants = GrantEngine::load(&store)?;
        let records = store.all()?;
        for rec in &records {
            grants.register_blocks(&rec.definition);
        }
        let events = Arc::new(EventLog::default());
        let partitions = PartitionTable::load(&cfg, records, events.clone());
        let pool = Pool::load(&store)?;
        let mut workload = crate::workload::Workload::new(&cfg.state_dir);
        if let Some(policy) = store.policy()? {
            workload.set_policy(policy);
        }
        tracing::debug!(
            controller = workload.controller().name(),
            "workload: CPU controller"
        );
        let mgr = Arc::new(Manager {
            cfg,
            state: Mutex::new(State {
                store,
                partitions,
                grants,
                pool,
                workload,
                dumps: dumps::DumpLog::default(),
            }),
            changed: Condvar::new(),
            guesses: FailedGuesses::new(),
            events,
            disk_stats: Mutex::default(),
        });
        mgr.recover()?;
        mgr.start_pool_tick();
        mgr.start_workload_sampler();
        mgr.start_disk_stats_tick();
        Ok(mgr)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>, timeout: Duration) -> MutexGuard<'a, State> {
        let timeout = timeout.max(Duration::from_millis(1));
        match self.changed.wait_timeout(guard, timeout) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        }
    }

    fn recover(self: &Arc<Self>) -> Result<(), ManagerError> {
        let mut state = self.lock();
        for name in state.partitions.names() {
            let st = &mut *state;
            match st.partitions.recover(&st.store, &name)? {
                None => {}
                Some(Recovered::Detached {
                    generation,
                    pid,
                    start,
                }) => {
                    // A shared-memory partition keeps its paging device.
                    if let Some(Definition::Partition(def)) = st.partitions.definition(&name) {
                        st.pool.recover(&name, def);
                    }
                    let mgr = self.clone();
                    spawn_thread("watch", move || {
                        mgr.watch_detached(name, generation, pid, start)
                    });
                }
                Some(Recovered::Dead { restart }) => {
                    state.partition_exited(&name);
                    if let Some((epoch, restarts)) = restart {
                        self.schedule_restart(name, epoch, restarts);
                    }
                }
            }
        }
        Ok(())
    }

    /// Polls a VMM found alive at start until it re-attaches or dies.
    fn watch_detached(
        self: Arc<Self>,
        name: String,
        generation: u64,
        pid: u32,
        start: Option<u64>,
    ) {
        loop {
            std::thread::sleep(Duration::from_millis(50));
            if !self.lock().partitions.detached(&name, generation) {
                return;
            }
            if !process_alive(pid, start) {
                self.closed(&name, generation, None, None);
                return;
            }
        }
    }

    // ---- requests -------------------------------------------------------

    pub fn define(
        &self,
        mut definition: Definition,
        restart: RestartPolicy,
        segments: &[parvm_protocol::SegmentSpec],
        dry_run: bool,
    ) -> Result<PartitionStatus, ManagerError> {
        let name = checked_name(&mut definition, restart)?;
        let mut state = self.lock();
        if let Definition::Partition(def) = &definition {
            state.pool.check_definition(&state.partitions, &name, def)?;
        }
        let (store, partitions, grants) = state.parts();
        partitions.check_new(&name)?;
        let created = grants.create_declared(&name, segments)?;
        if dry_run {
            // Every check passed: nothing is kept.
            grants.discard(&created);
            return Ok(partitions.preview(&name, definition, restart));
        }
        grants.register_blocks(&definition);
        let status = partitions.define(store, &name, definition, restart)?;
        grants.record_segments(store, &created)?;
        tracing::info!(partition = %name, %restart, segments = created.len(), "partition defined");
        Ok(status)
    }

    pub fn undefine(&self, name: &str) -> Result<(), ManagerError> {
        let mut state = self.lock();
        let paging = state.pool.devices_on(name);
        if !paging.is_empty() {
            return Err(ManagerError::BadRequest(format!(
                "`{name}` exports paging devices of the pool ({}): remove them with parctl pool remove-paging first",
                paging.join(", ")
            )));
        }
        let (store, partitions, grants) = state.parts();
        partitions.undefine(store, name)?;
        let ended = grants.forget_owner(store, partitions, name)?;
        state.after_ended(&ended);
        let _ = std::fs::remove_file(self.cfg.definition_file(name));
        tracing::info!(partition = %name, "partition undefined");
        self.changed.notify_all();
        Ok(())
    }

    pub fn list(&self) -> Vec<PartitionStatus> {
        let state = self.lock();
        let list = state.partitions.list();
        list.into_iter().map(|s| state.decorate(s)).collect()
    }

    pub fn status(&self, name: &str) -> Result<PartitionStatus, ManagerError> {
        let state = self.lock();
        let status = state.partitions.status(name)?;
        Ok(state.decorate(status))
    }

    /// Starts a partition; returns once it is running (or has already run
    /// and stopped), or fails with the reason.
    pub fn start(self: &Arc<Self>, name: &str) -> Result<PartitionStatus, ManagerError> {
        let mut state = self.lock();
        state.partitions.begin_start(name)?;
        let (s, generation) = self.start_process(state, name);
        state = s;
        let generation = generation?;
        let deadline = Instant::now() + self.cfg.ready_timeout;
        loop {
            match state.partitions.start_progress(name, generation)? {
                StartProgress::Ready(status) => return Ok(state.decorate(*status)),
                StartProgress::Failed(why) => {
                    return Err(ManagerError::StartFailed(name.into(), why))
                }
                StartProgress::Starting => {}
            }
            let now = Instant::now();
            if now >= deadline {
                let msg = format!(
                    "did not report ready within {} ms",
                    self.cfg.ready_timeout.as_millis()
                );
                if state.partitions.start_timed_out(name, &msg) {
                    return Err(ManagerError::StartFailed(name.into(), msg));
                }
            }
            state = self.wait(state, deadline.saturating_duration_since(now));
        }
    }

    /// Waits (lock released meanwhile) until no VMM of `generation` runs.
    fn wait_gone<'a>(
        &self,
        mut state: MutexGuard<'a, State>,
        name: &str,
        generation: u64,
        timeout: Duration,
    ) -> (MutexGuard<'a, State>, bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if state.partitions.gone(name, generation) {
                return (state, true);
            }
            let now = Instant::now();
            if now >= deadline {
                return (state, false);
            }
            state = self.wait(state, deadline - now);
        }
    }

    /// Orderly stop: `Stop` on the control channel (SIGTERM if none), then
    /// SIGKILL after the stop timeout.
    /// A partition that is not active is left as it is (its status is the
    /// answer): stopping is idempotent.
    pub fn stop(&self, name: &str) -> Result<PartitionStatus, ManagerError> {
        let mut state = self.lock();
        let status = state.partitions.status(name)?;
        if !status.state.is_active() {
            return Ok(state.decorate(status));
        }
        let st = &mut *state;
        let (generation, pid) = st.partitions.request_stop(&st.store, name)?;
        self.changed.notify_all();
        tracing::info!(partition = %name, pid, "stopping");
        let (state, gone) = self.wait_gone(state, name, generation, self.cfg.stop_timeout);
        let state = if gone {
            state
        } else {
            tracing::warn!(partition = %name, pid, "VMM did not stop in time; killing it");
            send_signal(pid, libc::SIGKILL);
            self.wait_gone(state, name, generation, Duration::from_secs(5))
                .0
        };
        state.partitions.status(name)
    }

    /// SIGKILL to the VMM; the partition ends stopped (no restart).
    pub fn kill(&self, name: &str) -> Result<PartitionStatus, ManagerError> {
        let mut state = self.lock();
        let (generation, _pid) = state.partitions.kill(name)?;
        let (state, _) = self.wait_gone(state, name, generation, Duration::from_secs(5));
        state.partitions.status(name)
    }

    pub fn restart(self: &Arc<Self>, name: &str) -> Result<PartitionStatus, ManagerError> {
        let active = self.status(name)?.state.is_active();
        if active {
            self.stop(name)?;
        }
        self.start(name)
    }

    /// Pause or resume through the control channel.
    pub fn pause(&self, name: &str, pause: bool) -> Result<PartitionStatus, ManagerError> {
        let mut state = self.lock();
        let (generation, want) = state.partitions.send_pause(name, pause)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = state.partitions.pause_progress(name, generation, want)? {
                return Ok(status);
            }
            let now = Instant::now();
            if now >= deadline {
                // The request stays queued on the channel: a stopped or
                // slow VMM would carry it out when it gets to it, after
                // the operator was told it failed. Cancel it behind it.
                if pause {
                    state.partitions.cancel_pause(name, generation);
                }
                return Err(ManagerError::Control(
                    name.into(),
                    "the VMM did not answer".into(),
                ));
            }
            state = self.wait(state, deadline - now);
        }
    }

    /// Bytes for the guest console.
    pub fn console_input(&self, name: &str, data: Vec<u8>) -> Result<(), ManagerError> {
        self.lock().partitions.console_input(name, data)
    }

    /// The generation of the live VMM of `name`, if any.
    pub fn live_generation(&self, name: &str) -> Option<u64> {
        self.lock().partitions.live_generation(name)
    }

    /// A VMM re-attaches: checks token and peer pid, then makes `chan` its
    /// control channel. Returns the generation to read it under.
    pub fn attach(
        &self,
        name: &str,
        pid: u32,
        token: &str,
        paused: bool,
        peer_pid: Option<u32>,
        chan: &Channel,
    ) -> Result<u64, ManagerError> {
        let mut state = self.lock();
        let st = &mut *state;
        let generation = st
            .partitions
            .attach(&st.store, name, pid, token, paused, peer_pid, chan)?;
        self.changed.notify_all();
        Ok(generation)
    }

    /// Reads a VMM's control channel until it closes, then records the end.
    pub fn read_channel(
        self: &Arc<Self>,
        name: &str,
        generation: u64,
        chan: Channel,
        child: Option<std::process::Child>,
    ) {
        channel::read(self, name, generation, chan, child);
    }

    // ---- processes ------------------------------------------------------

    /// Spawns the process of `name` (lock held) and its channel thread.
    fn spawn(self: &Arc<Self>, state: &mut State, name: &str) -> Result<u64, ManagerError> {
        state.check_cpu(name)?;
        let generation = state.partitions.next_generation();
        // Disks served by a VIOS (`vios:<vios>/<disk>`): the grant is
        // checked and a socketpair brokered per disk; the VMM inherits its
        // ends as fds 4, 5, ... (docs/vios.md).
        let mut definition = state
            .partitions
            .definition(name)
            .cloned()
            .ok_or_else(|| ManagerError::NotFound(name.into()))?;
        // Run as another user: that user must reach the partition's files,
        // checked before anything is brokered or spawned.
        if let Some(user) = &self.cfg.run_as {
            crate::process::check_run_as(&self.cfg, user, &definition)
                .map_err(|e| ManagerError::StartFailed(name.into(), e.to_string()))?;
        }
        let disk_fds = match &mut definition {
            Definition::Partition(def) => {
                let mut fds =
                    crate::vios::broker(&state.partitions, state.grants.table(), name, def)?;
                // A shared-memory partition's paging device: the next
                // two fds (the pager's fault thread and evictor).
                let fd = crate::process::FIRST_DISK_FD + fds.len() as i32;
                fds.extend(state.broker_paging(name, def, fd)?);
                // The dump disk of `on_crash` (docs/dump.md): the next one.
                let fd = crate::process::FIRST_DISK_FD + fds.len() as i32;
                fds.extend(crate::vios::broker_dump(
                    &state.partitions,
                    state.grants.table(),
                    name,
                    def,
                    fd,
                )?);
                fds
            }
            Definition::Vios(_) => Vec::new(),
        };
        let spawned = crate::process::spawn(&self.cfg, name, definition, disk_fds)?;
        let pid = spawned.pid;
        state.partitions.spawned(
            &state.store,
            name,
            generation,
            pid,
            spawned.pid_start,
            spawned.token,
            spawned.writer,
        )?;
        self.changed.notify_all();
        tracing::info!(partition = %name, pid, generation, "VMM spawned");
        let mgr = self.clone();
        let name = name.to_string();
        let (reader, child) = (spawned.reader, spawned.child);
        spawn_thread("channel", move || {
            mgr.read_channel(&name, generation, reader, Some(child))
        });
        Ok(generation)
    }

    fn schedule_restart(self: &Arc<Self>, name: String, epoch: u64, restarts: u32) {
        let delay = backoff(restarts);
        self.events
            .push(parvm_protocol::EventKind::RestartScheduled {
                partition: name.clone(),
                attempt: restarts + 1,
                delay_ms: delay.as_millis() as u64,
            });
        tracing::info!(partition = %name, delay_ms = delay.as_millis() as u64, attempt = restarts + 1, "restarting after a failure");
        let mgr = self.clone();
        spawn_thread("restart", move || {
            std::thread::sleep(delay);
            let state = mgr.lock();
            let mut state = state;
            if !state.partitions.restart_due(&name, epoch) {
                return;
            }
            let (mut state, spawned) = mgr.start_process(state, &name);
            if let Err(e) = spawned {
                tracing::error!(partition = %name, error = %e, "automatic restart failed");
                let st = &mut *state;
                st.partitions
                    .restart_failed(&st.store, &name, format!("restart failed: {e}"));
            }
        });
    }
}

/// The manager's checks of a definition received from a client (they
/// never trust `parctl`'s): its name.
fn checked_name(
    definition: &mut Definition,
    restart: RestartPolicy,
) -> Result<String, ManagerError> {
    let (inner_restart, inner_segments) = definition.take_manager_fields();
    if inner_restart.is_some() || !inner_segments.is_empty() {
        return Err(ManagerError::BadRequest(
            "`restart` and `segments` travel beside the definition, not in it".into(),
        ));
    }
    Ok(match &*definition {
        Definition::Vios(vios) => {
            crate::vios::check(vios)?;
            vios.name.clone()
        }
        Definition::Partition(def) => {
            crate::definition::check(def, restart)
                .map_err(|e| ManagerError::BadRequest(e.to_string()))?
                .config
                .name
        }
    })
}

/// The events of the control channels, routed to the parts.
impl ControlEvents for Manager {
    fn lifecycle(self: &Arc<Self>, name: &str, generation: u64, msg: ToManager) {
        let mut state = self.lock();
        let (store, partitions, grants) = state.parts();
        let became_ready = partitions.on_report(store, name, generation, msg);
        if became_ready {
            // A partition became ready: its segments, doorbells and
            // standing grants; a VIOS that came back: re-broker its
            // running clients' disks.
            let standing = grants.on_ready(partitions, name);
            if !standing.is_empty() {
                let mgr = self.clone();
                let partition = name.to_string();
                spawn_thread("auto-accept", move || {
                    for (cookie, gpa) in standing {
                        if let Err(e) = mgr.accept(&partition, &cookie, Some(gpa)) {
                            tracing::warn!(partition = %partition, error = %e, "standing grant not accepted");
                        }
                    }
                });
            }
            for (client, disk) in crate::vios::on_ready(partitions, grants.table(), name) {
                self.events.push(parvm_protocol::EventKind::ViosReconnect {
                    vios: name.into(),
                    client,
                    disk,
                });
            }
            state.rebroker_paging(name);
            state.place_vcpus(name);
        }
        self.changed.notify_all();
    }

    fn mapping(&self, name: &str, generation: u64, msg: ToManager) {
        let mut state = self.lock();
        if !state.partitions.is_current(name, generation) {
            return;
        }
        let fault = match &msg {
            ToManager::Fault {
                key, gpa, write, ..
            } => key
                .strip_prefix("grant:")
                .and_then(|s| s.parse::<u64>().ok())
                .map(|id| (id, *gpa, *write)),
            _ => None,
        };
        let st = &mut *state;
        st.grants.on_answer(&st.store, name, msg);
        if let Some((id, gpa, write)) = fault {
            if let Some(g) = st.grants.grants_by_id(&[id]).into_iter().next() {
                self.events.push(parvm_protocol::EventKind::GrantFault {
                    id,
                    segment: g.segment,
                    grantee: g.grantee,
                    gpa,
                    write,
                    faults: g.faults,
                });
            }
        }
        self.changed.notify_all();
    }

    fn holding(&self, name: &str, key: &str, gpa: Option<u64>, fds: Vec<OwnedFd>) {
        let mut state = self.lock();
        let (store, partitions, grants) = state.parts();
        grants.adopt(store, partitions, name, key, gpa, fds);
    }

    fn hcall(self: &Arc<Self>, name: &str, generation: u64, seq: u64, call: Hcall) {
        self.guest_hcall(name, generation, seq, call);
    }

    fn memory(&self, name: &str, generation: u64, report: MemoryReport) {
        self.memory_report(name, generation, report);
    }

    fn disk_stats(&self, name: &str, generation: u64, disks: Vec<parvm_protocol::DiskStats>) {
        self.disk_stats_report(name, generation, disks);
    }

    fn dump(&self, name: &str, generation: u64, msg: ToManager) {
        self.dump_report(name, generation, msg);
    }

    /// A process is gone: stopped or crashed, what it held released, the
    /// restart policy applied.
    fn closed(
        self: &Arc<Self>,
        name: &str,
        generation: u64,
        reported: Option<ExitStatus>,
        process: Option<std::process::ExitStatus>,
    ) {
        let mut state = self.lock();
        let st = &mut *state;
        let Some(restart) = st
            .partitions
            .on_exit(&st.store, name, generation, reported, process)
        else {
            return;
        };
        state.partition_exited(name);
        if !state.partitions.contains(name) {
            return;
        }
        self.changed.notify_all();
        if let Some((epoch, restarts)) = restart {
            drop(state);
            self.schedule_restart(name.to_string(), epoch, restarts);
        }
    }
}
