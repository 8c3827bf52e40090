//! The grant engine: the [`GrantTable`] (segments, cookies, doorbells and
//! the rules of each operation) and the acknowledgements VMMs owe it, and
//! the effect of its changes on the VMMs: `Map` with the segment's memfd
//! beside it, `Unmap` when a grant ends, doorbell eventfds, taking back
//! what a re-attached VMM still holds.
//!
//! Every change is recorded in the store by the method making it. The
//! engine reaches VMMs only through the control channels the
//! [`PartitionTable`] lends it; it does not wait (the manager waits for the
//! acks, lock released). Grants of VIOS disks that end come back as
//! [`Ended::disconnects`] for the VIOS broker.

use crate::error::ManagerError;
use crate::grants::{grant_key, segment_key, segment_name, GrantError, GrantTable};
use crate::partitions::PartitionTable;
use crate::process::now_secs;
use crate::store::{Store, StoreError};
use parvm_config::Definition;
use parvm_protocol::{
    DoorbellInfo, GrantCookie, GrantInfo, GrantState, ManagerToVmm, Rights, SegmentInfo,
    SegmentSpec, ToManager,
};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

mod requests;
mod share;

/// How long a VMM may take to map or unmap.
pub const MAP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a revoke waits for a VMM's unmap before killing that VMM.
pub const UNMAP_TIMEOUT: Duration = Duration::from_secs(2);

/// What a shared-segment configuration set up.
pub type Shared = (Vec<SegmentInfo>, Vec<GrantInfo>, Vec<DoorbellInfo>);

/// A VMM's answer to `Map`/`Unmap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    Mapped(u64),
    Failed { message: String, conflict: bool },
    Unmapped,
}

/// An unmap being waited for.
pub(crate) struct Waiter {
    pub(crate) partition: String,
    pub(crate) key: String,
    pub(crate) generation: u64,
    pub(crate) pid: u32,
}

/// What ending grants left to do: unmaps to wait for, and VIOS clients
/// to disconnect (block resource, client).
#[derive(Default)]
pub(crate) struct Ended {
    pub(crate) waiters: Vec<Waiter>,
    pub(crate) disconnects: Vec<(String, String)>,
}

/// How an accept is carried out.
pub(crate) enum AcceptPlan {
    /// A VIOS disk: recorded only (the grantee's next start connects).
    Block(u64),
    /// A segment: `request` (a `Map`) with `memfd` to the grantee.
    Map {
        id: u64,
        request: ManagerToVmm,
        memfd: Arc<File>,
    },
}

pub(crate) struct GrantEngine {
    table: GrantTable,
    /// Answers of VMMs to `Map`/`Unmap`, by (partition, key), until the
    /// waiting request takes them.
    acks: HashMap<(String, String), Ack>,
}

impl GrantEngine {
    pub(crate) fn load(store: &Store) -> Result<Self, StoreError> {
        let table = GrantTable::load(
            store.all_segments()?,
            store.all_grants()?,
            store.all_doorbells()?,
        );
        Ok(GrantEngine {
            table,
            acks: HashMap::new(),
        })
    }

    /// The table, for its queries.
    pub(crate) fn table(&self) -> &GrantTable {
        &self.table
    }

    /// Registers the exports of a VIOS definition as block resources (at
    /// define, and for every stored VIOS when the manager starts); nothing
    /// for a VMM partition.
    pub(crate) fn register_blocks(&mut self, definition: &Definition) {
        if let Definition::Vios(def) = definition {
            for d in &def.disks {
                self.table.add_block(&def.name, &d.id, d.read_only);
            }
        }
    }

    /// The whole table, for `parctl grants`.
    pub(crate) fn listing(&self) -> Shared {
        (
            self.table.segments().cloned().collect(),
            self.table.grants().cloned().collect(),
            self.table.doorbells().cloned().collect(),
        )
    }

    // ---- acks -------------------------------------------------------------

    pub(crate) fn clear_ack(&mut self, partition: &str, key: &str) {
        self.acks.remove(&(partition.to_string(), key.to_string()));
    }

