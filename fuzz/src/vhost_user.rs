//! Target `vhost_user`: the VIOS serving one client connection
//! (`vios::serve_stream`, the path of a socketpair the manager brokered),
//! with the client's side of the conversation taken from the input.
//!
//! What runs is the product path end to end: the VIOS's message relay, the
//! vhost-user protocol of `vhost` and `vhost-user-backend`, the VIOS's
//! `VhostUserBlk` backend (features, configuration space reads and writes,
//! `check_memory_table` on every memory table, queue setup) and, for a
//! queue that gets kicked after a good table, its drain through the block
//! core over a 64 KiB export.
//!
//! Input: an options byte (bit 0 read-only, bit 1 two queues), a u16
//! length and that many bytes of client memory, then messages, each a
//! control byte and a vhost-user message (12-byte header: request, flags,
//! size; then a body of that size, zero-padded past the input; a size over
//! 4 KiB is sent as is and ends the session). The control byte attaches
//! descriptors the way a client would: bits 0-2 how many; eventfds for
//! SET_VRING_KICK/CALL/ERR and SET_LOG_FD, memfds otherwise, (bits 4-7 + 1)
//! pages long, holding the client memory, sealed against shrinking if bit
//! 3 is set. After the last message the client signals every eventfd it
//! sent (a kick), sends GET_FEATURES and reads replies until that one is
//! answered (every message before it has then been handled) or the VIOS
//! closes, waits up to 2 ms for a call, and hangs up; the VIOS must return.

use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::Duration;

use vios::{serve_stream, Export, ExportSpec, ServeOptions};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::Input;

/// Size of the export.
const DISK_LEN: u64 = 64 * 1024;
/// Longest body sent (vhost-user's own limit is lower for most messages).
const MAX_BODY: usize = 0x1000;

const GET_FEATURES: u32 = 1;
const SET_LOG_FD: u32 = 7;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_ERR: u32 = 14;

fn memfd(name: &std::ffi::CStr, flags: libc::c_uint) -> Option<File> {
    // SAFETY: memfd_create with a valid NUL-terminated name; the result is
    // checked before use.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    // SAFETY: a fresh descriptor nobody else owns.
    (fd >= 0).then(|| unsafe { File::from_raw_fd(fd) })
}

/// The export every run serves: a memfd image opened through /proc, kept
/// for the life of the process (no file is left behind).
fn export(read_only: bool) -> Option<&'static Export> {
    static IMAGE: OnceLock<Option<File>> = OnceLock::new();
    static EXPORTS: OnceLock<Option<(Export, Export)>> = OnceLock::new();
    EXPORTS
        .get_or_init(|| {
            // Writes still die with SIGPIPE when a peer has gone: the
            // harness has no Rust `main` to ignore it.
            // SAFETY: setting a signal's disposition to SIG_IGN.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
            let image = IMAGE
                .get_or_init(|| {
                    let f = memfd(c"parvm-fuzz-export", libc::MFD_CLOEXEC)?;
                    f.set_len(DISK_LEN).ok()?;
                    Some(f)
                })
                .as_ref()?;
            let path = format!("/proc/self/fd/{}", image.as_raw_fd());
            let open = |ro| {
                Export::open(ExportSpec {
                    id: "fuzz".into(),
                    path: path.clone().into(),
                    read_only: ro,
                })
                .ok()
            };
            Some((open(false)?, open(true)?))
        })
        .as_ref()
        .map(|(rw, ro)| if read_only { ro } else { rw })
}

fn eventfd() -> Option<OwnedFd> {
    // SAFETY: eventfd(2) with valid flags; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    // SAFETY: a fresh descriptor nobody else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn client_memory(image: &[u8], pages: usize, sealed: bool) -> Option<OwnedFd> {
    let f = memfd(
        c"parvm-fuzz-client",
        libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
    )?;
    f.set_len((pages * 4096) as u64).ok()?;
    (&f).write_all(&image[..image.len().min(pages * 4096)])
        .ok()?;
    if sealed {
        // SAFETY: F_ADD_SEALS on a memfd we own.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
    }
    Some(f.into())
}

