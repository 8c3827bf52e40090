//! The daemon as a service: readiness and status to the service manager
//! (`sd_notify`'s datagram on `$NOTIFY_SOCKET`, written here: a path or an
//! `@abstract` name), and SIGTERM/SIGINT handled in order: no new
//! connections (the sockets are removed), followers of the event stream
//! told, one log line, exit 0. Partitions keep running (they run in their
//! own sessions) and a restarted manager takes them back.

use partition_manager::Manager;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

/// `$NOTIFY_SOCKET`, taken out of the environment at start so that the
/// processes the manager spawns do not inherit it.
static NOTIFY: OnceLock<Option<String>> = OnceLock::new();

/// Reads (and unsets) `$NOTIFY_SOCKET`; call before any thread starts.
pub fn take_notify_socket() {
    let value = std::env::var("NOTIFY_SOCKET")
        .ok()
        .filter(|s| !s.is_empty());
    std::env::remove_var("NOTIFY_SOCKET");
    let _ = NOTIFY.set(value);
}

/// Sends `state` (`READY=1`, `STOPPING=1`, ...) to the service manager,
/// if one asked for it. Failures are logged, never fatal.
pub fn notify(state: &str) {
    let Some(Some(target)) = NOTIFY.get() else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        if let Some(name) = target.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(state.as_bytes(), &addr)
        } else {
            sock.send_to(state.as_bytes(), target)
        }
    });
    match sent {
        Ok(_) => tracing::debug!(state, "told the service manager"),
        Err(e) => tracing::warn!(socket = %target, error = %e, "cannot notify the service manager"),
    }
}

/// The write end of the signal pipe, for the handler.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; one byte from a live
        // local to the pipe's write end.
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

/// Installs the SIGTERM/SIGINT handler and the thread that shuts the
/// manager down when one arrives: `sockets` are removed first (no new
/// connections), then the event stream's followers are let go, the
/// service manager told, and the process exits 0. A handler (not a
/// blocked signal) so that the processes the manager spawns start with
/// the default disposition and mask.
pub fn on_shutdown(mgr: Arc<Manager>, sockets: Vec<PathBuf>) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "no signal pipe: SIGTERM keeps its default action");
        return;
    }
    SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction with a plain handler that only
        // calls write(2); SA_RESTART keeps other threads' calls going.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_signal as *const () as usize;
            act.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
    // SAFETY: fds[0] is the pipe's read end, owned from here on.
    let mut reader = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut b = [0u8; 1];
            if reader.read_exact(&mut b).is_err() {
                return;
            }
            let signal = if i32::from(b[0]) == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            notify("STOPPING=1");
            for s in &sockets {
                let _ = std::fs::remove_file(s);
            }
            mgr.event_log().close();
            let running = mgr
                .list()
                .iter()
                .filter(|p| p.state.is_active())
                .count();
            tracing::info!(
                signal,
                running,
                "partition manager stopping: sockets removed; partitions keep running and re-attach to the next manager"
            );
            std::process::exit(0);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no signal thread: SIGTERM keeps its default action");
    }
}
