//! The listening socket: who may connect, and one thread per connection
//! turning [`Request`]s into [`Manager`] calls.
//!
//! The socket is created with mode 0600 in a directory the manager creates
//! with mode 0700 (0660 and 0710 of the `--run-as` group, with that
//! option); every connection's peer credentials (`SO_PEERCRED`) are logged
//! and only the manager's own uid and root are served, and the `--run-as`
//! user for `Attach` only. A connection that sends garbage, another
//! protocol version or half a frame gets an error answer (when one can still be sent) and is closed; other
//! connections are not affected. At most [`Limits::max_clients`] client
//! connections are served at once (a VMM's attached control channel does
//! not count), each next request must arrive whole within
//! [`Limits::client_timeout`], and connection logs are rate limited.

use crate::error::ManagerError;
use crate::manager::Manager;
use crate::process::spawn_thread;
use crate::ratelimit::{LogLimiter, OPERATOR};
use parvm_protocol::managed::{euid, peer_allowed, peer_cred};
use parvm_protocol::{Channel, ErrorKind, ProtocolError, Request, Response};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default of [`Limits::client_timeout`].
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of [`Limits::max_clients`].
pub const DEFAULT_MAX_CLIENTS: usize = 128;
/// Connection events logged per second at most; the rest are counted.
const LOG_BURST: u32 = 20;

/// Bounds on what clients of the listening socket may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Client connections served at once; more are answered `busy` and
    /// closed. VMMs' attached control channels do not count.
    pub max_clients: usize,
    /// A client's next request must arrive whole within this time after
    /// the previous answer (trickling a frame does not extend it).
    pub client_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_clients: DEFAULT_MAX_CLIENTS,
            client_timeout: DEFAULT_CLIENT_TIMEOUT,
        }
    }
}

/// Connection events: at most [`LOG_BURST`] lines a second.
static CONNECT_LOG: LogLimiter = LogLimiter::new(LOG_BURST, Duration::from_secs(1));

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a partition manager already listens on {0}")]
    InUse(PathBuf),
    #[error("another partition manager uses the state directory {0}")]
    StateDirLocked(PathBuf),
    #[error("state directory {path} is not safe to use: {why}")]
    StateDirUnsafe { path: PathBuf, why: String },
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The default socket: `$XDG_RUNTIME_DIR/parvm/pm.sock`, else
/// `/run/parvm/pm.sock`.
pub fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("parvm/pm.sock"),
        _ => PathBuf::from("/run/parvm/pm.sock"),
    }
}

/// Makes the state directory private: created 0700 when missing; an
/// existing one owned by another user is refused, and group or other
/// access to it or anything in it (console logs hold whatever the guests
/// print, the registry holds re-attach tokens) is taken away, with a
/// warning.
pub fn private_state_dir(dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::MetadataExt;
    let dir_err = |source| DaemonError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(dir_err)?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(dir_err)?;
    if !meta.is_dir() {
        return Err(DaemonError::StateDirUnsafe {
            path: dir.to_path_buf(),
            why: "it is not a directory".into(),
        });
    }
    let me = euid();
    if meta.uid() != me {
        return Err(DaemonError::StateDirUnsafe {
            path: dir.to_path_buf(),
            why: format!("it belongs to uid {}, not to uid {me}", meta.uid()),
        });
    }
    let mut fixed = 0;
    privatize(dir, &meta, &mut fixed).map_err(dir_err)?;
    if fixed > 0 {
        tracing::warn!(state_dir = %dir.display(), fixed, "group/other access to the state directory removed");
    }
    Ok(())
}

/// Clears group and other permission bits of `path` and, for a directory,
/// of everything under it (symbolic links are not followed).
fn privatize(path: &Path, meta: &std::fs::Metadata, fixed: &mut usize) -> std::io::Result<()> {
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7700))?;
        *fixed += 1;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            privatize(&entry.path(), &entry.metadata()?, fixed)?;
        }
    }
    Ok(())
}

/// Takes the state directory's lock so that two managers never share it
/// (after making it private, see [`private_state_dir`]). The returned file
/// must stay open for the manager's lifetime.
pub fn lock_state_dir(dir: &Path) -> Result<File, DaemonError> {
    private_state_dir(dir)?;
    let path = dir.join("manager.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| DaemonError::Dir {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(DaemonError::StateDirLocked(dir.to_path_buf()));
    }
    Ok(f)
}

