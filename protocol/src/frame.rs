//! Frames: a 12-byte header then a JSON body, file descriptors beside the
//! first bytes (SCM_RIGHTS).
//!
//! ```text
//!   0      4        6        8            12
//!   +------+--------+--------+------------+------------------+
//!   | PRVM | ver u16| nfd u16| len u32    | JSON body (len)  |
//!   +------+--------+--------+------------+------------------+
//!   integers little-endian
//! ```
//!
//! The magic and the version come first and will stay there in every future
//! version, so a peer speaking another version is recognised from the header
//! alone and gets [`ProtocolError::VersionMismatch`] instead of a decoding
//! error or a hang. Bodies are limited to [`MAX_FRAME`] bytes and
//! [`MAX_FDS`] descriptors; anything else that does not parse is an error,
//! never a panic. Each message declares the descriptors that travel beside
//! it ([`Message::fds`]); [`Channel`] refuses to send or receive a frame
//! whose descriptors do not match, so handlers never meet a message
//! without its fd.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Protocol version spoken by this build. Bump it on any incompatible change
/// of a message or of the frame layout after the version field.
pub const VERSION: u16 = 1;
/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"PRVM";
/// Size of the frame header.
pub const HEADER_LEN: usize = 12;
/// Largest JSON body accepted (1 MiB).
pub const MAX_FRAME: usize = 1 << 20;
/// Most file descriptors accepted beside one frame.
pub const MAX_FDS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connection closed by peer")]
    Closed,
    #[error("connection closed in the middle of a frame ({got} of {expected} bytes)")]
    Truncated { expected: usize, got: usize },
    #[error("not a parvm protocol peer (frame starts with {0:02x?}, expected \"PRVM\")")]
    BadMagic([u8; 4]),
    #[error("peer speaks parvm protocol version {theirs}, this program speaks version {ours}: use matching parvm binaries")]
    VersionMismatch { ours: u16, theirs: u16 },
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME} bytes")]
    TooLarge(usize),
    #[error("frame carries {0} file descriptors, at most {MAX_FDS} are accepted")]
    TooManyFds(usize),
    #[error("frame header announces {announced} file descriptors but {received} arrived")]
    FdMismatch { announced: usize, received: usize },
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("message `{message}` {}, {received} came", expected.describe())]
    WrongFds {
        /// The message's tag (`map`, `vios_connect`, ...).
        message: String,
        expected: Fds,
        received: usize,
    },
    #[error("timed out waiting for the peer")]
    Timeout,
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

impl ProtocolError {
    /// Errors after which the connection cannot carry another frame.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            ProtocolError::Json(_) | ProtocolError::WrongFds { .. }
        )
    }
}

/// The file descriptors that travel beside one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fds {
    /// None.
    None,
    /// Exactly one, of this kind (`memfd`, `eventfd`, `socket`, ...).
    One(&'static str),
}

impl Fds {
    /// How many.
    pub fn count(self) -> usize {
        match self {
            Fds::None => 0,
            Fds::One(_) => 1,
        }
    }

    fn describe(self) -> String {
        match self {
            Fds::None => "carries no file descriptor".into(),
            Fds::One(what) => format!("needs exactly one {what} beside it"),
        }
    }
}

/// A message that travels in a frame: its JSON, and the descriptors beside
/// it, which each variant declares.
pub trait Message: Serialize + DeserializeOwned {
    /// The JSON field naming the variant (`msg`, `op`, `result`).
    const TAG: &'static str;
    /// The descriptors that must travel beside this message.
    fn fds(&self) -> Fds;
    /// How many descriptors travel beside this message.
    fn fds_expected(&self) -> usize {
        self.fds().count()
    }
}

/// Refuses `received` descriptors beside `msg` unless it declares them.
fn check_fds<T: Message>(msg: &T, received: usize) -> Result<(), ProtocolError> {
    let expected = msg.fds();
    if expected.count() == received {
        return Ok(());
    }
    let message = serde_json::to_value(msg)
        .ok()
        .and_then(|v| v.get(T::TAG).and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_else(|| "?".into());
    Err(ProtocolError::WrongFds {
        message,
        expected,
        received,
    })
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub fds: usize,
    pub len: usize,
}

/// Builds a frame header for a body of `len` bytes with `fds` descriptors.
pub fn encode_header(
    version: u16,
    fds: usize,
    len: usize,
) -> Result<[u8; HEADER_LEN], ProtocolError> {
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge(len));
    }
    if fds > MAX_FDS {
        return Err(ProtocolError::TooManyFds(fds));
    }
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&version.to_le_bytes());
    h[6..8].copy_from_slice(&(fds as u16).to_le_bytes());
    h[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(h)
}

