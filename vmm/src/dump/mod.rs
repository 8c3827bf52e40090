//! Firmware-assisted dump (docs/dump.md): when the partition fails (triple
//! fault, KVM internal error, a pvpanic report, the watchdog) or the
//! operator asks (`parctl dump`), the VMM writes guest RAM and the vCPUs'
//! registers as an ELF64 core to a dump disk served by a VIOS, through its
//! own virtio-blk driver on a private queue (`PagingDisk`, the pager's
//! driver): guest RAM never goes to the VIOS as shared memory.
//!
//! Module map:
//! - [`cpu`]: the vCPUs' registers, saved by each vCPU thread when it stops
//!   or is held at the pause gate.
//! - [`ram`]: the pieces of guest RAM, the runs of non-zero pages, the
//!   PT_LOADs.
//! - [`elf`]: the core file's header, program headers and notes (QEMU's
//!   `dump-guest-memory` layout).
//! - [`writer`]: one dump onto the disk, with the disk's table
//!   (`parvm_protocol::dump`) kept up to date and progress reported.
//! - this file: the dump thread ([`Dumper`]) that owns the disk, takes
//!   crash and on-demand jobs, and runs the watchdog.
//!
//! ```text
//! vCPU threads --(registers at stop / pause)--> CpuStates
//! main (after a crash) / control (parctl dump) --job--> dump thread
//!     dump thread: scan memfd -> layout -> table -> head -> RAM chunks --> PagingDisk --> VIOS
//!                  progress --> reporter (control channel: DumpProgress)
//! ```

pub mod cpu;
pub mod elf;
pub mod ram;
pub mod writer;

use crate::devices::bus::lock;
use crate::devices::exit::{CrashKind, ExitReason, ExitSignal};
use crate::memory::GuestMemoryMmap;
use crate::pause::PauseGate;
use cpu::CpuStates;
use parvm_config::{DiskSource, OnCrash};
use parvm_protocol::dump::{self, DumpRecord, DumpTableError, DumpTrigger};
use ram::RamSource;
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use virtio_devices::paging::{HandOver, PagingDisk};
use writer::DumpMeta;

/// The disk id in logs and errors.
const DISK_ID: &str = "dump";
/// How long an on-demand dump waits for the vCPUs to stop.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes above guest RAM a core needs at most for its head (ELF and
/// program headers, notes).
const HEAD_ALLOWANCE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("dump disk {0}: {1}")]
    Connect(String, String),
    #[error("dump disk {disk}: {size} bytes, too small: a dump of this partition's {ram_mib} MiB of RAM needs up to {needed} bytes")]
    TooSmall {
        disk: String,
        size: u64,
        ram_mib: u64,
        needed: u64,
    },
    #[error("dump disk: {0}")]
    Disk(String),
    #[error("{0}")]
    Table(DumpTableError),
    #[error("reading guest RAM: {0}")]
    Memory(std::io::Error),
    #[error("dump {id} failed: {1}", id = .0.id)]
    Failed(Box<DumpRecord>, String),
    #[error("no dump disk: on_crash.dump is not set")]
    NoDisk,
    #[error("a dump is already being written")]
    Busy,
    #[error("the vCPUs did not stop in time")]
    NotPaused,
    #[error("the partition is stopping")]
    Stopping,
    #[error("the dump thread is gone")]
    Gone,
}

/// What to dump.
enum Job {
    /// After a crash: the vCPUs have stopped, memory is released as it is
    /// written.
    Crash {
        trigger: DumpTrigger,
        reason: String,
        detach: Option<Detach>,
        reply: mpsc::Sender<Result<DumpRecord, DumpError>>,
    },
    /// The partition keeps running: paused while its memory is written.
    OnDemand {
        reply: mpsc::Sender<Result<DumpRecord, DumpError>>,
    },
}

/// Sends dump progress to the manager (set by the control channel).
pub type Reporter = Box<dyn Fn(&DumpRecord) + Send + Sync>;
/// Hands a crashed partition back to the manager while its dump goes on.
pub type Detach = Box<dyn FnOnce(&DumpRecord) + Send>;

/// The dump thread's handle.
pub struct Dumper {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    busy: AtomicBool,
    has_disk: bool,
    reporter: Arc<Mutex<Option<Reporter>>>,
    /// Counts the guest's exits to the VMM (the watchdog's sign of life).
    pub life: Arc<AtomicU64>,
    /// A new socket to the dump disk (its VIOS came back).
    pub handover: HandOver,
}

