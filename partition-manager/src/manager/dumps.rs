//! Firmware-assisted dumps as the manager sees them (docs/dump.md): the
//! progress VMMs report (`DumpProgress`), on-demand dumps (`parctl dump`,
//! answered by `DumpDone`), and the dumps on a partition's dump disk
//! (`parctl dumps`, `parctl dump-get`), read from the VIOS export's image.
//! The table on the disk is outside input: it is decoded and checked by
//! `parvm_protocol::dump::decode`, never trusted.

use super::{Manager, State};
use crate::error::ManagerError;
use parvm_config::{Definition, DiskSource};
use parvm_protocol::dump::{self, DumpRecord, DumpState, TABLE_BYTES};
use parvm_protocol::{ManagerToVmm, PartitionState, ToManager};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Longest an on-demand dump may take before `parctl dump` gives up
/// waiting (the dump goes on; `parctl dumps` shows it).
const DUMP_WAIT: Duration = Duration::from_secs(600);

/// What the VMMs told about their dumps, by partition.
#[derive(Default)]
pub(crate) struct DumpLog {
    /// The last record each partition's VMM reported, by dump id.
    reported: HashMap<String, HashMap<u64, DumpRecord>>,
    /// Answers to on-demand dumps, until the waiting request takes them.
    done: HashMap<String, Result<DumpRecord, String>>,
}

impl DumpLog {
    /// A VMM's report.
    pub(crate) fn on_message(&mut self, partition: &str, msg: ToManager) {
        match msg {
            ToManager::DumpProgress { dump } => {
                tracing::info!(
                    partition,
                    id = dump.id,
                    state = dump.state.as_str(),
                    written = dump.written,
                    size = dump.size,
                    "dump progress"
                );
                self.reported
                    .entry(partition.to_string())
                    .or_default()
                    .insert(dump.id, dump);
            }
            ToManager::DumpDetached { dump } => {
                // It goes on after the partition's end: the disk's table is
                // its record from here.
                tracing::info!(
                    partition,
                    id = dump.id,
                    "dump goes on while the partition reboots"
                );
                if let Some(r) = self.reported.get_mut(partition) {
                    r.remove(&dump.id);
                }
            }
            ToManager::DumpDone { dump, error } => {
                let answer = match (dump, error) {
                    (Some(d), None) => Ok(d),
                    (_, Some(e)) => Err(e),
                    (None, None) => Err("the VMM gave no answer".into()),
                };
                self.done.insert(partition.to_string(), answer);
            }
            _ => {}
        }
    }

    /// The partition's VMM is gone: what it was still writing failed.
    pub(crate) fn on_exit(&mut self, partition: &str) {
        for d in self
            .reported
            .entry(partition.to_string())
            .or_default()
            .values_mut()
        {
            if d.state == DumpState::Writing {
                d.state = DumpState::Failed;
                d.error = Some("the VMM ended before the dump did".into());
            }
        }
    }

    /// The disk's records of `partition`, with what its VMM reported
    /// laid over them (newer: the disk may have missed the last update
    /// when its VIOS died), and reports the disk does not show.
    fn merged(&self, partition: &str, mut on_disk: Vec<DumpRecord>) -> Vec<DumpRecord> {
        // A record left `writing` by a process that is gone was interrupted
        // (also after a manager restart, when nothing was reported).
        for d in on_disk.iter_mut().filter(|d| d.state == DumpState::Writing) {
            if d.writer_pid
                .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            {
                d.state = DumpState::Failed;
                d.error = Some("interrupted: its VMM ended before the dump did".into());
            }
        }
        let Some(reported) = self.reported.get(partition) else {
            return on_disk;
        };
        for r in reported.values() {
            match on_disk
                .iter_mut()
                .find(|d| d.id == r.id && d.offset == r.offset)
            {
                Some(d) if d.state == DumpState::Writing => *d = r.clone(),
                Some(_) => {}
                None if r.state != DumpState::Complete => on_disk.push(r.clone()),
                None => {}
            }
        }
        on_disk.sort_by_key(|d| d.id);
        on_disk
    }
}

