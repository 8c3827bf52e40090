//! The VIOS as a partition run by the partition manager.
//!
//! The manager starts `vios --config FILE --control-fd 3 ...` for a
//! partition of kind `vios` (the same flags it gives a `vmm`), with one end
//! of a socketpair on fd 3: the connection is the partition's identity. The
//! VIOS opens every export of its definition, then on the control channel
//!
//! 1. sends `Hello` and `Ready` (the manager shows it `running`);
//! 2. for each `ViosConnect {disk, client, read_only}` (with the VIOS end of
//!    a fresh socketpair beside it; the client's VMM got the other end)
//!    serves that export on that socket in threads of its own, read-only
//!    if asked (`Failed` when the disk is not one of its exports or no
//!    socket came with the request); for each `ViosDisconnect {disk,
//!    client}` (the grant was revoked) shuts down every connection serving
//!    that export to that client;
//! 3. on `Stop` sends `Exit` and exits 0: clients being served see their
//!    vhost-user connection close. When the channel closes (the manager
//!    died) the VIOS keeps serving its connected clients and, like a VMM,
//!    connects to `--manager-socket` every 100 ms with `Attach` and its
//!    token until a restarted manager takes it back.

use std::collections::BTreeMap;
use std::net::Shutdown;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parvm_protocol::{Channel, ExitStatus, ManagerMessage, Request, Response, VmmMessage, VERSION};
use tracing::{info, warn};

pub use parvm_config::{ViosDefinition, ViosDisk, VIOS_KIND as KIND};

use crate::export::{Export, ExportError, ExportSpec};
use crate::server::{serve_stream, ServeOptions};

/// Errors of managed mode.
#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    /// The definition is not valid.
    #[error(transparent)]
    Definition(#[from] parvm_config::ConfigError),
    /// An export could not be opened.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The control fd is not a usable socket.
    #[error("--control-fd {0}: {1}")]
    ControlFd(RawFd, String),
    /// The control channel failed.
    #[error("control channel: {0}")]
    Protocol(#[from] parvm_protocol::ProtocolError),
}

/// Open every export of `def`.
pub fn open_exports(def: &ViosDefinition) -> Result<BTreeMap<String, Arc<Export>>, ManagedError> {
    let mut exports = BTreeMap::new();
    for d in &def.disks {
        let export = Export::open(ExportSpec {
            id: d.id.clone(),
            path: d.path.clone(),
            read_only: d.read_only,
        })?;
        info!(vios = %def.name, disk = %d.id, path = %d.path.display(), read_only = d.read_only, sectors = export.capacity(), "vios: exporting");
        exports.insert(d.id.clone(), Arc::new(export));
    }
    Ok(exports)
}

/// Take the inherited control socket.
fn control_socket(fd: RawFd) -> Result<UnixStream, ManagedError> {
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat only writes into the `stat` it is given.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(ManagedError::ControlFd(
            fd,
            std::io::Error::last_os_error().to_string(),
        ));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(ManagedError::ControlFd(fd, "not a socket".into()));
    }
    // SAFETY: the fd is the inherited control socket, owned by nobody else
    // in this process; ownership moves to the UnixStream.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: F_SETFD on a valid fd we own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(stream)
}

/// How often a VIOS whose manager went away tries to reach it again.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(100);

/// Connect to a (restarted) manager and ask for the partition back, proving
/// identity with the token (docs/protocol.md, "Re-attaching").
fn try_attach(name: &str, socket: &Path, token: &str) -> Result<Channel, String> {
    let stream = UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let chan = Channel::new(stream);
    chan.send(
        &Request::Attach {
            name: name.to_string(),
            pid: std::process::id(),
            token: token.to_string(),
            paused: false,
        },
        &[],
    )
    .map_err(|e| e.to_string())?;
    match chan.recv::<Response>() {
        Ok((Response::Attached, _)) => {}
        Ok((Response::Error { message, .. }, _)) => return Err(message),
        Ok((other, _)) => return Err(format!("unexpected answer {other:?}")),
        Err(e) => return Err(e.to_string()),
    }
    chan.stream()
        .set_read_timeout(None)
        .map_err(|e| e.to_string())?;
    Ok(chan)
}

/// The manager went away: keep serving the connected clients and dial the
/// manager's socket every [`RECONNECT_INTERVAL`] until one takes the
/// partition back. Without a socket or token, serve until terminated.
fn reattach(name: &str, socket: Option<&Path>, token: Option<&str>) -> Channel {
    let (Some(socket), Some(token)) = (socket, token) else {
        warn!(vios = %name, "no manager socket or token: serving the connected clients until terminated");
        loop {
            std::thread::park();
        }
    };
    let mut logged = false;
    loop {
        std::thread::sleep(RECONNECT_INTERVAL);
        match try_attach(name, socket, token) {
            Ok(chan) => {
                info!(vios = %name, "re-attached to the partition manager");
                return chan;
            }
            Err(e) if !logged => {
                info!(vios = %name, error = %e, "manager not reachable yet, retrying");
                logged = true;
            }
            Err(_) => {}
        }
    }
}