/// Checks a received header: magic, version, limits.
pub fn decode_header(h: &[u8; HEADER_LEN]) -> Result<Header, ProtocolError> {
    let magic = [h[0], h[1], h[2], h[3]];
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != VERSION {
        return Err(ProtocolError::VersionMismatch {
            ours: VERSION,
            theirs: version,
        });
    }
    let fds = usize::from(u16::from_le_bytes([h[6], h[7]]));
    let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge(len));
    }
    if fds > MAX_FDS {
        return Err(ProtocolError::TooManyFds(fds));
    }
    Ok(Header { version, fds, len })
}

/// Serializes `msg` into a complete frame (header + body).
pub fn encode<T: Serialize>(msg: &T, fds: usize) -> Result<Vec<u8>, ProtocolError> {
    let body = serde_json::to_vec(msg)?;
    let header = encode_header(VERSION, fds, body.len())?;
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Decodes a complete frame from a byte buffer (no descriptors); used by
/// tests and by anything that reads frames from a plain byte stream.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    let head: &[u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(ProtocolError::Truncated {
            expected: HEADER_LEN,
            got: bytes.len(),
        })?;
    let h = decode_header(head)?;
    let body = bytes
        .get(HEADER_LEN..HEADER_LEN + h.len)
        .ok_or(ProtocolError::Truncated {
            expected: HEADER_LEN + h.len,
            got: bytes.len(),
        })?;
    Ok(serde_json::from_slice(body)?)
}

/// One end of a connection that carries frames: a Unix stream socket.
///
/// `send` and `recv` may be used from two threads at once on clones made
/// with [`Channel::try_clone`] (one reader, one writer); two writers need a
/// lock around `send` so their frames do not interleave.
#[derive(Debug)]
pub struct Channel {
    stream: UnixStream,
}

impl Channel {
    pub fn new(stream: UnixStream) -> Self {
        Channel { stream }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    pub fn try_clone(&self) -> std::io::Result<Channel> {
        Ok(Channel {
            stream: self.stream.try_clone()?,
        })
    }

    /// Sends one frame with `fds` beside it: exactly the descriptors the
    /// message declares.
    pub fn send<T: Message>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), ProtocolError> {
        let frame = encode(msg, fds.len())?;
        check_fds(msg, fds.len())?;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        // The descriptors ride on the first sendmsg; a stream socket may take
        // only part of a large frame, the rest follows with plain writes.
        let sent = loop {
            match self.stream.send_with_fds(&[&frame[..]], &raw) {
                Ok(n) => break n,
                Err(e) if e.errno() == libc::EINTR => continue,
                Err(e) if e.errno() == libc::EAGAIN => return Err(ProtocolError::Timeout),
                Err(e) => return Err(std::io::Error::from_raw_os_error(e.errno()).into()),
            }
        };
        if let Some(rest) = frame.get(sent..) {
            if !rest.is_empty() {
                (&self.stream).write_all(rest).map_err(map_io)?;
            }
        }
        Ok(())
    }

    /// Receives one frame and the descriptors that came with it: exactly
    /// those the message declares ([`ProtocolError::WrongFds`] otherwise,
    /// after which the channel is still usable).
    pub fn recv<T: Message>(&self) -> Result<(T, Vec<OwnedFd>), ProtocolError> {
        let (body, fds) = self.recv_raw()?;
        let msg: T = serde_json::from_slice(&body)?;
        check_fds(&msg, fds.len())?;
        Ok((msg, fds))
    }

    /// Receives one frame that must arrive whole within `limit`: a peer
    /// that trickles a frame byte by byte cannot hold the connection open
    /// longer than that ([`ProtocolError::Timeout`]). The socket's read
    /// timeout is as before afterwards.
    pub fn recv_within<T: DeserializeOwned>(
        &self,
        limit: Duration,
    ) -> Result<(T, Vec<OwnedFd>), ProtocolError> {
        let before = self.stream.read_timeout().map_err(map_io)?;
        let received = self.recv_raw_by(Some(Instant::now() + limit));
        self.stream.set_read_timeout(before).map_err(map_io)?;
        let (body, fds) = received?;
        Ok((serde_json::from_slice(&body)?, fds))
    }