/// What the dump thread works with.
struct Worker {
    partition: String,
    disk: Option<PagingDisk>,
    path: Option<PathBuf>,
    handover: HandOver,
    memfd: File,
    pieces: Vec<ram::RamPiece>,
    mapped: Option<GuestMemoryMmap>,
    view: GuestMemoryMmap,
    states: Arc<CpuStates>,
    pause: Arc<PauseGate>,
    exit: Arc<ExitSignal>,
    reporter: Arc<Mutex<Option<Reporter>>>,
    life: Arc<AtomicU64>,
    watchdog: Option<Duration>,
}

/// Connects the dump disk (`vhost-user:SOCKET` or `vhost-user-fd:N`) and
/// checks it can hold a dump of `ram_bytes` of RAM.
pub fn connect(source: &DiskSource, ram_bytes: u64) -> Result<PagingDisk, DumpError> {
    let what = source.to_string();
    let disk = match source {
        DiskSource::VhostUser(path) => PagingDisk::connect_path(DISK_ID, path),
        DiskSource::VhostUserFd(fd) => {
            // SAFETY: the fd was inherited for this disk (the manager's
            // brokered socket); nothing else in the process owns it.
            let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(*fd) });
            PagingDisk::connect(DISK_ID, stream)
        }
        DiskSource::Image(_) | DiskSource::Vios { .. } => return Err(DumpError::Connect(
            what,
            "use vhost-user:SOCKET or vhost-user-fd:N (vios: is resolved by the partition manager)"
                .into(),
        )),
    }
    .map_err(|e| DumpError::Connect(what.clone(), e.to_string()))?;
    let needed = dump::disk_bytes_needed(ram_bytes + HEAD_ALLOWANCE);
    if disk.capacity() < needed {
        return Err(DumpError::TooSmall {
            disk: what,
            size: disk.capacity(),
            ram_mib: ram_bytes >> 20,
            needed,
        });
    }
    Ok(disk)
}

/// The pieces the dumper needs from the partition being built.
pub struct DumperParts {
    pub partition: String,
    pub on_crash: OnCrash,
    pub memfd: File,
    pub pieces: Vec<ram::RamPiece>,
    /// A shared-memory partition's mapping of guest RAM (read through it,
    /// the pager serving what it evicted); `None` for dedicated memory.
    pub mapped: Option<GuestMemoryMmap>,
    /// The mapping of guest RAM, to tell zero pages in place.
    pub view: GuestMemoryMmap,
    pub states: Arc<CpuStates>,
    pub pause: Arc<PauseGate>,
    pub exit: Arc<ExitSignal>,
}

impl Dumper {
    /// Connects the dump disk (if any) and starts the dump thread.
    pub fn start(parts: DumperParts, ram_bytes: u64) -> Result<Arc<Dumper>, DumpError> {
        let disk = match &parts.on_crash.dump {
            Some(source) => Some(connect(source, ram_bytes)?),
            None => None,
        };
        let path = match &parts.on_crash.dump {
            Some(DiskSource::VhostUser(p)) => Some(p.clone()),
            _ => None,
        };
        let (tx, rx) = mpsc::channel();
        let dumper = Arc::new(Dumper {
            jobs: Mutex::new(Some(tx)),
            busy: AtomicBool::new(false),
            has_disk: disk.is_some(),
            reporter: Arc::new(Mutex::new(None)),
            life: Arc::new(AtomicU64::new(0)),
            handover: HandOver::default(),
        });
        let worker = Worker {
            partition: parts.partition,
            disk,
            path,
            handover: dumper.handover.clone(),
            memfd: parts.memfd,
            pieces: parts.pieces,
            mapped: parts.mapped,
            view: parts.view,
            states: parts.states,
            pause: parts.pause,
            exit: parts.exit,
            reporter: dumper.reporter.clone(),
            life: dumper.life.clone(),
            watchdog: parts.on_crash.watchdog_secs.map(Duration::from_secs),
        };
        std::thread::Builder::new()
            .name("dump".into())
            .spawn(move || {
                crate::seccomp::apply(crate::seccomp::Role::Dump);
                worker.run(rx)
            })
            .map_err(|e| {
                DumpError::Connect(DISK_ID.into(), format!("cannot start the dump thread: {e}"))
            })?;
        Ok(dumper)
    }

    /// Whether a dump disk is configured.
    pub fn has_disk(&self) -> bool {
        self.has_disk
    }

    /// Where progress goes from now on.
    pub fn set_reporter(&self, reporter: Reporter) {
        *lock(&self.reporter) = Some(reporter);
    }

