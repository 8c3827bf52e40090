//! Target `grant_table`: the manager's grant table
//! (`partition_manager::grants::GrantTable`) driven by a sequence of
//! operations read from the input, each carried out as the manager's
//! sharing code does (an accept marks the grant accepted after
//! `check_accept`, a revoke marks `revoke_set` revoked, a VMM's end marks
//! `held_by` released).
//!
//! Operations: create segment, register a VIOS disk, grant, accept,
//! regrant, revoke, release, copy, look up a forged cookie. Partitions,
//! segment ids and sizes come from small pools so the operations meet;
//! cookies are picked among those minted (or forged). After every
//! operation its own postconditions and the table's invariants are
//! checked: cookies are unique and look up to their grant; a regrant's
//! parent exists, is of the same resource, was held by its grantor and
//! gives at least its rights; a live grant's parent is accepted (so no
//! grant stays live under a revoked or released ancestor); a root grant's
//! grantor owns the resource; a read-only VIOS disk is only granted `ro`;
//! no grantor exceeds its limit of live grants.

use std::collections::HashSet;

use partition_manager::grants::{segment_name, GrantTable, MAX_GRANTS_PER_GRANTOR};
use parvm_protocol::{GrantCookie, GrantInfo, GrantState, Rights};

use crate::Input;

const PARTITIONS: [&str; 4] = ["a", "b", "c", "vios"];
const SEGMENT_IDS: [&str; 4] = ["s0", "s1", "s2", "not valid"];
const DISKS: [&str; 2] = ["d0", "d1"];
const SIZES: [u64; 6] = [4096, 8192, 65536, 0, 4095, (1 << 30) + 4096];

struct Run {
    table: GrantTable,
    cookies: Vec<GrantCookie>,
    /// VIOS disks registered read-only.
    read_only_disks: HashSet<String>,
    now: u64,
}

