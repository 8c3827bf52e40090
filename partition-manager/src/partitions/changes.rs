//! The partition table's changes: each operator action and process event,
//! written through to the store.

use super::*;

impl PartitionTable {
    /// A partition left active by an earlier manager: its process, if
    /// alive, is awaited (it re-attaches); if dead, it crashed.
    pub(crate) fn recover(
        &mut self,
        store: &Store,
        name: &str,
    ) -> Result<Option<Recovered>, ManagerError> {
        let generation = self.next_generation();
        let Some(p) = self.parts.get_mut(name) else {
            return Ok(None);
        };
        if !p.rec.state.is_active() {
            return Ok(None);
        }
        let alive = p
            .rec
            .pid
            .is_some_and(|pid| process_alive(pid, p.rec.pid_start));
        match (alive, p.rec.pid) {
            (true, Some(pid)) => {
                tracing::info!(partition = %name, pid, "VMM still running; waiting for it to re-attach");
                let mut run = Runtime::new(generation, pid, None);
                run.ready_at = Some(Instant::now());
                run.stop_requested = p.rec.state == PartitionState::Stopping;
                p.run = Some(run);
                p.ready_generation = generation;
                Ok(Some(Recovered::Detached {
                    generation,
                    pid,
                    start: p.rec.pid_start,
                }))
            }
            _ => {
                tracing::warn!(partition = %name, pid = ?p.rec.pid, "VMM died while the manager was down");
                self.events.state(
                    name,
                    p.rec.state,
                    PartitionState::Crashed,
                    Some("vmm exited while the manager was down"),
                );
                p.rec.state = PartitionState::Crashed;
                p.rec.last_exit = Some("vmm exited while the manager was down".into());
                p.rec.pid = None;
                p.rec.pid_start = None;
                p.rec.token = None;
                p.rec.since = now_secs();
                store.put(&p.rec)?;
                let restart = (p.rec.restart == RestartPolicy::OnFailure)
                    .then_some((p.epoch, p.rec.restarts));
                Ok(Some(Recovered::Dead { restart }))
            }
        }
    }

    /// `AlreadyExists` if `name` is defined.
    pub(crate) fn check_new(&self, name: &str) -> Result<(), ManagerError> {
        match self.parts.contains_key(name) {
            true => Err(ManagerError::AlreadyExists(name.into())),
            false => Ok(()),
        }
    }

    /// Records and adds a new partition.
    pub(crate) fn define(
        &mut self,
        store: &Store,
        name: &str,
        definition: Definition,
        restart: RestartPolicy,
    ) -> Result<PartitionStatus, ManagerError> {
        let p = Partition::defined(name, definition, restart);
        store.put(&p.rec)?;
        self.events.push(parvm_protocol::EventKind::Defined {
            partition: name.into(),
        });
        let status = status_of(&self.cfg, &p);
        self.parts.insert(name.into(), p);
        Ok(status)
    }

