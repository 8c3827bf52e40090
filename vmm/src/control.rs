//! The VMM side of the control channel to the partition manager.
//!
//! The manager spawns `vmm --control-fd N --manager-socket PATH` with one end
//! of a socketpair on fd N (the connection is the partition's identity); the
//! reconnect token arrives on that channel (`Token`, normally its first
//! message), never in the environment. One thread, started by
//! [`Control::attach`] once the partition is built:
//!
//! 1. sends `Hello`, then `Ready` once every vCPU thread runs;
//! 2. keeps the `Token` ([`managed::TokenSlot`]), carries out `Stop` (an
//!    exit request), `Pause`/`Resume` (the
//!    [`PauseGate`](crate::pause::PauseGate) vCPU barrier), `ConsoleInput` (bytes for the serial
//!    port), `Map`/`Unmap` of shared segments ([`GrantMaps`]) and hands
//!    `HcallDone` answers to the waiting hcall device, and for a
//!    shared-memory partition `MemoryTarget` (the pager's new resident
//!    target, answered with a `MemoryReport`) and `PagingReconnect` (a new
//!    socket to the paging device, handed to the pager);
//! 3. when the manager goes away, keeps the partition running and connects
//!    to the manager's socket again every [`RECONNECT_INTERVAL`], sending
//!    `Attach` with its token, until a manager takes it back
//!    ([`parvm_protocol::managed`], shared with the VIOS), then hands back
//!    the memory it maps (`Holding`) and, in shared memory, its pager's
//!    figures.
//!
//! For a shared-memory partition a second thread, the *reporter*, sends the
//! pager's figures (`MemoryReport`) at most every [`REPORT_INTERVAL`] while
//! they change, and at once when resident falls to the target (the manager
//! waits for that before it raises another partition).
//!
//! On the way out `main` calls [`Control::finish`], which sends the exit
//! status.

use crate::devices::bus::lock;
use crate::devices::exit::{ExitReason, ExitSignal};
use crate::devices::serial::SerialPort;
use crate::grants::GrantMaps;
use crate::pager::{Pager, PagerReport};
use crate::pause::PauseGate;
use crate::Vmm;
use parvm_protocol::managed::{self, ManagedError, TokenSlot};
use parvm_protocol::{
    Channel, ExitStatus, ManagerToVmm, MemoryReport, ProtocolError, ToManager, VERSION,
};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use parvm_protocol::managed::RECONNECT_INTERVAL;
/// How long a pause may take to hold every vCPU.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Least time between two pager reports while the figures change.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the reporter looks at the pager's figures.
const REPORT_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Socket(#[from] ManagedError),
    #[error("--control-fd {0}: {1}")]
    Fd(RawFd, std::io::Error),
    #[error("control channel: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("cannot start the control thread: {0}")]
    Thread(std::io::Error),
}

struct Shared {
    name: String,
    pid: u32,
    vcpus: usize,
    token: TokenSlot,
    manager_socket: Option<PathBuf>,
    /// The current connection to the manager (a clone used for writing).
    writer: Mutex<Option<Channel>>,
    exit: Arc<ExitSignal>,
    pause: Arc<PauseGate>,
    serial: Arc<Mutex<SerialPort>>,
    grants: Arc<GrantMaps>,
    /// The pager of a shared-memory partition.
    pager: Option<Arc<Pager>>,
    /// The dump thread (`on_crash` in the definition).
    dumper: Option<Arc<crate::dump::Dumper>>,
    stop_requested: AtomicBool,
    finished: AtomicBool,
    /// The partition was handed back while its dump goes on (`Exit` sent).
    detached: AtomicBool,
}

impl Shared {
    /// Sends to the manager if one is connected; a failure only means the
    /// manager is gone, which the reader notices.
    fn send(&self, msg: &ToManager) -> bool {
        let w = lock(&self.writer);
        if let Some(chan) = w.as_ref() {
            if let Err(e) = chan.send(msg, &[]) {
                tracing::debug!(partition = %self.name, error = %e, "cannot send to the manager");
                return false;
            }
            return true;
        }
        false
    }

    /// Sends the pager's figures now (nothing for dedicated memory).
    fn report_memory(&self) -> Option<PagerReport> {
        let report = self.pager.as_ref()?.report();
        self.send(&ToManager::MemoryReport {
            report: memory_report(&report),
        });
        Some(report)
    }
}

