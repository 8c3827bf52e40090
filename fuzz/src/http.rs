//! Target `http`: the manager's HTTP/1.1 request reader
//! (`partition_manager::api::http::read_request`), the outside input of
//! the HTTP API. The bytes arrive on a socket as a client would send them
//! (then the client hangs up); requests are read until the reader refuses
//! or the input ends. Every request read must be within the limits: a path
//! that starts with `/`, at most `MAX_HEADERS` headers, a body of at most
//! `MAX_BODY` bytes, all from the input.

use partition_manager::api::http::{read_request, Conn, ReadError, MAX_BODY, MAX_HEADERS};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

pub fn http(data: &[u8]) {
    // Within one socket buffer: the write never blocks.
    let data = &data[..data.len().min(64 << 10)];
    let Ok((ours, mut client)) = UnixStream::pair() else {
        return;
    };
    if client.write_all(data).is_err() {
        return;
    }
    drop(client);
    let mut conn = Conn::Unix(ours);
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut body_bytes = 0;
    for _ in 0..data.len() + 1 {
        match read_request(&mut conn, &mut buf, deadline) {
            Ok(req) => {
                assert!(req.path.starts_with('/'), "{:?}", req.path);
                assert!(req.headers.len() <= MAX_HEADERS);
                assert!(req.body.len() <= MAX_BODY);
                body_bytes += req.body.len();
                assert!(body_bytes <= data.len(), "more body than input");
            }
            Err(ReadError::Refused { status, message }) => {
                assert!((400..500).contains(&status), "{status} {message}");
                assert!(!message.contains('\n'), "{message}");
                return;
            }
            Err(ReadError::Closed) | Err(ReadError::Io(_)) => return,
            Err(ReadError::Timeout) => panic!("a hung-up client timed out instead of ending"),
        }
    }
}
