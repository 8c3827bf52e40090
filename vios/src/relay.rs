//! Serving an already connected socket (the VIOS end of a socketpair the
//! partition manager brokered) with vhost-user-backend, which only takes
//! connections from a listener.
//!
//! ```text
//! client VMM ══brokered socketpair══> relay ──private socket──> VhostUserDaemon
//! ```
//!
//! The VIOS binds a listener in a fresh 0700 directory of its own, connects
//! to it, hands the listener to the daemon (which accepts that connection)
//! and removes the directory. Two relay threads then copy whole vhost-user
//! messages between the brokered socket and the private connection: the
//! 12-byte header (request, flags, size) is read first, with any file
//! descriptors attached to it, then exactly `size` body bytes, and the
//! message goes on in one `sendmsg` with its descriptors. Reading message by
//! message keeps each descriptor with the message it came with (a plain
//! byte relay could attach it to the tail of the previous message). A
//! message larger than vhost-user allows, or a broken socket, ends both
//! directions.

use std::fs::File;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread;

use tracing::debug;
use vhost::vhost_user::message::MAX_MSG_SIZE;
use vhost::vhost_user::Listener;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// vhost-user message header: request (u32), flags (u32), size (u32).
const HEADER_LEN: usize = 12;
/// Most descriptors one vhost-user message carries.
const MAX_FDS: usize = 32;

/// A private directory for the one-shot listener, removed on drop.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new() -> io::Result<Self> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let mut random = [0u8; 8];
        File::open("/dev/urandom")?.read_exact(&mut random)?;
        let dir = base.join(format!(
            "parvm-vios-{}-{:016x}",
            std::process::id(),
            u64::from_le_bytes(random)
        ));
        // create (not create_all): fails if anything is already there.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(PrivateDir(dir))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Serve `client` (a connected stream) with `serve`, which is given a
/// listener with exactly one pending connection: the relay's. Returns when
/// `serve` does (the client disconnected).
pub fn serve_via_relay<E: From<io::Error>>(
    client: UnixStream,
    serve: impl FnOnce(&mut Listener) -> Result<(), E>,
) -> Result<(), E> {
    let dir = PrivateDir::new()?;
    let path = dir.0.join("conn.sock");
    let mut listener = Listener::new(&path, true).map_err(|e| io::Error::other(e.to_string()))?;
    let inner = UnixStream::connect(&path)?;
    // Nobody else can connect from now on.
    drop(dir);
    let relays = start_relays(client, inner)?;
    let result = serve(&mut listener);
    drop(listener);
    for relay in relays {
        let _ = relay.join();
    }
    result
}

/// Start the two copying threads; each ends both directions when it ends.
fn start_relays(client: UnixStream, inner: UnixStream) -> io::Result<Vec<thread::JoinHandle<()>>> {
    let client2 = client.try_clone()?;
    let inner2 = inner.try_clone()?;
    let a = thread::Builder::new()
        .name("vios-relay-in".into())
        .spawn(move || relay(&client, &inner, "frontend->backend"))?;
    let b = thread::Builder::new()
        .name("vios-relay-out".into())
        .spawn(move || relay(&inner2, &client2, "backend->frontend"))?;
    Ok(vec![a, b])
}

fn relay(from: &UnixStream, to: &UnixStream, direction: &str) {
    loop {
        match relay_message(from, to) {
            Ok(true) => continue,
            Ok(false) => debug!(direction, "vios relay: peer closed"),
            Err(e) => debug!(direction, error = %e, "vios relay: ended"),
        }
        break;
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Receive into `buf`, with any descriptors; `Ok((0, _))` at end of stream.
fn recv_some(from: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut raw: [RawFd; MAX_FDS] = [-1; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    loop {
        // SAFETY: the iovec points into `buf`, valid for `buf.len()` bytes
        // and not otherwise borrowed during the call.
        let r = unsafe { from.recv_with_fds(&mut iov, &mut raw) };
        match r {
            Ok((n, nfds)) => {
                for fd in raw.iter().take(nfds) {
                    // SAFETY: the kernel just installed these descriptors in
                    // this process for us; nobody else owns them.
                    fds.push(unsafe { OwnedFd::from_raw_fd(*fd) });
                }
                return Ok(n);
            }
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    }
}

/// Read exactly `buf.len()` bytes (collecting descriptors); false on a
/// clean end of stream before the first byte.
fn recv_exact(from: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        let n = recv_some(from, &mut buf[done..], fds)?;
        if n == 0 {
            if done == 0 {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "closed in the middle of a message ({done} of {} bytes)",
                    buf.len()
                ),
            ));
        }
        done += n;
    }
    Ok(true)
}

/// Copy one message; false when `from` closed between messages.
fn relay_message(from: &UnixStream, to: &UnixStream) -> io::Result<bool> {
    let mut fds = Vec::new();
    let mut header = [0u8; HEADER_LEN];
    if !recv_exact(from, &mut header, &mut fds)? {
        return Ok(false);
    }
    let size = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if size > MAX_MSG_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {size} bytes exceeds the vhost-user maximum {MAX_MSG_SIZE}"),
        ));
    }
    let mut message = vec![0u8; HEADER_LEN + size];
    message[..HEADER_LEN].copy_from_slice(&header);
    if size > 0 && !recv_exact(from, &mut message[HEADER_LEN..], &mut fds)? {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed after a message header",
        ));
    }
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many file descriptors",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut sent = 0;
    while sent < message.len() {
        let chunk: &[u8] = &message[sent..];
        // Descriptors travel with the first byte only.
        let with = if sent == 0 { &raw[..] } else { &[][..] };
        match to.send_with_fds(&[chunk], with) {
            Ok(n) => sent += n,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::io::Write;

    fn message(request: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&request.to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn descriptors_stay_with_their_message() {
        let (front, relay_front) = UnixStream::pair().unwrap();
        let (relay_back, back) = UnixStream::pair().unwrap();
        let threads = start_relays(relay_front, relay_back).unwrap();
        // Two messages back to back, only the second with an fd.
        let evt = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        front
            .send_with_fds(&[&message(1, &[7u8; 8])[..]], &[])
            .unwrap();
        front
            .send_with_fds(&[&message(2, &[9u8; 8])[..]], &[evt.as_raw_fd()])
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut fds = Vec::new();
        let mut first = [0u8; 20];
        assert!(recv_exact(&back, &mut first, &mut fds).unwrap());
        assert_eq!(first[0], 1);
        assert!(fds.is_empty(), "fd arrived with the first message");
        let mut second = [0u8; 20];
        assert!(recv_exact(&back, &mut second, &mut fds).unwrap());
        assert_eq!(second[0], 2);
        assert_eq!(fds.len(), 1);
        // The fd is the same eventfd.
        evt.write(5).unwrap();
        let mut got = [0u8; 8];
        nix_read(&fds[0], &mut got);
        assert_eq!(u64::from_ne_bytes(got), 5);
        // An oversized message ends the relay in both directions.
        let mut bad = message(3, &[]);
        bad[8..12].copy_from_slice(&0x10_0000u32.to_le_bytes());
        (&front).write_all(&bad).unwrap();
        for t in threads {
            t.join().unwrap();
        }
        let mut buf = [0u8; 1];
        assert_eq!((&back).read(&mut buf).unwrap(), 0);
    }

    fn nix_read(fd: &OwnedFd, buf: &mut [u8]) {
        // SAFETY: reads into a valid buffer of the given length from a
        // descriptor we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(n as usize, buf.len());
    }
}