impl Run {
    fn partition(&self, input: &mut Input) -> &'static str {
        PARTITIONS[usize::from(input.u8()) % PARTITIONS.len()]
    }

    fn resource(&self, input: &mut Input) -> String {
        let owner = self.partition(input);
        let b = input.u8();
        if b & 0x80 != 0 {
            segment_name(owner, DISKS[usize::from(b) % DISKS.len()])
        } else {
            segment_name(owner, SEGMENT_IDS[usize::from(b) % SEGMENT_IDS.len()])
        }
    }

    fn cookie(&self, input: &mut Input) -> GrantCookie {
        let b = usize::from(input.u8());
        match self.cookies.get(b % (self.cookies.len() + 1)) {
            Some(c) => *c,
            None => GrantCookie([b as u8; 16]),
        }
    }

    fn rights(input: &mut Input) -> Rights {
        if input.u8() & 1 == 0 {
            Rights::Ro
        } else {
            Rights::Rw
        }
    }

    fn minted(&mut self, g: &GrantInfo) {
        assert!(
            !self.cookies.contains(&g.cookie),
            "cookie minted twice: {g:?}"
        );
        self.cookies.push(g.cookie);
    }

    fn mark(&mut self, ids: &[u64], state: GrantState) {
        for &id in ids {
            if let Some(g) = self.table.grant_mut(id) {
                g.state = state;
                g.since = self.now;
            }
        }
    }

    fn step(&mut self, input: &mut Input) {
        self.now += 1;
        let now = self.now;
        match input.u8() % 9 {
            0 => {
                let owner = self.partition(input);
                let id = SEGMENT_IDS[usize::from(input.u8()) % SEGMENT_IDS.len()];
                let size = SIZES[usize::from(input.u8()) % SIZES.len()];
                let gpa = match input.u8() {
                    0 => None,
                    b => Some(u64::from(b) << 12 | u64::from(b & 1)),
                };
                if let Ok(info) = self.table.create_segment(owner, id, size, gpa, false) {
                    assert_eq!(self.table.owner_of(&info.name), Some(owner));
                    assert!(size > 0 && size.is_multiple_of(4096) && size <= 1 << 30);
                    assert!(gpa.is_none_or(|g| g.is_multiple_of(4096)));
                }
            }
            1 => {
                let owner = self.partition(input);
                let b = input.u8();
                let name = segment_name(owner, DISKS[usize::from(b) % DISKS.len()]);
                // The manager registers each export of a VIOS once, at define.
                if !self.table.is_block(&name) {
                    let read_only = b & 0x80 != 0;
                    self.table
                        .add_block(owner, DISKS[usize::from(b) % DISKS.len()], read_only);
                    if read_only {
                        self.read_only_disks.insert(name);
                    }
                }
            }
            2 => {
                let caller = self.partition(input);
                let resource = self.resource(input);
                let grantee = self.partition(input);
                let rights = Self::rights(input);
                if let Ok(g) = self.table.grant(caller, &resource, grantee, rights, now) {
                    assert_eq!(self.table.owner_of(&resource), Some(caller));
                    assert_eq!(
                        (g.state, g.parent, g.rights, g.grantee.as_str()),
                        (GrantState::Granted, None, rights, grantee)
                    );
                    self.minted(&g);
                }
            }
            3 => {
                let caller = self.partition(input);
                let cookie = self.cookie(input);
                let gpa = u64::from(input.u8()) << 12;
                if let Ok(g) = self.table.check_accept(caller, &cookie) {
                    assert_eq!((g.grantee.as_str(), g.state), (caller, GrantState::Granted));
                    let id = g.id;
                    self.mark(&[id], GrantState::Accepted);
                    if let Some(g) = self.table.grant_mut(id) {
                        g.gpa = Some(gpa);
                    }
                }
            }
            4 => {
                let caller = self.partition(input);
                let cookie = self.cookie(input);
                let grantee = self.partition(input);
                let rights = Self::rights(input);
                let parent = self.table.lookup(&cookie).ok().cloned();
                if let Ok(g) = self.table.regrant(caller, &cookie, grantee, rights, now) {
                    let p = parent.unwrap_or_else(|| panic!("regrant of unknown {cookie}"));
                    assert_eq!(
                        (p.grantee.as_str(), p.state),
                        (caller, GrantState::Accepted)
                    );
                    assert!(g.rights <= p.rights, "{g:?} wider than {p:?}");
                    assert_eq!((g.parent, &g.segment), (Some(cookie), &p.segment));
                    self.minted(&g);
                }
            }
            5 => {
                let caller = self.partition(input);
                let cookie = self.cookie(input);
                if let Ok(ids) = self.table.revoke_set(caller, &cookie) {
                    let g = self.table.lookup(&cookie).cloned();
                    let g = g.unwrap_or_else(|_| panic!("revoke of unknown {cookie}"));
                    assert_eq!(ids.first(), Some(&g.id));
                    let owner = self.table.owner_of(&g.segment);
                    assert!(g.grantor == caller || owner == Some(caller));
                    let ids_set: HashSet<u64> = ids.iter().copied().collect();
                    assert_eq!(ids_set.len(), ids.len(), "{ids:?} repeats a grant");
                    for id in &ids {
                        let live = self
                            .table
                            .grants()
                            .any(|x| x.id == *id && x.state.is_live());
                        assert!(live, "revoke of {id}, not live");
                    }
                    // Every live descendant is in the set.
                    for x in self.table.grants().filter(|x| x.state.is_live()) {
                        if self.descends_from(x, g.cookie) {
                            assert!(ids_set.contains(&x.id), "{x:?} escapes the revoke");
                        }
                    }
                    self.mark(&ids, GrantState::Revoked);
                }
            }
            6 => {
                let partition = self.partition(input);
                let ids = self.table.held_by(partition);
                self.mark(&ids, GrantState::Released);
            }
            7 => {
                let caller = self.partition(input);
                let src = self.cookie(input);
                let dst = self.cookie(input);
                let src_offset = u64::from(input.u16());
                let dst_offset = u64::from(input.u16());
                let len = u64::from(input.u16());
                let checked = self
                    .table
                    .check_copy(caller, &src, src_offset, &dst, dst_offset, len);
                if checked.is_ok() {
                    for (c, off, write) in [(src, src_offset, false), (dst, dst_offset, true)] {
                        let g = self.table.lookup(&c).cloned();
                        let g = g.unwrap_or_else(|_| panic!("copy with unknown {c}"));
                        assert_eq!(g.grantee, caller);
                        assert!(g.state.is_live());
                        assert!(!write || g.rights == Rights::Rw);
                        assert!(!self.table.is_block(&g.segment));
                        let owner = self.table.owner_of(&g.segment).unwrap_or_default();
                        let size = self
                            .table
                            .owned_by(owner)
                            .iter()
                            .find(|s| s.name == g.segment)
                            .map(|s| s.size);
                        assert!(size.is_some_and(|s| off + len <= s));
                    }
                }
            }
            _ => {
                let forged = GrantCookie([input.u8(); 16]);
                if self.table.lookup(&forged).is_ok() {
                    assert!(self.cookies.contains(&forged), "{forged} was never minted");
                }
            }
        }
    }

    /// Whether `g` is a (strict) descendant of the grant with `cookie`.
    fn descends_from(&self, g: &GrantInfo, cookie: GrantCookie) -> bool {
        let mut parent = g.parent;
        let mut hops = 0;
        while let Some(p) = parent {
            if p == cookie {
                return true;
            }
            hops += 1;
            assert!(hops <= self.cookies.len(), "a cycle of parents above {g:?}");
            parent = self.table.lookup(&p).ok().and_then(|x| x.parent);
        }
        false
    }

    fn check_invariants(&self) {
        let t = &self.table;
        let mut cookies = HashSet::new();
        let mut live_by_grantor = std::collections::HashMap::<&str, usize>::new();
        for g in t.grants() {
            assert!(
                cookies.insert(g.cookie),
                "cookie {} on two grants",
                g.cookie
            );
            assert_eq!(t.lookup(&g.cookie).map(|x| x.id).ok(), Some(g.id));
            let owner = t.owner_of(&g.segment);
            assert!(owner.is_some(), "{g:?}: its resource is gone");
            if self.read_only_disks.contains(&g.segment) {
                assert_eq!(g.rights, Rights::Ro, "{g:?}: a read-only disk granted rw");
            }
            if g.state.is_live() {
                *live_by_grantor.entry(g.grantor.as_str()).or_default() += 1;
            }
            match g.parent {
                None => assert_eq!(owner, Some(g.grantor.as_str()), "{g:?}"),
                Some(p) => {
                    let parent = t
                        .lookup(&p)
                        .unwrap_or_else(|_| panic!("{g:?}: parent unknown"));
                    assert!(parent.id < g.id, "{g:?} older than its parent");
                    assert_eq!(parent.segment, g.segment);
                    assert_eq!(parent.grantee, g.grantor);
                    assert!(g.rights <= parent.rights, "{g:?} wider than {parent:?}");
                    if g.state.is_live() {
                        assert_eq!(
                            parent.state,
                            GrantState::Accepted,
                            "{g:?} live under {parent:?}"
                        );
                    }
                }
            }
        }
        for n in live_by_grantor.values() {
            assert!(*n <= MAX_GRANTS_PER_GRANTOR);
        }
    }
}

pub fn grant_table(data: &[u8]) {
    let mut input = Input::new(data);
    let mut run = Run {
        table: GrantTable::default(),
        cookies: Vec::new(),
        read_only_disks: HashSet::new(),
        now: 0,
    };
    // Bounded: 4 KiB of input is at most 4096 operations.
    while !input.is_empty() {
        run.step(&mut input);
        run.check_invariants();
    }
}