    pub(crate) fn take_ack(&mut self, partition: &str, key: &str) -> Option<Ack> {
        self.acks.remove(&(partition.to_string(), key.to_string()))
    }

    pub(crate) fn has_unmapped(&self, partition: &str, key: &str) -> bool {
        self.acks.get(&(partition.to_string(), key.to_string())) == Some(&Ack::Unmapped)
    }

    /// Drops the acks of the grants `ids` (a revoke is over).
    pub(crate) fn clear_grant_acks(&mut self, ids: &[u64]) {
        for id in ids {
            if let Some(grantee) = self.table.by_id(*id).map(|g| g.grantee.clone()) {
                self.acks.remove(&(grantee, grant_key(*id)));
            }
        }
    }

    /// Map/unmap answers and fault reports from `partition`'s VMM.
    pub(crate) fn on_answer(&mut self, store: &Store, partition: &str, msg: ToManager) {
        let (key, ack) = match msg {
            ToManager::Mapped { key, gpa } => (key, Ack::Mapped(gpa)),
            ToManager::MapFailed {
                key,
                message,
                conflict,
            } => {
                tracing::warn!(partition, %key, %message, "VMM refused a mapping");
                (key, Ack::Failed { message, conflict })
            }
            ToManager::Unmapped { key } => (key, Ack::Unmapped),
            ToManager::Fault {
                key,
                gpa,
                write,
                count,
            } => {
                let what = if write {
                    "write to a read-only grant refused"
                } else {
                    "access to an unmapped (revoked) grant"
                };
                tracing::warn!(partition, %key, gpa = format_args!("{gpa:#x}"), count, what, "guest fault on a grant");
                let id = key
                    .strip_prefix("grant:")
                    .and_then(|s| s.parse::<u64>().ok());
                let recorded = id.and_then(|id| {
                    self.table
                        .record_fault(id, partition, count, format!("{what} at {gpa:#x}"))
                });
                if let Some(g) = recorded {
                    if let Err(e) = store.put_grant_relaxed(&g) {
                        tracing::error!(grant = g.id, error = %e, "cannot record the fault");
                    }
                }
                return;
            }
            other => {
                tracing::debug!(partition, msg = ?other, "unexpected VMM message ignored");
                return;
            }
        };
        self.acks.insert((partition.to_string(), key), ack);
    }

    // ---- definitions and runs -----------------------------------------------

