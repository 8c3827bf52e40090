//! The grant table: memory segments (memfds, one owning partition), the
//! block resources VIOS partitions export (`VIOS/DISK`, owned by the VIOS;
//! docs/vios.md, "Grants") and the grants of them, with every check of DESIGN.md ("Grant cookies") applied
//! against the caller's identity. Pure bookkeeping: the grant engine
//! persists each change and talks to the VMMs (map, unmap, acks).
//!
//! | op | allowed for | checks |
//! |---|---|---|
//! | grant | the resource's owner | segment or VIOS disk exists; a read-only export only `ro` |
//! | accept | the cookie's grantee | cookie minted here, not used, not revoked |
//! | regrant | the grantee of an accepted cookie | rights never wider than its own |
//! | revoke | the grantor or the owner | cookie live; cascades to descendants |
//! | copy | the grantee of both cookies | destination rw, ranges inside |
//!
//! The fields are private: every change goes through a method here (the
//! rules above, and the state transitions the grant engine drives:
//! [`GrantTable::mark_accepted`], [`GrantTable::end`], ...), and the engine
//! asks its questions through the queries below.

use parvm_protocol::grant::{check_segment_size, valid_segment_id, MAX_SEGMENT_SIZE};
use parvm_protocol::{
    DoorbellInfo, ErrorKind, GrantCookie, GrantInfo, GrantState, Rights, SegmentInfo,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

mod resources;
pub use resources::{create_memfd, random_bytes, BlockResource, Doorbell, Segment};

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("unknown grant cookie {0}: this manager never issued it")]
    UnknownCookie(String),
    #[error("grant {id} is for partition `{grantee}`, not `{caller}`")]
    WrongPartition {
        id: u64,
        grantee: String,
        caller: String,
    },
    #[error("partition `{caller}` may not {what}")]
    NotAllowed { caller: String, what: String },
    #[error("grant {id} is {state}: {why}")]
    Used {
        id: u64,
        state: GrantState,
        why: &'static str,
    },
    #[error("grant {id} gives {have} rights: a regrant cannot give {asked}")]
    RightsEscalation {
        id: u64,
        have: Rights,
        asked: Rights,
    },
    #[error("no segment or VIOS disk `{0}`")]
    NoSegment(String),
    #[error("segment `{0}` exists already")]
    SegmentExists(String),
    #[error("segment `{name}`: {message}")]
    TooLarge { name: String, message: String },
    #[error("{0}")]
    Bad(String),
    #[error("grant {0} vanished")]
    Vanished(u64),
    #[error("{what}: {source}")]
    Os {
        what: String,
        source: std::io::Error,
    },
}

impl GrantError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            GrantError::UnknownCookie(_) => ErrorKind::UnknownCookie,
            GrantError::WrongPartition { .. } | GrantError::NotAllowed { .. } => {
                ErrorKind::WrongPartition
            }
            GrantError::Used { .. } => ErrorKind::CookieUsed,
            GrantError::RightsEscalation { .. } => ErrorKind::RightsEscalation,
            GrantError::NoSegment(_) => ErrorKind::NotFound,
            GrantError::SegmentExists(_) => ErrorKind::AlreadyExists,
            GrantError::TooLarge { .. } => ErrorKind::TooLarge,
            GrantError::Bad(_) => ErrorKind::BadRequest,
            GrantError::Vanished(_) => ErrorKind::Internal,
            GrantError::Os { .. } => ErrorKind::Internal,
        }
    }
}

/// Most segments one partition may own (guests create them by hcall).
pub const MAX_SEGMENTS_PER_OWNER: usize = 64;
/// Most live grants one partition may have made.
pub const MAX_GRANTS_PER_GRANTOR: usize = 4096;

#[derive(Default)]
pub struct GrantTable {
    segments: BTreeMap<String, Segment>,
    grants: BTreeMap<u64, GrantInfo>,
    doorbells: BTreeMap<String, Doorbell>,
    /// VIOS exports by `VIOS/DISK`.
    blocks: BTreeMap<String, BlockResource>,
    by_cookie: HashMap<GrantCookie, u64>,
    next_id: u64,
}