/// The protocol's copy of the pager's figures.
pub fn memory_report(r: &PagerReport) -> MemoryReport {
    MemoryReport {
        logical_pages: r.logical_pages,
        target_pages: r.target_pages,
        resident_pages: r.resident_pages,
        page_ins: r.page_ins,
        page_in_ns: r.page_in_ns,
        page_outs: r.page_outs,
        zero_outs: r.zero_outs,
        zero_fills: r.zero_fills,
        stalled: r.stalled,
    }
}

/// Whether a report is due: the figures changed and the last one is
/// [`REPORT_INTERVAL`] old, or resident just came down to the target.
fn report_due(last: &PagerReport, now: &PagerReport, since_last: Duration) -> bool {
    if last == now {
        return false;
    }
    let over = |r: &PagerReport| r.resident_pages > r.target_pages;
    since_last >= REPORT_INTERVAL || (over(last) && !over(now))
}

/// The reporter thread's loop: until the partition exits.
fn report_loop(s: &Shared) {
    let Some(pager) = s.pager.as_ref() else {
        return;
    };
    let mut last = pager.report();
    let mut sent_at = Instant::now();
    while !s.finished.load(Ordering::SeqCst) && !s.exit.requested() {
        std::thread::sleep(REPORT_POLL);
        let now = pager.report();
        if report_due(&last, &now, sent_at.elapsed())
            && s.send(&ToManager::MemoryReport {
                report: memory_report(&now),
            })
        {
            last = now;
            sent_at = Instant::now();
        }
    }
}

