//! Unit tests of the grant table's rules and queries.

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
    let segs = t.segments.values().map(|s| s.info().clone()).collect();
    let grants = t.grants.values().cloned().collect();
    let mut t2 = GrantTable::load(segs, grants, Vec::new());
    assert_eq!(t2.lookup(&g.cookie).unwrap().id, g.id);
    let h = t2.grant("a", "a/buf", "c", Rights::Ro, 1).unwrap();
    assert!(h.id > g.id);
}

#[test]
fn queries_and_transitions_follow_the_table() {
    let mut t = table();
    t.add_block("vios1", "data", false);
    t.create_segment("b", "own", 4096, None, false).unwrap();
    assert_eq!(
        t.segments().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["a/buf", "b/own"]
    );
    assert_eq!(t.segment("a/buf").unwrap().size, 65536);
    assert_eq!(t.block("vios1/data").unwrap().owner, "vios1");
    assert_eq!(t.blocks_owned_by("vios1"), ["vios1/data"]);
    assert!(t.blocks_owned_by("a").is_empty());

    // Block access: none, pending, accepted with the widest rights.
    assert_eq!(t.block_access("vios1/data", "web"), BlockAccess::None);
    let ro = t
        .grant("vios1", "vios1/data", "web", Rights::Ro, 1)
        .unwrap();
    assert_eq!(t.block_access("vios1/data", "web"), BlockAccess::Pending);
    t.mark_accepted(ro.id, None, 2).unwrap();
    assert_eq!(
        t.block_access("vios1/data", "web"),
        BlockAccess::Accepted(Rights::Ro)
    );
    let rw = t
        .grant("vios1", "vios1/data", "web", Rights::Rw, 1)
        .unwrap();
    t.mark_accepted(rw.id, None, 2).unwrap();
    assert_eq!(
        t.block_access("vios1/data", "web"),
        BlockAccess::Accepted(Rights::Rw)
    );

    // Accept once; an ended grant is not accepted.
    let g = t.grant("a", "a/buf", "b", Rights::Rw, 1).unwrap();
    assert_eq!(t.live_grants_of("a/buf"), [g.id]);
    assert_eq!(t.live_grants_to("b"), [g.id]);
    let acc = t.mark_accepted(g.id, Some(0x1000), 3).unwrap();
    assert_eq!(
        (acc.state, acc.gpa, acc.since),
        (GrantState::Accepted, Some(0x1000), 3)
    );
    assert_eq!(
        t.mark_accepted(g.id, None, 4).unwrap_err().kind(),
        ErrorKind::CookieUsed
    );
    assert_eq!(
        t.mark_accepted(999, None, 4).unwrap_err().kind(),
        ErrorKind::Internal
    );
    assert_eq!(
        t.record_fault(g.id, "c", 3, "x".into()),
        None,
        "only the grantee's faults count"
    );
    let f = t.record_fault(g.id, "b", 3, "write".into()).unwrap();
    assert_eq!((f.faults, f.last_fault.as_deref()), (3, Some("write")));
    let (ended, was_mapped) = t.end(g.id, GrantState::Revoked, 5).unwrap();
    assert!(was_mapped && ended.state == GrantState::Revoked);
    assert!(t.live_grants_of("a/buf").is_empty());
    assert_eq!(
        t.mark_accepted(g.id, None, 6).unwrap_err().kind(),
        ErrorKind::CookieUsed
    );

    // Standing grants go back to granted; others are left alone.
    let s = t.grant("a", "a/buf", "c", Rights::Ro, 1).unwrap();
    assert!(t.back_to_standing(s.id, 7).is_none());
    t.set_standing(s.id, 0xe000_0000).unwrap();
    assert_eq!(t.standing_for("c"), [(s.cookie, 0xe000_0000)]);
    assert_eq!(
        t.find_standing("a/buf", "c", 0xe000_0000, Rights::Ro)
            .map(|g| g.id),
        Some(s.id)
    );
    assert!(t
        .find_standing("a/buf", "c", 0xe000_0000, Rights::Rw)
        .is_none());
    t.mark_accepted(s.id, Some(0xe000_0000), 8).unwrap();
    assert!(t.standing_for("c").is_empty());
    let back = t.back_to_standing(s.id, 9).unwrap();
    assert_eq!((back.state, back.gpa), (GrantState::Granted, None));

    // Doorbells.
    let bell = DoorbellInfo {
        id: "ring".into(),
        from: "a".into(),
        to: "b".into(),
        ring: 0,
        gsi: Some(5),
        vector: None,
    };
    t.add_doorbell(bell.clone());
    assert_eq!(t.doorbell("ring"), Some(&bell));
    assert_eq!(t.doorbells_of("b"), ["ring"]);
    assert!(t.doorbells_of("c").is_empty());
    assert_eq!(t.doorbells().count(), 1);

    // Removing resources.
    assert!(t.remove_resource("vios1/data"));
    assert!(!t.remove_resource("b/own"));
    assert!(t.segment("b/own").is_none() && t.block("vios1/data").is_none());
    assert_eq!(t.grants().count(), 4);
    assert_eq!(t.by_id(s.id).map(|g| g.grantee.as_str()), Some("c"));
}