/// `OWNER/ID`.
pub fn segment_name(owner: &str, id: &str) -> String {
    format!("{owner}/{id}")
}

impl GrantTable {
    /// The table as stored.
    pub fn load(
        segments: Vec<SegmentInfo>,
        grants: Vec<GrantInfo>,
        doorbells: Vec<DoorbellInfo>,
    ) -> Self {
        let mut t = GrantTable::default();
        for d in doorbells {
            t.doorbells.insert(d.id.clone(), Doorbell::new(d));
        }
        for info in segments {
            t.segments
                .insert(info.name.clone(), Segment::new(info, None));
        }
        for g in grants {
            t.next_id = t.next_id.max(g.id);
            t.by_cookie.insert(g.cookie, g.id);
            t.grants.insert(g.id, g);
        }
        t
    }

    /// Registers the export `disk` of the VIOS partition `owner` as a block
    /// resource `owner/disk` it can grant.
    pub fn add_block(&mut self, owner: &str, disk: &str, read_only: bool) {
        self.blocks.insert(
            segment_name(owner, disk),
            BlockResource {
                owner: owner.into(),
                disk: disk.into(),
                read_only,
            },
        );
    }

    /// Whether `name` is a block resource (a VIOS export), not a segment.
    pub fn is_block(&self, name: &str) -> bool {
        self.blocks.contains_key(name)
    }

    /// The owner of a segment or block resource.
    pub fn owner_of(&self, resource: &str) -> Option<&str> {
        self.segments
            .get(resource)
            .map(|s| s.info().owner.as_str())
            .or_else(|| self.blocks.get(resource).map(|b| b.owner.as_str()))
    }

    /// Checks and adds a segment owned by `owner`.
    pub fn create_segment(
        &mut self,
        owner: &str,
        id: &str,
        size: u64,
        gpa: Option<u64>,
        with_memory: bool,
    ) -> Result<SegmentInfo, GrantError> {
        if !valid_segment_id(id) {
            return Err(GrantError::Bad(format!(
                "invalid segment id `{}`: use 1-32 characters from [A-Za-z0-9._-]",
                id.chars().take(40).collect::<String>()
            )));
        }
        let name = segment_name(owner, id);
        if size > MAX_SEGMENT_SIZE || size == 0 || !size.is_multiple_of(4096) {
            let message = check_segment_size(size).err().unwrap_or_default();
            return Err(GrantError::TooLarge { name, message });
        }
        if let Some(g) = gpa {
            if !g.is_multiple_of(4096) {
                return Err(GrantError::Bad(format!(
                    "segment `{name}`: gpa {g:#x} is not 4 KiB aligned"
                )));
            }
        }
        if self.segments.contains_key(&name) || self.blocks.contains_key(&name) {
            return Err(GrantError::SegmentExists(name));
        }
        if self.owned_by(owner).len() >= MAX_SEGMENTS_PER_OWNER {
            return Err(GrantError::TooLarge {
                name,
                message: format!(
                    "`{owner}` owns {MAX_SEGMENTS_PER_OWNER} segments, the most allowed"
                ),
            });
        }
        let info = SegmentInfo {
            name: name.clone(),
            owner: owner.into(),
            id: id.into(),
            size,
            gpa,
        };
        let memfd = if with_memory {
            Some(Arc::new(create_memfd(&name, size)?))
        } else {
            None
        };
        self.segments
            .insert(name, Segment::new(info.clone(), memfd));
        Ok(info)
    }

    /// The segments `owner` owns, sorted by id: how a guest numbers them
    /// (hcall GRANT's segment number, docs/hcall.md).
    pub fn owned_by(&self, owner: &str) -> Vec<&SegmentInfo> {
        self.segments
            .values()
            .map(|s| s.info())
            .filter(|s| s.owner == owner)
            .collect()
    }

    pub fn lookup(&self, cookie: &GrantCookie) -> Result<&GrantInfo, GrantError> {
        self.by_cookie
            .get(cookie)
            .and_then(|id| self.grants.get(id))
            .ok_or_else(|| GrantError::UnknownCookie(cookie.to_string()))
    }

