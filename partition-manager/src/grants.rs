//! The grant table: memory segments (memfds, one owning partition), the
//! block resources VIOS partitions export (`VIOS/DISK`, owned by the VIOS;
//! docs/vios.md, "Grants") and the grants of them, with every check of DESIGN.md ("Grant cookies") applied
//! against the caller's identity. Pure bookkeeping: the [`supervisor`]
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
//! [`supervisor`]: crate::supervisor

use parvm_protocol::grant::{check_segment_size, valid_segment_id, MAX_SEGMENT_SIZE};
use parvm_protocol::{
    DoorbellInfo, ErrorKind, GrantCookie, GrantInfo, GrantState, Rights, SegmentInfo,
};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

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
            GrantError::Os { .. } => ErrorKind::Internal,
        }
    }
}

/// 16 bytes from the OS random source (getrandom(2)).
pub fn random_bytes() -> Result<[u8; 16], std::io::Error> {
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
    Ok(buf)
}

/// A memfd of `size` bytes named after the segment.
pub fn create_memfd(name: &str, size: u64) -> Result<File, GrantError> {
    let os = |source| GrantError::Os {
        what: format!("segment `{name}`: cannot create its memory"),
        source,
    };
    // SAFETY: memfd_create with a valid NUL-terminated name; the result is
    // checked before use.
    let fd = unsafe { libc::memfd_create(c"parvm-segment".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(os(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).map_err(os)?;
    Ok(f)
}

/// A segment and, while the manager runs, its memory.
pub struct Segment {
    pub info: SegmentInfo,
    memfd: Option<Arc<File>>,
}

impl Segment {
    /// The segment's memfd, created on first use (a restarted manager
    /// creates it anew: see docs/manager.md, "Segments and grants").
    pub fn memfd(&mut self) -> Result<Arc<File>, GrantError> {
        if let Some(f) = &self.memfd {
            return Ok(f.clone());
        }
        let f = Arc::new(create_memfd(&self.info.name, self.info.size)?);
        self.memfd = Some(f.clone());
        Ok(f)
    }

    /// Adopts memory a VMM still maps (after a manager restart).
    pub fn adopt(&mut self, f: File) {
        if self.memfd.is_none() {
            self.memfd = Some(Arc::new(f));
        }
    }
}

/// A doorbell and, while the manager runs, its eventfd.
pub struct Doorbell {
    pub info: DoorbellInfo,
    eventfd: Option<Arc<File>>,
}

impl Doorbell {
    pub fn new(info: DoorbellInfo) -> Self {
        Doorbell {
            info,
            eventfd: None,
        }
    }

    /// Adopts the eventfd a running end still holds (after a restart).
    pub fn adopt(&mut self, f: File) -> bool {
        if self.eventfd.is_some() {
            return false;
        }
        self.eventfd = Some(Arc::new(f));
        true
    }

    /// The doorbell's eventfd, created on first use.
    pub fn eventfd(&mut self) -> Result<Arc<File>, GrantError> {
        if let Some(f) = &self.eventfd {
            return Ok(f.clone());
        }
        // SAFETY: eventfd(2) with valid flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(GrantError::Os {
                what: format!("doorbell `{}`: cannot create its eventfd", self.info.id),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        let f = Arc::new(unsafe { File::from_raw_fd(fd) });
        self.eventfd = Some(f.clone());
        Ok(f)
    }
}

/// A block resource: one export of a VIOS partition, named `VIOS/DISK`.
/// Derived from the VIOS's definition (not stored on its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockResource {
    pub owner: String,
    pub disk: String,
    /// The export is read-only: it can only be granted `ro`.
    pub read_only: bool,
}

/// Most segments one partition may own (guests create them by hcall).
pub const MAX_SEGMENTS_PER_OWNER: usize = 64;
/// Most live grants one partition may have made.
pub const MAX_GRANTS_PER_GRANTOR: usize = 4096;

#[derive(Default)]
pub struct GrantTable {
    pub segments: BTreeMap<String, Segment>,
    pub grants: BTreeMap<u64, GrantInfo>,
    pub doorbells: BTreeMap<String, Doorbell>,
    /// VIOS exports by `VIOS/DISK`.
    pub blocks: BTreeMap<String, BlockResource>,
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
                .insert(info.name.clone(), Segment { info, memfd: None });
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
            .map(|s| s.info.owner.as_str())
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
        self.segments.insert(
            name,
            Segment {
                info: info.clone(),
                memfd,
            },
        );
        Ok(info)
    }

    /// The segments `owner` owns, sorted by id: how a guest numbers them
    /// (hcall GRANT's segment number, docs/hcall.md).
    pub fn owned_by(&self, owner: &str) -> Vec<&SegmentInfo> {
        self.segments
            .values()
            .map(|s| &s.info)
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
                .map(|s| s.info.size)
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

    pub fn grant_mut(&mut self, id: u64) -> Option<&mut GrantInfo> {
        self.grants.get_mut(&id)
    }

    pub fn segment_mut(&mut self, name: &str) -> Result<&mut Segment, GrantError> {
        self.segments
            .get_mut(name)
            .ok_or_else(|| GrantError::NoSegment(name.into()))
    }
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
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn table() -> GrantTable {
        let mut t = GrantTable::default();
        t.create_segment("a", "buf", 65536, Some(0xe000_0000), false)
            .unwrap();
        t
    }

    fn accept(t: &mut GrantTable, who: &str, c: &GrantCookie) {
        let g = t.check_accept(who, c).unwrap();
        let g = t.grant_mut(g.id).unwrap();
        g.state = GrantState::Accepted;
    }

    #[test]
    fn grant_accept_regrant_revoke_follow_the_rules() {
        let mut t = table();
        let g = t.grant("a", "a/buf", "b", Rights::Rw, 1).unwrap();
        assert_eq!(g.state, GrantState::Granted);
        // Only the owner grants.
        assert!(matches!(
            t.grant("b", "a/buf", "c", Rights::Ro, 1),
            Err(GrantError::NotAllowed { .. })
        ));
        // Only the grantee accepts, once.
        assert_eq!(
            t.check_accept("c", &g.cookie).unwrap_err().kind(),
            ErrorKind::WrongPartition
        );
        // A regrant needs an accepted cookie.
        assert_eq!(
            t.regrant("b", &g.cookie, "c", Rights::Ro, 1)
                .unwrap_err()
                .kind(),
            ErrorKind::CookieUsed
        );
        accept(&mut t, "b", &g.cookie);
        assert_eq!(
            t.check_accept("b", &g.cookie).unwrap_err().kind(),
            ErrorKind::CookieUsed
        );
        let c = t.regrant("b", &g.cookie, "c", Rights::Ro, 1).unwrap();
        assert_eq!(c.parent, Some(g.cookie));
        accept(&mut t, "c", &c.cookie);
        // Rights never widen.
        assert_eq!(
            t.regrant("c", &c.cookie, "d", Rights::Rw, 1)
                .unwrap_err()
                .kind(),
            ErrorKind::RightsEscalation
        );
        let d = t.regrant("c", &c.cookie, "d", Rights::Ro, 1).unwrap();
        // Revoke: grantor or owner only; cascades.
        assert_eq!(
            t.revoke_set("c", &g.cookie).unwrap_err().kind(),
            ErrorKind::WrongPartition
        );
        assert_eq!(
            t.revoke_set("a", &g.cookie).unwrap(),
            vec![g.id, c.id, d.id]
        );
        assert_eq!(t.revoke_set("b", &c.cookie).unwrap(), vec![c.id, d.id]);
        for id in [g.id, c.id, d.id] {
            t.grant_mut(id).unwrap().state = GrantState::Revoked;
        }
        assert_eq!(
            t.revoke_set("a", &g.cookie).unwrap_err().kind(),
            ErrorKind::CookieUsed
        );
        assert_eq!(
            t.check_accept("d", &d.cookie).unwrap_err().kind(),
            ErrorKind::CookieUsed
        );
    }

    #[test]
    fn forged_cookies_are_unknown() {
        let mut t = table();
        let g = t.grant("a", "a/buf", "b", Rights::Rw, 1).unwrap();
        let mut forged = g.cookie;
        forged.0[15] ^= 1;
        assert_eq!(
            t.check_accept("b", &forged).unwrap_err().kind(),
            ErrorKind::UnknownCookie
        );
        assert_ne!(
            t.grant("a", "a/buf", "b", Rights::Rw, 1).unwrap().cookie,
            g.cookie
        );
    }

    #[test]
    fn segments_are_checked() {
        let mut t = table();
        let kind = |r: Result<SegmentInfo, GrantError>| r.unwrap_err().kind();
        assert_eq!(
            kind(t.create_segment("a", "buf", 4096, None, false)),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            kind(t.create_segment("a", "big", (1 << 30) + 4096, None, false)),
            ErrorKind::TooLarge
        );
        assert_eq!(
            kind(t.create_segment("a", "odd", 100, None, false)),
            ErrorKind::TooLarge
        );
        assert_eq!(
            kind(t.create_segment("a", "a/b", 4096, None, false)),
            ErrorKind::BadRequest
        );
        assert_eq!(
            kind(t.create_segment("a", "g", 4096, Some(0x123), false)),
            ErrorKind::BadRequest
        );
        let s = t.create_segment("a", "mem", 8192, None, true).unwrap();
        let f = t.segment_mut(&s.name).unwrap().memfd().unwrap();
        assert_eq!(f.metadata().unwrap().len(), 8192);
        assert_eq!(t.owned_by("a").len(), 2);
        assert!(t.grant("a", "a/nope", "b", Rights::Ro, 1).is_err());
    }

    #[test]
    fn copies_are_checked() {
        let mut t = table();
        t.create_segment("a", "two", 4096, None, false).unwrap();
        let s = t.grant("a", "a/buf", "b", Rights::Ro, 1).unwrap();
        let d = t.grant("a", "a/two", "b", Rights::Rw, 1).unwrap();
        assert!(t.check_copy("b", &s.cookie, 0, &d.cookie, 0, 4096).is_ok());
        assert!(t.check_copy("b", &s.cookie, 0, &d.cookie, 1, 4096).is_err());
        assert!(t
            .check_copy("b", &s.cookie, u64::MAX, &d.cookie, 0, 2)
            .is_err());
        assert_eq!(
            t.check_copy("b", &d.cookie, 0, &s.cookie, 0, 1)
                .unwrap_err()
                .kind(),
            ErrorKind::RightsEscalation
        );
        assert_eq!(
            t.check_copy("c", &s.cookie, 0, &d.cookie, 0, 1)
                .unwrap_err()
                .kind(),
            ErrorKind::WrongPartition
        );
    }

    #[test]
    fn vios_disks_are_granted_like_segments() {
        let mut t = table();
        t.add_block("vios1", "data", false);
        t.add_block("vios1", "golden", true);
        assert!(t.is_block("vios1/data") && !t.is_block("a/buf"));
        assert_eq!(t.owner_of("vios1/golden"), Some("vios1"));
        // Only the VIOS grants its disks, never to itself; a read-only
        // export only `ro`.
        let g = t
            .grant("vios1", "vios1/data", "web", Rights::Rw, 1)
            .unwrap();
        assert_eq!(
            t.grant("web", "vios1/data", "db", Rights::Ro, 1)
                .unwrap_err()
                .kind(),
            ErrorKind::WrongPartition
        );
        assert_eq!(
            t.grant("vios1", "vios1/data", "vios1", Rights::Ro, 1)
                .unwrap_err()
                .kind(),
            ErrorKind::BadRequest
        );
        let e = t
            .grant("vios1", "vios1/golden", "web", Rights::Rw, 1)
            .unwrap_err();
        assert!(e.to_string().contains("exported read-only"), "{e}");
        assert!(t
            .grant("vios1", "vios1/golden", "web", Rights::Ro, 1)
            .is_ok());
        assert_eq!(
            t.grant("vios1", "vios1/nope", "web", Rights::Ro, 1)
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
        // No segment may take a disk's name.
        assert_eq!(
            t.create_segment("vios1", "data", 4096, None, false)
                .unwrap_err()
                .kind(),
            ErrorKind::AlreadyExists
        );
        // Regrant rules as for segments; an accepted disk grant is not
        // released with its holder's VMM.
        accept(&mut t, "web", &g.cookie);
        assert!(t.held_by("web").is_empty());
        let c = t.regrant("web", &g.cookie, "db", Rights::Ro, 1).unwrap();
        assert_eq!(
            t.regrant("db", &c.cookie, "x", Rights::Ro, 1)
                .unwrap_err()
                .kind(),
            ErrorKind::CookieUsed
        );
        accept(&mut t, "db", &c.cookie);
        assert_eq!(
            t.regrant("db", &c.cookie, "x", Rights::Rw, 1)
                .unwrap_err()
                .kind(),
            ErrorKind::RightsEscalation
        );
        assert_eq!(t.revoke_set("vios1", &g.cookie).unwrap(), vec![g.id, c.id]);
    }

    #[test]
    fn a_reloaded_table_keeps_cookies_and_numbering() {
        let mut t = table();
        let g = t.grant("a", "a/buf", "b", Rights::Rw, 1).unwrap();
        let segs = t.segments.values().map(|s| s.info.clone()).collect();
        let grants = t.grants.values().cloned().collect();
        let mut t2 = GrantTable::load(segs, grants, Vec::new());
        assert_eq!(t2.lookup(&g.cookie).unwrap().id, g.id);
        let h = t2.grant("a", "a/buf", "c", Rights::Ro, 1).unwrap();
        assert!(h.id > g.id);
    }
}
