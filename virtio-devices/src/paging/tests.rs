#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::error::status_name;
use super::*;

#[test]
fn runs_follow_consecutive_offsets_only() {
    let p = PAGE_SIZE as u64;
    let r = runs([0, p, 2 * p, 10 * p, 5 * p, 6 * p, 6 * p].into_iter());
    assert_eq!(
        r,
        vec![
            Run {
                offset: 0,
                slot: 0,
                len: 3 * PAGE_SIZE
            },
            Run {
                offset: 10 * p,
                slot: 3,
                len: PAGE_SIZE
            },
            Run {
                offset: 5 * p,
                slot: 4,
                len: 2 * PAGE_SIZE
            },
            // A repeat is not consecutive: its own request.
            Run {
                offset: 6 * p,
                slot: 6,
                len: PAGE_SIZE
            },
        ]
    );
    assert!(runs(std::iter::empty()).is_empty());
}

#[test]
fn status_names() {
    assert_eq!(status_name(0), "OK");
    assert_eq!(status_name(1), "IOERR");
    assert_eq!(status_name(2), "UNSUPP");
    assert_eq!(status_name(0xff), "never written by the backend");
    assert_eq!(status_name(7), "unknown");
}

#[test]
fn connect_fails_cleanly_on_a_dead_peer() {
    let (a, b) = UnixStream::pair().unwrap();
    drop(b);
    let e = PagingDisk::connect("p0", a).err().unwrap().to_string();
    assert!(e.contains("disk p0: vhost-user SET_OWNER failed"), "{e}");
}

#[test]
fn connect_path_names_the_socket() {
    let e = PagingDisk::connect_path("p1", Path::new("/nonexistent/vios.sock"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("paging disk p1") && e.contains("/nonexistent/vios.sock"),
        "{e}"
    );
}

/// A connection whose "backend" is this test: it writes the used ring
/// itself. Returns the peer end of the socket too (drop it to hang up).
fn fake_connection() -> (Connection, UnixStream) {
    let (ours, peer) = UnixStream::pair().unwrap();
    let watch = ours.try_clone().unwrap();
    let conn = Connection {
        _frontend: Frontend::from_stream(ours, 1),
        watch,
        queue: PrivateQueue::new("fake").unwrap(),
        kick: EventFd::new(EFD_NONBLOCK).unwrap(),
        call: EventFd::new(EFD_NONBLOCK).unwrap(),
    };
    (conn, peer)
}

/// Play the backend: put `(id, len)` elements on the used ring and signal.
fn complete(conn: &Connection, elems: &[(u32, u32)]) {
    use vm_memory::{Bytes, GuestAddress};
    let mem = conn.queue.memory();
    for (i, &(id, len)) in elems.iter().enumerate() {
        let at = USED_RING + 4 + 8 * i as u64;
        mem.write_obj(id, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 4)).unwrap();
    }
    mem.write_obj(elems.len() as u16, GuestAddress(USED_RING + 2))
        .unwrap();
    conn.call.write(1).unwrap();
}

const LONG: Duration = Duration::from_secs(5);

#[test]
fn completions_out_of_order_are_matched_to_their_requests() {
    let (mut conn, _peer) = fake_connection();
    complete(&conn, &[(6, 30), (0, 10), (3, 20)]);
    assert_eq!(
        wait_completions("f0", &mut conn, 3, LONG).unwrap(),
        vec![10, 20, 30]
    );
}

#[test]
fn a_used_element_that_is_not_a_pending_head_is_an_error() {
    for elems in [
        &[(1, 1)][..],         // not a head
        &[(0, 1), (0, 1)][..], // twice
        &[(6, 1)][..],         // past the requests submitted
        &[(u32::MAX, 1)][..],  // far out
    ] {
        let (mut conn, _peer) = fake_connection();
        complete(&conn, elems);
        let e = wait_completions("f1", &mut conn, 2, LONG).unwrap_err();
        assert!(matches!(e, PagingError::Backend { .. }), "{elems:?}: {e}");
        assert!(e.to_string().contains("f1"), "{e}");
    }
}

#[test]
fn a_used_index_past_the_outstanding_requests_is_an_error() {
    let (mut conn, _peer) = fake_connection();
    complete(&conn, &[(0, 1), (3, 1), (6, 1)]);
    let e = wait_completions("f2", &mut conn, 2, LONG).unwrap_err();
    assert!(e.to_string().contains("used index"), "{e}");
}

#[test]
fn a_hang_up_ends_the_wait_at_once_unless_the_batch_completed() {
    let (mut conn, peer) = fake_connection();
    drop(peer);
    let t = Instant::now();
    let e = wait_completions("f3", &mut conn, 1, LONG).unwrap_err();
    assert!(matches!(e, PagingError::Disconnected { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(1));
    // Completed just before the backend went away: a success.
    let (mut conn, peer) = fake_connection();
    complete(&conn, &[(0, 1)]);
    drop(peer);
    assert_eq!(wait_completions("f3", &mut conn, 1, LONG).unwrap(), vec![1]);
}

#[test]
fn a_silent_backend_times_out() {
    let (mut conn, _peer) = fake_connection();
    let e = wait_completions("f4", &mut conn, 1, Duration::from_millis(50)).unwrap_err();
    assert!(matches!(e, PagingError::Timeout { .. }), "{e}");
}