    fn mint(
        &mut self,
        segment: &str,
        grantor: &str,
        grantee: &str,
        rights: Rights,
        parent: Option<GrantCookie>,
        now: u64,
    ) -> Result<GrantInfo, GrantError> {
        let made = self
            .grants
            .values()
            .filter(|g| g.grantor == grantor && g.state.is_live())
            .count();
        if made >= MAX_GRANTS_PER_GRANTOR {
            return Err(GrantError::TooLarge {
                name: segment.into(),
                message: format!(
                    "`{grantor}` has {MAX_GRANTS_PER_GRANTOR} live grants, the most allowed"
                ),
            });
        }
        let cookie = loop {
            let c = GrantCookie(random_bytes().map_err(|source| GrantError::Os {
                what: "cannot read the OS random source".into(),
                source,
            })?);
            if !self.by_cookie.contains_key(&c) {
                break c;
            }
        };
        self.next_id += 1;
        let g = GrantInfo {
            id: self.next_id,
            cookie,
            segment: segment.into(),
            grantor: grantor.into(),
            grantee: grantee.into(),
            rights,
            parent,
            state: GrantState::Granted,
            gpa: None,
            faults: 0,
            last_fault: None,
            since: now,
            auto_gpa: None,
        };
        self.by_cookie.insert(cookie, g.id);
        self.grants.insert(g.id, g.clone());
        Ok(g)
    }

    /// `caller` (must own `segment`, a segment or a VIOS disk) grants it to
    /// `grantee`.
    pub fn grant(
        &mut self,
        caller: &str,
        segment: &str,
        grantee: &str,
        rights: Rights,
        now: u64,
    ) -> Result<GrantInfo, GrantError> {
        let owner = self
            .owner_of(segment)
            .ok_or_else(|| GrantError::NoSegment(segment.into()))?;
        if owner != caller {
            let what = if self.is_block(segment) {
                "VIOS disk"
            } else {
                "segment"
            };
            return Err(GrantError::NotAllowed {
                caller: caller.into(),
                what: format!("grant {what} `{segment}` (owned by `{owner}`; holders use regrant)"),
            });
        }
        if grantee == caller {
            if let Some(b) = self.blocks.get(segment) {
                return Err(GrantError::Bad(format!(
                    "VIOS `{}` cannot grant its own disk `{}` to itself",
                    b.owner, b.disk
                )));
            }
        }
        if rights == Rights::Rw && self.blocks.get(segment).is_some_and(|b| b.read_only) {
            return Err(GrantError::Bad(format!(
                "VIOS disk `{segment}` is exported read-only: grant it with --rights ro"
            )));
        }
        self.mint(segment, caller, grantee, rights, None, now)
    }

    /// The checks of an accept by `caller`; the grant to map.
    pub fn check_accept(
        &self,
        caller: &str,
        cookie: &GrantCookie,
    ) -> Result<GrantInfo, GrantError> {
        let g = self.lookup(cookie)?;
        if g.grantee != caller {
            return Err(GrantError::WrongPartition {
                id: g.id,
                grantee: g.grantee.clone(),
                caller: caller.into(),
            });
        }
        match g.state {
            GrantState::Granted => Ok(g.clone()),
            GrantState::Accepted => Err(GrantError::Used {
                id: g.id,
                state: g.state,
                why: "a cookie is accepted once",
            }),
            _ => Err(GrantError::Used {
                id: g.id,
                state: g.state,
                why: "the cookie no longer works",
            }),
        }
    }

    /// A live grant held by `caller`: the cookie's grantee, in a live state
    /// (accepted if `accepted`).
    fn held(
        &self,
        caller: &str,
        cookie: &GrantCookie,
        accepted: bool,
    ) -> Result<&GrantInfo, GrantError> {
        let g = self.lookup(cookie)?;
        if g.grantee != caller {
            return Err(GrantError::WrongPartition {
                id: g.id,
                grantee: g.grantee.clone(),
                caller: caller.into(),
            });
        }
        if !g.state.is_live() {
            return Err(GrantError::Used {
                id: g.id,
                state: g.state,
                why: "the cookie no longer works",
            });
        }
        if accepted && g.state != GrantState::Accepted {
            return Err(GrantError::Used {
                id: g.id,
                state: g.state,
                why: "accept it before granting it on",
            });
        }
        Ok(g)
    }