    /// Receives one frame's body (unparsed) and its descriptors.
    pub fn recv_raw(&self) -> Result<(Vec<u8>, Vec<OwnedFd>), ProtocolError> {
        self.recv_raw_by(None)
    }

    fn recv_raw_by(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), ProtocolError> {
        let mut fds = Vec::new();
        let mut head = [0u8; HEADER_LEN];
        self.read_full(&mut head, &mut fds, true, deadline)?;
        let h = decode_header(&head)?;
        let mut body = vec![0u8; h.len];
        self.read_full(&mut body, &mut fds, false, deadline)?;
        if fds.len() != h.fds {
            return Err(ProtocolError::FdMismatch {
                announced: h.fds,
                received: fds.len(),
            });
        }
        Ok((body, fds))
    }

    /// Fills `buf`, collecting descriptors that arrive on the way.
    fn read_full(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        frame_start: bool,
        deadline: Option<Instant>,
    ) -> Result<(), ProtocolError> {
        let mut got = 0;
        while got < buf.len() {
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ProtocolError::Timeout);
                }
                self.stream.set_read_timeout(Some(left)).map_err(map_io)?;
            }
            let rest = &mut buf[got..];
            let mut iov = [libc::iovec {
                iov_base: rest.as_mut_ptr().cast(),
                iov_len: rest.len(),
            }];
            let mut raw = [-1 as RawFd; MAX_FDS];
            // SAFETY: the iovec points into `rest`, a live mutable slice of
            // the given length that recvmsg may fill with arbitrary bytes.
            let res = unsafe { self.stream.recv_with_fds(&mut iov, &mut raw) };
            let (n, nfds) = match res {
                Ok(r) => r,
                Err(e) if e.errno() == libc::EINTR => continue,
                Err(e) if e.errno() == libc::EAGAIN => return Err(ProtocolError::Timeout),
                Err(e) if e.errno() == libc::ENOBUFS => {
                    return Err(ProtocolError::TooManyFds(MAX_FDS + 1))
                }
                Err(e) => return Err(std::io::Error::from_raw_os_error(e.errno()).into()),
            };
            for &fd in raw.iter().take(nfds) {
                // SAFETY: recvmsg just installed `fd` in this process and
                // nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                // SAFETY: F_SETFD on a descriptor we own; received
                // descriptors must not leak into children we spawn.
                unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
                fds.push(owned);
            }
            if fds.len() > MAX_FDS {
                return Err(ProtocolError::TooManyFds(fds.len()));
            }
            if n == 0 {
                return Err(if frame_start && got == 0 {
                    ProtocolError::Closed
                } else {
                    ProtocolError::Truncated {
                        expected: buf.len(),
                        got,
                    }
                });
            }
            got += n;
        }
        Ok(())
    }
}