    fn submit(
        &self,
        make: impl FnOnce(mpsc::Sender<Result<DumpRecord, DumpError>>) -> Job,
    ) -> Result<DumpRecord, DumpError> {
        if !self.has_disk {
            return Err(DumpError::NoDisk);
        }
        if self.busy.swap(true, Ordering::SeqCst) {
            return Err(DumpError::Busy);
        }
        let (reply, wait) = mpsc::channel();
        let sent = lock(&self.jobs)
            .as_ref()
            .is_some_and(|tx| tx.send(make(reply)).is_ok());
        let result = if sent {
            wait.recv().unwrap_or(Err(DumpError::Gone))
        } else {
            Err(DumpError::Gone)
        };
        self.busy.store(false, Ordering::SeqCst);
        result
    }

    /// Dumps a crashed partition (its vCPUs have stopped and saved their
    /// registers); returns when the dump is complete or failed.
    /// With `detach`, it is called once the dump is placed and its
    /// record written (from then on the memory is released as the dump
    /// goes): the partition is handed back for its reboot while the dump
    /// goes on.
    pub fn crash_dump(
        &self,
        trigger: DumpTrigger,
        reason: &str,
        detach: Option<Detach>,
    ) -> Result<DumpRecord, DumpError> {
        self.submit(|reply| Job::Crash {
            trigger,
            reason: reason.to_string(),
            detach,
            reply,
        })
    }

    /// Dumps the running partition: paused while its memory is written.
    pub fn on_demand(&self) -> Result<DumpRecord, DumpError> {
        self.submit(|reply| Job::OnDemand { reply })
    }

    /// Ends the dump thread (after its last job).
    pub fn shut_down(&self) {
        *lock(&self.jobs) = None;
    }
}

impl Worker {
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        let mut seen = self.life.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        loop {
            match jobs.recv_timeout(Duration::from_secs(1)) {
                Ok(Job::Crash {
                    trigger,
                    reason,
                    detach,
                    reply,
                }) => {
                    let r = self.dump(trigger, &reason, true, detach);
                    let _ = reply.send(r);
                }
                Ok(Job::OnDemand { reply }) => {
                    let _ = reply.send(self.on_demand());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let Some(period) = self.watchdog else {
                continue;
            };
            let now = self.life.load(Ordering::Relaxed);
            if now != seen || self.pause.is_paused() {
                seen = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= period && !self.exit.requested() {
                tracing::warn!(partition = %self.partition, secs = period.as_secs(), "watchdog: no sign of life");
                self.exit.request(ExitReason::Crash {
                    kind: CrashKind::Watchdog,
                    reason: format!(
                        "watchdog: no sign of life from the guest for {} s",
                        period.as_secs()
                    ),
                    registers: String::new(),
                });
            }
        }
    }

    fn on_demand(&mut self) -> Result<DumpRecord, DumpError> {
        if self.exit.requested() {
            return Err(DumpError::Stopping);
        }
        let was_paused = self.pause.is_paused();
        if !was_paused {
            self.states.clear();
            if !self.pause.pause(&self.exit, PAUSE_TIMEOUT) {
                self.pause.resume();
                return Err(DumpError::NotPaused);
            }
        }
        let paused = Instant::now();
        let r = self.dump(
            DumpTrigger::OnDemand,
            "on demand (parctl dump)",
            false,
            None,
        );
        if !was_paused {
            self.pause.resume();
        }
        tracing::info!(partition = %self.partition, paused_ms = paused.elapsed().as_millis() as u64, "on-demand dump: vCPUs resumed");
        r
    }

    fn dump(
        &mut self,
        trigger: DumpTrigger,
        reason: &str,
        release: bool,
        mut detach: Option<Detach>,
    ) -> Result<DumpRecord, DumpError> {
        let Some(disk) = self.disk.as_mut() else {
            return Err(DumpError::NoDisk);
        };
        // A disk whose VIOS went away since: one new connection, if the
        // manager handed one over or the socket path answers.
        if !disk.is_connected() || disk.read_at(0, 4096).is_err() {
            disk.reconnect_via(&self.handover, self.path.as_deref())
                .map_err(|e| DumpError::Disk(e.to_string()))?;
        }
        let cpus = self.states.all();
        let meta = DumpMeta {
            partition: self.partition.clone(),
            trigger,
            reason: reason.to_string(),
        };
        let source = RamSource {
            memfd: &self.memfd,
            pieces: &self.pieces,
            release,
            mapped: self.mapped.as_ref(),
            view: Some(&self.view),
        };
        let reporter = self.reporter.clone();
        let mut progress = |r: &DumpRecord| {
            if let Some(report) = lock(&reporter).as_ref() {
                report(r);
            }
            if r.state == dump::DumpState::Writing {
                if let Some(detach) = detach.take() {
                    detach(r);
                }
            }
        };
        writer::write_dump(disk, &meta, &cpus, &source, &mut progress)
    }
}

#[cfg(test)]
mod tests;
