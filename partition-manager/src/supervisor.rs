//! The partition table and the VMM processes behind it.
//!
//! [`Manager`] holds every partition (its stored [`Record`] and, while a VMM
//! lives, a [`Runtime`]) under one lock, writing each change through to the
//! [`Store`] before waking anyone waiting on [`Manager::changed`]. Threads:
//!
//! - one *channel thread* per live VMM reads its control channel
//!   (`Hello`, `Ready`, `Paused`, `Resumed`, `Exit`) and, at EOF, reaps the
//!   process if it is ours and records how it ended ([`Manager::on_exit`]);
//! - a *watcher thread* per VMM found alive at manager start polls its pid
//!   until the VMM re-attaches (then its channel thread takes over);
//! - a *restart thread* sleeps out the backoff of an on-failure restart.
//!
//! Operator requests ([`Manager::start`] etc.) run on the client's thread and
//! wait on the condition variable for the state they expect.

use crate::grants::{GrantError, GrantTable};
use crate::sharing::Ack;
use crate::store::{Record, Store, StoreError};
use parvm_config::{Console, Definition, DEFAULT_MEMORY_MIB, DEFAULT_VCPUS};
use parvm_protocol::{
    Channel, ErrorKind, ExitStatus, ManagerToVios, ManagerToVmm, PartitionState, PartitionStatus,
    ProtocolError, RestartPolicy, ToManager, TOKEN_ENV,
};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// Most automatic restarts in a row before the manager gives up.
pub const MAX_RESTARTS: u32 = 10;
/// First restart delay; doubled for each further restart in a row.
pub const RESTART_BACKOFF: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A partition that ran this long before crashing starts a new series.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("no partition named `{0}`")]
    NotFound(String),
    #[error("a partition named `{0}` is already defined")]
    AlreadyExists(String),
    #[error("partition `{name}` is {state}: {message}")]
    InvalidState {
        name: String,
        state: PartitionState,
        message: &'static str,
    },
    #[error("partition `{0}` did not start: {1}")]
    StartFailed(String, String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start vmm {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("partition `{0}`: {1}")]
    Control(String, String),
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// The grantee's VMM refused a mapping.
    #[error("partition `{name}` cannot map it: {message}")]
    Map {
        name: String,
        message: String,
        conflict: bool,
    },
}

impl ManagerError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ManagerError::NotFound(_) => ErrorKind::NotFound,
            ManagerError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            ManagerError::InvalidState { .. } => ErrorKind::InvalidState,
            ManagerError::StartFailed(..) => ErrorKind::StartFailed,
            ManagerError::BadRequest(_) => ErrorKind::BadRequest,
            ManagerError::PermissionDenied(_) => ErrorKind::PermissionDenied,
            ManagerError::Store(_)
            | ManagerError::Spawn { .. }
            | ManagerError::Io { .. }
            | ManagerError::Control(..) => ErrorKind::Internal,
            ManagerError::Grant(e) => e.kind(),
            ManagerError::Map { conflict: true, .. } => ErrorKind::GpaConflict,
            ManagerError::Map { .. } => ErrorKind::BadRequest,
        }
    }
}

/// Where the manager keeps things and how long it waits.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The listening socket (VMMs reconnect here).
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// The vmm binary.
    pub vmm: PathBuf,
    /// How long a start may take until the VMM reports ready.
    pub ready_timeout: Duration,
    /// How long a stop may take before the VMM is killed.
    pub stop_timeout: Duration,
}

impl ManagerConfig {
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    pub fn console_log(&self, name: &str) -> PathBuf {
        self.logs_dir().join(format!("{name}.log"))
    }
    pub fn vmm_log(&self, name: &str) -> PathBuf {
        self.logs_dir().join(format!("{name}.vmm.log"))
    }
    fn definition_file(&self, name: &str) -> PathBuf {
        self.state_dir
            .join("partitions")
            .join(format!("{name}.json"))
    }
}

/// A live VMM.
pub(crate) struct Runtime {
    pub(crate) generation: u64,
    pub(crate) pid: u32,
    /// Write side of the control channel; `None` until a VMM found at
    /// manager start re-attaches.
    pub(crate) writer: Option<Channel>,
    ready_at: Option<Instant>,
    stop_requested: bool,
    killed: bool,
    /// Set when the manager itself decides how this run ends.
    outcome: Option<(PartitionState, String)>,
    /// The last `Failed` message of the VMM.
    failure: Option<String>,
}