fn map_io(e: std::io::Error) -> ProtocolError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ProtocolError::Timeout,
        _ => ProtocolError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{ManagerToVios, ManagerToVmm, Request, Response};
    use std::io::{Read, Seek};
    use std::os::fd::AsFd;
    use std::time::Duration;

    fn pair() -> (Channel, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (Channel::new(a), b)
    }

    #[test]
    fn a_message_round_trips_with_descriptors() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (Channel::new(a), Channel::new(b));
        let mut file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        file.write_all(b"console text").unwrap();
        let msg = Response::LogFile {
            name: "p1".into(),
            path: "/p1.log".into(),
        };
        a.send(&msg, &[file.as_fd()]).unwrap();
        let (got, fds): (Response, _) = b.recv().unwrap();
        assert_eq!(got, msg);
        assert_eq!(fds.len(), 1);
        let mut f = std::fs::File::from(fds.into_iter().next().unwrap());
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "console text");
    }

    #[test]
    fn a_large_frame_arrives_whole() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (Channel::new(a), Channel::new(b));
        let data = vec![7u8; 300_000];
        let msg = ManagerToVmm::ConsoleInput { data: data.clone() };
        let t = std::thread::spawn(move || a.send(&msg, &[]).unwrap());
        let (got, _): (ManagerToVmm, _) = b.recv().unwrap();
        t.join().unwrap();
        assert_eq!(got, ManagerToVmm::ConsoleInput { data });
    }

    #[test]
    fn clean_close_and_truncation_are_told_apart() {
        let (a, b) = pair();
        drop(b);
        assert!(matches!(a.recv::<Request>(), Err(ProtocolError::Closed)));

        let (a, mut b) = pair();
        let frame = encode(&Request::List, 0).unwrap();
        b.write_all(&frame[..frame.len() - 3]).unwrap();
        drop(b);
        let e = a.recv::<Request>().unwrap_err();
        assert!(matches!(e, ProtocolError::Truncated { .. }), "{e}");

        let (a, mut b) = pair();
        b.write_all(&frame[..5]).unwrap();
        drop(b);
        assert!(matches!(
            a.recv::<Request>(),
            Err(ProtocolError::Truncated {
                expected: 12,
                got: 5
            })
        ));
    }

    #[test]
    fn a_trickled_frame_is_cut_at_the_deadline() {
        let (chan, mut peer) = pair();
        let frame = encode(&Request::List, 0).unwrap();
        let writer = std::thread::spawn(move || {
            for b in frame {
                if peer.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let start = Instant::now();
        let r = chan.recv_within::<Request>(Duration::from_millis(600));
        assert!(matches!(r, Err(ProtocolError::Timeout)), "{r:?}");
        let took = start.elapsed();
        assert!(took < Duration::from_secs(3), "{took:?}");
        // The socket's own read timeout is back as it was.
        assert_eq!(
            chan.stream().read_timeout().unwrap(),
            Some(Duration::from_secs(5))
        );
        drop(chan);
        writer.join().unwrap();
        // A frame sent at once arrives well within the limit.
        let (chan, mut peer) = pair();
        peer.write_all(&encode(&Request::List, 0).unwrap()).unwrap();
        let (r, _) = chan.recv_within::<Request>(Duration::from_secs(5)).unwrap();
        assert_eq!(r, Request::List);
    }

    #[test]
    fn garbage_is_rejected_by_the_magic() {
        let (a, mut b) = pair();
        b.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let e = a.recv::<Request>().unwrap_err();
        assert!(matches!(e, ProtocolError::BadMagic(_)), "{e}");
        assert!(e.to_string().contains("not a parvm protocol peer"));
    }

    #[test]
    fn another_version_is_named_without_waiting_for_the_body() {
        let (a, mut b) = pair();
        let mut h = encode_header(VERSION, 0, 100).unwrap();
        h[4..6].copy_from_slice(&(VERSION + 1).to_le_bytes());
        // Only the header: the error must come without the 100 body bytes.
        b.write_all(&h).unwrap();
        let e = a.recv::<Request>().unwrap_err();
        assert!(
            matches!(e, ProtocolError::VersionMismatch { ours: VERSION, theirs } if theirs == VERSION + 1),
            "{e}"
        );
        assert!(e.to_string().contains("version 2"), "{e}");
    }

    #[test]
    fn oversized_frames_are_refused_before_reading() {
        let (a, mut b) = pair();
        let mut h = encode_header(VERSION, 0, 0).unwrap();
        h[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        b.write_all(&h).unwrap();
        assert!(matches!(
            a.recv::<Request>(),
            Err(ProtocolError::TooLarge(_))
        ));
        assert!(matches!(
            encode(
                &ManagerToVmm::ConsoleInput {
                    data: vec![0; MAX_FRAME]
                },
                0
            ),
            Err(ProtocolError::TooLarge(_))
        ));
    }

    #[test]
    fn bad_json_and_wrong_messages_are_errors_and_the_channel_survives() {
        let (a, mut b) = pair();
        let body = b"{\"op\":\"start\"";
        b.write_all(&encode_header(VERSION, 0, body.len()).unwrap())
            .unwrap();
        b.write_all(body).unwrap();
        let e = a.recv::<Request>().unwrap_err();
        assert!(matches!(e, ProtocolError::Json(_)) && !e.is_fatal(), "{e}");
        // A well-formed frame of the wrong type.
        b.write_all(&encode(&Response::Attached, 0).unwrap())
            .unwrap();
        assert!(matches!(a.recv::<Request>(), Err(ProtocolError::Json(_))));
        // The next good frame still decodes.
        b.write_all(&encode(&Request::List, 0).unwrap()).unwrap();
        assert_eq!(a.recv::<Request>().unwrap().0, Request::List);
    }

    #[test]
    fn announced_and_received_descriptors_must_agree() {
        let (a, mut b) = pair();
        b.write_all(&encode_header(VERSION, 2, 2).unwrap()).unwrap();
        b.write_all(b"{}").unwrap();
        assert!(matches!(
            a.recv::<Request>(),
            Err(ProtocolError::FdMismatch {
                announced: 2,
                received: 0
            })
        ));
    }

    #[test]
    fn descriptors_must_be_those_the_message_declares() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (Channel::new(a), Channel::new(b));
        let file = std::fs::File::open("/dev/null").unwrap();
        let connect = ManagerToVios::ViosConnect {
            disk: "d".into(),
            client: "c".into(),
            read_only: false,
        };
        // Send refuses a missing or an extra descriptor.
        let e = a.send(&connect, &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("`vios_connect` needs exactly one socket"),
            "{e}"
        );
        let e = a.send(&ManagerToVios::Stop, &[file.as_fd()]).unwrap_err();
        assert!(e.to_string().contains("carries no file descriptor"), "{e}");
        // So does receive, from a peer that does not check; the channel
        // stays usable and the descriptor is not handed on.
        let mut raw = a.stream();
        raw.write_all(&encode(&connect, 0).unwrap()).unwrap();
        let frame = encode(&ManagerToVmm::Stop, 1).unwrap();
        a.stream()
            .send_with_fds(&[&frame[..]], &[file.as_raw_fd()])
            .unwrap();
        let map = ManagerToVmm::Map {
            key: "k".into(),
            gpa: None,
            size: 4096,
            read_only: false,
        };
        raw.write_all(&encode(&map, 0).unwrap()).unwrap();
        a.send(&map, &[file.as_fd()]).unwrap();
        let e = b.recv::<ManagerToVios>().unwrap_err();
        assert!(
            matches!(&e, ProtocolError::WrongFds { received: 0, .. }) && !e.is_fatal(),
            "{e}"
        );
        let e = b.recv::<ManagerToVmm>().unwrap_err();
        assert!(
            e.to_string()
                .contains("`stop` carries no file descriptor, 1 came"),
            "{e}"
        );
        let e = b.recv::<ManagerToVmm>().unwrap_err();
        assert!(
            e.to_string().contains("`map` needs exactly one memfd"),
            "{e}"
        );
        let (got, fds) = b.recv::<ManagerToVmm>().unwrap();
        assert_eq!((got, fds.len()), (map, 1));
    }

    #[test]
    fn too_many_descriptors_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (Channel::new(a), Channel::new(b));
        let files: Vec<_> = (0..MAX_FDS + 1)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
        assert!(matches!(
            a.send(&Request::List, &fds),
            Err(ProtocolError::TooManyFds(_))
        ));
        // Forge a frame that claims few but carries many.
        let frame = encode(&Request::List, 1).unwrap();
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        a.stream().send_with_fds(&[&frame[..]], &raw).unwrap();
        assert!(matches!(
            b.recv::<Request>(),
            Err(ProtocolError::TooManyFds(_))
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic generator: no dependency, reproducible.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let good = encode(&Request::Start { name: "p".into() }, 0).unwrap();
        for round in 0..2000 {
            let mut bytes = if round % 2 == 0 {
                good.clone()
            } else {
                (0..(next() % 64) as usize).map(|_| next() as u8).collect()
            };
            // Flip a few bytes, sometimes cut the tail.
            for _ in 0..(next() % 4) {
                if !bytes.is_empty() {
                    let i = (next() as usize) % bytes.len();
                    bytes[i] = next() as u8;
                }
            }
            if next() % 3 == 0 {
                let keep = (next() as usize) % (bytes.len() + 1);
                bytes.truncate(keep);
            }
            let _ = decode::<Request>(&bytes);
        }
    }

    #[test]
    fn decode_reports_short_buffers() {
        let frame = encode(&Request::List, 0).unwrap();
        assert!(matches!(
            decode::<Request>(&frame[..4]),
            Err(ProtocolError::Truncated { .. })
        ));
        assert!(matches!(
            decode::<Request>(&frame[..frame.len() - 1]),
            Err(ProtocolError::Truncated { .. })
        ));
        assert_eq!(decode::<Request>(&frame).unwrap(), Request::List);
    }
}
