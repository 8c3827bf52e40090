//! HTTP/1.1 on one connection: requests parsed with `httparse` within
//! bounds (head [`MAX_HEAD`], [`MAX_HEADERS`] headers, body [`MAX_BODY`]
//! with a `Content-Length`; no chunked bodies) and a deadline for each
//! whole request, and responses written with a `Content-Length` (or as an
//! event stream that lasts until the client goes). Keep-alive as HTTP/1.1
//! has it; `Connection: close` and HTTP/1.0 close after the answer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Request line and headers, at most.
pub const MAX_HEAD: usize = 16 << 10;
/// Headers in a request, at most.
pub const MAX_HEADERS: usize = 64;
/// A request body, at most (the native protocol's frame limit).
pub const MAX_BODY: usize = 1 << 20;

/// A client connection: on the API's Unix socket or its loopback port.
pub enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    pub fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_read_timeout(t),
            Conn::Tcp(s) => s.set_read_timeout(t),
        }
    }

    pub fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_write_timeout(t),
            Conn::Tcp(s) => s.set_write_timeout(t),
        }
    }
}

impl Conn {
    /// After a last answer: closing a socket with unread input resets the
    /// connection, and the peer may lose the answer before it reads it. So
    /// the write side is shut and what is in flight read away (half a
    /// second, 1 MiB at most: a peer that keeps sending cannot stretch it).
    pub fn finish(&mut self) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
        };
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut sink = [0u8; 4096];
        let mut left = 1usize << 20;
        while left > 0 {
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() || self.set_read_timeout(Some(wait)).is_err() {
                return;
            }
            match self.read(&mut sink) {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    }
}

impl Conn {
    /// As [`Self::finish`] without waiting: only what already arrived is
    /// read away (for answers sent on the accepting thread).
    pub fn finish_now(&mut self) {
        let nonblocking = match self {
            Conn::Unix(s) => s
                .shutdown(std::net::Shutdown::Write)
                .and_then(|_| s.set_nonblocking(true)),
            Conn::Tcp(s) => s
                .shutdown(std::net::Shutdown::Write)
                .and_then(|_| s.set_nonblocking(true)),
        };
        if nonblocking.is_err() {
            return;
        }
        let mut sink = [0u8; 4096];
        let mut left = 64usize << 10;
        while left > 0 {
            match self.read(&mut sink) {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.flush(),
            Conn::Tcp(s) => s.flush(),
        }
    }
}

/// One parsed request.
#[derive(Debug)]
pub struct HttpRequest {
    pub method: String,
    /// The path, without the query; still percent-encoded.
    pub path: String,
    /// The query's `key=value` pairs, percent-decoded.
    pub query: Vec<(String, String)>,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The connection closes after the answer.
    pub close: bool,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Why no request came.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Closed between requests: nothing to answer.
    #[error("connection closed")]
    Closed,
    #[error("no whole request within the client timeout")]
    Timeout,
    /// Answered with this status, then the connection closes.
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn refused(status: u16, message: impl Into<String>) -> ReadError {
    ReadError::Refused {
        status,
        message: message.into(),
    }
}

/// Decodes `%XX` escapes (and `+` as a space when `plus`); `None` for a
/// bad escape or a result that is not UTF-8.
pub fn percent_decode(s: &str, plus: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn parse_query(q: &str) -> Result<Vec<(String, String)>, ReadError> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match (percent_decode(k, true), percent_decode(v, true)) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err(refused(400, format!("malformed query parameter `{p}`"))),
            }
        })
        .collect()
}

/// Reads one request from `conn`; `buf` holds bytes already read (a
/// pipelined next request stays in it). The whole request must arrive
/// before `deadline`; a client that sends `Expect: 100-continue` is told
/// to go on.
pub fn read_request(
    conn: &mut Conn,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<HttpRequest, ReadError> {
    let head_len = loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(n)) => break n,
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(refused(
                        431,
                        format!("more than {MAX_HEADERS} header fields"),
                    ))
                }
                Err(e) => return Err(refused(400, format!("malformed HTTP request: {e}"))),
            }
            if buf.len() >= MAX_HEAD {
                return Err(refused(
                    431,
                    format!("request line and headers exceed {MAX_HEAD} bytes"),
                ));
            }
        }
        let empty = buf.is_empty();
        match fill(conn, buf, deadline, MAX_HEAD) {
            Ok(0) if empty => return Err(ReadError::Closed),
            Ok(0) => return Err(refused(400, "connection closed in the middle of a request")),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    // Complete above; parsed again to borrow it here.
    let _ = parsed.parse(buf);
    let method = parsed.method.unwrap_or("").to_string();
    let target = parsed.path.unwrap_or("").to_string();
    let version = parsed.version.unwrap_or(1);
    let mut hs = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let Ok(v) = std::str::from_utf8(h.value) else {
            return Err(refused(400, format!("header `{}` is not UTF-8", h.name)));
        };
        hs.push((h.name.to_ascii_lowercase(), v.trim().to_string()));
    }
    if hs.iter().any(|(n, _)| n == "transfer-encoding") {
        return Err(refused(
            411,
            "chunked request bodies are not accepted: send a Content-Length",
        ));
    }
    let mut lengths = hs.iter().filter(|(n, _)| n == "content-length");
    let len = match (lengths.next(), lengths.next()) {
        (None, _) => 0,
        (Some(_), Some(_)) => return Err(refused(400, "more than one Content-Length")),
        (Some((_, v)), None) => v
            .parse::<usize>()
            .map_err(|_| refused(400, format!("Content-Length `{v}` is not a number")))?,
    };
    if len > MAX_BODY {
        return Err(refused(
            413,
            format!("request body of {len} bytes exceeds {MAX_BODY}"),
        ));
    }
    let connection = hs
        .iter()
        .find(|(n, _)| n == "connection")
        .map(|(_, v)| v.to_ascii_lowercase());
    let close = match connection.as_deref() {
        Some(c) if c.contains("close") => true,
        Some(c) if c.contains("keep-alive") => false,
        _ => version == 0,
    };
    let continue_asked = hs
        .iter()
        .any(|(n, v)| n == "expect" && v.eq_ignore_ascii_case("100-continue"));
    if continue_asked && buf.len() < head_len + len && len > 0 {
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    while buf.len() < head_len + len {
        match fill(conn, buf, deadline, head_len + len - buf.len())? {
            0 => {
                return Err(refused(
                    400,
                    format!(
                        "connection closed in the middle of the body (got {} of {len} bytes)",
                        buf.len() - head_len
                    ),
                ))
            }
            _ => continue,
        }
    }
    let body = buf[head_len..head_len + len].to_vec();
    buf.drain(..head_len + len);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), parse_query(q)?),
        None => (target, Vec::new()),
    };
    if !path.starts_with('/') {
        return Err(refused(
            400,
            format!("request target `{path}` is not a path"),
        ));
    }
    Ok(HttpRequest {
        method,
        path,
        query,
        headers: hs,
        body,
        close,
    })
}