/// Run as a managed partition until the manager stops it. Returns the
/// process exit code.
pub fn run(
    def: ViosDefinition,
    control_fd: RawFd,
    manager_socket: Option<&Path>,
) -> Result<i32, ManagedError> {
    let stream = control_socket(control_fd)?;
    // The token proves the partition's identity when re-attaching; keep it
    // out of the environment.
    let token = std::env::var(parvm_protocol::TOKEN_ENV).ok();
    std::env::remove_var(parvm_protocol::TOKEN_ENV);
    let exports = open_exports(&def)?;
    let options = ServeOptions {
        queues: def.queues(),
        read_only: false,
    };
    let connections = Connections::default();
    let mut channel = Channel::new(stream);
    channel.send(
        &VmmMessage::Hello {
            version: VERSION,
            name: def.name.clone(),
            pid: std::process::id(),
        },
        &[],
    )?;
    channel.send(&VmmMessage::Ready, &[])?;
    info!(vios = %def.name, exports = exports.len(), "vios: running");
    loop {
        let (msg, fds) = match channel.recv::<ManagerMessage>() {
            Ok(m) => m,
            Err(e) => {
                // Partitions outlive the manager: keep serving the clients
                // already connected, and come back to a restarted manager.
                warn!(vios = %def.name, error = %e, "vios: control channel closed; re-attaching");
                channel = reattach(&def.name, manager_socket, token.as_deref());
                continue;
            }
        };
        match msg {
            ManagerMessage::Stop => {
                info!(vios = %def.name, "vios: stop requested by the manager");
                let _ = channel.send(
                    &VmmMessage::Exit {
                        status: ExitStatus::Stopped,
                        code: 0,
                    },
                    &[],
                );
                return Ok(0);
            }
            ManagerMessage::ViosConnect {
                disk,
                client,
                read_only,
            } => {
                if let Err(message) = connect(
                    &def.name,
                    &exports,
                    &connections,
                    &options,
                    &disk,
                    &client,
                    read_only,
                    fds,
                ) {
                    warn!(vios = %def.name, %disk, %client, %message, "vios: connection refused");
                    let _ = channel.send(&VmmMessage::Failed { message }, &[]);
                }
            }
            ManagerMessage::ViosDisconnect { disk, client } => {
                let n = connections.disconnect(&client, &disk);
                info!(vios = %def.name, %disk, %client, connections = n, "vios: grant revoked; connections closed");
            }
            ManagerMessage::Pause | ManagerMessage::Resume => {
                let _ = channel.send(
                    &VmmMessage::Failed {
                        message: "a VIOS partition cannot be paused".into(),
                    },
                    &[],
                );
            }
            other => {
                let _ = channel.send(
                    &VmmMessage::Failed {
                        message: format!("not supported by a VIOS partition: {other:?}"),
                    },
                    &[],
                );
            }
        }
    }
}

/// One brokered connection being served: a clone of its socket, to shut
/// it down when the client's grant is revoked.
struct Connection {
    id: u64,
    client: String,
    disk: String,
    socket: UnixStream,
}

/// The brokered connections being served.
#[derive(Default, Clone)]
struct Connections {
    inner: Arc<Mutex<(u64, Vec<Connection>)>>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Vec<Connection>)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, client: &str, disk: &str, socket: UnixStream) -> u64 {
        let mut g = self.lock();
        g.0 += 1;
        let id = g.0;
        g.1.push(Connection {
            id,
            client: client.into(),
            disk: disk.into(),
            socket,
        });
        id
    }

    fn remove(&self, id: u64) {
        self.lock().1.retain(|c| c.id != id);
    }

    /// Shuts down every connection serving `disk` to `client`; how many.
    fn disconnect(&self, client: &str, disk: &str) -> usize {
        let mut g = self.lock();
        let mut n = 0;
        g.1.retain(|c| {
            if c.client == client && c.disk == disk {
                // The relay and the client's VMM both see the socket end.
                let _ = c.socket.shutdown(Shutdown::Both);
                n += 1;
                false
            } else {
                true
            }
        });
        n
    }
}

/// Serve `disk` to `client` on the socket in `fds`.
#[allow(clippy::too_many_arguments)]
fn connect(
    vios: &str,
    exports: &BTreeMap<String, Arc<Export>>,
    connections: &Connections,
    options: &ServeOptions,
    disk: &str,
    client: &str,
    read_only: bool,
    fds: Vec<OwnedFd>,
) -> Result<(), String> {
    let Some(export) = exports.get(disk).cloned() else {
        return Err(format!("VIOS `{vios}` exports no disk `{disk}`"));
    };
    let mut fds = fds.into_iter();
    let (Some(fd), None) = (fds.next(), fds.next()) else {
        return Err(format!(
            "vios_connect for `{disk}` needs exactly one socket"
        ));
    };
    let stream = UnixStream::from(fd);
    let clone = stream
        .try_clone()
        .map_err(|e| format!("cannot keep the connection of `{client}`: {e}"))?;
    let id = connections.add(client, disk, clone);
    let label = format!("{client}/{disk}");
    let mut options = options.clone();
    options.read_only = read_only;
    let list = connections.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("vios-{disk}"))
        .spawn(move || {
            info!(client = %label, read_only, "vios: serving a brokered client");
            if let Err(e) = serve_stream(stream, &export, &label, &options) {
                warn!(client = %label, error = %e, "vios: brokered client failed");
            }
            list.remove(id);
        });
    match spawned {
        Ok(_) => Ok(()),
        Err(e) => {
            connections.remove(id);
            Err(format!("cannot start a connection thread: {e}"))
        }
    }
}