/// The image of `name`'s dump disk and how the definition names it.
fn dump_image(state: &State, name: &str) -> Result<(PathBuf, String), ManagerError> {
    let def = state
        .partitions
        .definition(name)
        .ok_or_else(|| ManagerError::NotFound(name.into()))?;
    let Definition::Partition(def) = def else {
        return Err(ManagerError::BadRequest(format!(
            "`{name}` is a VIOS: it has no dump disk"
        )));
    };
    match def.on_crash.as_ref().and_then(|c| c.dump.as_ref()) {
        Some(source @ DiskSource::Vios { vios, disk }) => {
            let image = crate::vios::export_image(&state.partitions, vios, disk)?;
            Ok((image, source.to_string()))
        }
        Some(other) => Err(ManagerError::BadRequest(format!(
            "partition `{name}`: its dump disk {other} is not a VIOS export (vios:VIOS/DISK)"
        ))),
        None => Err(ManagerError::BadRequest(format!(
            "partition `{name}` has no dump disk: add \"on_crash\": {{\"dump\": \"vios:VIOS/DISK\"}} to its definition"
        ))),
    }
}

/// Reads the table of the image at `path`; a disk never used for a dump
/// has none (no dumps).
fn read_table(path: &PathBuf, disk: &str) -> Result<(File, dump::DumpTable), ManagerError> {
    let io = |source| ManagerError::Io {
        what: format!("dump disk {disk} ({})", path.display()),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut head = vec![0u8; TABLE_BYTES.min(len) as usize];
    f.read_exact(&mut head).map_err(io)?;
    match dump::decode(&head, len) {
        Ok(t) => Ok((f, t)),
        Err(dump::DumpTableError::NotFormatted) => Ok((f, dump::DumpTable::default())),
        Err(e) => Err(ManagerError::BadRequest(format!("dump disk {disk}: {e}"))),
    }
}

impl Manager {
    /// `parctl dumps NAME`: the dump disk and the partition's dumps on it.
    pub fn dumps(&self, name: &str) -> Result<(String, Vec<DumpRecord>), ManagerError> {
        let state = self.lock();
        let (image, disk) = dump_image(&state, name)?;
        let (_, table) = read_table(&image, &disk)?;
        let mine = table
            .dumps
            .into_iter()
            .filter(|d| d.partition == name)
            .collect();
        Ok((disk, state.dumps.merged(name, mine)))
    }

    /// `parctl dump-get NAME ID`: the record of a complete dump and the
    /// disk image (read-only) to copy it from.
    pub fn dump_file(&self, name: &str, id: u64) -> Result<(DumpRecord, File), ManagerError> {
        let state = self.lock();
        let (image, disk) = dump_image(&state, name)?;
        let (file, table) = read_table(&image, &disk)?;
        let rec = table
            .dumps
            .into_iter()
            .find(|d| d.id == id && d.partition == name)
            .ok_or_else(|| {
                ManagerError::BadRequest(format!(
                    "dump disk {disk} holds no dump {id} of partition `{name}` (parctl dumps {name})"
                ))
            })?;
        let rec = state
            .dumps
            .merged(name, vec![rec])
            .into_iter()
            .find(|d| d.id == id)
            .ok_or_else(|| ManagerError::BadRequest(format!("dump {id} vanished")))?;
        if rec.state != DumpState::Complete {
            return Err(ManagerError::BadRequest(format!(
                "dump {id} of partition `{name}` is {}, not complete: nothing to extract",
                rec.state.as_str()
            )));
        }
        Ok((rec, file))
    }

    /// `parctl dump NAME`: the running partition is dumped (its vCPUs
    /// paused meanwhile) and keeps running; returns the dump's record.
    pub fn dump(&self, name: &str) -> Result<DumpRecord, ManagerError> {
        let mut state = self.lock();
        dump_image(&state, name)?;
        let st = state
            .partitions
            .state(name)
            .ok_or_else(|| ManagerError::NotFound(name.into()))?;
        if !matches!(st, PartitionState::Running | PartitionState::Paused) {
            return Err(ManagerError::InvalidState {
                name: name.into(),
                state: st,
                message: "only a running partition can be dumped on demand",
            });
        }
        let generation = state
            .partitions
            .live_generation(name)
            .ok_or_else(|| ManagerError::Control(name.into(), "no VMM".into()))?;
        state.dumps.done.remove(name);
        state
            .partitions
            .writer(name)
            .ok_or_else(|| ManagerError::Control(name.into(), "not attached".into()))?
            .send(&ManagerToVmm::Dump, &[])
            .map_err(|e| ManagerError::Control(name.into(), e.to_string()))?;
        let deadline = Instant::now() + DUMP_WAIT;
        loop {
            if let Some(answer) = state.dumps.done.remove(name) {
                return answer
                    .map_err(|e| ManagerError::Control(name.into(), format!("dump failed: {e}")));
            }
            if state.partitions.live_generation(name) != Some(generation) {
                return Err(ManagerError::Control(
                    name.into(),
                    "the VMM ended during the dump".into(),
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ManagerError::Control(
                    name.into(),
                    "the dump did not end in time (parctl dumps shows its progress)".into(),
                ));
            }
            state = self.wait(state, (deadline - now).min(Duration::from_millis(500)));
        }
    }

    /// A VMM's dump report (from its control channel).
    pub(crate) fn dump_report(&self, name: &str, generation: u64, msg: ToManager) {
        let mut state = self.lock();
        if state.partitions.live_generation(name) != Some(generation) {
            return;
        }
        state.dumps.on_message(name, msg);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use parvm_protocol::DumpTrigger;

    fn rec(id: u64, state: DumpState) -> DumpRecord {
        DumpRecord {
            id,
            partition: "p".into(),
            trigger: DumpTrigger::Pvpanic,
            reason: "r".into(),
            state,
            error: None,
            started_ms: 0,
            finished_ms: None,
            offset: id << 20,
            size: 10,
            written: 0,
            ram_bytes: 0,
            zero_bytes: 0,
            writer_pid: None,
        }
    }

    #[test]
    fn reports_override_a_disk_that_missed_the_end() {
        let mut log = DumpLog::default();
        let mut failed = rec(2, DumpState::Failed);
        failed.error = Some("VIOS gone".into());
        log.on_message(
            "p",
            ToManager::DumpProgress {
                dump: failed.clone(),
            },
        );
        log.on_message(
            "p",
            ToManager::DumpProgress {
                dump: rec(3, DumpState::Writing),
            },
        );
        let disk = vec![rec(1, DumpState::Complete), rec(2, DumpState::Writing)];
        let m = log.merged("p", disk);
        assert_eq!(
            m.iter().map(|d| (d.id, d.state)).collect::<Vec<_>>(),
            [
                (1, DumpState::Complete),
                (2, DumpState::Failed),
                (3, DumpState::Writing)
            ]
        );
        log.on_exit("p");
        let m = log.merged("p", vec![]);
        assert!(m.iter().all(|d| d.state == DumpState::Failed));
        // Another partition's reports do not show.
        assert!(log.merged("q", vec![]).is_empty());
        // A disk record left writing by a process that is gone: failed; by
        // a live one (this test): still writing.
        let mut dead = rec(7, DumpState::Writing);
        dead.writer_pid = Some(u32::MAX - 1);
        let mut live = rec(8, DumpState::Writing);
        live.writer_pid = Some(std::process::id());
        let m = log.merged("q", vec![dead, live]);
        assert_eq!(m[0].state, DumpState::Failed);
        assert_eq!(m[1].state, DumpState::Writing);
    }

    #[test]
    fn on_demand_answers_are_kept_for_the_waiter() {
        let mut log = DumpLog::default();
        log.on_message(
            "p",
            ToManager::DumpDone {
                dump: None,
                error: Some("no disk".into()),
            },
        );
        assert_eq!(log.done.remove("p"), Some(Err("no disk".into())));
        log.on_message(
            "p",
            ToManager::DumpDone {
                dump: Some(rec(1, DumpState::Complete)),
                error: None,
            },
        );
        assert!(matches!(log.done.remove("p"), Some(Ok(_))));
    }
}