/// Reads at most `want` more bytes (at least 1 unless closed) before
/// `deadline`.
fn fill(
    conn: &mut Conn,
    buf: &mut Vec<u8>,
    deadline: Instant,
    want: usize,
) -> Result<usize, ReadError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ReadError::Timeout);
    }
    conn.set_read_timeout(Some(left))?;
    let mut chunk = [0u8; 4096];
    let n = want.clamp(1, chunk.len());
    loop {
        return match conn.read(&mut chunk[..n]) {
            Ok(got) => {
                buf.extend_from_slice(&chunk[..got]);
                Ok(got)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(ReadError::Timeout)
            }
            Err(e) => Err(e.into()),
        };
    }
}

/// The reason phrase of the statuses this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Writes a whole response.
pub fn write_response(
    conn: &mut Conn,
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    body: &[u8],
    close: bool,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        reason(status),
        body.len(),
        if close { "close" } else { "keep-alive" }
    );
    for (n, v) in extra {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    conn.write_all(&out)?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pair() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Conn::Unix(a), b)
    }

    fn read(input: &[u8]) -> Result<HttpRequest, ReadError> {
        let (mut conn, mut peer) = pair();
        peer.write_all(input).unwrap();
        drop(peer);
        let mut buf = Vec::new();
        read_request(&mut conn, &mut buf, Instant::now() + Duration::from_secs(2))
    }

    fn status_of(r: Result<HttpRequest, ReadError>) -> u16 {
        match r {
            Err(ReadError::Refused { status, .. }) => status,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_request_with_a_body_and_a_query() {
        let r = read(b"POST /v1/partitions?dry_run=true&x=a%20b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/partitions");
        assert_eq!(r.query("dry_run"), Some("true"));
        assert_eq!(r.query("x"), Some("a b"));
        assert_eq!(r.body, b"{}");
        assert!(!r.close);
        let r = read(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(r.close);
    }

    #[test]
    fn broken_input_is_refused_with_a_status_never_a_panic() {
        assert!(matches!(read(b""), Err(ReadError::Closed)));
        assert_eq!(status_of(read(b"\x00\x01garbage\r\n\r\n")), 400);
        assert_eq!(status_of(read(b"GET / HTTP/1.1\r\nHost")), 400);
        assert_eq!(
            status_of(read(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n")),
            400
        );
        assert_eq!(
            status_of(read(
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na"
            )),
            400
        );
        assert_eq!(
            status_of(read(b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n")),
            413
        );
        assert_eq!(
            status_of(read(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            )),
            411
        );
        assert_eq!(
            status_of(read(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")),
            400
        );
        assert_eq!(status_of(read(b"GET * HTTP/1.1\r\n\r\n")), 400);
        assert_eq!(status_of(read(b"GET /?a=%zz HTTP/1.1\r\n\r\n")), 400);
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        assert_eq!(status_of(read(&long)), 431);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..(MAX_HEADERS + 1) {
            many.extend(format!("X{i}: y\r\n").bytes());
        }
        many.extend(b"\r\n");
        assert_eq!(status_of(read(&many)), 431);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        for _ in 0..500 {
            let len = (seed % 300) as usize;
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                v.push(b"GET /v1 HTTP/1.1\r\n:%?=&Content-Length: 9\x00\xff"[(seed % 41) as usize]);
            }
            let _ = read(&v);
        }
    }

    #[test]
    fn a_stalled_client_times_out() {
        let (mut conn, mut peer) = pair();
        peer.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let mut buf = Vec::new();
        let started = Instant::now();
        let r = read_request(
            &mut conn,
            &mut buf,
            Instant::now() + Duration::from_millis(200),
        );
        assert!(matches!(r, Err(ReadError::Timeout)), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn pipelined_requests_come_one_by_one() {
        let (mut conn, mut peer) = pair();
        peer.write_all(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        assert_eq!(
            read_request(&mut conn, &mut buf, deadline).unwrap().path,
            "/a"
        );
        assert_eq!(
            read_request(&mut conn, &mut buf, deadline).unwrap().path,
            "/b"
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb", false).as_deref(), Some("a/b"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%", false), None);
        assert_eq!(percent_decode("%ff", false), None);
    }
}
