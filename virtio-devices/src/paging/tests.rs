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
                pages: 3
            },
            Run {
                offset: 10 * p,
                slot: 3,
                pages: 1
            },
            Run {
                offset: 5 * p,
                slot: 4,
                pages: 2
            },
            // A repeat is not consecutive: its own request.
            Run {
                offset: 6 * p,
                slot: 6,
                pages: 1
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