/// Binds the listening socket with mode 0600 (its directory is created
/// 0700 if missing). A stale socket file nobody listens on is replaced.
/// With `partition_group` (the `--run-as` group, whose processes
/// re-attach here after a manager restart) the socket is 0660 and a
/// directory it creates 0710, both of that group.
pub fn listen(path: &Path, partition_group: Option<u32>) -> Result<UnixListener, DaemonError> {
    socket_dir(path, partition_group)?;
    bind(path, partition_group)
}

/// Creates the socket's directory if missing: 0700, or 0710 of
/// `partition_group`. What [`listen`] does first; a caller that binds
/// another socket there before (the HTTP API's) calls it itself.
pub fn socket_dir(path: &Path, partition_group: Option<u32>) -> Result<(), DaemonError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            let dir_err = |source| DaemonError::Dir {
                path: dir.to_path_buf(),
                source,
            };
            std::fs::create_dir_all(dir).map_err(dir_err)?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            if let Some(gid) = partition_group {
                std::os::unix::fs::chown(dir, None, Some(gid)).map_err(dir_err)?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))
                    .map_err(dir_err)?;
            }
        }
    }
    Ok(())
}

/// Binds the listening socket in its (existing) directory.
fn bind(path: &Path, partition_group: Option<u32>) -> Result<UnixListener, DaemonError> {
    let listen_err = |source| DaemonError::Listen {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(DaemonError::InUse(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    // No window in which the socket exists with a wider mode.
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(listen_err)?;
    let mode = match partition_group {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(listen_err)?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(listen_err)?;
    Ok(listener)
}

/// One client connection counted against [`Limits::max_clients`] while it
/// lives (released early when it becomes a VMM's control channel).
struct ClientSlot(Option<Arc<AtomicUsize>>);

impl ClientSlot {
    fn take(active: &Arc<AtomicUsize>, max: usize) -> Option<ClientSlot> {
        let mut n = active.load(Ordering::Relaxed);
        loop {
            if n >= max {
                return None;
            }
            match active.compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(ClientSlot(Some(active.clone()))),
                Err(now) => n = now,
            }
        }
    }

    fn release(&mut self) {
        if let Some(active) = self.0.take() {
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// Accepts connections forever, one thread each, within `limits`.
pub fn serve(mgr: Arc<Manager>, listener: UnixListener, limits: Limits) {
    let active = Arc::new(AtomicUsize::new(0));
    static ACCEPT_LOG: LogLimiter = LogLimiter::new(LOG_BURST, Duration::from_secs(1));
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let Some(slot) = ClientSlot::take(&active, limits.max_clients) else {
                    refuse_busy(stream, limits.max_clients);
                    continue;
                };
                let mgr = mgr.clone();
                spawn_thread("client", move || {
                    serve_connection(&mgr, stream, slot, limits.client_timeout)
                });
            }
            Err(e) => {
                // EMFILE and friends repeat at every try: log a few.
                if let Some(suppressed) = ACCEPT_LOG.allow() {
                    tracing::warn!(error = %e, suppressed, "accept failed");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Answers a connection over the limit without a thread of its own.
fn refuse_busy(stream: UnixStream, max: usize) {
    if let Some(suppressed) = CONNECT_LOG.allow() {
        tracing::warn!(
            max_clients = max,
            suppressed,
            "connection refused: too many clients"
        );
    }
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let chan = Channel::new(stream);
    let _ = chan.send(
        &Response::error(
            ErrorKind::Busy,
            format!("the partition manager serves {max} clients at once already; try again"),
        ),
        &[],
    );
    // Take in what already arrived (without waiting): closing with unread
    // input would reset the connection before the client reads the answer.
    let s = chan.stream();
    let _ = s.shutdown(std::net::Shutdown::Write);
    if s.set_nonblocking(true).is_ok() {
        let mut sink = [0u8; 4096];
        while matches!(std::io::Read::read(&mut &*s, &mut sink), Ok(n) if n > 0) {}
    }
}

/// Sends a last answer and closes without losing it: closing a Unix socket
/// with unread input makes the peer's read fail with ECONNRESET before it
/// sees the answer, so the input is drained (briefly) first.
fn close_with(chan: &Channel, answer: &Response) {
    if chan.send(answer, &[]).is_err() {
        return;
    }
    let s = chan.stream();
    let _ = s.shutdown(std::net::Shutdown::Write);
    // Half a second in all: a peer that keeps trickling cannot stretch it.
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut sink = [0u8; 4096];
    let mut left = 1usize << 20;
    while left > 0 {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() || s.set_read_timeout(Some(wait)).is_err() {
            break;
        }
        match std::io::Read::read(&mut &*s, &mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

fn error_response(e: &ManagerError) -> Response {
    Response::error(e.kind(), e.to_string())
}

fn serve_connection(
    mgr: &Arc<Manager>,
    stream: UnixStream,
    mut slot: ClientSlot,
    client_timeout: Duration,
) {
    let cred = match peer_cred(&stream) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read peer credentials; closing");
            return;
        }
    };
    let chan = Channel::new(stream);
    let me = euid();
    // The `--run-as` user's processes may come back after a manager
    // restart (`Attach`, proven by the token), and do nothing else.
    let partition_user =
        !peer_allowed(cred.uid, me) && mgr.cfg.run_as.as_ref().is_some_and(|u| u.uid == cred.uid);
    if !peer_allowed(cred.uid, me) && !partition_user {
        if let Some(suppressed) = CONNECT_LOG.allow() {
            tracing::warn!(
                uid = cred.uid,
                pid = cred.pid,
                suppressed,
                "connection refused: uid not allowed"
            );
        }
        let answer = Response::error(
            ErrorKind::PermissionDenied,
            format!(
                "uid {} may not use this partition manager (only uid {me} and root)",
                cred.uid
            ),
        );
        close_with(&chan, &answer);
        return;
    }
    if let Some(suppressed) = CONNECT_LOG.allow() {
        tracing::info!(
            uid = cred.uid,
            pid = cred.pid,
            suppressed,
            "client connected"
        );
    }
    let _ = chan.stream().set_write_timeout(Some(client_timeout));
    loop {
        let request = match chan.recv_within::<Request>(client_timeout) {
            Ok((r, _fds)) => r,
            Err(ProtocolError::Closed) => return,
            Err(ProtocolError::Timeout) => {
                tracing::debug!(pid = cred.pid, "client idle too long; closing");
                close_with(
                    &chan,
                    &Response::error(
                        ErrorKind::BadRequest,
                        format!(
                            "no whole request within {} s; closing",
                            client_timeout.as_secs_f64()
                        ),
                    ),
                );
                return;
            }
            Err(ProtocolError::Json(e)) => {
                tracing::warn!(pid = cred.pid, error = %e, "malformed request");
                let answer =
                    Response::error(ErrorKind::BadRequest, format!("malformed request: {e}"));
                if chan.send(&answer, &[]).is_err() {
                    return;
                }
                continue;
            }
            Err(e) if !e.is_fatal() => {
                tracing::warn!(pid = cred.pid, error = %e, "request refused");
                let answer = Response::error(ErrorKind::BadRequest, e.to_string());
                if chan.send(&answer, &[]).is_err() {
                    return;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(pid = cred.pid, error = %e, "bad peer; closing the connection");
                let kind = match e {
                    ProtocolError::VersionMismatch { .. } => ErrorKind::VersionMismatch,
                    _ => ErrorKind::BadRequest,
                };
                close_with(&chan, &Response::error(kind, e.to_string()));
                return;
            }
        };
        if partition_user && !matches!(request, Request::Attach { .. }) {
            tracing::warn!(
                uid = cred.uid,
                pid = cred.pid,
                "request refused: the partitions' uid may only re-attach"
            );
            let answer = Response::error(
                ErrorKind::PermissionDenied,
                format!(
                    "uid {} runs the partitions: it may only re-attach one",
                    cred.uid
                ),
            );
            close_with(&chan, &answer);
            return;
        }
        match request {
            Request::Attach {
                name,
                pid,
                token,
                paused,
            } => {
                match mgr.attach(&name, pid, &token, paused, Some(cred.pid), &chan) {
                    Ok(generation) => {
                        if chan.send(&Response::Attached, &[]).is_err() {
                            return;
                        }
                        // A control channel now, not a client.
                        slot.release();
                        let _ = chan.stream().set_read_timeout(None);
                        let _ = chan.stream().set_write_timeout(None);
                        mgr.read_channel(&name, generation, chan, None);
                    }
                    Err(e) => {
                        let _ = chan.send(&error_response(&e), &[]);
                    }
                }
                return;
            }
            Request::Console { name } => {
                console_session(mgr, &chan, &name);
                return;
            }
            other => {
                let (answer, file) = handle(mgr, other);
                let fds: Vec<_> = file.iter().map(|f| f.as_fd()).collect();
                if chan.send(&answer, &fds).is_err() {
                    return;
                }
            }
        }
    }
}

/// Counts a failed cookie guess of the operator (`parctl`) in `op`.
fn guessed<T>(mgr: &Manager, op: &str, r: Result<T, ManagerError>) -> Result<T, ManagerError> {
    if let Err(e) = &r {
        mgr.failed_guess(OPERATOR, op, e);
    }
    r
}

/// One request, one answer (with the log file's descriptor for `Logs`).
pub fn handle(mgr: &Arc<Manager>, request: Request) -> (Response, Option<File>) {
    let status = |r: Result<_, ManagerError>| match r {
        Ok(status) => Response::Status { status },
        Err(e) => error_response(&e),
    };
    let grant = |r: Result<_, ManagerError>| match r {
        Ok(grant) => Response::Grant { grant },
        Err(e) => error_response(&e),
    };
    let pool = |r: Result<_, ManagerError>| match r {
        Ok(pool) => Response::Pool { pool },
        Err(e) => error_response(&e),
    };
    let answer = match request {
        Request::Define {
            definition,
            restart,
            segments,
            dry_run,
        } => status(mgr.define(definition, restart, &segments, dry_run)),
        Request::Show { name } => match mgr.show(&name) {
            Ok(stored) => Response::Definition {
                name,
                definition: stored.definition,
                restart: stored.restart,
                segments: stored.segments,
            },
            Err(e) => error_response(&e),
        },
        Request::Update {
            name,
            definition,
            restart,
        } => status(mgr.update(&name, definition, restart)),
        Request::Events { since, wait_ms } => {
            Response::Events(mgr.events(since, Duration::from_millis(wait_ms)))
        }
        Request::Undefine { name } => match mgr.undefine(&name) {
            Ok(()) => Response::Undefined { name },
            Err(e) => error_response(&e),
        },
        Request::Start { name } => status(mgr.start(&name)),
        Request::Stop { name } => status(mgr.stop(&name)),
        Request::Restart { name } => status(mgr.restart(&name)),
        Request::Kill { name } => status(mgr.kill(&name)),
        Request::Pause { name } => status(mgr.pause(&name, true)),
        Request::Resume { name } => status(mgr.pause(&name, false)),
        Request::SetCpu {
            name,
            entitled,
            mode,
            weight,
        } => status(mgr.set_cpu(&name, entitled, mode, weight)),
        Request::PolicySet { policy } => match mgr.set_policy(policy) {
            Ok((policy, moves)) => Response::Policy { policy, moves },
            Err(e) => error_response(&e),
        },
        Request::PolicyShow => {
            let (policy, moves) = mgr.policy();
            Response::Policy { policy, moves }
        }
        Request::List => Response::List {
            partitions: mgr.list(),
        },
        Request::Status { name } => status(mgr.status(&name)),
        Request::Logs { name } => match open_log(mgr, &name) {
            Ok((file, path)) => {
                return (
                    Response::LogFile {
                        name,
                        path: path.display().to_string(),
                    },
                    Some(file),
                )
            }
            Err(e) => error_response(&e),
        },
        Request::SegmentCreate {
            owner,
            id,
            size,
            gpa,
        } => match mgr.segment_create(&owner, &id, size, gpa) {
            Ok(segment) => Response::Segment { segment },
            Err(e) => error_response(&e),
        },
        Request::Grant {
            segment,
            grantee,
            rights,
        } => {
            let owner = segment.split('/').next().unwrap_or_default().to_string();
            grant(mgr.grant(&owner, &segment, &grantee, rights))
        }
        Request::Accept {
            cookie,
            partition,
            gpa,
        } => grant(guessed(mgr, "accept", mgr.accept(&partition, &cookie, gpa))),
        Request::Regrant {
            cookie,
            partition,
            grantee,
            rights,
        } => grant(guessed(
            mgr,
            "regrant",
            mgr.regrant(&partition, &cookie, &grantee, rights),
        )),
        Request::Revoke { cookie, partition } => {
            match guessed(mgr, "revoke", mgr.revoke(partition.as_deref(), &cookie)) {
                Ok(revoked) => Response::Revoked { revoked },
                Err(e) => error_response(&e),
            }
        }
        Request::Copy {
            partition,
            src,
            src_offset,
            dst,
            dst_offset,
            len,
        } => match guessed(
            mgr,
            "copy",
            mgr.copy(&partition, &src, src_offset, &dst, dst_offset, len),
        ) {
            Ok(bytes) => Response::Copied { bytes },
            Err(e) => error_response(&e),
        },
        Request::Grants => {
            let (segments, grants, doorbells) = mgr.grant_table();
            Response::Grants {
                segments,
                grants,
                doorbells,
            }
        }
        Request::Share { config } => match mgr.share(&config) {
            Ok((segments, grants, doorbells)) => Response::Shared {
                segments,
                grants,
                doorbells,
            },
            Err(e) => error_response(&e),
        },
        Request::PoolCreate { size_mib, paging } => pool(mgr.pool_create(size_mib, paging)),
        Request::PoolResize { size_mib } => pool(mgr.pool_resize(size_mib)),
        Request::PoolAddPaging { device } => pool(mgr.pool_add_paging(device)),
        Request::PoolRemovePaging { device } => pool(mgr.pool_remove_paging(&device)),
        Request::PoolShow => pool(mgr.pool_show()),
        Request::Dump { name } => match mgr.dump(&name) {
            Ok(dump) => Response::Dump { dump },
            Err(e) => error_response(&e),
        },
        Request::Dumps { name } => match mgr.dumps(&name) {
            Ok((disk, dumps)) => Response::Dumps { disk, dumps },
            Err(e) => error_response(&e),
        },
        Request::DumpGet { name, id } => match mgr.dump_file(&name, id) {
            Ok((dump, file)) => return (Response::DumpFile { dump }, Some(file)),
            Err(e) => error_response(&e),
        },
        Request::ConsoleInput { .. } => Response::error(
            ErrorKind::BadRequest,
            "console input outside a console session",
        ),
        Request::Console { .. } | Request::Attach { .. } => Response::error(
            ErrorKind::BadRequest,
            "this request needs a connection of its own",
        ),
    };
    (answer, None)
}

/// The console log; for a VIOS (which has no console), its own output.
fn open_log(mgr: &Manager, name: &str) -> Result<(File, PathBuf), ManagerError> {
    let path = PathBuf::from(mgr.status(name)?.console_log);
    match File::open(&path) {
        Ok(f) => Ok((f, path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ManagerError::InvalidState {
            name: name.into(),
            state: mgr.status(name)?.state,
            message: "it has no console log yet (never started)",
        }),
        Err(source) => Err(ManagerError::Io {
            what: format!("cannot open {}", path.display()),
            source,
        }),
    }
}

/// `Console`: hands out the log's descriptor, then forwards input frames to
/// the VMM until the client leaves or the partition's VMM ends.
fn console_session(mgr: &Arc<Manager>, chan: &Channel, name: &str) {
    let Some(generation) = mgr.live_generation(name) else {
        let e = match mgr.status(name) {
            Ok(s) => ManagerError::InvalidState {
                name: name.into(),
                state: s.state,
                message: "it is not running (use `parctl logs` for its log)",
            },
            Err(e) => e,
        };
        let _ = chan.send(&error_response(&e), &[]);
        return;
    };
    let (file, path) = match open_log(mgr, name) {
        Ok(x) => x,
        Err(e) => {
            let _ = chan.send(&error_response(&e), &[]);
            return;
        }
    };
    let answer = Response::LogFile {
        name: name.into(),
        path: path.display().to_string(),
    };
    if chan.send(&answer, &[file.as_fd()]).is_err() {
        return;
    }
    let _ = chan
        .stream()
        .set_read_timeout(Some(Duration::from_secs(10)));
    loop {
        if mgr.live_generation(name) != Some(generation) {
            let reason = mgr
                .status(name)
                .ok()
                .and_then(|s| s.last_exit)
                .unwrap_or_else(|| "partition stopped".into());
            let _ = chan.send(&Response::ConsoleEnded { reason }, &[]);
            return;
        }
        let mut pfd = libc::pollfd {
            fd: chan.stream().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n <= 0 {
            continue;
        }
        match chan.recv::<Request>() {
            Ok((Request::ConsoleInput { data }, _)) => {
                if let Err(e) = mgr.console_input(name, data) {
                    tracing::debug!(partition = %name, error = %e, "console input not delivered");
                }
            }
            Ok(_) | Err(ProtocolError::Json(_) | ProtocolError::WrongFds { .. }) => {
                let _ = chan.send(
                    &Response::error(
                        ErrorKind::BadRequest,
                        "only console input is accepted in a console session",
                    ),
                    &[],
                );
                return;
            }
            Err(_) => return,
        }
    }
}
