//! What a VMM and a VIOS both do as processes run by the partition manager.
//!
//! The manager spawns them with one end of a socketpair on an inherited fd
//! (`--control-fd N`: the connection is the partition's identity), the
//! manager's socket (`--manager-socket PATH`); the reconnect token comes
//! as the first message on that channel (`ManagerToVmm::Token`,
//! `ManagerToVios::Token`), never in the environment or on the command line,
//! which other processes can read in `/proc/PID/environ` and `cmdline`.
//! Here:
//!
//! - [`control_socket`] takes the inherited fd (checked to be a socket,
//!   close-on-exec from then on);
//! - [`TokenSlot`] keeps the token the manager sent, whenever it arrives
//!   (one code path for the VMM and the VIOS);
//! - [`hello`] is the first message on the channel;
//! - when the manager goes away, [`reattach`] dials its socket every
//!   [`RECONNECT_INTERVAL`] and, through [`try_attach`], sends `Attach` with
//!   the name, pid and token until a restarted manager takes the partition
//!   back. Before anything is sent on a connected socket, its peer is
//!   checked with `SO_PEERCRED` ([`check_peer`]): someone else who bound the
//!   manager's socket path while the manager was down never sees the token.
//!   The manager's uid is the one its control socket came from (root for a
//!   process it started as another user, `--run-as`: never the process's
//!   own uid then).

use crate::{Channel, ErrorKind, ProtocolError, Request, Response, ToManager, VERSION};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How often a partition whose manager went away tries to reach it again.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(100);
/// How long an `Attach` waits for the manager's answer.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    #[error("--control-fd {0}: not an open socket")]
    NotASocket(RawFd),
}

/// Takes the inherited control socket `fd`.
pub fn control_socket(fd: RawFd) -> Result<UnixStream, ManagedError> {
    if fd < 0 {
        return Err(ManagedError::NotASocket(fd));
    }
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer; a bad fd is an error return.
    let rc = unsafe { libc::fstat(fd, &mut st) };
    if rc != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(ManagedError::NotASocket(fd));
    }
    // SAFETY: the descriptor was inherited from the manager for this process
    // alone and is an open socket (checked above); nothing else wraps it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: F_SETFD on a descriptor we own: keep it out of any child.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // A socketpair carries its creator's credentials: the manager's uid,
    // the only one (with root) a re-attach may go to.
    if let Ok(cred) = peer_cred(&stream) {
        let _ = MANAGER_UID.set(cred.uid);
    }
    Ok(stream)
}

/// The uid of the manager that started this process, from the peer
/// credentials of its inherited control socket ([`control_socket`]).
static MANAGER_UID: OnceLock<u32> = OnceLock::new();

/// The reconnect token the manager sent on the control channel (a `Token`
/// message, normally the first one, but any time is accepted). Until one
/// arrives the process cannot re-attach to a restarted manager.
#[derive(Debug, Default)]
pub struct TokenSlot {
    token: Mutex<Option<String>>,
    missing_logged: AtomicBool,
}

