//! The grant requests of operators and guests (see docs/manager.md,
//! "Segments and grants"): checked and recorded by the [`GrantEngine`],
//! carried out with the VMMs here, where the manager waits for their acks
//! (lock released meanwhile).
//!
//! A revoke answers only once every affected VMM has acknowledged its
//! unmap; a VMM that does not within [`UNMAP_TIMEOUT`] is killed (its
//! mapping dies with it), so a revoked segment is never reachable after the
//! revoke returns. Operators act through `parctl` on behalf of a named
//! partition; guests through the hcall device, as the partition behind the
//! control channel the call arrives on.
//!
//! [`GrantEngine`]: crate::grant_engine::GrantEngine

use super::{Manager, State};
use crate::error::ManagerError;
use crate::grant_engine::{copy_between, AcceptPlan, Ack, Shared, MAP_TIMEOUT, UNMAP_TIMEOUT};
use crate::grants::GrantError;
use crate::process::send_signal;
use parvm_protocol::grant::hcall_status;
use parvm_protocol::{
    DoorbellInfo, GrantCookie, GrantInfo, Hcall, HcallOutcome, ManagerToVmm, Rights, SegmentInfo,
    SharedConfig,
};
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

impl Manager {
    pub fn segment_create(
        &self,
        owner: &str,
        id: &str,
        size: u64,
        gpa: Option<u64>,
    ) -> Result<SegmentInfo, ManagerError> {
        let mut state = self.lock();
        let (store, partitions, grants) = state.parts();
        let info = grants.segment_create(store, partitions, owner, id, size, gpa)?;
        if gpa.is_some() {
            grants.map_into_owner(partitions, owner, &info.name);
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
        let mut state = self.lock();
        let (store, partitions, grants) = state.parts();
        let g = grants.grant(store, partitions, caller, segment, grantee, rights)?;
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
        let mut state = self.lock();
        let (store, partitions, grants) = state.parts();
        let g = grants.regrant(store, partitions, caller, cookie, grantee, rights)?;
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
        let mut state = self.lock();
        let g = match state.grants.begin_accept(caller, cookie, gpa)? {
            AcceptPlan::Block(id) => {
                let st = &mut *state;
                st.grants.accepted(&st.store, id, None)
            }
            AcceptPlan::Map { id, request, memfd } => {
                let (mut state, at) = self.map_wait(state, caller, request, &memfd);
                let at = at?;
                let st = &mut *state;
                st.grants.accepted(&st.store, id, Some(at))
            }
        }?;
        self.events.push(parvm_protocol::EventKind::GrantAccepted {
            id: g.id,
            segment: g.segment.clone(),
            grantee: g.grantee.clone(),
            rights: g.rights,
        });
        Ok(g)
    }

    /// Sends `request` (a `Map`) with `memfd` to `partition`'s VMM and
    /// waits (lock released meanwhile) for its answer: the address.
    fn map_wait<'a>(
        &self,
        mut state: MutexGuard<'a, State>,
        partition: &str,
        request: ManagerToVmm,
        memfd: &File,
    ) -> (MutexGuard<'a, State>, Result<u64, ManagerError>) {
        let ManagerToVmm::Map { key, .. } = &request else {
            return (state, Err(ManagerError::BadRequest("not a map".into())));
        };
        let key = key.clone();
        state.grants.clear_ack(partition, &key);
        let not_running = "start it before it accepts a grant";
        let generation = match state.partitions.control(partition, not_running) {
            Ok((writer, generation)) => {
                if let Err(e) = writer.send(&request, &[memfd.as_fd()]) {
                    let e = ManagerError::Control(partition.into(), e.to_string());
                    return (state, Err(e));
                }
                generation
            }
            Err(e) => return (state, Err(e)),
        };
        let deadline = Instant::now() + MAP_TIMEOUT;
        loop {
            match state.grants.take_ack(partition, &key) {
                Some(Ack::Mapped(at)) => return (state, Ok(at)),
                Some(Ack::Failed { message, conflict }) => {
                    let e = ManagerError::Map {
                        name: partition.into(),
                        message,
                        conflict,
                    };
                    return (state, Err(e));
                }
                Some(Ack::Unmapped) | None => {}
            }
            let alive = state
                .partitions
                .control(partition, not_running)
                .is_ok_and(|(_, gen)| gen == generation);
            let now = Instant::now();
            if !alive || now >= deadline {
                let e = ManagerError::Control(partition.into(), "the VMM did not map it".into());
                return (state, Err(e));
            }
            state = self.wait(state, deadline - now);
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
        let mut state = self.lock();
        let (store, partitions, grants) = state.parts();
        let info = grants.segment_create(store, partitions, owner, id, size, gpa)?;
        tracing::info!(segment = %info.name, size, "segment created by its owner's guest");
        let index = grants.segment_index(owner, &info.name);
        if gpa.is_none() {
            return Ok((index, None));
        }
        let (request, memfd) = grants.owner_map(&info.name, gpa, size)?;
        let (_state, at) = self.map_wait(state, owner, request, &memfd);
        Ok((index, Some(at?)))
    }

    /// Revokes `cookie` and its descendants; returns once every affected
    /// VMM has unmapped (or was killed for not doing so in time).
    pub fn revoke(
        &self,
        caller: Option<&str>,
        cookie: &GrantCookie,
    ) -> Result<Vec<GrantInfo>, ManagerError> {
        let mut state = self.lock();
        let started = Instant::now();
        let (store, partitions, grants) = state.parts();
        let (ids, caller, ended) = grants.begin_revoke(store, partitions, caller, cookie)?;
        state.after_ended(&ended);
        let mut waiters = ended.waiters;
        let recorded = started.elapsed();
        let vmms = waiters.len();
        let deadline = Instant::now() + UNMAP_TIMEOUT;
        loop {
            waiters.retain(|w| {
                let same_vmm = state.partitions.is_current(&w.partition, w.generation);
                let acked = state.grants.has_unmapped(&w.partition, &w.key);
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
                    let gone = waiters
                        .iter()
                        .all(|w| state.partitions.gone(&w.partition, w.generation));
                    if gone {
                        break;
                    }
                    state = self.wait(state, Duration::from_millis(20));
                }
                break;
            }
            state = self.wait(state, deadline - now);
        }
        state.grants.clear_grant_acks(&ids);
        let revoked = state.grants.grants_by_id(&ids);
        for g in &revoked {
            self.events.push(parvm_protocol::EventKind::GrantRevoked {
                id: g.id,
                segment: g.segment.clone(),
                grantor: g.grantor.clone(),
                grantee: g.grantee.clone(),
            });
        }
        tracing::info!(
            by = %caller,
            count = ids.len(),
            vmms,
            record_us = recorded.as_micros() as u64,
            total_us = started.elapsed().as_micros() as u64,
            "revoked"
        );
        Ok(revoked)
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
        let (from, to) = self
            .lock()
            .grants
            .copy_memory(caller, src, src_offset, dst, dst_offset, len)?;
        copy_between(&from, src_offset, &to, dst_offset, len).map_err(|source| {
            ManagerError::Io {
                what: "copy between segments".into(),
                source,
            }
        })?;
        Ok(len)
    }

    /// Counts `e` if it answers a cookie guess (`unknown_cookie`,
    /// `wrong_partition`) of `caller` (`operator` or a partition's guest)
    /// in `op`; logged at a bounded rate per caller.
    pub fn failed_guess(&self, caller: &str, op: &str, e: &ManagerError) {
        self.guesses.note(caller, op, e.kind(), e);
    }

    /// How many failed cookie guesses `caller` made.
    pub fn failed_guesses(&self, caller: &str) -> u64 {
        self.guesses.count(caller)
    }

    pub fn grant_table(&self) -> (Vec<SegmentInfo>, Vec<GrantInfo>, Vec<DoorbellInfo>) {
        self.lock().grants.listing()
    }

    /// Applies a shared-segment configuration: creates missing segments,
    /// standing grants for each `map` entry and the doorbells, and applies
    /// them at once to running partitions. Everything is checked before
    /// anything changes; applying the same file again changes nothing.
    pub fn share(self: &Arc<Self>, config: &SharedConfig) -> Result<Shared, ManagerError> {
        let (mut out, pending) = {
            let mut state = self.lock();
            let (store, partitions, grants) = state.parts();
            grants.share(store, partitions, config)?
        };
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
    pub(crate) fn guest_hcall(
        self: &Arc<Self>,
        partition: &str,
        generation: u64,
        seq: u64,
        call: Hcall,
    ) {
        tracing::debug!(partition, seq, ?call, "hcall");
        let ok = |r0: u64, r1: u64, cookie: Option<GrantCookie>| HcallOutcome {
            status: 0,
            result0: r0,
            result1: r1,
            cookie,
        };
        let op = match &call {
            Hcall::Accept { .. } => Some("accept"),
            Hcall::Regrant { .. } => Some("regrant"),
            Hcall::Revoke { .. } => Some("revoke"),
            Hcall::Copy { .. } => Some("copy"),
            Hcall::Grant { .. } | Hcall::SegmentCreate { .. } => None,
        };
        let result: Result<HcallOutcome, ManagerError> = match call {
            Hcall::Grant {
                segment,
                grantee,
                rights,
            } => {
                let name = self.lock().grants.owned_segment(partition, segment);
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
            match op {
                Some(op) if crate::ratelimit::is_failed_guess(e.kind()) => {
                    self.failed_guess(partition, op, &e)
                }
                _ => tracing::info!(partition, seq, error = %e, "hcall refused"),
            }
            HcallOutcome {
                status: hcall_status(e.kind()),
                result0: 0,
                result1: 0,
                cookie: None,
            }
        });
        let state = self.lock();
        if let Some(w) = state.partitions.writer_of(partition, generation) {
            if let Err(e) = w.send(&ManagerToVmm::HcallDone { seq, outcome }, &[]) {
                tracing::warn!(partition, seq, error = %e, "cannot answer an hcall");
            }
        }
    }
}