pub fn vhost_user(data: &[u8]) {
    let mut input = Input::new(data);
    let options = input.u8();
    let Some(export) = export(options & 1 != 0) else {
        return;
    };
    let serve = ServeOptions {
        queues: if options & 2 != 0 { 2 } else { 1 },
        read_only: false,
    };
    let image_len = usize::from(input.u16());
    let image = input.bytes(image_len);

    let Ok((client, vios_end)) = UnixStream::pair() else {
        return;
    };
    let server = std::thread::spawn(move || {
        let _ = serve_stream(vios_end, export, "fuzz-client", &serve);
    });
    // A VIOS that stops reading must not hang the run.
    let _ = client.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));

    let mut events = Vec::new();
    // Replies to GET_FEATURES the client waits for: the fuzzer's own, then
    // the one to the last message (all before it have been handled then).
    let mut get_features = 1;
    while !input.is_empty() {
        let ctl = input.u8();
        let request = input.u32();
        let flags = input.u32();
        let size = input.u32();
        // The body is as long as the header says (zero-padded): a frontend
        // cannot lie about it without the relay waiting for the rest.
        let len = (size as usize).min(MAX_BODY);
        let mut message = Vec::with_capacity(12 + len);
        message.extend_from_slice(&request.to_le_bytes());
        message.extend_from_slice(&flags.to_le_bytes());
        message.extend_from_slice(&size.to_le_bytes());
        message.extend_from_slice(input.bytes(len));
        message.resize(12 + len, 0);
        let event_fds = matches!(request, SET_VRING_KICK..=SET_VRING_ERR | SET_LOG_FD);
        let mut fds = Vec::new();
        for _ in 0..(ctl & 7) {
            let fd = if event_fds {
                eventfd()
            } else {
                client_memory(image, usize::from(ctl >> 4) + 1, ctl & 8 != 0)
            };
            fds.extend(fd);
        }
        let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
        if client.send_with_fds(&[&message[..]], &raw).is_err() || len < size as usize {
            break;
        }
        if request == GET_FEATURES {
            get_features += 1;
        }
        if event_fds {
            events.extend(fds);
        }
    }
    // Kick every queue the client gave an eventfd, then wait a moment for
    // a call (the worker thread runs the queue meanwhile).
    for k in &events {
        // SAFETY: an 8-byte write from a live buffer to an eventfd we own.
        unsafe { libc::write(k.as_raw_fd(), 1u64.to_le_bytes().as_ptr().cast(), 8) };
    }
    let mut polls: Vec<libc::pollfd> = events
        .iter()
        .map(|e| libc::pollfd {
            fd: e.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut sentinel = Vec::from(GET_FEATURES.to_le_bytes());
    sentinel.extend_from_slice(&1u32.to_le_bytes());
    sentinel.extend_from_slice(&0u32.to_le_bytes());
    if (&client).write_all(&sentinel).is_ok() {
        wait_for_replies(&client, get_features);
    }
    if !polls.is_empty() {
        // SAFETY: poll on a live array of pollfds of descriptors we own.
        unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 2) };
    }
    let _ = client.shutdown(Shutdown::Both);
    drop(client);
    if server.join().is_err() {
        panic!("the VIOS connection thread panicked");
    }
}

/// Reads replies until `count` replies to GET_FEATURES have come, or the
/// VIOS closes the connection (a message it refused ends it).
fn wait_for_replies(client: &UnixStream, mut count: usize) {
    let mut stream = client;
    let mut header = [0u8; 12];
    while count > 0 {
        if stream.read_exact(&mut header).is_err() {
            return;
        }
        let [r0, r1, r2, r3, _, _, _, _, s0, s1, s2, s3] = header;
        let size = u32::from_le_bytes([s0, s1, s2, s3]) as usize;
        let mut body = vec![0u8; size.min(MAX_BODY)];
        if size > MAX_BODY || stream.read_exact(&mut body).is_err() {
            return;
        }
        if u32::from_le_bytes([r0, r1, r2, r3]) == GET_FEATURES {
            count -= 1;
        }
    }
}