impl TokenSlot {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `token` (a later one replaces it: only the manager on the
    /// partition's own channel can send one). An empty token is ignored.
    pub fn set(&self, name: &str, token: String) {
        if token.is_empty() {
            tracing::warn!(partition = %name, "empty reconnect token ignored");
            return;
        }
        let mut slot = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if slot.replace(token).is_some() {
            tracing::debug!(partition = %name, "reconnect token replaced");
        }
    }

    /// The token, if one arrived.
    pub fn get(&self) -> Option<String> {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The token for a re-attach; `None` (logged once) before one arrived.
    fn for_attach(&self, name: &str) -> Option<String> {
        let token = self.get();
        if token.is_none() && !self.missing_logged.swap(true, Ordering::SeqCst) {
            tracing::warn!(partition = %name, "the manager went away before sending the reconnect token: cannot re-attach");
        }
        token
    }
}

/// The first message on a spawned partition's channel.
pub fn hello(chan: &Channel, name: &str) -> Result<(), ProtocolError> {
    chan.send(
        &ToManager::Hello {
            version: VERSION,
            name: name.to_string(),
            pid: std::process::id(),
        },
        &[],
    )
}

/// Whether a peer running as `peer_uid` may be talked to by a process whose
/// effective uid is `own_euid`: the same user, or root.
pub fn peer_allowed(peer_uid: u32, own_euid: u32) -> bool {
    peer_uid == own_euid || peer_uid == 0
}

/// Whether a peer running as `peer_uid` may be taken for a restarted
/// manager: root, or the uid of the manager that started this process
/// (`manager_uid`; when unknown, this process's own uid). A VMM the manager
/// started as another user (`--run-as`) so never takes a process of its own
/// uid (another partition, say) for its manager.
pub fn manager_allowed(peer_uid: u32, manager_uid: Option<u32>, own_euid: u32) -> bool {
    peer_uid == 0 || peer_uid == manager_uid.unwrap_or(own_euid)
}

/// Peer credentials of a Unix socket (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy)]
pub struct PeerCred {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The credentials of the process at the other end of `stream`.
pub fn peer_cred(stream: &UnixStream) -> std::io::Result<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes at most `len` bytes into `cred`, a live
    // ucred of that size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(PeerCred {
        pid: cred.pid as u32,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// This process's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Checks the peer of a connected socket with `SO_PEERCRED`: root or the
/// manager's uid ([`manager_allowed`]).
pub fn check_peer(stream: &UnixStream) -> Result<(), String> {
    let cred = peer_cred(stream).map_err(|e| format!("cannot check the peer: {e}"))?;
    let manager = MANAGER_UID.get().copied();
    let expected = manager.unwrap_or_else(euid);
    if !manager_allowed(cred.uid, manager, euid()) {
        return Err(format!(
            "the socket is served by uid {} (pid {}), neither the manager's uid {expected} nor root: not the partition manager",
            cred.uid, cred.pid
        ));
    }
    Ok(())
}

/// Who is asking to be taken back.
#[derive(Debug, Clone, Copy)]
pub struct Attach<'a> {
    pub name: &'a str,
    /// The manager's listening socket.
    pub socket: &'a Path,
    pub token: &'a str,
}

/// Connects to a (restarted) manager and asks for the partition back,
/// proving identity with the token (docs/protocol.md, "Re-attaching").
pub fn try_attach(who: &Attach<'_>, paused: bool) -> Result<Channel, String> {
    let stream =
        UnixStream::connect(who.socket).map_err(|e| format!("{}: {e}", who.socket.display()))?;
    check_peer(&stream).map_err(|e| format!("{}: {e}", who.socket.display()))?;
    stream
        .set_read_timeout(Some(ATTACH_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let chan = Channel::new(stream);
    chan.send(
        &Request::Attach {
            name: who.name.to_string(),
            pid: std::process::id(),
            token: who.token.to_string(),
            paused,
        },
        &[],
    )
    .map_err(|e| e.to_string())?;
    match chan.recv::<Response>() {
        Ok((Response::Attached, _)) => {}
        Ok((Response::Error { kind, message }, _)) => {
            if kind == ErrorKind::NotFound || kind == ErrorKind::PermissionDenied {
                tracing::warn!(partition = %who.name, %message, "the manager refused to take the partition back");
            }
            return Err(message);
        }
        Ok((other, _)) => return Err(format!("unexpected answer {other:?}")),
        Err(e) => return Err(e.to_string()),
    }
    chan.stream()
        .set_read_timeout(None)
        .map_err(|e| e.to_string())?;
    Ok(chan)
}

/// The manager went away: dial its socket every [`RECONNECT_INTERVAL`]
/// until one takes the partition back. `None` when there is nowhere to
/// reconnect (no socket, or no token arrived on the channel before the
/// manager went away) or once `give_up` says so; `paused` tells the
/// manager the partition's state.
pub fn reattach(
    name: &str,
    socket: Option<&Path>,
    token: &TokenSlot,
    paused: &dyn Fn() -> bool,
    give_up: &dyn Fn() -> bool,
) -> Option<Channel> {
    let Some(socket) = socket else {
        tracing::warn!(partition = %name, "no manager socket: running without a manager");
        return None;
    };
    let token = token.for_attach(name)?;
    let who = Attach {
        name,
        socket,
        token: &token,
    };
    let mut logged = false;
    while !give_up() {
        std::thread::sleep(RECONNECT_INTERVAL);
        match try_attach(&who, paused()) {
            Ok(chan) => {
                tracing::info!(partition = %name, "re-attached to the partition manager");
                return Some(chan);
            }
            Err(e) if !logged => {
                tracing::info!(partition = %name, error = %e, "manager not reachable yet, retrying");
                logged = true;
            }
            Err(_) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::ffi::CString;

    #[test]
    fn control_fd_must_be_a_socket() {
        assert!(matches!(
            control_socket(-1),
            Err(ManagedError::NotASocket(-1))
        ));
        let f = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        assert!(matches!(
            control_socket(fd),
            Err(ManagedError::NotASocket(_))
        ));
    }

    #[test]
    fn a_token_is_kept_whenever_it_arrives_and_none_means_no_reattach() {
        let slot = TokenSlot::new();
        assert_eq!(slot.get(), None);
        // No token yet: re-attaching is impossible, whatever the socket.
        let sock = Path::new("/nonexistent/pm.sock");
        assert!(reattach("p", Some(sock), &slot, &|| false, &|| false).is_none());
        assert!(reattach("p", Some(sock), &slot, &|| false, &|| false).is_none());
        slot.set("p", String::new());
        assert_eq!(slot.get(), None);
        slot.set("p", "abc".into());
        assert_eq!(slot.get().as_deref(), Some("abc"));
        slot.set("p", "def".into());
        assert_eq!(slot.get().as_deref(), Some("def"));
        // With a token, `give_up` ends the loop.
        assert!(reattach("p", Some(sock), &slot, &|| false, &|| true).is_none());
    }

    #[test]
    fn peers_of_the_same_user_or_root_are_allowed() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(65534, 1000));
        assert!(!peer_allowed(65534, 0));
        assert!(!peer_allowed(1000, 0));
        // A real socketpair: the peer is this process.
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(check_peer(&a).is_ok());
    }

    #[test]
    fn only_root_or_the_managers_uid_is_taken_for_the_manager() {
        // Started by a manager of the same user (or not told): as before.
        assert!(manager_allowed(1000, Some(1000), 1000));
        assert!(manager_allowed(1000, None, 1000));
        assert!(manager_allowed(0, None, 1000));
        assert!(!manager_allowed(65534, None, 1000));
        // Started by root as another user: root only, never its own uid.
        assert!(manager_allowed(0, Some(0), 65534));
        assert!(!manager_allowed(65534, Some(0), 65534));
        assert!(!manager_allowed(1000, Some(0), 65534));
    }

    #[test]
    fn nothing_is_sent_to_a_socket_another_user_listens_on() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to listen as another user");
            return;
        }
        let dir = std::env::temp_dir().join(format!("parvm-peercred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let path = dir.join("manager.sock");
        let c_path = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let bytes = c_path.as_bytes_with_nul();
        // SAFETY: an all-zero sockaddr_un is valid; sun_path is filled below.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        assert!(bytes.len() <= addr.sun_path.len());
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        // A listener that is not the manager: uid 65534 (nobody), in a forked
        // child that only makes raw system calls.
        // SAFETY: the child calls only async-signal-safe functions (setuid,
        // socket, bind, listen, accept, read, _exit) on data prepared before
        // the fork.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above; the child never returns into the test.
            unsafe {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    libc::_exit(2);
                }
                let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                if s < 0
                    || libc::bind(s, (&addr as *const libc::sockaddr_un).cast(), len) != 0
                    || libc::listen(s, 4) != 0
                {
                    libc::_exit(3);
                }
                loop {
                    let c = libc::accept(s, std::ptr::null_mut(), std::ptr::null_mut());
                    if c >= 0 {
                        // Whatever arrives is a leak: exit 4 if anything does.
                        let mut b = [0u8; 1];
                        if libc::read(c, b.as_mut_ptr().cast(), 1) > 0 {
                            libc::_exit(4);
                        }
                        libc::close(c);
                    }
                }
            }
        }
        assert!(pid > 0, "fork failed");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // Listening once a connection succeeds (bind comes before listen).
        while UnixStream::connect(&path).is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let who = Attach {
            name: "p",
            socket: &path,
            token: "secret",
        };
        let e = try_attach(&who, false).unwrap_err();
        assert!(e.contains("uid 65534"), "{e}");
        assert!(e.contains("not the partition manager"), "{e}");
        std::thread::sleep(Duration::from_millis(100));
        let mut status = 0;
        // SAFETY: waitpid/kill on the child forked above.
        let exited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        // SAFETY: as above.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, 0);
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            exited, 0,
            "the listener exited early (status {status:#x}): it received bytes or could not listen"
        );
    }
}