    /// Creates the segments of a definition being registered.
    pub(crate) fn create_declared(
        &mut self,
        owner: &str,
        specs: &[SegmentSpec],
    ) -> Result<Vec<SegmentInfo>, ManagerError> {
        let mut sizes = Vec::new();
        for spec in specs {
            let size = spec.bytes().map_err(|message| {
                if message.contains("exceeds") {
                    GrantError::TooLarge {
                        name: segment_name(owner, &spec.id),
                        message,
                    }
                } else {
                    GrantError::Bad(message)
                }
            })?;
            sizes.push(size);
        }
        let mut created = Vec::new();
        for (spec, size) in specs.iter().zip(sizes) {
            match self
                .table
                .create_segment(owner, &spec.id, size, spec.gpa, true)
            {
                Ok(info) => created.push(info),
                Err(e) => {
                    for c in &created {
                        self.table.remove_resource(&c.name);
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(created)
    }

    /// Segments [`Self::create_declared`] made that are not to be kept (a
    /// dry run).
    pub(crate) fn discard(&mut self, created: &[SegmentInfo]) {
        for c in created {
            self.table.remove_resource(&c.name);
        }
    }

    /// An undefined partition's segments go, and every grant of them ends,
    /// as do the grants made to it (grantees still running are told to
    /// unmap; not waited for).
    pub(crate) fn forget_owner(
        &mut self,
        store: &Store,
        partitions: &PartitionTable,
        owner: &str,
    ) -> Result<Ended, ManagerError> {
        let names: Vec<String> = self
            .table
            .owned_by(owner)
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let blocks = self.table.blocks_owned_by(owner);
        let mut all = Ended::default();
        for name in names.into_iter().chain(blocks) {
            if !self.table.remove_resource(&name) {
                store.remove_segment(&name)?;
            }
            let ids: Vec<(u64, bool)> = self
                .table
                .live_grants_of(&name)
                .into_iter()
                .map(|id| (id, true))
                .collect();
            let ended = self.end_grants(store, partitions, &ids, GrantState::Revoked);
            all.disconnects.extend(ended.disconnects);
        }
        // Cookies for it die with it: a partition defined later under the
        // same name must not inherit them.
        let mut ids: Vec<(u64, bool)> = Vec::new();
        for id in self.table.live_grants_to(owner) {
            for d in self.table.with_descendants(id) {
                if !ids.iter().any(|(x, _)| *x == d) {
                    ids.push((d, true));
                }
            }
        }
        let ended = self.end_grants(store, partitions, &ids, GrantState::Revoked);
        all.disconnects.extend(ended.disconnects);
        Ok(all)
    }

    /// Ends grants (`state`: revoked or released): in memory first (so no
    /// further operation can use them), then asks the grantee VMMs of those
    /// marked `true` (and mapped) to unmap, then records them in one
    /// durable transaction while the VMMs work. Returns what to wait for.
    /// (A manager that dies before the record re-reads them as they were;
    /// the revoke did not return, and repeating it unmaps nothing twice: an
    /// unmap of an unknown mapping is acknowledged as done.)
    pub(crate) fn end_grants(
        &mut self,
        store: &Store,
        partitions: &PartitionTable,
        ids: &[(u64, bool)],
        state: GrantState,
    ) -> Ended {
        let now = now_secs();
        let mut ended = Vec::new();
        for &(id, tell) in ids {
            if let Some((g, was_mapped)) = self.table.end(id, state, now) {
                ended.push((g, was_mapped && tell));
            }
        }
        let mut out = Ended::default();
        for (g, _) in ended.iter().filter(|(_, tell)| *tell) {
            if self.table.is_block(&g.segment) {
                out.disconnects.push((g.segment.clone(), g.grantee.clone()));
                continue;
            }
            let key = grant_key(g.id);
            let Some(live) = partitions.live(&g.grantee) else {
                continue;
            };
            let msg = ManagerToVmm::Unmap { key: key.clone() };
            if let Err(e) = live.writer.send(&msg, &[]) {
                tracing::warn!(partition = %g.grantee, grant = g.id, error = %e, "cannot ask the VMM to unmap");
            }
            out.waiters.push(Waiter {
                partition: g.grantee.clone(),
                key,
                generation: live.generation,
                pid: live.pid,
            });
        }
        let rows: Vec<GrantInfo> = ended.into_iter().map(|(g, _)| g).collect();
        if let Err(e) = store.put_grants(&rows) {
            tracing::error!(error = %e, "cannot record ended grants");
        }
        out
    }

    /// A partition's VMM ended: the grants it held (and everything granted
    /// on from them) are released; other grantees are told to unmap. Its
    /// standing grants (shared-segment configuration) go back to
    /// `granted`, to be accepted again at its next start.
    pub(crate) fn release_held(
        &mut self,
        store: &Store,
        partitions: &PartitionTable,
        partition: &str,
    ) -> Ended {
        let ids = self.table.held_by(partition);
        let now = now_secs();
        let mut released = Vec::new();
        for id in ids {
            let Some(grantee) = self.table.by_id(id).map(|g| g.grantee.clone()) else {
                continue;
            };
            if grantee == partition {
                if let Some(g) = self.table.back_to_standing(id, now) {
                    if let Err(e) = store.put_grant(&g) {
                        tracing::error!(grant = id, error = %e, "cannot record the grant");
                    }
                    continue;
                }
            }
            released.push((id, grantee != partition));
            tracing::info!(
                partition,
                grant = id,
                "grant released: its holder's VMM ended"
            );
        }
        let ended = self.end_grants(store, partitions, &released, GrantState::Released);
        self.acks.retain(|(p, _), _| p != partition);
        ended
    }

    /// A partition became ready: its own segments are mapped and its
    /// doorbells wired. Returns its standing grants, for the manager to
    /// accept (on a thread of their own: an accept waits for this VMM's
    /// ack, which the caller's thread reads).
    pub(crate) fn on_ready(
        &mut self,
        partitions: &PartitionTable,
        partition: &str,
    ) -> Vec<(GrantCookie, u64)> {
        let names: Vec<String> = self
            .table
            .owned_by(partition)
            .iter()
            .filter(|s| s.gpa.is_some())
            .map(|s| s.name.clone())
            .collect();
        for name in names {
            self.map_owned(partitions, partition, &name, true);
        }
        let standing = self.table.standing_for(partition);
        for id in self.table.doorbells_of(partition) {
            self.wire_doorbell(partitions, &id, Some(partition));
        }
        standing
    }

    /// Maps one owned segment into its running owner (not waited for; a
    /// failure is logged). `at_ready`: the owner just became ready (and
    /// the log says so).
    fn map_owned(&mut self, partitions: &PartitionTable, owner: &str, name: &str, at_ready: bool) {
        if !at_ready && !partitions.is_attached(owner) {
            return;
        }
        let Ok(seg) = self.table.segment_mut(name) else {
            return;
        };
        let (gpa, size) = (seg.info().gpa, seg.info().size);
        let memfd = match seg.memfd() {
            Ok(f) => f,
            Err(e) => {
                if at_ready {
                    tracing::error!(segment = %name, error = %e, "cannot map the segment into its owner");
                }
                return;
            }
        };
        let Some(writer) = partitions.writer(owner) else {
            return;
        };
        let msg = ManagerToVmm::Map {
            key: segment_key(name),
            gpa,
            size,
            read_only: false,
        };
        if let Err(e) = writer.send(&msg, &[memfd.as_fd()]) {
            if at_ready {
                tracing::warn!(partition = owner, segment = %name, error = %e, "cannot map the segment into its owner");
            } else {
                tracing::warn!(partition = owner, segment = name, error = %e, "cannot map the segment");
            }
        }
    }

    /// Sends doorbell `id`'s eventfd to its running ends (only `only`, if
    /// given).
    fn wire_doorbell(&mut self, partitions: &PartitionTable, id: &str, only: Option<&str>) {
        let Some(d) = self.table.doorbell_mut(id) else {
            return;
        };
        let info = d.info().clone();
        let fd = match d.eventfd() {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(doorbell = id, error = %e, "cannot wire the doorbell");
                return;
            }
        };
        let ends = [
            (&info.from, Some(info.ring), None, None),
            (&info.to, None, info.gsi, info.vector),
        ];
        for (partition, ring, gsi, vector) in ends {
            if only.is_some_and(|o| o != partition.as_str()) {
                continue;
            }
            let Some(w) = partitions.writer(partition) else {
                continue;
            };
            let msg = ManagerToVmm::Doorbell {
                id: id.to_string(),
                ring,
                gsi,
                vector,
            };
            if let Err(e) = w.send(&msg, &[fd.as_fd()]) {
                tracing::warn!(doorbell = id, partition = %partition, error = %e, "cannot wire the doorbell");
            }
        }
    }
}

/// Asks `partition`'s VMM to unmap `key` (not waited for).
fn send_unmap(partitions: &PartitionTable, partition: &str, key: &str) {
    if let Some(w) = partitions.writer(partition) {
        if let Err(e) = w.send(&ManagerToVmm::Unmap { key: key.into() }, &[]) {
            tracing::warn!(partition, key, error = %e, "cannot ask the VMM to unmap");
        }
    }
}

/// Copies `len` bytes between two files in 1 MiB steps.
pub fn copy_between(
    from: &File,
    mut src: u64,
    to: &File,
    mut dst: u64,
    len: u64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; (1usize << 20).min(len as usize)];
    let mut left = len;
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        from.read_exact_at(&mut buf[..n], src)?;
        to.write_all_at(&buf[..n], dst)?;
        src += n as u64;
        dst += n as u64;
        left -= n as u64;
    }
    Ok(())
}