    /// Replaces a VMM partition's `cpu` section (recorded).
    pub(crate) fn set_cpu(
        &mut self,
        store: &Store,
        name: &str,
        cpu: parvm_config::CpuSpec,
    ) -> Result<(), ManagerError> {
        let p = self.get_mut(name)?;
        let Definition::Partition(def) = &mut p.rec.definition else {
            return Err(ManagerError::NotFound(name.into()));
        };
        let before = def.cpu.replace(cpu);
        if let Err(e) = store.put(&p.rec) {
            if let Definition::Partition(def) = &mut p.rec.definition {
                def.cpu = before;
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Forgets an inactive partition.
    pub(crate) fn undefine(&mut self, store: &Store, name: &str) -> Result<(), ManagerError> {
        let p = self.get(name)?;
        if p.rec.state.is_active() {
            return Err(ManagerError::InvalidState {
                name: name.into(),
                state: p.rec.state,
                message: "stop it before undefining it",
            });
        }
        store.remove(name)?;
        self.parts.remove(name);
        self.events.push(parvm_protocol::EventKind::Undefined {
            partition: name.into(),
        });
        Ok(())
    }

    /// A new stored definition (only while not active) and/or restart
    /// policy (any time).
    pub(crate) fn update(
        &mut self,
        store: &Store,
        name: &str,
        definition: Option<Definition>,
        restart: Option<RestartPolicy>,
    ) -> Result<PartitionStatus, ManagerError> {
        let p = self
            .parts
            .get_mut(name)
            .ok_or_else(|| ManagerError::NotFound(name.into()))?;
        if definition.is_some() && p.rec.state.is_active() {
            return Err(ManagerError::InvalidState {
                name: name.into(),
                state: p.rec.state,
                message:
                    "stop it before changing its definition (only --restart changes while it runs)",
            });
        }
        let mut rec = p.rec.clone();
        if let Some(d) = definition {
            rec.definition = d;
        }
        if let Some(r) = restart {
            rec.restart = r;
        }
        store.put(&rec)?;
        p.rec = rec;
        let status = status_of(&self.cfg, p);
        self.events.push(parvm_protocol::EventKind::Updated {
            partition: name.into(),
        });
        Ok(status)
    }

    /// An operator start: refused if active; a new epoch, restarts
    /// counted from 0.
    pub(crate) fn begin_start(&mut self, name: &str) -> Result<(), ManagerError> {
        let p = self.get_mut(name)?;
        if p.rec.state.is_active() {
            return Err(ManagerError::InvalidState {
                name: name.into(),
                state: p.rec.state,
                message: "it is already running",
            });
        }
        p.epoch += 1;
        p.rec.restarts = 0;
        Ok(())
    }

    /// The process of run `generation` was spawned: the partition starts.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn spawned(
        &mut self,
        store: &Store,
        name: &str,
        generation: u64,
        pid: u32,
        pid_start: Option<u64>,
        token: String,
        writer: Channel,
    ) -> Result<(), ManagerError> {
        let events = self.events.clone();
        let p = self.get_mut(name)?;
        p.run = Some(Runtime::new(generation, pid, Some(writer)));
        events.state(name, p.rec.state, PartitionState::Starting, None);
        p.rec.state = PartitionState::Starting;
        p.rec.pid = Some(pid);
        p.rec.pid_start = pid_start;
        p.rec.token = Some(token);
        p.rec.since = now_secs();
        store.put(&p.rec)?;
        Ok(())
    }

    pub(crate) fn start_progress(
        &self,
        name: &str,
        generation: u64,
    ) -> Result<StartProgress, ManagerError> {
        let p = self.get(name)?;
        if p.ready_generation == generation {
            return Ok(StartProgress::Ready(Box::new(status_of(&self.cfg, p))));
        }
        if p.run.as_ref().is_some_and(|r| r.generation == generation) {
            return Ok(StartProgress::Starting);
        }
        let why = p.rec.last_exit.clone().unwrap_or_else(|| "unknown".into());
        Ok(StartProgress::Failed(why))
    }

    /// A start took too long: its process is killed and the run ends
    /// crashed with `why`. Whether there was a process.
    pub(crate) fn start_timed_out(&mut self, name: &str, why: &str) -> bool {
        let Some(run) = self.parts.get_mut(name).and_then(|p| p.run.as_mut()) else {
            return false;
        };
        run.outcome = Some((PartitionState::Crashed, why.into()));
        send_signal(run.pid, libc::SIGKILL);
        true
    }

    /// Orderly stop: `Stop` on the control channel (SIGTERM if none); the
    /// partition is stopping. Returns the run and pid to wait for.
    pub(crate) fn request_stop(
        &mut self,
        store: &Store,
        name: &str,
    ) -> Result<(u64, u32), ManagerError> {
        let events = self.events.clone();
        let p = self.active(name, "it is not running")?;
        p.epoch += 1;
        let is_vios = p.rec.definition.is_vios();
        let Some(run) = p.run.as_mut() else {
            return Err(ManagerError::NotFound(name.into()));
        };
        run.stop_requested = true;
        let (generation, pid) = (run.generation, run.pid);
        let sent = run.writer.as_ref().is_some_and(|w| match is_vios {
            true => w.send(&ManagerToVios::Stop, &[]).is_ok(),
            false => w.send(&ManagerToVmm::Stop, &[]).is_ok(),
        });
        if !sent {
            send_signal(pid, libc::SIGTERM);
        }
        events.state(name, p.rec.state, PartitionState::Stopping, None);
        p.rec.state = PartitionState::Stopping;
        p.rec.since = now_secs();
        store.put(&p.rec)?;
        Ok((generation, pid))
    }

    /// SIGKILL to the process; the run ends stopped (no restart). Returns
    /// the run and pid to wait for.
    pub(crate) fn kill(&mut self, name: &str) -> Result<(u64, u32), ManagerError> {
        let p = self.active(name, "it is not running")?;
        p.epoch += 1;
        let Some(run) = p.run.as_mut() else {
            return Err(ManagerError::NotFound(name.into()));
        };
        run.killed = true;
        let (generation, pid) = (run.generation, run.pid);
        tracing::info!(partition = %name, pid, "killing the VMM");
        send_signal(pid, libc::SIGKILL);
        Ok((generation, pid))
    }

    /// Sends `Pause` (or `Resume`) after checking the state allows it.
    /// Returns the run and the state to wait for.
    pub(crate) fn send_pause(
        &mut self,
        name: &str,
        pause: bool,
    ) -> Result<(u64, PartitionState), ManagerError> {
        let p = self.active(name, "it is not running")?;
        let (want_from, want_to, msg) = if pause {
            (
                PartitionState::Running,
                PartitionState::Paused,
                ManagerToVmm::Pause,
            )
        } else {
            (
                PartitionState::Paused,
                PartitionState::Running,
                ManagerToVmm::Resume,
            )
        };
        if p.rec.state != want_from {
            return Err(ManagerError::InvalidState {
                name: name.into(),
                state: p.rec.state,
                message: if pause {
                    "only a running partition can be paused"
                } else {
                    "only a paused partition can be resumed"
                },
            });
        }
        let is_vios = p.rec.definition.is_vios();
        let Some(run) = p.run.as_mut() else {
            return Err(ManagerError::NotFound(name.into()));
        };
        let Some(w) = run.writer.as_ref() else {
            return Err(ManagerError::InvalidState {
                name: name.into(),
                state: p.rec.state,
                message: "its VMM has not re-attached yet",
            });
        };
        if is_vios {
            return Err(ManagerError::Control(
                name.into(),
                "a VIOS partition cannot be paused".into(),
            ));
        }
        run.failure = None;
        w.send(&msg, &[])
            .map_err(|e| ManagerError::Control(name.into(), e.to_string()))?;
        Ok((run.generation, want_to))
    }

    /// Where a pause (resume) of run `generation` stands: the status once
    /// in `want`, `None` while waiting, an error if the VMM refused or
    /// exited.
    pub(crate) fn pause_progress(
        &self,
        name: &str,
        generation: u64,
        want: PartitionState,
    ) -> Result<Option<PartitionStatus>, ManagerError> {
        let p = self.get(name)?;
        match p.run.as_ref() {
            Some(r) if r.generation == generation => {
                if let Some(f) = &r.failure {
                    return Err(ManagerError::Control(name.into(), f.clone()));
                }
            }
            _ => return Err(ManagerError::Control(name.into(), "the VMM exited".into())),
        }
        Ok((p.rec.state == want).then(|| status_of(&self.cfg, p)))
    }

    /// A pause of run `generation` timed out: `Resume` is sent behind it,
    /// so that a VMM that carries out the pause late resumes at once (its
    /// `Paused`, then `Resumed`, keep the reported state in step).
    pub(crate) fn cancel_pause(&self, name: &str, generation: u64) {
        if let Some(w) = self.writer_of(name, generation) {
            match w.send(&ManagerToVmm::Resume, &[]) {
                Ok(()) => {
                    tracing::warn!(partition = %name, "pause timed out; resume sent behind it")
                }
                Err(e) => {
                    tracing::warn!(partition = %name, error = %e, "pause timed out; cannot cancel it")
                }
            }
        }
    }

    /// Bytes for the guest console (none for a VIOS).
    pub(crate) fn console_input(&mut self, name: &str, data: Vec<u8>) -> Result<(), ManagerError> {
        let p = self.active(name, "it is not running")?;
        if p.rec.definition.is_vios() {
            // A VIOS has no console.
            return Ok(());
        }
        if let Some(w) = p.run.as_ref().and_then(|r| r.writer.as_ref()) {
            w.send(&ManagerToVmm::ConsoleInput { data }, &[])
                .map_err(|e| ManagerError::Control(name.into(), e.to_string()))?;
        }
        Ok(())
    }

    /// A VMM re-attaches: checks token and peer pid, then makes `chan` its
    /// control channel. Returns the generation to read it under.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attach(
        &mut self,
        store: &Store,
        name: &str,
        pid: u32,
        token: &str,
        paused: bool,
        peer_pid: Option<u32>,
        chan: &Channel,
    ) -> Result<u64, ManagerError> {
        let events = self.events.clone();
        let p = self.get_mut(name)?;
        let deny = |why: &str| {
            tracing::warn!(partition = %name, pid, ?peer_pid, why, "re-attach refused");
            ManagerError::PermissionDenied(format!("cannot attach to partition `{name}`: {why}"))
        };
        let Some(run) = p.run.as_mut() else {
            return Err(deny("the registry has no running VMM for it"));
        };
        if run.pid != pid || peer_pid != Some(pid) {
            return Err(deny("process id does not match"));
        }
        let expected = p.rec.token.as_deref().unwrap_or_default();
        if expected.is_empty() || !constant_time_eq(expected.as_bytes(), token.as_bytes()) {
            return Err(deny("wrong token"));
        }
        if run.writer.is_some() {
            return Err(deny("already attached"));
        }
        let writer = chan.try_clone().map_err(|source| ManagerError::Io {
            what: "cannot clone the control socket".into(),
            source,
        })?;
        let _ = writer
            .stream()
            .set_write_timeout(Some(Duration::from_secs(2)));
        run.writer = Some(writer);
        let generation = run.generation;
        if !run.stop_requested {
            let to = if paused {
                PartitionState::Paused
            } else {
                PartitionState::Running
            };
            events.state(name, p.rec.state, to, None);
            p.rec.state = to;
        }
        events.push(parvm_protocol::EventKind::Reattached {
            partition: name.into(),
            pid,
        });
        p.ready_generation = generation;
        p.rec.since = now_secs();
        store.put(&p.rec)?;
        tracing::info!(partition = %name, pid, "VMM re-attached");
        Ok(generation)
    }

    /// Whether run `generation` is `name`'s current one.
    pub(crate) fn is_current(&self, name: &str, generation: u64) -> bool {
        self.live_generation(name) == Some(generation)
    }

    /// A lifecycle report of run `generation`. Returns whether the
    /// partition just became ready (starting → running).
    pub(crate) fn on_report(
        &mut self,
        store: &Store,
        name: &str,
        generation: u64,
        msg: ToManager,
    ) -> bool {
        let Some(p) = self.parts.get_mut(name) else {
            return false;
        };
        let Some(run) = p.run.as_mut().filter(|r| r.generation == generation) else {
            return false;
        };
        let new_state = match msg {
            ToManager::Hello {
                version,
                name: vname,
                pid,
            } => {
                if vname != name || pid != run.pid {
                    tracing::warn!(partition = %name, vmm_name = %vname, pid, "VMM introduced itself with another name or pid");
                }
                tracing::debug!(partition = %name, pid, version, "VMM hello");
                None
            }
            ToManager::Ready => {
                run.ready_at = Some(Instant::now());
                p.ready_generation = generation;
                tracing::info!(partition = %name, pid = run.pid, "partition running");
                (p.rec.state == PartitionState::Starting).then_some(PartitionState::Running)
            }
            ToManager::Paused => Some(PartitionState::Paused),
            ToManager::Resumed => Some(PartitionState::Running),
            ToManager::Exit { status, code } => {
                tracing::info!(partition = %name, status = %status.describe(), code, "VMM exiting");
                None
            }
            ToManager::Failed { message } => {
                tracing::warn!(partition = %name, %message, "VMM reports a failed request");
                run.failure = Some(message);
                None
            }
            ToManager::Exports { exports } => {
                tracing::debug!(partition = %name, exports = exports.len(), "VIOS exports reported");
                p.exports = Some(exports);
                None
            }
            other => {
                tracing::debug!(partition = %name, msg = ?other, "unexpected VMM message ignored");
                None
            }
        };
        let is_ready =
            new_state == Some(PartitionState::Running) && p.rec.state == PartitionState::Starting;
        if let Some(state) = new_state {
            if p.rec.state != PartitionState::Stopping {
                self.events.state(name, p.rec.state, state, None);
                p.rec.state = state;
                p.rec.since = now_secs();
                put(store, &p.rec, "state");
            }
        }
        is_ready
    }

    /// The process of run `generation` is gone: stopped or crashed (see
    /// [`restart::classify`]). `None` if that run was not the current one;
    /// else `Some(restart)`: the epoch and count of an automatic restart
    /// to schedule, if due.
    pub(crate) fn on_exit(
        &mut self,
        store: &Store,
        name: &str,
        generation: u64,
        reported: Option<ExitStatus>,
        process: Option<std::process::ExitStatus>,
    ) -> Option<Option<(u64, u32)>> {
        let p = self.parts.get_mut(name)?;
        if p.run.as_ref().is_none_or(|r| r.generation != generation) {
            return None;
        }
        let run = p.run.take()?;
        let end = RunEnd {
            outcome: run.outcome.as_ref(),
            killed: run.killed,
            stop_requested: run.stop_requested,
            ready_at: run.ready_at,
            attached: run.writer.is_some(),
        };
        let (state, reason) = restart::classify(&end, reported, process, &self.cfg.vmm_log(name));
        tracing::info!(partition = %name, pid = run.pid, %state, %reason, "VMM exited");
        let from = p.rec.state;
        p.rec.state = state;
        p.rec.last_exit = Some(reason);
        p.rec.pid = None;
        p.rec.pid_start = None;
        p.rec.token = None;
        p.rec.since = now_secs();
        let policy = restart::policy(p.rec.restart, &p.rec.definition);
        let automatic = restart::is_automatic(state, policy, run.ready_at);
        if automatic {
            if restart::was_healthy(run.ready_at) {
                p.rec.restarts = 0;
            }
            if p.rec.restarts >= MAX_RESTARTS {
                if let Some(r) = p.rec.last_exit.as_mut() {
                    r.push_str(&format!(" (gave up after {MAX_RESTARTS} restarts)"));
                }
            }
        }
        put(store, &p.rec, "exit");
        self.events
            .state(name, from, state, p.rec.last_exit.as_deref());
        let due = automatic && p.rec.restarts < MAX_RESTARTS;
        Some(due.then_some((p.epoch, p.rec.restarts)))
    }

    /// An automatic restart's delay is over: whether it is still due (same
    /// epoch, still crashed); if so it is counted.
    pub(crate) fn restart_due(&mut self, name: &str, epoch: u64) -> bool {
        let Some(p) = self.parts.get_mut(name) else {
            return false;
        };
        if p.epoch != epoch || p.rec.state != PartitionState::Crashed {
            return false;
        }
        p.rec.restarts += 1;
        true
    }

    pub(crate) fn restart_failed(&mut self, store: &Store, name: &str, why: String) {
        if let Some(p) = self.parts.get_mut(name) {
            p.rec.last_exit = Some(why);
            let _ = store.put(&p.rec);
        }
    }
}
