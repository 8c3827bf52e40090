//! Grant cookies at work: the [`Manager`] operations on segments and grants
//! (checked by [`crate::grants`]), and their effect on the VMMs: `Map` with
//! the segment's memfd beside it on accept, `Unmap` on revoke, and waiting
//! for each VMM's acknowledgement before answering.
//!
//! A revoke answers only once every affected VMM has acknowledged its
//! unmap; a VMM that does not within [`UNMAP_TIMEOUT`] is killed (its
//! mapping dies with it), so a revoked segment is never reachable after the
//! revoke returns. Operators act through `parctl` on behalf of a named
//! partition; guests through the hcall device, as the partition behind the
//! control channel the call arrives on.

use crate::grants::{grant_key, segment_key, GrantError};
use crate::supervisor::{now_secs, send_signal, Inner, Manager, ManagerError};
use parvm_protocol::grant::hcall_status;
use parvm_protocol::{
    DoorbellInfo, GrantCookie, GrantInfo, GrantState, Hcall, HcallOutcome, ManagerToVmm, Rights,
    SegmentInfo, SegmentSpec, SharedConfig, ToManager,
};
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

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

/// Creates the segments of a definition being registered (lock held).
pub(crate) fn create_declared(
    inner: &mut Inner,
    owner: &str,
    specs: &[SegmentSpec],
) -> Result<Vec<SegmentInfo>, ManagerError> {
    let mut sizes = Vec::new();
    for spec in specs {
        let size = spec.bytes().map_err(|message| {
            if message.contains("exceeds") {
                GrantError::TooLarge {
                    name: crate::grants::segment_name(owner, &spec.id),
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
        match inner
            .table
            .create_segment(owner, &spec.id, size, spec.gpa, true)
        {
            Ok(info) => created.push(info),
            Err(e) => {
                for c in &created {
                    inner.table.segments.remove(&c.name);
                }
                return Err(e.into());
            }
        }
    }
    Ok(created)
}

/// An undefined partition's segments go, and every grant of them ends, as
/// do the grants made to it (grantees still running are told to unmap; not
/// waited for).
pub(crate) fn forget_owner(inner: &mut Inner, owner: &str) -> Result<(), ManagerError> {
    let names: Vec<String> = inner
        .table
        .owned_by(owner)
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let blocks: Vec<String> = inner
        .table
        .blocks
        .iter()
        .filter(|(_, b)| b.owner == owner)
        .map(|(name, _)| name.clone())
        .collect();
    for name in names.into_iter().chain(blocks) {
        if inner.table.blocks.remove(&name).is_none() {
            inner.table.segments.remove(&name);
            inner.store.remove_segment(&name)?;
        }
        let ids: Vec<u64> = inner
            .table
            .grants
            .values()
            .filter(|g| g.segment == name && g.state.is_live())
            .map(|g| g.id)
            .collect();
        let ids: Vec<(u64, bool)> = ids.into_iter().map(|id| (id, true)).collect();
        end_grants(inner, &ids, GrantState::Revoked);
    }
    // Cookies for it die with it: a partition defined later under the same
    // name must not inherit them.
    let mut ids: Vec<(u64, bool)> = Vec::new();
    let held: Vec<u64> = inner
        .table
        .grants
        .values()
        .filter(|g| g.grantee == owner && g.state.is_live())
        .map(|g| g.id)
        .collect();
    for id in held {
        for d in inner.table.with_descendants(id) {
            if !ids.iter().any(|(x, _)| *x == d) {
                ids.push((d, true));
            }
        }
    }
    end_grants(inner, &ids, GrantState::Revoked);
    Ok(())
}

/// Ends grants (`state`: revoked or released): in memory first (so no
/// further operation can use them), then asks the grantee VMMs of those
/// marked `true` (and mapped) to unmap, then records them in one durable
/// transaction while the VMMs work. Returns what to wait for. (A manager
/// that dies before the record re-reads them as they were; the revoke did
/// not return, and repeating it unmaps nothing twice: an unmap of an
/// unknown mapping is acknowledged as done.)
fn end_grants(inner: &mut Inner, ids: &[(u64, bool)], state: GrantState) -> Vec<Waiter> {
    let mut ended = Vec::new();
    for &(id, tell) in ids {
        let Some(g) = inner.table.grant_mut(id) else {
            continue;
        };
        let was_mapped = g.state == GrantState::Accepted;
        g.state = state;
        g.since = now_secs();
        ended.push((g.clone(), was_mapped && tell));
    }
    let mut waiters = Vec::new();
    for (g, _) in ended.iter().filter(|(_, tell)| *tell) {
        if inner.table.is_block(&g.segment) {
            crate::vios::disconnect(inner, &g.segment, &g.grantee);
            continue;
        }
        let key = grant_key(g.id);
        let Some(run) = inner.parts.get(&g.grantee).and_then(|p| p.run.as_ref()) else {
            continue;
        };
        let Some(writer) = run.writer.as_ref() else {
            continue;
        };
        let msg = ManagerToVmm::Unmap { key: key.clone() };
        if let Err(e) = writer.send(&msg, &[]) {
            tracing::warn!(partition = %g.grantee, grant = g.id, error = %e, "cannot ask the VMM to unmap");
        }
        waiters.push(Waiter {
            partition: g.grantee.clone(),
            key,
            generation: run.generation,
            pid: run.pid,
        });
    }
    let rows: Vec<GrantInfo> = ended.into_iter().map(|(g, _)| g).collect();
    if let Err(e) = inner.store.put_grants(&rows) {
        tracing::error!(error = %e, "cannot record ended grants");
    }
    waiters
}

/// An unmap being waited for.
struct Waiter {
    partition: String,
    key: String,
    generation: u64,
    pid: u32,
}

/// A partition's VMM ended: the grants it held (and everything granted on
/// from them) are released; other grantees are told to unmap. Its standing
/// grants (shared-segment configuration) go back to `granted`, to be
/// accepted again at its next start.
pub(crate) fn release_held(inner: &mut Inner, partition: &str) {
    let ids = inner.table.held_by(partition);
    let mut released = Vec::new();
    for id in ids {
        let Some(g) = inner.table.grant_mut(id) else {
            continue;
        };
        if g.grantee == partition && g.auto_gpa.is_some() {
            g.state = GrantState::Granted;
            g.gpa = None;
            g.since = now_secs();
            let g = g.clone();
            if let Err(e) = inner.store.put_grant(&g) {
                tracing::error!(grant = id, error = %e, "cannot record the grant");
            }
            continue;
        }
        released.push((id, g.grantee != partition));
        tracing::info!(
            partition,
            grant = id,
            "grant released: its holder's VMM ended"
        );
    }
    end_grants(inner, &released, GrantState::Released);
    inner.acks.retain(|(p, _), _| p != partition);
}

/// A partition became ready: its own segments are mapped, its standing
/// grants accepted (on a thread of their own: an accept waits for this
/// VMM's ack, which the caller's thread reads) and its doorbells wired.
pub(crate) fn on_ready(mgr: &Arc<Manager>, inner: &mut Inner, partition: &str) {
    map_owned_segments(inner, partition);
    let standing: Vec<(GrantCookie, u64)> = inner
        .table
        .grants
        .values()
        .filter(|g| g.grantee == partition && g.state == GrantState::Granted)
        .filter_map(|g| Some((g.cookie, g.auto_gpa?)))
        .collect();
    if !standing.is_empty() {
        let mgr = mgr.clone();
        let partition = partition.to_string();
        crate::supervisor::spawn_thread("auto-accept", move || {
            for (cookie, gpa) in standing {
                if let Err(e) = mgr.accept(&partition, &cookie, Some(gpa)) {
                    tracing::warn!(partition = %partition, error = %e, "standing grant not accepted");
                }
            }
        });
    }
    let ids: Vec<String> = inner
        .table
        .doorbells
        .values()
        .filter(|d| d.info.from == partition || d.info.to == partition)
        .map(|d| d.info.id.clone())
        .collect();
    for id in ids {
        wire_doorbell(inner, &id, Some(partition));
    }
}

/// Sends doorbell `id`'s eventfd to its running ends (only `only`, if
/// given).
fn wire_doorbell(inner: &mut Inner, id: &str, only: Option<&str>) {
    let Some(d) = inner.table.doorbells.get_mut(id) else {
        return;
    };
    let info = d.info.clone();
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
        let Some(w) = inner
            .parts
            .get(partition.as_str())
            .and_then(|p| p.run.as_ref())
            .and_then(|r| r.writer.as_ref())
        else {
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

/// A partition just became ready: its segments with an address are mapped
/// into it (not waited for; a failure is logged).
pub(crate) fn map_owned_segments(inner: &mut Inner, partition: &str) {
    let names: Vec<String> = inner
        .table
        .owned_by(partition)
        .iter()
        .filter(|s| s.gpa.is_some())
        .map(|s| s.name.clone())
        .collect();
    for name in names {
        let Ok(seg) = inner.table.segment_mut(&name) else {
            continue;
        };
        let (gpa, size) = (seg.info.gpa, seg.info.size);
        let memfd = match seg.memfd() {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(segment = %name, error = %e, "cannot map the segment into its owner");
                continue;
            }
        };
        let Some(writer) = inner
            .parts
            .get(partition)
            .and_then(|p| p.run.as_ref())
            .and_then(|r| r.writer.as_ref())
        else {
            continue;
        };
        let msg = ManagerToVmm::Map {
            key: segment_key(&name),
            gpa,
            size,
            read_only: false,
        };
        if let Err(e) = writer.send(&msg, &[memfd.as_fd()]) {
            tracing::warn!(partition, segment = %name, error = %e, "cannot map the segment into its owner");
        }
    }
}

/// A re-attached VMM reports what it still maps (and wired), with the
/// descriptor. The manager takes back memory and eventfds it lost in a
/// restart: a segment's memory only from its owner or a read-write grantee
/// (a read-only holder must not be able to substitute memory it
/// controls). It also reconciles the grant table: a grant recorded as
/// `granted` (its accept was not recorded before the restart) becomes
/// `accepted` at `gpa`; a grant that ended meanwhile is unmapped at once.
pub(crate) fn adopt(
    mgr: &Manager,
    partition: &str,
    key: &str,
    gpa: Option<u64>,
    fds: Vec<std::os::fd::OwnedFd>,
) {
    let Some(fd) = fds.into_iter().next() else {
        return;
    };
    let mut inner = mgr.lock();
    if let Some(id) = key.strip_prefix("doorbell:") {
        let Some(d) = inner.table.doorbells.get_mut(id) else {
            return;
        };
        let is_end = d.info.from == partition || d.info.to == partition;
        if is_end && d.adopt(File::from(fd)) {
            tracing::info!(
                partition,
                doorbell = id,
                "doorbell eventfd taken back from a running VMM"
            );
        }
        return;
    }
    let segment = if let Some(name) = key.strip_prefix("segment:") {
        inner
            .table
            .segments
            .get(name)
            .filter(|s| s.info.owner == partition)
            .map(|s| s.info.name.clone())
    } else {
        let id = key
            .strip_prefix("grant:")
            .and_then(|id| id.parse::<u64>().ok());
        let Some(g) = id.and_then(|id| inner.table.grant_mut(id)) else {
            // Minted and accepted just before a crash and never recorded:
            // nobody could revoke it, so it goes.
            tracing::warn!(
                partition,
                key,
                "a VMM maps a grant the manager does not know; unmapping it"
            );
            send_unmap(&inner, partition, key);
            return;
        };
        let rw_segment = (g.rights == Rights::Rw).then(|| g.segment.clone());
        if g.grantee != partition {
            tracing::warn!(
                partition,
                key,
                "a VMM reports a mapping of another partition's grant"
            );
            return;
        }
        match g.state {
            GrantState::Granted => {
                g.state = GrantState::Accepted;
                g.gpa = gpa;
                g.since = now_secs();
                let g = g.clone();
                if let Err(e) = inner.store.put_grant_relaxed(&g) {
                    tracing::error!(grant = g.id, error = %e, "cannot record the grant");
                }
                tracing::info!(
                    partition,
                    grant = g.id,
                    "accepted grant taken back from a running VMM"
                );
            }
            GrantState::Revoked | GrantState::Released => {
                tracing::warn!(
                    partition,
                    key,
                    "a VMM still maps an ended grant; unmapping it"
                );
                send_unmap(&inner, partition, key);
                return;
            }
            GrantState::Accepted => {}
        }
        rw_segment
    };
    let Some(name) = segment else {
        tracing::debug!(partition, key, "handed-back memory not adopted");
        return;
    };
    let file = File::from(fd);
    let Ok(seg) = inner.table.segment_mut(&name) else {
        return;
    };
    if file.metadata().is_ok_and(|m| m.len() >= seg.info.size) {
        seg.adopt(file);
        tracing::info!(partition, segment = %name, "segment memory taken back from a running VMM");
    }
}

/// Asks `partition`'s VMM to unmap `key` (not waited for).
fn send_unmap(inner: &Inner, partition: &str, key: &str) {
    if let Some(w) = inner
        .parts
        .get(partition)
        .and_then(|p| p.run.as_ref())
        .and_then(|r| r.writer.as_ref())
    {
        if let Err(e) = w.send(&ManagerToVmm::Unmap { key: key.into() }, &[]) {
            tracing::warn!(partition, key, error = %e, "cannot ask the VMM to unmap");
        }
    }
}

/// Map/unmap answers and fault reports from a VMM.
pub(crate) fn on_vmm_message(mgr: &Manager, partition: &str, msg: ToManager) {
    let mut inner = mgr.lock();
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
            if let Some(g) = id.and_then(|id| inner.table.grant_mut(id)) {
                if g.grantee == partition {
                    g.faults = g.faults.max(count);
                    g.last_fault = Some(format!("{what} at {gpa:#x}"));
                    let g = g.clone();
                    if let Err(e) = inner.store.put_grant_relaxed(&g) {
                        tracing::error!(grant = g.id, error = %e, "cannot record the fault");
                    }
                }
            }
            return;
        }
        other => {
            tracing::debug!(partition, msg = ?other, "unexpected VMM message ignored");
            return;
        }
    };
    inner.acks.insert((partition.to_string(), key), ack);
}

fn live_writer<'a>(
    inner: &'a Inner,
    partition: &str,
) -> Result<(&'a parvm_protocol::Channel, u64), ManagerError> {
    let p = inner
        .parts
        .get(partition)
        .ok_or_else(|| ManagerError::NotFound(partition.into()))?;
    let run = p.run.as_ref().ok_or_else(|| ManagerError::InvalidState {
        name: partition.into(),
        state: p.rec.state,
        message: "start it before it accepts a grant",
    })?;
    let w = run
        .writer
        .as_ref()
        .ok_or_else(|| ManagerError::InvalidState {
            name: partition.into(),
            state: p.rec.state,
            message: "its VMM has not re-attached yet",
        })?;
    Ok((w, run.generation))
}

impl Manager {
    fn known_partition(inner: &Inner, name: &str) -> Result<(), ManagerError> {
        if inner.parts.contains_key(name) {
            Ok(())
        } else {
            Err(ManagerError::NotFound(name.into()))
        }
    }

    pub fn segment_create(
        &self,
        owner: &str,
        id: &str,
        size: u64,
        gpa: Option<u64>,
    ) -> Result<SegmentInfo, ManagerError> {
        let mut inner = self.lock();
        Self::known_partition(&inner, owner)?;
        let info = inner.table.create_segment(owner, id, size, gpa, true)?;
        inner.store.put_segment(&info)?;
        if gpa.is_some() {
            map_owned_one(&mut inner, owner, &info.name);
        }
        tracing::info!(segment = %info.name, size, "segment created");
        Ok(info)
    }

    pub fn grant(
        &self,
        caller: &str,
        segment: &str,
        grantee: &str,
        rights: Rights,
    ) -> Result<GrantInfo, ManagerError> {
        let mut inner = self.lock();
        Self::known_partition(&inner, grantee)?;
        let g = inner
            .table
            .grant(caller, segment, grantee, rights, now_secs())?;
        inner.store.put_grant_relaxed(&g)?;
        tracing::info!(grant = g.id, %segment, grantor = caller, grantee, %rights, "granted");
        Ok(g)
    }

    pub fn regrant(
        &self,
        caller: &str,
        cookie: &GrantCookie,
        grantee: &str,
        rights: Rights,
    ) -> Result<GrantInfo, ManagerError> {
        let mut inner = self.lock();
        Self::known_partition(&inner, grantee)?;
        let g = inner
            .table
            .regrant(caller, cookie, grantee, rights, now_secs())?;
        inner.store.put_grant_relaxed(&g)?;
        tracing::info!(grant = g.id, segment = %g.segment, grantor = caller, grantee, %rights, "regranted");
        Ok(g)
    }

    /// `caller` accepts `cookie`: its VMM maps the segment and answers with
    /// the address before this returns.
    pub fn accept(
        &self,
        caller: &str,
        cookie: &GrantCookie,
        gpa: Option<u64>,
    ) -> Result<GrantInfo, ManagerError> {
        let mut inner = self.lock();
        let g = inner.table.check_accept(caller, cookie)?;
        if inner.table.is_block(&g.segment) {
            // A VIOS disk is not mapped: the accept is recorded, and the
            // grantee's next start connects to the VIOS.
            if gpa.is_some() {
                return Err(GrantError::Bad(format!(
                    "`{}` is a VIOS disk, not memory: accept it without a guest address",
                    g.segment
                ))
                .into());
            }
            return self.accepted(inner, g.id, None);
        }
        let seg = inner.table.segment_mut(&g.segment)?;
        let size = seg.info.size;
        let memfd = seg.memfd()?;
        let request = ManagerToVmm::Map {
            key: grant_key(g.id),
            gpa,
            size,
            read_only: g.rights == Rights::Ro,
        };
        let (inner, at) = self.map_wait(inner, caller, request, &memfd);
        self.accepted(inner, g.id, Some(at?))
    }

    /// Sends `request` (a `Map`) with `memfd` to `partition`'s VMM and
    /// waits (lock released meanwhile) for its answer: the address.
    fn map_wait<'a>(
        &self,
        mut inner: MutexGuard<'a, Inner>,
        partition: &str,
        request: ManagerToVmm,
        memfd: &File,
    ) -> (MutexGuard<'a, Inner>, Result<u64, ManagerError>) {
        let ManagerToVmm::Map { key, .. } = &request else {
            return (inner, Err(ManagerError::BadRequest("not a map".into())));
        };
        let ack_key = (partition.to_string(), key.clone());
        inner.acks.remove(&ack_key);
        let generation = match live_writer(&inner, partition) {
            Ok((writer, generation)) => {
                if let Err(e) = writer.send(&request, &[memfd.as_fd()]) {
                    let e = ManagerError::Control(partition.into(), e.to_string());
                    return (inner, Err(e));
                }
                generation
            }
            Err(e) => return (inner, Err(e)),
        };
        let deadline = Instant::now() + MAP_TIMEOUT;
        loop {
            match inner.acks.remove(&ack_key) {
                Some(Ack::Mapped(at)) => return (inner, Ok(at)),
                Some(Ack::Failed { message, conflict }) => {
                    let e = ManagerError::Map {
                        name: partition.into(),
                        message,
                        conflict,
                    };
                    return (inner, Err(e));
                }
                Some(Ack::Unmapped) | None => {}
            }
            let alive = live_writer(&inner, partition).is_ok_and(|(_, gen)| gen == generation);
            let now = Instant::now();
            if !alive || now >= deadline {
                let e = ManagerError::Control(partition.into(), "the VMM did not map it".into());
                return (inner, Err(e));
            }
            inner = self.wait(inner, deadline - now);
        }
    }

    /// A guest creates a segment it owns (hcall SEGMENT_CREATE), mapped in
    /// it at `gpa` (waited for) if given. Returns its number among the
    /// caller's segments and where it is mapped.
    pub fn segment_create_mapped(
        &self,
        owner: &str,
        id: &str,
        size: u64,
        gpa: Option<u64>,
    ) -> Result<(u64, Option<u64>), ManagerError> {
        let mut inner = self.lock();
        Self::known_partition(&inner, owner)?;
        let info = inner.table.create_segment(owner, id, size, gpa, true)?;
        inner.store.put_segment(&info)?;
        tracing::info!(segment = %info.name, size, "segment created by its owner's guest");
        let index = inner
            .table
            .owned_by(owner)
            .iter()
            .position(|s| s.name == info.name)
            .unwrap_or_default() as u64;
        if gpa.is_none() {
            return Ok((index, None));
        }
        let memfd = inner.table.segment_mut(&info.name)?.memfd()?;
        let request = ManagerToVmm::Map {
            key: segment_key(&info.name),
            gpa,
            size,
            read_only: false,
        };
        let (_inner, at) = self.map_wait(inner, owner, request, &memfd);
        Ok((index, Some(at?)))
    }

    fn accepted(
        &self,
        mut inner: MutexGuard<'_, Inner>,
        id: u64,
        gpa: Option<u64>,
    ) -> Result<GrantInfo, ManagerError> {
        let Some(g) = inner.table.grant_mut(id) else {
            return Err(ManagerError::Control(
                "grant table".into(),
                format!("grant {id} vanished"),
            ));
        };
        if g.state != GrantState::Granted {
            // Revoked while being mapped: the revoke's unmap follows.
            return Err(GrantError::Used {
                id,
                state: g.state,
                why: "revoked while it was being accepted",
            }
            .into());
        }
        g.state = GrantState::Accepted;
        g.gpa = gpa;
        g.since = now_secs();
        let g = g.clone();
        inner.store.put_grant_relaxed(&g)?;
        match gpa {
            Some(gpa) => {
                tracing::info!(grant = id, grantee = %g.grantee, gpa = format_args!("{gpa:#x}"), "grant accepted")
            }
            None => {
                tracing::info!(grant = id, grantee = %g.grantee, resource = %g.segment, "grant of a VIOS disk accepted")
            }
        }
        Ok(g)
    }

    /// Revokes `cookie` and its descendants; returns once every affected
    /// VMM has unmapped (or was killed for not doing so in time).
    pub fn revoke(
        &self,
        caller: Option<&str>,
        cookie: &GrantCookie,
    ) -> Result<Vec<GrantInfo>, ManagerError> {
        let mut inner = self.lock();
        let caller = match caller {
            Some(c) => c.to_string(),
            None => inner.table.lookup(cookie)?.grantor.clone(),
        };
        let ids = inner.table.revoke_set(&caller, cookie)?;
        let marked: Vec<(u64, bool)> = ids.iter().map(|&id| (id, true)).collect();
        let started = Instant::now();
        let mut waiters = end_grants(&mut inner, &marked, GrantState::Revoked);
        let recorded = started.elapsed();
        let vmms = waiters.len();
        let deadline = Instant::now() + UNMAP_TIMEOUT;
        loop {
            waiters.retain(|w| {
                let same_vmm = inner
                    .parts
                    .get(&w.partition)
                    .and_then(|p| p.run.as_ref())
                    .is_some_and(|r| r.generation == w.generation);
                let acked =
                    inner.acks.get(&(w.partition.clone(), w.key.clone())) == Some(&Ack::Unmapped);
                same_vmm && !acked
            });
            if waiters.is_empty() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                for w in &waiters {
                    tracing::warn!(partition = %w.partition, pid = w.pid, key = %w.key, "VMM did not unmap a revoked grant in time; killing it");
                    send_signal(w.pid, libc::SIGKILL);
                }
                // Their channel threads see the end; wait for that.
                let until = Instant::now() + Duration::from_secs(5);
                while Instant::now() < until {
                    let gone = waiters.iter().all(|w| {
                        inner
                            .parts
                            .get(&w.partition)
                            .and_then(|p| p.run.as_ref())
                            .is_none_or(|r| r.generation != w.generation)
                    });
                    if gone {
                        break;
                    }
                    inner = self.wait(inner, Duration::from_millis(20));
                }
                break;
            }
            inner = self.wait(inner, deadline - now);
        }
        for id in &ids {
            if let Some(grantee) = inner.table.grants.get(id).map(|g| g.grantee.clone()) {
                inner.acks.remove(&(grantee, grant_key(*id)));
            }
        }
        tracing::info!(
            by = %caller,
            count = ids.len(),
            vmms,
            record_us = recorded.as_micros() as u64,
            total_us = started.elapsed().as_micros() as u64,
            "revoked"
        );
        Ok(ids
            .iter()
            .filter_map(|id| inner.table.grants.get(id).cloned())
            .collect())
    }

    /// The data mover: copies between two segments `caller` holds cookies
    /// for, without mapping either anywhere new.
    pub fn copy(
        &self,
        caller: &str,
        src: &GrantCookie,
        src_offset: u64,
        dst: &GrantCookie,
        dst_offset: u64,
        len: u64,
    ) -> Result<u64, ManagerError> {
        let (from, to) = {
            let mut inner = self.lock();
            let (s, d) = inner
                .table
                .check_copy(caller, src, src_offset, dst, dst_offset, len)?;
            let from = inner.table.segment_mut(&s)?.memfd()?;
            let to = inner.table.segment_mut(&d)?.memfd()?;
            (from, to)
        };
        copy_between(&from, src_offset, &to, dst_offset, len).map_err(|source| {
            ManagerError::Io {
                what: "copy between segments".into(),
                source,
            }
        })?;
        Ok(len)
    }

    pub fn grant_table(&self) -> (Vec<SegmentInfo>, Vec<GrantInfo>, Vec<DoorbellInfo>) {
        let inner = self.lock();
        (
            inner
                .table
                .segments
                .values()
                .map(|s| s.info.clone())
                .collect(),
            inner.table.grants.values().cloned().collect(),
            inner
                .table
                .doorbells
                .values()
                .map(|d| d.info.clone())
                .collect(),
        )
    }

    /// Applies a shared-segment configuration: creates missing segments,
    /// standing grants for each `map` entry and the doorbells, and applies
    /// them at once to running partitions. Everything is checked before
    /// anything changes; applying the same file again changes nothing.
    pub fn share(self: &Arc<Self>, config: &SharedConfig) -> Result<Shared, ManagerError> {
        let mut inner = self.lock();
        let bad = |m: String| ManagerError::BadRequest(format!("shared configuration: {m}"));
        // 1. Checks.
        let mut names = std::collections::HashSet::new();
        for s in &config.segments {
            Self::known_partition(&inner, &s.owner)?;
            let name = crate::grants::segment_name(&s.owner, &s.id);
            if !names.insert(name.clone()) {
                return Err(bad(format!("segment `{name}` listed twice")));
            }
            let size = s.size_kib.saturating_mul(1024);
            if let Some(existing) = inner.table.segments.get(&name) {
                if existing.info.size != size {
                    return Err(ManagerError::Grant(GrantError::SegmentExists(name)));
                }
            } else if let Err(message) = parvm_protocol::grant::check_segment_size(size) {
                return Err(GrantError::TooLarge { name, message }.into());
            }
            for m in &s.map {
                Self::known_partition(&inner, &m.partition)?;
                if m.partition == s.owner {
                    return Err(bad(format!(
                        "segment `{name}`: the owner maps it with `gpa`, not `map`"
                    )));
                }
            }
        }
        let mut ids = std::collections::HashSet::new();
        for d in &config.doorbells {
            Self::known_partition(&inner, &d.from)?;
            Self::known_partition(&inner, &d.to)?;
            if !parvm_protocol::grant::valid_segment_id(&d.id) || !ids.insert(d.id.clone()) {
                return Err(bad(format!(
                    "doorbell id `{}` is invalid or listed twice",
                    d.id
                )));
            }
            if d.gsi.is_some() == d.vector.is_some() {
                return Err(bad(format!(
                    "doorbell `{}`: give exactly one of gsi and vector",
                    d.id
                )));
            }
            if d.vector.is_some_and(|v| v < 32) {
                return Err(bad(format!(
                    "doorbell `{}`: vector below 32 (reserved for exceptions)",
                    d.id
                )));
            }
            if d.from == d.to {
                return Err(bad(format!("doorbell `{}` rings its own partition", d.id)));
            }
            if d.ring >= parvm_protocol::grant::DOORBELLS {
                return Err(bad(format!(
                    "doorbell `{}`: ring {} (at most {})",
                    d.id,
                    d.ring,
                    parvm_protocol::grant::DOORBELLS - 1
                )));
            }
            if let Some(old) = inner.table.doorbells.get(&d.id) {
                if old.info != *d {
                    return Err(bad(format!("doorbell `{}` exists with other ends", d.id)));
                }
            }
        }
        // 2. Segments and standing grants.
        let mut out: Shared = (Vec::new(), Vec::new(), Vec::new());
        for s in &config.segments {
            let name = crate::grants::segment_name(&s.owner, &s.id);
            if !inner.table.segments.contains_key(&name) {
                let info = inner.table.create_segment(
                    &s.owner,
                    &s.id,
                    s.size_kib * 1024,
                    s.gpa.map(|a| a.value()),
                    true,
                )?;
                inner.store.put_segment(&info)?;
                map_owned_one(&mut inner, &s.owner, &name);
            }
            if let Some(seg) = inner.table.segments.get(&name) {
                out.0.push(seg.info.clone());
            }
            for m in &s.map {
                let gpa = m.gpa.value();
                let existing = inner
                    .table
                    .grants
                    .values()
                    .find(|g| {
                        g.segment == name
                            && g.grantee == m.partition
                            && g.auto_gpa == Some(gpa)
                            && g.rights == m.rights
                            && g.state.is_live()
                    })
                    .cloned();
                let g = match existing {
                    Some(g) => g,
                    None => {
                        let mut g = inner.table.grant(
                            &s.owner,
                            &name,
                            &m.partition,
                            m.rights,
                            now_secs(),
                        )?;
                        if let Some(row) = inner.table.grant_mut(g.id) {
                            row.auto_gpa = Some(gpa);
                            g = row.clone();
                        }
                        inner.store.put_grant(&g)?;
                        g
                    }
                };
                out.1.push(g);
            }
        }
        // 3. Doorbells.
        for d in &config.doorbells {
            if !inner.table.doorbells.contains_key(&d.id) {
                inner
                    .table
                    .doorbells
                    .insert(d.id.clone(), crate::grants::Doorbell::new(d.clone()));
                inner.store.put_doorbell(d)?;
                wire_doorbell(&mut inner, &d.id, None);
            }
            out.2.push(d.clone());
        }
        // 4. Standing grants of running partitions are accepted now.
        let pending: Vec<(String, GrantCookie, u64)> = out
            .1
            .iter()
            .filter(|g| g.state == GrantState::Granted)
            .filter(|g| {
                inner
                    .parts
                    .get(&g.grantee)
                    .is_some_and(|p| p.run.as_ref().is_some_and(|r| r.writer.is_some()))
            })
            .filter_map(|g| Some((g.grantee.clone(), g.cookie, g.auto_gpa?)))
            .collect();
        drop(inner);
        for (partition, cookie, gpa) in pending {
            let g = self.accept(&partition, &cookie, Some(gpa))?;
            if let Some(slot) = out.1.iter_mut().find(|x| x.id == g.id) {
                *slot = g;
            }
        }
        tracing::info!(
            segments = out.0.len(),
            grants = out.1.len(),
            doorbells = out.2.len(),
            "shared configuration applied"
        );
        Ok(out)
    }

    /// A guest's hcall, on its own thread (it may wait for this very VMM's
    /// acks, which its channel thread reads); the answer goes back on the
    /// control channel.
    pub(crate) fn hcall(self: &Arc<Self>, partition: &str, generation: u64, seq: u64, call: Hcall) {
        tracing::debug!(partition, seq, ?call, "hcall");
        let ok = |r0: u64, r1: u64, cookie: Option<GrantCookie>| HcallOutcome {
            status: 0,
            result0: r0,
            result1: r1,
            cookie,
        };
        let result: Result<HcallOutcome, ManagerError> = match call {
            Hcall::Grant {
                segment,
                grantee,
                rights,
            } => {
                let name = {
                    let inner = self.lock();
                    let owned = inner.table.owned_by(partition);
                    usize::try_from(segment)
                        .ok()
                        .and_then(|i| owned.get(i))
                        .map(|s| s.name.clone())
                };
                match name {
                    Some(name) => self
                        .grant(partition, &name, &grantee, rights)
                        .map(|g| ok(g.id, 0, Some(g.cookie))),
                    None => Err(GrantError::NoSegment(format!("{partition}/#{segment}")).into()),
                }
            }
            Hcall::SegmentCreate { id, size, gpa } => self
                .segment_create_mapped(partition, &id, size, gpa)
                .map(|(index, at)| ok(index, at.unwrap_or(0), None)),
            Hcall::Accept { cookie, gpa } => self
                .accept(partition, &cookie, gpa)
                .map(|g| ok(g.gpa.unwrap_or(0), g.id, None)),
            Hcall::Regrant {
                cookie,
                grantee,
                rights,
            } => self
                .regrant(partition, &cookie, &grantee, rights)
                .map(|g| ok(g.id, 0, Some(g.cookie))),
            Hcall::Revoke { cookie } => self
                .revoke(Some(partition), &cookie)
                .map(|v| ok(v.len() as u64, 0, None)),
            Hcall::Copy {
                src,
                src_offset,
                dst,
                dst_offset,
                len,
            } => self
                .copy(partition, &src, src_offset, &dst, dst_offset, len)
                .map(|n| ok(n, 0, None)),
        };
        let outcome = result.unwrap_or_else(|e| {
            tracing::info!(partition, seq, error = %e, "hcall refused");
            HcallOutcome {
                status: hcall_status(e.kind()),
                result0: 0,
                result1: 0,
                cookie: None,
            }
        });
        let inner = self.lock();
        let writer = inner
            .parts
            .get(partition)
            .and_then(|p| p.run.as_ref())
            .filter(|r| r.generation == generation)
            .and_then(|r| r.writer.as_ref());
        if let Some(w) = writer {
            if let Err(e) = w.send(&ManagerToVmm::HcallDone { seq, outcome }, &[]) {
                tracing::warn!(partition, seq, error = %e, "cannot answer an hcall");
            }
        }
    }
}

/// Maps one owned segment into its running owner (not waited for).
fn map_owned_one(inner: &mut Inner, owner: &str, name: &str) {
    let running = inner
        .parts
        .get(owner)
        .is_some_and(|p| p.run.as_ref().is_some_and(|r| r.writer.is_some()));
    if !running {
        return;
    }
    let Ok(seg) = inner.table.segment_mut(name) else {
        return;
    };
    let (gpa, size) = (seg.info.gpa, seg.info.size);
    let Ok(memfd) = seg.memfd() else { return };
    if let Some(w) = inner
        .parts
        .get(owner)
        .and_then(|p| p.run.as_ref())
        .and_then(|r| r.writer.as_ref())
    {
        let msg = ManagerToVmm::Map {
            key: segment_key(name),
            gpa,
            size,
            read_only: false,
        };
        if let Err(e) = w.send(&msg, &[memfd.as_fd()]) {
            tracing::warn!(partition = owner, segment = name, error = %e, "cannot map the segment");
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
