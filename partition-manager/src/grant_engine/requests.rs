//! The grant engine's part of each grant request (checks, table changes,
//! records); the manager sends and waits around them.

use super::*;

impl GrantEngine {
    /// Creates a segment owned by `owner` and records it.
    pub(crate) fn segment_create(
        &mut self,
        store: &Store,
        partitions: &PartitionTable,
        owner: &str,
        id: &str,
        size: u64,
        gpa: Option<u64>,
    ) -> Result<SegmentInfo, ManagerError> {
        partitions.known(owner)?;
        let info = self.table.create_segment(owner, id, size, gpa, true)?;
        store.put_segment(&info)?;
        Ok(info)
    }

    /// Maps segment `name` into its owner if that runs (not waited for).
    pub(crate) fn map_into_owner(&mut self, partitions: &PartitionTable, owner: &str, name: &str) {
        self.map_owned(partitions, owner, name, false);
    }

    /// Records the segments a definition declared.
    pub(crate) fn record_segments(
        &self,
        store: &Store,
        created: &[SegmentInfo],
    ) -> Result<(), StoreError> {
        for seg in created {
            store.put_segment(seg)?;
        }
        Ok(())
    }

    /// Segment number `index` among those `owner` owns (hcall numbering).
    pub(crate) fn owned_segment(&self, owner: &str, index: u64) -> Option<String> {
        let owned = self.table.owned_by(owner);
        usize::try_from(index)
            .ok()
            .and_then(|i| owned.get(i))
            .map(|s| s.name.clone())
    }

    /// The number of segment `name` among those `owner` owns.
    pub(crate) fn segment_index(&self, owner: &str, name: &str) -> u64 {
        self.table
            .owned_by(owner)
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_default() as u64
    }

    /// The `Map` of segment `name` into its owner at `gpa`, and its memory.
    pub(crate) fn owner_map(
        &mut self,
        name: &str,
        gpa: Option<u64>,
        size: u64,
    ) -> Result<(ManagerToVmm, Arc<File>), ManagerError> {
        let memfd = self.table.segment_mut(name)?.memfd()?;
        let request = ManagerToVmm::Map {
            key: segment_key(name),
            gpa,
            size,
            read_only: false,
        };
        Ok((request, memfd))
    }

    pub(crate) fn grant(
        &mut self,
        store: &Store,
        partitions: &PartitionTable,
        caller: &str,
        segment: &str,
        grantee: &str,
        rights: Rights,
    ) -> Result<GrantInfo, ManagerError> {
        partitions.known(grantee)?;
        let g = self
            .table
            .grant(caller, segment, grantee, rights, now_secs())?;
        store.put_grant_relaxed(&g)?;
        Ok(g)
    }

    pub(crate) fn regrant(
        &mut self,
        store: &Store,
        partitions: &PartitionTable,
        caller: &str,
        cookie: &GrantCookie,
        grantee: &str,
        rights: Rights,
    ) -> Result<GrantInfo, ManagerError> {
        partitions.known(grantee)?;
        let g = self
            .table
            .regrant(caller, cookie, grantee, rights, now_secs())?;
        store.put_grant_relaxed(&g)?;
        Ok(g)
    }

    /// The checks of an accept of `cookie` by `caller` at `gpa`, and how to
    /// carry it out.
    pub(crate) fn begin_accept(
        &mut self,
        caller: &str,
        cookie: &GrantCookie,
        gpa: Option<u64>,
    ) -> Result<AcceptPlan, ManagerError> {
        let g = self.table.check_accept(caller, cookie)?;
        if self.table.is_block(&g.segment) {
            // A VIOS disk is not mapped: the accept is recorded, and the
            // grantee's next start connects to the VIOS.
            if gpa.is_some() {
                return Err(GrantError::Bad(format!(
                    "`{}` is a VIOS disk, not memory: accept it without a guest address",
                    g.segment
                ))
                .into());
            }
            return Ok(AcceptPlan::Block(g.id));
        }
        let seg = self.table.segment_mut(&g.segment)?;
        let size = seg.info().size;
        let memfd = seg.memfd()?;
        let request = ManagerToVmm::Map {
            key: grant_key(g.id),
            gpa,
            size,
            read_only: g.rights == Rights::Ro,
        };
        Ok(AcceptPlan::Map {
            id: g.id,
            request,
            memfd,
        })
    }

