//! Reading a VMM's (or VIOS's) control channel: one thread per live
//! process receives its [`ToManager`] messages and hands each to the
//! [`ControlEvents`] of the manager by kind, until the channel closes; then
//! it reaps the process if the manager spawned it and reports the end.
//!
//! - lifecycle reports (`Hello`, `Ready`, `Paused`, `Resumed`, `Exit`,
//!   `Failed`) → [`ControlEvents::lifecycle`];
//! - answers to `Map`/`Unmap` and fault reports (`Mapped`, `MapFailed`,
//!   `Unmapped`, `Fault`) → [`ControlEvents::mapping`];
//! - what a re-attached VMM still holds (`Holding`, with the fd) →
//!   [`ControlEvents::holding`];
//! - a shared-memory VMM's pager figures (`MemoryReport`) →
//!   [`ControlEvents::memory`]; a VIOS's export figures (`DiskStats`) →
//!   [`ControlEvents::disk_stats`];
//! - dump progress, on-demand dump answers and a dump going on after the
//!   partition's reboot (`DumpProgress`, `DumpDone`, `DumpDetached`) →
//!   [`ControlEvents::dump`]; after `DumpDetached` the end is reported
//!   when the channel closes, and the process reaped later;
//! - guest hcalls → [`ControlEvents::hcall`], each on a thread of its own
//!   (an hcall may wait for this very channel's answers);
//! - the end of the channel → [`ControlEvents::closed`] with the `Exit`
//!   status the process reported, if any, and how it ended.

use crate::process::spawn_thread;
use parvm_protocol::{
    Channel, DiskStats, ExitStatus, Hcall, MemoryReport, ProtocolError, ToManager,
};
use std::os::fd::OwnedFd;
use std::process::Child;
use std::sync::Arc;

/// What the manager does with the messages of one control channel; every
/// call names the partition and the generation (run) of its process.
pub(crate) trait ControlEvents: Send + Sync + 'static {
    fn lifecycle(self: &Arc<Self>, partition: &str, generation: u64, msg: ToManager);
    fn mapping(&self, partition: &str, generation: u64, msg: ToManager);
    fn holding(&self, partition: &str, key: &str, gpa: Option<u64>, fds: Vec<OwnedFd>);
    fn hcall(self: &Arc<Self>, partition: &str, generation: u64, seq: u64, call: Hcall);
    fn memory(&self, partition: &str, generation: u64, report: MemoryReport);
    fn disk_stats(&self, partition: &str, generation: u64, disks: Vec<DiskStats>);
    fn dump(&self, partition: &str, generation: u64, msg: ToManager);
    fn closed(
        self: &Arc<Self>,
        partition: &str,
        generation: u64,
        reported: Option<ExitStatus>,
        process: Option<std::process::ExitStatus>,
    );
}

/// Reads `chan` until it closes (see the module documentation).
pub(crate) fn read<E: ControlEvents>(
    events: &Arc<E>,
    name: &str,
    generation: u64,
    chan: Channel,
    child: Option<Child>,
) {
    let mut reported = None;
    // The VMM handed its partition back while its dump goes on
    // (`DumpDetached`): the end is reported without waiting for the
    // process, which is reaped when its dump is done.
    let mut detached = false;
    loop {
        match chan.recv::<ToManager>() {
            Ok((ToManager::Holding { key, gpa }, fds)) => {
                events.holding(name, &key, gpa, fds);
            }
            Ok((ToManager::MemoryReport { report }, _)) => {
                events.memory(name, generation, report);
            }
            Ok((ToManager::DiskStats { disks }, _)) => {
                events.disk_stats(name, generation, disks);
            }
            Ok((
                msg @ (ToManager::DumpProgress { .. }
                | ToManager::DumpDone { .. }
                | ToManager::DumpDetached { .. }),
                _,
            )) => {
                detached |= matches!(msg, ToManager::DumpDetached { .. });
                events.dump(name, generation, msg);
            }
            Ok((ToManager::Hcall { seq, call }, _)) => {
                let events = events.clone();
                let name = name.to_string();
                spawn_thread("hcall", move || events.hcall(&name, generation, seq, call));
            }
            Ok((
                msg @ (ToManager::Mapped { .. }
                | ToManager::MapFailed { .. }
                | ToManager::Unmapped { .. }
                | ToManager::Fault { .. }),
                _fds,
            )) => events.mapping(name, generation, msg),
            Ok((msg, _fds)) => {
                if let ToManager::Exit { status, .. } = &msg {
                    reported = Some(status.clone());
                }
                events.lifecycle(name, generation, msg);
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
    if detached {
        events.closed(name, generation, reported, None);
        if let Some(mut c) = child {
            let name = name.to_string();
            spawn_thread("dump-reaper", move || match c.wait() {
                Ok(st) => {
                    tracing::info!(partition = %name, status = %st, "VMM that finished a dump after the reboot exited")
                }
                Err(e) => tracing::warn!(partition = %name, error = %e, "cannot reap the VMM"),
            });
        }
        return;
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
    events.closed(name, generation, reported, process);
}