    /// `caller`, holding the accepted `cookie`, grants on with at most its
    /// own rights.
    pub fn regrant(
        &mut self,
        caller: &str,
        cookie: &GrantCookie,
        grantee: &str,
        rights: Rights,
        now: u64,
    ) -> Result<GrantInfo, GrantError> {
        let parent = self.held(caller, cookie, true)?;
        if rights > parent.rights {
            return Err(GrantError::RightsEscalation {
                id: parent.id,
                have: parent.rights,
                asked: rights,
            });
        }
        let segment = parent.segment.clone();
        self.mint(&segment, caller, grantee, rights, Some(*cookie), now)
    }

    /// The ids a revoke of `cookie` by `caller` ends: the grant and every
    /// live descendant, parents first.
    pub fn revoke_set(&self, caller: &str, cookie: &GrantCookie) -> Result<Vec<u64>, GrantError> {
        let g = self.lookup(cookie)?;
        let owner = self.owner_of(&g.segment).unwrap_or_default();
        if g.grantor != caller && owner != caller {
            return Err(GrantError::NotAllowed {
                caller: caller.into(),
                what: format!(
                    "revoke grant {} (only its grantor `{}` or the owner `{owner}`)",
                    g.id, g.grantor
                ),
            });
        }
        if !g.state.is_live() {
            return Err(GrantError::Used {
                id: g.id,
                state: g.state,
                why: "nothing left to revoke",
            });
        }
        Ok(self.with_descendants(g.id))
    }

    /// `id` and its live descendants, parents first.
    pub fn with_descendants(&self, id: u64) -> Vec<u64> {
        let mut out = vec![id];
        let mut i = 0;
        while i < out.len() {
            let Some(cookie) = self.grants.get(&out[i]).map(|g| g.cookie) else {
                i += 1;
                continue;
            };
            for g in self.grants.values() {
                if g.parent == Some(cookie) && g.state.is_live() && !out.contains(&g.id) {
                    out.push(g.id);
                }
            }
            i += 1;
        }
        out
    }

    /// Checks a copy by `caller`: both cookies its own and live, the
    /// destination writable, both ranges inside their segments. Returns the
    /// (source, destination) segment names.
    pub fn check_copy(
        &self,
        caller: &str,
        src: &GrantCookie,
        src_offset: u64,
        dst: &GrantCookie,
        dst_offset: u64,
        len: u64,
    ) -> Result<(String, String), GrantError> {
        let s = self.held(caller, src, false)?;
        let d = self.held(caller, dst, false)?;
        if d.rights != Rights::Rw {
            return Err(GrantError::RightsEscalation {
                id: d.id,
                have: d.rights,
                asked: Rights::Rw,
            });
        }
        for (g, off) in [(s, src_offset), (d, dst_offset)] {
            if self.is_block(&g.segment) {
                return Err(GrantError::Bad(format!(
                    "`{}` is a VIOS disk: the data mover copies between segments",
                    g.segment
                )));
            }
            let size = self
                .segments
                .get(&g.segment)
                .map(|s| s.info().size)
                .ok_or_else(|| GrantError::NoSegment(g.segment.clone()))?;
            let end = off.checked_add(len);
            if end.is_none_or(|e| e > size) {
                return Err(GrantError::Bad(format!(
                    "copy range {off:#x}+{len:#x} lies outside segment `{}` ({size} bytes)",
                    g.segment
                )));
            }
        }
        Ok((s.segment.clone(), d.segment.clone()))
    }

    /// Live grants of segments whose grantee is `partition`, with their
    /// descendants. (Grants of VIOS disks are not held by a VMM: they
    /// outlive the grantee's runs.)
    pub fn held_by(&self, partition: &str) -> Vec<u64> {
        let mut out = Vec::new();
        for g in self.grants.values() {
            if g.grantee == partition
                && g.state == GrantState::Accepted
                && !self.is_block(&g.segment)
            {
                for id in self.with_descendants(g.id) {
                    if !out.contains(&id) {
                        out.push(id);
                    }
                }
            }
        }
        out
    }