pub(crate) struct Partition {
    pub(crate) rec: Record,
    pub(crate) run: Option<Runtime>,
    /// Bumped by every operator action: a pending automatic restart from
    /// an older epoch is dropped.
    epoch: u64,
    /// The last generation that reported ready.
    ready_generation: u64,
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) parts: BTreeMap<String, Partition>,
    next_generation: u64,
    /// Segments and grants (see [`crate::grants`]).
    pub(crate) table: GrantTable,
    /// Answers of VMMs to `Map`/`Unmap`, by (partition, key), until the
    /// waiting request takes them.
    pub(crate) acks: HashMap<(String, String), Ack>,
}

pub struct Manager {
    pub cfg: ManagerConfig,
    pub(crate) inner: Mutex<Inner>,
    pub(crate) changed: Condvar,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The start time of process `pid` (clock ticks after boot), to tell a
/// process from a later one that reuses its pid.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces and ')').
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state); starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` started at `start` is still alive (not a zombie).
fn process_alive(pid: u32, start: Option<u64>) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let state = stat[close + 1..].split_whitespace().next();
    if matches!(state, Some("Z") | Some("X")) {
        return false;
    }
    start.is_none() || process_start_time(pid) == start
}

/// 128 random bits, hex.
fn random_token() -> Result<String, std::io::Error> {
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: getrandom writes at most the given length into the buffer.
        let n = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), buf.len() - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn send_signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid the registry believes is our VMM.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// The last non-empty line of a file (the vmm's error on a failed start).
fn last_line(path: &Path) -> Option<String> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut s = String::new();
    f.read_to_string(&mut s).ok()?;
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}

fn backoff(restarts: u32) -> Duration {
    RESTART_BACKOFF
        .saturating_mul(1u32 << restarts.min(16))
        .min(RESTART_BACKOFF_MAX)
}

fn status_of(cfg: &ManagerConfig, p: &Partition) -> PartitionStatus {
    // A VIOS partition (docs/vios.md) has no vCPUs or guest RAM: 0.
    let (vcpus, memory_mib, kernel, exports) = match &p.rec.definition {
        Definition::Partition(d) => (
            d.vcpus.unwrap_or(DEFAULT_VCPUS),
            d.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
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
        console_log: cfg.console_log(&p.rec.name).display().to_string(),
        since: p.rec.since,
        kind: p.rec.definition.kind().map(str::to_string),
        exports,
    }
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
        let mut table = GrantTable::load(
            store.all_segments()?,
            store.all_grants()?,
            store.all_doorbells()?,
        );
        let mut parts = BTreeMap::new();
        for rec in store.all()? {
            crate::vios::register_blocks(&mut table, &rec.definition);
            parts.insert(
                rec.name.clone(),
                Partition {
                    rec,
                    run: None,
                    epoch: 0,
                    ready_generation: 0,
                },
            );
        }
        let mgr = Arc::new(Manager {
            cfg,
            inner: Mutex::new(Inner {
                store,
                parts,
                next_generation: 1,
                table,
                acks: HashMap::new(),
            }),
            changed: Condvar::new(),
        });
        mgr.recover()?;
        Ok(mgr)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn recover(self: &Arc<Self>) -> Result<(), ManagerError> {
        let mut inner = self.lock();
        let names: Vec<String> = inner.parts.keys().cloned().collect();
        for name in names {
            let generation = inner.next_generation;
            inner.next_generation += 1;
            let Inner { store, parts, .. } = &mut *inner;
            let Some(p) = parts.get_mut(&name) else {
                continue;
            };
            if !p.rec.state.is_active() {
                continue;
            }
            let alive = p
                .rec
                .pid
                .is_some_and(|pid| process_alive(pid, p.rec.pid_start));
            match (alive, p.rec.pid) {
                (true, Some(pid)) => {
                    tracing::info!(partition = %name, pid, "VMM still running; waiting for it to re-attach");
                    p.run = Some(Runtime {
                        generation,
                        pid,
                        writer: None,
                        ready_at: Some(Instant::now()),
                        stop_requested: p.rec.state == PartitionState::Stopping,
                        killed: false,
                        outcome: None,
                        failure: None,
                    });
                    p.ready_generation = generation;
                    let mgr = self.clone();
                    let start = p.rec.pid_start;
                    spawn_thread("watch", move || {
                        mgr.watch_detached(name, generation, pid, start)
                    });
                }
                _ => {
                    tracing::warn!(partition = %name, pid = ?p.rec.pid, "VMM died while the manager was down");
                    p.rec.state = PartitionState::Crashed;
                    p.rec.last_exit = Some("vmm exited while the manager was down".into());
                    p.rec.pid = None;
                    p.rec.pid_start = None;
                    p.rec.token = None;
                    p.rec.since = now_secs();
                    store.put(&p.rec)?;
                    crate::sharing::release_held(&mut inner, &name);
                    let Some(p) = inner.parts.get(&name) else {
                        continue;
                    };
                    if p.rec.restart == RestartPolicy::OnFailure {
                        let (epoch, restarts) = (p.epoch, p.rec.restarts);
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
            {
                let inner = self.lock();
                let Some(run) = inner.parts.get(&name).and_then(|p| p.run.as_ref()) else {
                    return;
                };
                if run.generation != generation || run.writer.is_some() {
                    return;
                }
            }
            if !process_alive(pid, start) {
                self.on_exit(&name, generation, None, None);
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
    ) -> Result<PartitionStatus, ManagerError> {
        let (inner_restart, inner_segments) = definition.take_manager_fields();
        if inner_restart.is_some() || !inner_segments.is_empty() {
            return Err(ManagerError::BadRequest(
                "`restart` and `segments` travel beside the definition, not in it".into(),
            ));
        }
        let name = match &definition {
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
        };
        let mut inner = self.lock();
        if inner.parts.contains_key(&name) {
            return Err(ManagerError::AlreadyExists(name));
        }
        let created = crate::sharing::create_declared(&mut inner, &name, segments)?;
        let rec = Record {
            name: name.clone(),
            definition,
            restart,
            state: PartitionState::Defined,
            last_exit: None,
            pid: None,
            pid_start: None,
            token: None,
            restarts: 0,
            since: now_secs(),
        };
        inner.store.put(&rec)?;
        for seg in &created {
            inner.store.put_segment(seg)?;
        }
        tracing::info!(partition = %name, %restart, segments = created.len(), "partition defined");
        let p = Partition {
            rec,
            run: None,
            epoch: 0,
            ready_generation: 0,
        };
        crate::vios::register_blocks(&mut inner.table, &p.rec.definition);
        let status = status_of(&self.cfg, &p);
        inner.parts.insert(name, p);
        Ok(status)
    }

    pub fn undefine(&self, name: &str) -> Result<(), ManagerError> {
        let mut inner = self.lock();
        let p = inner
            .parts
            .get(name)
            .ok_or_else(|| ManagerError::NotFound(name.into()))?;
        if p.rec.state.is_active() {
            return Err(ManagerError::InvalidState {
                name: name.into(),
                state: p.rec.state,
                message: "stop it before undefining it",
            });
        }
        inner.store.remove(name)?;
        inner.parts.remove(name);
        crate::sharing::forget_owner(&mut inner, name)?;
        let _ = std::fs::remove_file(self.cfg.definition_file(name));
        tracing::info!(partition = %name, "partition undefined");
        self.changed.notify_all();
        Ok(())
    }

    pub fn list(&self) -> Vec<PartitionStatus> {
        let inner = self.lock();
        inner
            .parts
            .values()
            .map(|p| status_of(&self.cfg, p))
            .collect()
    }

    pub fn status(&self, name: &str) -> Result<PartitionStatus, ManagerError> {
        let inner = self.lock();
        inner
            .parts
            .get(name)
            .map(|p| status_of(&self.cfg, p))
            .ok_or_else(|| ManagerError::NotFound(name.into()))
    }

    /// Starts a partition; returns once it is running (or has already run
    /// and stopped), or fails with the reason.
    pub fn start(self: &Arc<Self>, name: &str) -> Result<PartitionStatus, ManagerError> {
        let mut inner = self.lock();
        let p = inner
            .parts
            .get_mut(name)
            .ok_or_else(|| ManagerError::NotFound(name.into()))?;
        if p.rec.state.is_active() {
            return Err(ManagerError::InvalidState {
                name: name.into(),
                state: p.rec.state,
                message: "it is already running",
            });
        }
        p.epoch += 1;
        p.rec.restarts = 0;
        let generation = self.spawn(&mut inner, name)?;
        let deadline = Instant::now() + self.cfg.ready_timeout;
        loop {
            let Some(p) = inner.parts.get_mut(name) else {
                return Err(ManagerError::NotFound(name.into()));
            };
            if p.ready_generation == generation {
                return Ok(status_of(&self.cfg, p));
            }
            let still_starting = p.run.as_ref().is_some_and(|r| r.generation == generation);
            if !still_starting {
                let why = p.rec.last_exit.clone().unwrap_or_else(|| "unknown".into());
                return Err(ManagerError::StartFailed(name.into(), why));
            }
            let now = Instant::now();
            if now >= deadline {
                if let Some(run) = p.run.as_mut() {
                    let msg = format!(
                        "did not report ready within {} ms",
                        self.cfg.ready_timeout.as_millis()
                    );
                    run.outcome = Some((PartitionState::Crashed, msg.clone()));
                    send_signal(run.pid, libc::SIGKILL);
                    return Err(ManagerError::StartFailed(name.into(), msg));
                }
            }
            inner = self.wait(inner, deadline.saturating_duration_since(now));
        }
    }

    pub(crate) fn wait<'a>(
        &self,
        guard: MutexGuard<'a, Inner>,
        timeout: Duration,
    ) -> MutexGuard<'a, Inner> {
        let timeout = timeout.max(Duration::from_millis(1));
        match self.changed.wait_timeout(guard, timeout) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        }
    }

    /// Waits (lock released meanwhile) until no VMM of `generation` runs.
    fn wait_gone<'a>(
        &self,
        mut inner: MutexGuard<'a, Inner>,
        name: &str,
        generation: u64,
        timeout: Duration,
    ) -> (MutexGuard<'a, Inner>, bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let gone = inner
                .parts
                .get(name)
                .and_then(|p| p.run.as_ref())
                .is_none_or(|r| r.generation != generation);
            if gone {
                return (inner, true);
            }
            let now = Instant::now();
            if now >= deadline {
                return (inner, false);
            }
            inner = self.wait(inner, deadline - now);
        }
    }

    fn active_run<'a>(
        inner: &'a mut Inner,
        name: &str,
        message: &'static str,
    ) -> Result<&'a mut Partition, ManagerError> {
        let p = inner
            .parts
            .get_mut(name)
            .ok_or_else(|| ManagerError::NotFound(name.into()))?;
        if p.run.is_none() {
            return Err(ManagerError::InvalidState {
                name: name.into(),
                state: p.rec.state,
                message,
            });
        }
        Ok(p)
    }

    /// Orderly stop: `Stop` on the control channel (SIGTERM if none), then
    /// SIGKILL after the stop timeout.
    pub fn stop(&self, name: &str) -> Result<PartitionStatus, ManagerError> {
        let mut inner = self.lock();
        let p = Self::active_run(&mut inner, name, "it is not running")?;
        p.epoch += 1;
        let Some(run) = p.run.as_mut() else {
            return Err(ManagerError::NotFound(name.into()));
        };
        run.stop_requested = true;
        let (generation, pid) = (run.generation, run.pid);
        let is_vios = p.rec.definition.is_vios();
        let sent = run.writer.as_ref().is_some_and(|w| match is_vios {
            true => w.send(&ManagerToVios::Stop, &[]).is_ok(),
            false => w.send(&ManagerToVmm::Stop, &[]).is_ok(),
        });
        if !sent {
            send_signal(pid, libc::SIGTERM);
        }
        p.rec.state = PartitionState::Stopping;
        p.rec.since = now_secs();
        let rec = p.rec.clone();
        inner.store.put(&rec)?;
        self.changed.notify_all();
        tracing::info!(partition = %name, pid, "stopping");
        let (inner, gone) = self.wait_gone(inner, name, generation, self.cfg.stop_timeout);
        let inner = if gone {
            inner
        } else {
            tracing::warn!(partition = %name, pid, "VMM did not stop in time; killing it");
            send_signal(pid, libc::SIGKILL);
            self.wait_gone(inner, name, generation, Duration::from_secs(5))
                .0
        };
        inner
            .parts
            .get(name)
            .map(|p| status_of(&self.cfg, p))
            .ok_or_else(|| ManagerError::NotFound(name.into()))
    }

    /// SIGKILL to the VMM; the partition ends stopped (no restart).
    pub fn kill(&self, name: &str) -> Result<PartitionStatus, ManagerError> {
        let mut inner = self.lock();
        let p = Self::active_run(&mut inner, name, "it is not running")?;
        p.epoch += 1;
        let Some(run) = p.run.as_mut() else {
            return Err(ManagerError::NotFound(name.into()));
        };
        run.killed = true;
        let (generation, pid) = (run.generation, run.pid);
        tracing::info!(partition = %name, pid, "killing the VMM");
        send_signal(pid, libc::SIGKILL);
        let (inner, _) = self.wait_gone(inner, name, generation, Duration::from_secs(5));
        inner
            .parts
            .get(name)
            .map(|p| status_of(&self.cfg, p))
            .ok_or_else(|| ManagerError::NotFound(name.into()))
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
        let mut inner = self.lock();
        let p = Self::active_run(&mut inner, name, "it is not running")?;
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
        let generation = run.generation;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let p = inner
                .parts
                .get(name)
                .ok_or_else(|| ManagerError::NotFound(name.into()))?;
            match p.run.as_ref() {
                Some(r) if r.generation == generation => {
                    if let Some(f) = &r.failure {
                        return Err(ManagerError::Control(name.into(), f.clone()));
                    }
                }
                _ => return Err(ManagerError::Control(name.into(), "the VMM exited".into())),
            }
            if p.rec.state == want_to {
                return Ok(status_of(&self.cfg, p));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ManagerError::Control(
                    name.into(),
                    "the VMM did not answer".into(),
                ));
            }
            inner = self.wait(inner, deadline - now);
        }
    }

    /// Bytes for the guest console.
    pub fn console_input(&self, name: &str, data: Vec<u8>) -> Result<(), ManagerError> {
        let mut inner = self.lock();
        let p = Self::active_run(&mut inner, name, "it is not running")?;
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

    /// The generation of the live VMM of `name`, if any.
    pub fn live_generation(&self, name: &str) -> Option<u64> {
        self.lock()
            .parts
            .get(name)
            .and_then(|p| p.run.as_ref())
            .map(|r| r.generation)
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
        let mut inner = self.lock();
        let Inner { store, parts, .. } = &mut *inner;
        let p = parts
            .get_mut(name)
            .ok_or_else(|| ManagerError::NotFound(name.into()))?;
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
            p.rec.state = if paused {
                PartitionState::Paused
            } else {
                PartitionState::Running
            };
        }
        p.ready_generation = generation;
        p.rec.since = now_secs();
        store.put(&p.rec)?;
        self.changed.notify_all();
        tracing::info!(partition = %name, pid, "VMM re-attached");
        Ok(generation)
    }

    // ---- VMM processes ----------------------------------------------------

    /// Spawns the VMM of `name` (lock held) and its channel thread.
    fn spawn(self: &Arc<Self>, inner: &mut Inner, name: &str) -> Result<u64, ManagerError> {
        let generation = inner.next_generation;
        inner.next_generation += 1;
        // Disks served by a VIOS (`vios:<vios>/<disk>`): the grant is
        // checked and a socketpair brokered per disk; the VMM inherits its
        // ends as fds 4, 5, ... (docs/vios.md).
        let mut definition = inner
            .parts
            .get(name)
            .map(|p| p.rec.definition.clone())
            .ok_or_else(|| ManagerError::NotFound(name.into()))?;
        let disk_fds = match &mut definition {
            Definition::Partition(def) => crate::vios::broker(inner, name, def)?,
            Definition::Vios(_) => Vec::new(),
        };
        let Inner { store, parts, .. } = inner;
        let p = parts
            .get_mut(name)
            .ok_or_else(|| ManagerError::NotFound(name.into()))?;
        let io = |what: String| move |source| ManagerError::Io { what, source };

        // The definition as vmm (or vios) reads it; the console always goes
        // to the log.
        let def_path = self.cfg.definition_file(name);
        match &mut definition {
            Definition::Partition(def) => {
                def.console = Some(Console::File(self.cfg.console_log(name)));
            }
            // A VIOS has no console.
            Definition::Vios(def) => def.console = None,
        }
        let text = serde_json::to_string(&definition)
            .map_err(|e| ManagerError::BadRequest(format!("definition of `{name}`: {e}")))?;
        std::fs::write(&def_path, text)
            .map_err(io(format!("cannot write {}", def_path.display())))?;
        let vmm_log_path = self.cfg.vmm_log(name);
        let vmm_log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&vmm_log_path)
            .map_err(io(format!("cannot open {}", vmm_log_path.display())))?;
        let vmm_log2 = vmm_log
            .try_clone()
            .map_err(io("cannot duplicate the vmm log".into()))?;

        let (ours, theirs) = UnixStream::pair().map_err(io("socketpair".into()))?;
        let token = random_token().map_err(io("getrandom".into()))?;
        let theirs_fd = theirs.as_raw_fd();
        // The brokered disk sockets, moved above the numbers they go to.
        let mut high_fds = Vec::with_capacity(disk_fds.len());
        for fd in &disk_fds {
            // SAFETY: F_DUPFD_CLOEXEC duplicates a valid fd we own; the copy
            // is owned by the OwnedFd built from it.
            let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 64) };
            if high < 0 {
                return Err(ManagerError::Io {
                    what: "cannot duplicate a VIOS disk socket".into(),
                    source: std::io::Error::last_os_error(),
                });
            }
            // SAFETY: `high` is a fresh descriptor nobody else owns.
            high_fds.push(unsafe { std::os::fd::OwnedFd::from_raw_fd(high) });
        }
        drop(disk_fds);
        let high_raw: Vec<i32> = high_fds.iter().map(|f| f.as_raw_fd()).collect();
        // A VIOS partition runs the `vios` binary next to `vmm`, with the
        // same flags.
        let program = if p.rec.definition.is_vios() {
            crate::vios::vios_binary(&self.cfg.vmm)
        } else {
            self.cfg.vmm.clone()
        };
        let mut cmd = Command::new(&program);
        cmd.arg("--config")
            .arg(&def_path)
            .arg("--console")
            .arg(self.cfg.console_log(name))
            .arg("--control-fd")
            .arg("3")
            .arg("--manager-socket")
            .arg(&self.cfg.socket)
            .env(TOKEN_ENV, &token)
            .stdin(Stdio::null())
            .stdout(vmm_log)
            .stderr(vmm_log2);
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe calls (setsid, dup2, fcntl).
        unsafe {
            cmd.pre_exec(move || {
                // Its own session: the VMM survives the manager and its
                // terminal.
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if theirs_fd == 3 {
                    if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(theirs_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // VIOS disk sockets on 4, 5, ... (dup2 clears close-on-exec).
                for (i, high) in high_raw.iter().enumerate() {
                    if libc::dup2(*high, crate::vios::FIRST_DISK_FD + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| ManagerError::Spawn {
            path: program.clone(),
            source,
        })?;
        drop(theirs);
        drop(high_fds);
        let pid = child.id();
        let pid_start = process_start_time(pid);
        let writer = Channel::new(
            ours.try_clone()
                .map_err(io("cannot clone the control socket".into()))?,
        );
        let _ = writer
            .stream()
            .set_write_timeout(Some(Duration::from_secs(2)));
        p.run = Some(Runtime {
            generation,
            pid,
            writer: Some(writer),
            ready_at: None,
            stop_requested: false,
            killed: false,
            outcome: None,
            failure: None,
        });
        p.rec.state = PartitionState::Starting;
        p.rec.pid = Some(pid);
        p.rec.pid_start = pid_start;
        p.rec.token = Some(token);
        p.rec.since = now_secs();
        store.put(&p.rec)?;
        self.changed.notify_all();
        tracing::info!(partition = %name, pid, generation, "VMM spawned");
        let mgr = self.clone();
        let name = name.to_string();
        spawn_thread("channel", move || {
            mgr.read_channel(&name, generation, Channel::new(ours), Some(child))
        });
        Ok(generation)
    }

    /// Reads a VMM's control channel until it closes, then records the end.
    pub fn read_channel(
        self: &Arc<Self>,
        name: &str,
        generation: u64,
        chan: Channel,
        child: Option<Child>,
    ) {
        let mut reported = None;
        loop {
            match chan.recv::<ToManager>() {
                Ok((ToManager::Holding { key, gpa }, fds)) => {
                    crate::sharing::adopt(self, name, &key, gpa, fds);
                }
                Ok((ToManager::Hcall { seq, call }, _)) => {
                    let mgr = self.clone();
                    let name = name.to_string();
                    spawn_thread("hcall", move || mgr.hcall(&name, generation, seq, call));
                }
                Ok((msg, _fds)) => {
                    if let ToManager::Exit { status, .. } = &msg {
                        reported = Some(status.clone());
                    }
                    self.on_message(name, generation, msg);
                }
                Err(ProtocolError::Json(e)) => {
                    tracing::warn!(partition = %name, error = %e, "malformed message from the VMM ignored");
                }
                Err(e) if !e.is_fatal() => {
                    tracing::warn!(partition = %name, error = %e, "message from the VMM refused");
                }
                Err(e) => {
                    tracing::debug!(partition = %name, error = %e, "control channel closed");
                    break;
                }
            }
        }
        let process = child.map(|mut c| c.wait());
        let process = match process {
            Some(Ok(st)) => Some(st),
            Some(Err(e)) => {
                tracing::warn!(partition = %name, error = %e, "cannot reap the VMM");
                None
            }
            None => None,
        };
        self.on_exit(name, generation, reported, process);
    }

    fn on_message(self: &Arc<Self>, name: &str, generation: u64, msg: ToManager) {
        let mut inner = self.lock();
        let Inner { store, parts, .. } = &mut *inner;
        let Some(p) = parts.get_mut(name) else { return };
        let Some(run) = p.run.as_mut().filter(|r| r.generation == generation) else {
            return;
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
            other => {
                drop(inner);
                crate::sharing::on_vmm_message(self, name, other);
                self.changed.notify_all();
                return;
            }
        };
        let is_ready =
            new_state == Some(PartitionState::Running) && p.rec.state == PartitionState::Starting;
        if let Some(state) = new_state {
            if p.rec.state != PartitionState::Stopping {
                p.rec.state = state;
                p.rec.since = now_secs();
                if let Err(e) = store.put(&p.rec) {
                    tracing::error!(partition = %name, error = %e, "cannot record the state");
                }
            }
        }
        if is_ready {
            crate::sharing::on_ready(self, &mut inner, name);
            // A VIOS that came back: re-broker its running clients' disks.
            crate::vios::on_ready(&mut inner, name);
        }
        self.changed.notify_all();
    }

    /// A VMM is gone: decide stopped or crashed, apply the restart policy.
    pub fn on_exit(
        self: &Arc<Self>,
        name: &str,
        generation: u64,
        reported: Option<ExitStatus>,
        process: Option<std::process::ExitStatus>,
    ) {
        let mut inner = self.lock();
        let Inner { store, parts, .. } = &mut *inner;
        let Some(p) = parts.get_mut(name) else { return };
        if p.run.as_ref().is_none_or(|r| r.generation != generation) {
            return;
        }
        let Some(run) = p.run.take() else { return };
        let (state, reason) = self.classify(name, &run, reported, process);
        tracing::info!(partition = %name, pid = run.pid, %state, %reason, "VMM exited");
        p.rec.state = state;
        p.rec.last_exit = Some(reason);
        p.rec.pid = None;
        p.rec.pid_start = None;
        p.rec.token = None;
        p.rec.since = now_secs();
        let was_running = run.ready_at;
        let automatic = state == PartitionState::Crashed
            && p.rec.restart == RestartPolicy::OnFailure
            && was_running.is_some();
        if automatic {
            if was_running.is_some_and(|t| t.elapsed() >= HEALTHY_RUN) {
                p.rec.restarts = 0;
            }
            if p.rec.restarts >= MAX_RESTARTS {
                if let Some(r) = p.rec.last_exit.as_mut() {
                    r.push_str(&format!(" (gave up after {MAX_RESTARTS} restarts)"));
                }
            }
        }
        if let Err(e) = store.put(&p.rec) {
            tracing::error!(partition = %name, error = %e, "cannot record the exit");
        }
        crate::sharing::release_held(&mut inner, name);
        let Some(p) = inner.parts.get(name) else {
            return;
        };
        if automatic && p.rec.restarts < MAX_RESTARTS {
            let (epoch, restarts) = (p.epoch, p.rec.restarts);
            self.changed.notify_all();
            drop(inner);
            self.schedule_restart(name.to_string(), epoch, restarts);
            return;
        }
        self.changed.notify_all();
    }

    fn classify(
        &self,
        name: &str,
        run: &Runtime,
        reported: Option<ExitStatus>,
        process: Option<std::process::ExitStatus>,
    ) -> (PartitionState, String) {
        use PartitionState::{Crashed, Stopped};
        if let Some(outcome) = &run.outcome {
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
                    let why = last_line(&self.cfg.vmm_log(name))
                        .unwrap_or_else(|| "vmm exited with status 1".into());
                    (Crashed, why)
                }
                (Some(code), _) => (Crashed, format!("vmm exited with status {code}")),
                (_, Some(sig)) => (Crashed, format!("vmm killed by signal {sig}")),
                _ => (Crashed, format!("vmm ended: {st}")),
            },
            None if run.stop_requested => (Stopped, "stopped".into()),
            None if run.writer.is_none() => {
                (Crashed, "vmm exited while detached from the manager".into())
            }
            None => (
                Crashed,
                "vmm closed its control channel without an exit status".into(),
            ),
        }
    }

    fn schedule_restart(self: &Arc<Self>, name: String, epoch: u64, restarts: u32) {
        let delay = backoff(restarts);
        tracing::info!(partition = %name, delay_ms = delay.as_millis() as u64, attempt = restarts + 1, "restarting after a failure");
        let mgr = self.clone();
        spawn_thread("restart", move || {
            std::thread::sleep(delay);
            let mut inner = mgr.lock();
            let Some(p) = inner.parts.get_mut(&name) else {
                return;
            };
            if p.epoch != epoch || p.rec.state != PartitionState::Crashed {
                return;
            }
            p.rec.restarts += 1;
            if let Err(e) = mgr.spawn(&mut inner, &name) {
                tracing::error!(partition = %name, error = %e, "automatic restart failed");
                if let Some(p) = inner.parts.get_mut(&name) {
                    p.rec.last_exit = Some(format!("restart failed: {e}"));
                    let rec = p.rec.clone();
                    let _ = inner.store.put(&rec);
                }
            }
        });
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Starts a small helper thread; failure to start one is logged (the
/// system is out of threads, nothing better can be done).
pub fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new()
        .name(name.into())
        .stack_size(256 << 10)
        .spawn(f)
    {
        tracing::error!(thread = name, error = %e, "cannot start a thread");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0), RESTART_BACKOFF);
        assert_eq!(backoff(1), RESTART_BACKOFF * 2);
        assert_eq!(backoff(3), RESTART_BACKOFF * 8);
        assert_eq!(backoff(40), RESTART_BACKOFF_MAX);
    }

    #[test]
    fn our_own_start_time_is_found_and_matches() {
        let me = std::process::id();
        let t = process_start_time(me).unwrap();
        assert!(process_alive(me, Some(t)));
        assert!(!process_alive(me, Some(t + 1)));
        assert!(!process_alive(u32::MAX - 1, None));
    }

    #[test]
    fn tokens_are_128_bit_hex_and_differ() {
        let a = random_token().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, random_token().unwrap());
        assert!(constant_time_eq(a.as_bytes(), a.as_bytes()));
        assert!(!constant_time_eq(a.as_bytes(), b"x"));
    }
}