    /// The accept of grant `id` is done (mapped at `gpa`): recorded.
    pub(crate) fn accepted(
        &mut self,
        store: &Store,
        id: u64,
        gpa: Option<u64>,
    ) -> Result<GrantInfo, ManagerError> {
        let g = self
            .table
            .mark_accepted(id, gpa, now_secs())
            .map_err(|e| match e {
                GrantError::Vanished(id) => {
                    ManagerError::Control("grant table".into(), format!("grant {id} vanished"))
                }
                e => e.into(),
            })?;
        store.put_grant_relaxed(&g)?;
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

    /// Starts a revoke of `cookie` by `caller` (its grantor if `None`):
    /// the grant and its descendants end now. Returns their ids, the
    /// caller, and what to wait for.
    pub(crate) fn begin_revoke(
        &mut self,
        store: &Store,
        partitions: &PartitionTable,
        caller: Option<&str>,
        cookie: &GrantCookie,
    ) -> Result<(Vec<u64>, String, Ended), ManagerError> {
        let caller = match caller {
            Some(c) => c.to_string(),
            None => self.table.lookup(cookie)?.grantor.clone(),
        };
        let ids = self.table.revoke_set(&caller, cookie)?;
        let marked: Vec<(u64, bool)> = ids.iter().map(|&id| (id, true)).collect();
        let ended = self.end_grants(store, partitions, &marked, GrantState::Revoked);
        Ok((ids, caller, ended))
    }

    /// The grants `ids` as they are now.
    pub(crate) fn grants_by_id(&self, ids: &[u64]) -> Vec<GrantInfo> {
        ids.iter()
            .filter_map(|id| self.table.by_id(*id).cloned())
            .collect()
    }

    /// Checks a copy by `caller`; the source and destination memory.
    pub(crate) fn copy_memory(
        &mut self,
        caller: &str,
        src: &GrantCookie,
        src_offset: u64,
        dst: &GrantCookie,
        dst_offset: u64,
        len: u64,
    ) -> Result<(Arc<File>, Arc<File>), ManagerError> {
        let (s, d) = self
            .table
            .check_copy(caller, src, src_offset, dst, dst_offset, len)?;
        let from = self.table.segment_mut(&s)?.memfd()?;
        let to = self.table.segment_mut(&d)?.memfd()?;
        Ok((from, to))
    }

    /// A re-attached VMM reports what it still maps (and wired), with the
    /// descriptor. The manager takes back memory and eventfds it lost in a
    /// restart: a segment's memory only from its owner or a read-write
    /// grantee (a read-only holder must not be able to substitute memory it
    /// controls). It also reconciles the grant table: a grant recorded as
    /// `granted` (its accept was not recorded before the restart) becomes
    /// `accepted` at `gpa`; a grant that ended meanwhile is unmapped at once.
    pub(crate) fn adopt(
        &mut self,
        store: &Store,
        partitions: &PartitionTable,
        partition: &str,
        key: &str,
        gpa: Option<u64>,
        fds: Vec<OwnedFd>,
    ) {
        let Some(fd) = fds.into_iter().next() else {
            return;
        };
        if let Some(id) = key.strip_prefix("doorbell:") {
            let Some(d) = self.table.doorbell_mut(id) else {
                return;
            };
            let is_end = d.info().from == partition || d.info().to == partition;
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
            self.table
                .segment(name)
                .filter(|s| s.owner == partition)
                .map(|s| s.name.clone())
        } else {
            let id = key
                .strip_prefix("grant:")
                .and_then(|id| id.parse::<u64>().ok());
            let Some(g) = id.and_then(|id| self.table.by_id(id)).cloned() else {
                // Minted and accepted just before a crash and never
                // recorded: nobody could revoke it, so it goes.
                tracing::warn!(
                    partition,
                    key,
                    "a VMM maps a grant the manager does not know; unmapping it"
                );
                send_unmap(partitions, partition, key);
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
                    if let Ok(g) = self.table.mark_accepted(g.id, gpa, now_secs()) {
                        if let Err(e) = store.put_grant_relaxed(&g) {
                            tracing::error!(grant = g.id, error = %e, "cannot record the grant");
                        }
                        tracing::info!(
                            partition,
                            grant = g.id,
                            "accepted grant taken back from a running VMM"
                        );
                    }
                }
                GrantState::Revoked | GrantState::Released => {
                    tracing::warn!(
                        partition,
                        key,
                        "a VMM still maps an ended grant; unmapping it"
                    );
                    send_unmap(partitions, partition, key);
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
        let Ok(seg) = self.table.segment_mut(&name) else {
            return;
        };
        if file.metadata().is_ok_and(|m| m.len() >= seg.info().size) {
            seg.adopt(file);
            tracing::info!(partition, segment = %name, "segment memory taken back from a running VMM");
        }
    }
}