    /// Raw write access to one grant, bypassing the rules: for tests and
    /// the fuzz targets only (the manager uses the transitions below).
    #[doc(hidden)]
    pub fn grant_mut(&mut self, id: u64) -> Option<&mut GrantInfo> {
        self.grants.get_mut(&id)
    }

    pub fn segment_mut(&mut self, name: &str) -> Result<&mut Segment, GrantError> {
        self.segments
            .get_mut(name)
            .ok_or_else(|| GrantError::NoSegment(name.into()))
    }

    // ---- queries ------------------------------------------------------

    /// Every grant, by id.
    pub fn grants(&self) -> impl Iterator<Item = &GrantInfo> {
        self.grants.values()
    }

    /// Grant `id`, if minted here.
    pub fn by_id(&self, id: u64) -> Option<&GrantInfo> {
        self.grants.get(&id)
    }

    /// Every segment, by name.
    pub fn segments(&self) -> impl Iterator<Item = &SegmentInfo> {
        self.segments.values().map(|s| s.info())
    }

    pub fn segment(&self, name: &str) -> Option<&SegmentInfo> {
        self.segments.get(name).map(|s| s.info())
    }

    /// Every doorbell, by id.
    pub fn doorbells(&self) -> impl Iterator<Item = &DoorbellInfo> {
        self.doorbells.values().map(|d| d.info())
    }

    pub fn doorbell(&self, id: &str) -> Option<&DoorbellInfo> {
        self.doorbells.get(id).map(|d| d.info())
    }

    /// The block resource (VIOS export) `name`.
    pub fn block(&self, name: &str) -> Option<&BlockResource> {
        self.blocks.get(name)
    }