/// The control channel of a running VMM.
pub struct Control {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Control {
    /// Takes over the inherited control socket `fd` (if any) and starts the
    /// control thread. `manager_socket` is where to reconnect; the token
    /// comes on the channel.
    pub fn attach(
        fd: Option<RawFd>,
        manager_socket: Option<PathBuf>,
        vmm: &Vmm,
    ) -> Result<Option<Control>, ControlError> {
        let Some(fd) = fd else {
            return Ok(None);
        };
        let stream = managed::control_socket(fd)?;
        let chan = Channel::new(stream);
        let shared = Arc::new(Shared {
            name: vmm.config.name.clone(),
            pid: std::process::id(),
            vcpus: usize::from(vmm.config.vcpus),
            token: TokenSlot::new(),
            manager_socket,
            writer: Mutex::new(Some(chan.try_clone().map_err(|e| ControlError::Fd(fd, e))?)),
            exit: vmm.exit_signal(),
            pause: vmm.pause_gate(),
            serial: vmm.serial(),
            grants: vmm.grants(),
            pager: vmm.pager(),
            dumper: vmm.dumper(),
            stop_requested: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            detached: AtomicBool::new(false),
        });
        // Fault reports and hcalls go out on the control channel.
        let weak = Arc::downgrade(&shared);
        shared.grants.link.set_sender(Box::new(move |msg| {
            weak.upgrade().is_some_and(|s| s.send(&msg))
        }));
        // Dump progress too.
        if let Some(dumper) = &shared.dumper {
            let weak = Arc::downgrade(&shared);
            dumper.set_reporter(Box::new(move |dump| {
                if let Some(s) = weak.upgrade() {
                    s.send(&ToManager::DumpProgress { dump: dump.clone() });
                }
            }));
        }
        shared.send(&ToManager::Hello {
            version: VERSION,
            name: shared.name.clone(),
            pid: shared.pid,
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("ready".into())
            .stack_size(64 << 10)
            .spawn(move || {
                crate::seccomp::apply(crate::seccomp::Role::Control);
                if s.pause.wait_started(s.vcpus, &s.exit) {
                    s.send(&ToManager::Ready);
                }
            })
            .map_err(ControlError::Thread)?;
        if shared.pager.is_some() {
            let s = shared.clone();
            std::thread::Builder::new()
                .name("pager-report".into())
                .stack_size(64 << 10)
                .spawn(move || {
                    crate::seccomp::apply(crate::seccomp::Role::Control);
                    s.report_memory();
                    report_loop(&s);
                })
                .map_err(ControlError::Thread)?;
        }
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("control".into())
            .stack_size(256 << 10)
            .spawn(move || {
                crate::seccomp::apply(crate::seccomp::Role::Control);
                control_loop(&s, chan)
            })
            .map_err(ControlError::Thread)?;
        Ok(Some(Control {
            shared,
            thread: Some(thread),
        }))
    }

    /// For `then: reboot` (docs/dump.md): once the crash dump is placed,
    /// tell the manager the partition ended (`DumpDetached`, then `Exit`)
    /// and close the channel, so that it reboots the partition while this
    /// process finishes the dump.
    pub fn detacher(&self) -> crate::dump::Detach {
        let s = self.shared.clone();
        Box::new(move |dump| {
            s.send(&ToManager::DumpDetached { dump: dump.clone() });
            s.send(&ToManager::Exit {
                status: ExitStatus::Crash {
                    reason: dump.reason.clone(),
                },
                code: 2,
            });
            s.detached.store(true, Ordering::SeqCst);
            s.finished.store(true, Ordering::SeqCst);
            if let Some(chan) = lock(&s.writer).take() {
                let _ = chan.stream().shutdown(std::net::Shutdown::Both);
            }
            tracing::info!(partition = %s.name, id = dump.id, "partition handed back for its reboot; the dump goes on");
        })
    }

    /// Reports how the partition ended and closes the channel.
    pub fn finish(mut self, reason: &ExitReason) {
        if self.shared.detached.load(Ordering::SeqCst) {
            return self.close();
        }
        let status = exit_status(reason, self.shared.stop_requested.load(Ordering::SeqCst));
        self.shared.send(&ToManager::Exit {
            status,
            code: reason.exit_code(),
        });
        self.close();
    }

    fn close(&mut self) {
        self.shared.finished.store(true, Ordering::SeqCst);
        if let Some(chan) = lock(&self.shared.writer).take() {
            let _ = chan.stream().shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.close();
    }
}

/// The protocol's view of an [`ExitReason`].
pub fn exit_status(reason: &ExitReason, stop_requested: bool) -> ExitStatus {
    match reason {
        ExitReason::Reset => ExitStatus::Reset,
        ExitReason::PowerOff => ExitStatus::PowerOff,
        ExitReason::Signal(_) if stop_requested => ExitStatus::Stopped,
        ExitReason::Signal(signal) => ExitStatus::Signal { signal: *signal },
        ExitReason::Crash { reason, .. } => ExitStatus::Crash {
            reason: reason.clone(),
        },
    }
}

fn control_loop(s: &Shared, mut chan: Channel) {
    loop {
        match chan.recv::<ManagerToVmm>() {
            Ok((msg, fds)) => handle(s, msg, fds),
            Err(ProtocolError::Json(e)) => {
                tracing::warn!(partition = %s.name, error = %e, "malformed control message ignored");
                s.send(&ToManager::Failed {
                    message: format!("malformed control message: {e}"),
                });
            }
            Err(e) if !e.is_fatal() => {
                tracing::warn!(partition = %s.name, error = %e, "control message refused");
                s.send(&ToManager::Failed {
                    message: e.to_string(),
                });
            }
            Err(e) => {
                if s.finished.load(Ordering::SeqCst) {
                    return;
                }
                tracing::warn!(partition = %s.name, error = %e, "lost the partition manager; the partition keeps running");
                *lock(&s.writer) = None;
                match reconnect(s) {
                    Some(c) => chan = c,
                    None => return,
                }
            }
        }
    }
}

/// Carries out one message; the channel has checked that the descriptors
/// each variant declares came with it.
fn handle(s: &Shared, msg: ManagerToVmm, fds: Vec<OwnedFd>) {
    let Some(fd) = fds.into_iter().next() else {
        return handle_plain(s, msg);
    };
    match msg {
        ManagerToVmm::Map {
            key,
            gpa,
            size,
            read_only,
        } => {
            let answer = match s.grants.map(&key, fd, gpa, size, read_only) {
                Ok(gpa) => ToManager::Mapped { key, gpa },
                Err(e) => {
                    tracing::warn!(partition = %s.name, %key, error = %e, "mapping refused");
                    ToManager::MapFailed {
                        key,
                        message: e.to_string(),
                        conflict: e.is_conflict(),
                    }
                }
            };
            s.send(&answer);
        }
        ManagerToVmm::Doorbell {
            id,
            ring,
            gsi,
            vector,
        } => {
            if let Err(e) = s.grants.doorbell(&id, fd, ring, gsi, vector) {
                let message = e.to_string();
                tracing::warn!(partition = %s.name, %message, "doorbell not wired");
                s.send(&ToManager::Failed { message });
            }
        }
        ManagerToVmm::VhostUserReconnect { disk } => {
            let stream = UnixStream::from(fd);
            if let Err(message) = crate::devices::virtio::reconnect_disk(&disk, stream) {
                tracing::warn!(partition = %s.name, %message, "vhost-user disk not reconnected");
                s.send(&ToManager::Failed { message });
            }
        }
        ManagerToVmm::PagingReconnect { evictor } => match &s.pager {
            // The pager sets the new connection up at its next reconnect
            // attempt (its VIOS came back; the manager brokered it).
            Some(pager) => {
                tracing::info!(partition = %s.name, "new paging device connection from the manager");
                pager.hand_over_paging_socket(UnixStream::from(fd), evictor);
            }
            None => {
                s.send(&ToManager::Failed {
                    message: "not a shared-memory partition: no paging device".into(),
                });
            }
        },
        ManagerToVmm::DumpReconnect => match &s.dumper {
            // Taken by the next dump (its VIOS came back).
            Some(dumper) => {
                tracing::info!(partition = %s.name, "new dump disk connection from the manager");
                dumper.handover.hand_over(UnixStream::from(fd));
            }
            None => {
                s.send(&ToManager::Failed {
                    message: "no dump disk".into(),
                });
            }
        },
        // The channel lets a descriptor through only beside the messages above.
        other => handle_plain(s, other),
    }
}

fn handle_plain(s: &Shared, msg: ManagerToVmm) {
    match msg {
        ManagerToVmm::Token { token } => s.token.set(&s.name, token),
        ManagerToVmm::Unmap { key } => match s.grants.unmap(&key) {
            Ok(()) => {
                s.send(&ToManager::Unmapped { key });
            }
            Err(e) => {
                // The slot could not be removed: the memory must not stay
                // reachable, so the partition ends.
                tracing::error!(partition = %s.name, %key, error = %e, "cannot unmap a revoked grant; stopping");
                s.exit.request(ExitReason::Crash {
                    kind: crate::devices::exit::CrashKind::InternalError,
                    reason: format!("cannot unmap revoked grant {key}: {e}"),
                    registers: String::new(),
                });
            }
        },
        ManagerToVmm::HcallDone { seq, outcome } => s.grants.link.hcall_done(seq, outcome),
        ManagerToVmm::Stop => {
            tracing::info!(partition = %s.name, "stop requested by the manager");
            s.stop_requested.store(true, Ordering::SeqCst);
            s.pause.resume();
            s.exit.request(ExitReason::Signal(libc::SIGTERM));
        }
        ManagerToVmm::Pause => {
            if s.pause.pause(&s.exit, PAUSE_TIMEOUT) {
                s.send(&ToManager::Paused);
            } else {
                s.pause.resume();
                s.send(&ToManager::Failed {
                    message: "vCPUs did not stop in time".into(),
                });
            }
        }
        ManagerToVmm::Resume => {
            s.pause.resume();
            s.send(&ToManager::Resumed);
        }
        ManagerToVmm::ConsoleInput { data } => {
            let mut port = lock(&s.serial);
            if let Err(e) = port.0.enqueue_raw_bytes(&data) {
                tracing::warn!(partition = %s.name, error = ?e, "console input dropped");
            }
        }
        ManagerToVmm::Map { key, .. } => {
            // Unreachable: the channel refuses a `map` without its memfd.
            s.send(&ToManager::MapFailed {
                key,
                message: "no memory descriptor came with the request".into(),
                conflict: false,
            });
        }
        ManagerToVmm::MemoryTarget { pages } => match &s.pager {
            Some(pager) => {
                tracing::debug!(partition = %s.name, pages, "memory target from the manager");
                pager.set_target(pages);
                s.report_memory();
            }
            None => {
                s.send(&ToManager::Failed {
                    message: "memory target for a dedicated-memory partition ignored".into(),
                });
            }
        },
        ManagerToVmm::Dump => dump_on_demand(s),
        ManagerToVmm::Doorbell { .. }
        | ManagerToVmm::VhostUserReconnect { .. }
        | ManagerToVmm::PagingReconnect { .. }
        | ManagerToVmm::DumpReconnect => {
            // Unreachable: the channel refuses these without their fd.
        }
    }
}

/// `parctl dump`: on a thread of its own (the control channel goes on
/// meanwhile), answered with `DumpDone`.
fn dump_on_demand(s: &Shared) {
    let Some(dumper) = s.dumper.clone() else {
        s.send(&ToManager::DumpDone {
            dump: None,
            error: Some("no dump disk: the definition has no on_crash.dump".into()),
        });
        return;
    };
    let writer = lock(&s.writer).as_ref().and_then(|c| c.try_clone().ok());
    let name = s.name.clone();
    let spawned = std::thread::Builder::new()
        .name("dump-request".into())
        .stack_size(128 << 10)
        .spawn(move || {
            let (dump, error) = match dumper.on_demand() {
                Ok(d) => (Some(d), None),
                Err(crate::dump::DumpError::Failed(d, e)) => (Some(*d), Some(e)),
                Err(e) => (None, Some(e.to_string())),
            };
            if let Some(error) = &error {
                tracing::warn!(partition = %name, %error, "on-demand dump failed");
            }
            if let Some(w) = writer {
                let _ = w.send(&ToManager::DumpDone { dump, error }, &[]);
            }
        });
    if let Err(e) = spawned {
        s.send(&ToManager::DumpDone {
            dump: None,
            error: Some(format!("cannot start the dump: {e}")),
        });
    }
}

/// Connects to the manager's socket until a manager takes the partition
/// back; `None` when there is nowhere to reconnect or the VMM is exiting.
fn reconnect(s: &Shared) -> Option<Channel> {
    let chan = managed::reattach(
        &s.name,
        s.manager_socket.as_deref(),
        &s.token,
        &|| s.pause.is_paused(),
        &|| s.finished.load(Ordering::SeqCst) || s.exit.requested(),
    )?;
    let writer = chan.try_clone().ok()?;
    *lock(&s.writer) = Some(writer);
    // The restarted manager lost the segments' memory: hand back what this
    // partition maps.
    for (key, gpa, fd) in s.grants.held() {
        let msg = ToManager::Holding { key, gpa };
        if let Some(w) = lock(&s.writer).as_ref() {
            if let Err(e) = w.send(&msg, &[fd.as_fd()]) {
                tracing::debug!(partition = %s.name, error = %e, "cannot hand back a mapping");
            }
        }
    }
    // And where its pager stands (the pool counts it at its logical size
    // until then).
    s.report_memory();
    Some(chan)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn exit_reasons_map_to_statuses() {
        assert_eq!(exit_status(&ExitReason::Reset, false), ExitStatus::Reset);
        assert_eq!(
            exit_status(&ExitReason::Signal(15), true),
            ExitStatus::Stopped
        );
        assert_eq!(
            exit_status(&ExitReason::Signal(15), false),
            ExitStatus::Signal { signal: 15 }
        );
        let crash = ExitReason::Crash {
            kind: crate::devices::exit::CrashKind::TripleFault,
            reason: "triple fault".into(),
            registers: String::new(),
        };
        assert!(exit_status(&crash, false).is_failure());
    }

    #[test]
    fn reports_are_sent_when_due() {
        let r = PagerReport {
            logical_pages: 16384,
            target_pages: 4096,
            resident_pages: 5000,
            ..Default::default()
        };
        // Nothing changed: never.
        assert!(!report_due(&r, &r, Duration::from_secs(10)));
        // Changed: once a second...
        let busier = PagerReport { page_ins: 3, ..r };
        assert!(!report_due(&r, &busier, Duration::from_millis(100)));
        assert!(report_due(&r, &busier, REPORT_INTERVAL));
        // ... but at once when resident came down to the target.
        let under = PagerReport {
            resident_pages: 4096,
            ..r
        };
        assert!(report_due(&r, &under, Duration::from_millis(1)));
        let copy = memory_report(&under);
        assert_eq!(
            (copy.resident_pages, copy.target_pages, copy.logical_pages),
            (4096, 4096, 16384)
        );
    }
}