    /// The block resources owned by `owner`, by name.
    pub fn blocks_owned_by(&self, owner: &str) -> Vec<String> {
        self.blocks
            .iter()
            .filter(|(_, b)| b.owner == owner)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Live grants of resource `resource`.
    pub fn live_grants_of(&self, resource: &str) -> Vec<u64> {
        self.grants
            .values()
            .filter(|g| g.segment == resource && g.state.is_live())
            .map(|g| g.id)
            .collect()
    }

    /// Live grants made to `grantee`.
    pub fn live_grants_to(&self, grantee: &str) -> Vec<u64> {
        self.grants
            .values()
            .filter(|g| g.grantee == grantee && g.state.is_live())
            .map(|g| g.id)
            .collect()
    }

    /// The standing grants (shared-segment configuration) waiting for
    /// `partition` to accept them: cookie and address.
    pub fn standing_for(&self, partition: &str) -> Vec<(GrantCookie, u64)> {
        self.grants
            .values()
            .filter(|g| g.grantee == partition && g.state == GrantState::Granted)
            .filter_map(|g| Some((g.cookie, g.auto_gpa?)))
            .collect()
    }

    /// A live standing grant of `segment` to `grantee` at `gpa` with
    /// `rights`, if there is one.
    pub fn find_standing(
        &self,
        segment: &str,
        grantee: &str,
        gpa: u64,
        rights: Rights,
    ) -> Option<&GrantInfo> {
        self.grants.values().find(|g| {
            g.segment == segment
                && g.grantee == grantee
                && g.auto_gpa == Some(gpa)
                && g.rights == rights
                && g.state.is_live()
        })
    }

    /// The doorbells with `partition` at one end.
    pub fn doorbells_of(&self, partition: &str) -> Vec<String> {
        self.doorbells
            .values()
            .filter(|d| d.info().from == partition || d.info().to == partition)
            .map(|d| d.info().id.clone())
            .collect()
    }

    /// What `client` may do with block resource `resource`: the widest
    /// rights of its accepted grants of it, else whether one is pending.
    pub fn block_access(&self, resource: &str, client: &str) -> BlockAccess {
        let mut accepted = None;
        let mut pending = false;
        for g in self
            .grants
            .values()
            .filter(|g| g.segment == resource && g.grantee == client)
        {
            match g.state {
                GrantState::Accepted => {
                    accepted = Some(accepted.unwrap_or(Rights::Ro).max(g.rights));
                }
                GrantState::Granted => pending = true,
                GrantState::Revoked | GrantState::Released => {}
            }
        }
        match accepted {
            Some(rights) => BlockAccess::Accepted(rights),
            None if pending => BlockAccess::Pending,
            None => BlockAccess::None,
        }
    }

    // ---- changes --------------------------------------------------------

    /// Removes segment or block resource `name` (its grants stay, to be
    /// ended by the caller); whether it was a block resource.
    pub fn remove_resource(&mut self, name: &str) -> bool {
        if self.blocks.remove(name).is_some() {
            return true;
        }
        self.segments.remove(name);
        false
    }

    /// Adds a doorbell (checked by the caller: see the shared-segment
    /// configuration); an existing one stays as it is.
    pub fn add_doorbell(&mut self, info: DoorbellInfo) {
        self.doorbells
            .entry(info.id.clone())
            .or_insert_with(|| Doorbell::new(info));
    }

    pub fn doorbell_mut(&mut self, id: &str) -> Option<&mut Doorbell> {
        self.doorbells.get_mut(id)
    }

    /// A granted cookie's mapping is done: accepted at `gpa`. Fails if the
    /// grant ended meanwhile (revoked while it was being accepted).
    pub fn mark_accepted(
        &mut self,
        id: u64,
        gpa: Option<u64>,
        now: u64,
    ) -> Result<GrantInfo, GrantError> {
        let g = self.grants.get_mut(&id).ok_or(GrantError::Vanished(id))?;
        if g.state != GrantState::Granted {
            return Err(GrantError::Used {
                id,
                state: g.state,
                why: "revoked while it was being accepted",
            });
        }
        g.state = GrantState::Accepted;
        g.gpa = gpa;
        g.since = now;
        Ok(g.clone())
    }

    /// Ends grant `id` (`state`: revoked or released); the grant as it is
    /// now and whether it was mapped (accepted) until now.
    pub fn end(&mut self, id: u64, state: GrantState, now: u64) -> Option<(GrantInfo, bool)> {
        let g = self.grants.get_mut(&id)?;
        let was_mapped = g.state == GrantState::Accepted;
        g.state = state;
        g.since = now;
        Some((g.clone(), was_mapped))
    }

    /// A standing grant (one with an `auto_gpa`) of a holder whose VMM
    /// ended goes back to `granted`, to be accepted at its next start.
    /// `None` (nothing changed) for any other grant.
    pub fn back_to_standing(&mut self, id: u64, now: u64) -> Option<GrantInfo> {
        let g = self.grants.get_mut(&id)?;
        g.auto_gpa?;
        g.state = GrantState::Granted;
        g.gpa = None;
        g.since = now;
        Some(g.clone())
    }

    /// Makes `id` a standing grant to be mapped at `gpa`.
    pub fn set_standing(&mut self, id: u64, gpa: u64) -> Option<GrantInfo> {
        let g = self.grants.get_mut(&id)?;
        g.auto_gpa = Some(gpa);
        Some(g.clone())
    }

    /// Records a guest fault on grant `id` reported by `partition`'s VMM
    /// (only its grantee's reports count).
    pub fn record_fault(
        &mut self,
        id: u64,
        partition: &str,
        count: u64,
        what: String,
    ) -> Option<GrantInfo> {
        let g = self.grants.get_mut(&id)?;
        if g.grantee != partition {
            return None;
        }
        g.faults = g.faults.max(count);
        g.last_fault = Some(what);
        Some(g.clone())
    }
}

/// See [`GrantTable::block_access`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockAccess {
    Accepted(Rights),
    Pending,
    None,
}

/// The key naming a grant's mapping in its grantee's VMM.
pub fn grant_key(id: u64) -> String {
    format!("grant:{id}")
}

/// The key naming an owner's own mapping of its segment.
pub fn segment_key(name: &str) -> String {
    format!("segment:{name}")
}

#[cfg(test)]
mod tests;
