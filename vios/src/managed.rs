//! The VIOS as a partition run by the partition manager.
//!
//! The manager starts `vios --config FILE --control-fd 3 ...` for a
//! partition of kind `vios` (the same flags it gives a `vmm`), with one end
//! of a socketpair on fd 3: the connection is the partition's identity. The
//! VIOS opens every export of its definition, then on the control channel
//!
//! 1. sends `Hello`, `Exports` (each export's id, size in bytes and mode:
//!    the manager checks paging devices against them) and `Ready` (the
//!    manager shows it `running`);
//! 2. for each `ViosConnect {disk, client, read_only}` (with the VIOS end of
//!    a fresh socketpair beside it; the client's VMM got the other end)
//!    serves that export on that socket in threads of its own, read-only
//!    if asked (`Failed` when the disk is not one of its exports, or when
//!    the channel refused the request because no socket came with it); for
//!    each `ViosDisconnect {disk,
//!    client}` (the grant was revoked) shuts down every connection serving
//!    that export to that client;
//! 3. on `Stop` sends `Exit` and exits 0: clients being served see their
//!    vhost-user connection close. When the channel closes (the manager
//!    died) the VIOS keeps serving its connected clients and, like a VMM,
//!    connects to `--manager-socket` every 100 ms with `Attach` and its
//!    token until a restarted manager takes it back (then `Exports` again)
//!    ([`parvm_protocol::managed`], shared with the VMM). The token comes on
//!    the channel (`Token`, normally the first message; kept whenever it
//!    arrives), never in the environment.

use std::collections::BTreeMap;
use std::net::Shutdown;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

use parvm_protocol::managed::{self, ManagedError as ControlFdError, TokenSlot};
use parvm_protocol::{Channel, ExitStatus, ExportInfo, ManagerToVios, ProtocolError, ToManager};
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
    #[error(transparent)]
    ControlFd(#[from] ControlFdError),
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

/// `Exports`: what the manager checks a paging device's size against.
fn send_exports(
    channel: &Channel,
    exports: &BTreeMap<String, Arc<Export>>,
) -> Result<(), parvm_protocol::ProtocolError> {
    let exports = exports
        .iter()
        .map(|(id, e)| ExportInfo {
            id: id.clone(),
            size: e.capacity() * virtio_devices::block::SECTOR_SIZE,
            read_only: e.spec().read_only,
        })
        .collect();
    channel.send(&ToManager::Exports { exports }, &[])
}

/// The manager went away: keep serving the connected clients and dial the
/// manager's socket until one takes the partition back. Without a socket or
/// token, serve until terminated.
fn reattach(name: &str, socket: Option<&Path>, token: &TokenSlot) -> Channel {
    match managed::reattach(name, socket, token, &|| false, &|| false) {
        Some(chan) => chan,
        None => {
            warn!(vios = %name, "serving the connected clients until terminated");
            loop {
                std::thread::park();
            }
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
    let stream = managed::control_socket(control_fd)?;
    // The token proves the partition's identity when re-attaching; the
    // manager sends it on the channel.
    let token = TokenSlot::new();
    let exports = open_exports(&def)?;
    let options = ServeOptions {
        queues: def.queues(),
        read_only: false,
    };
    let connections = Connections::default();
    // Set-up is over: this thread and every one it starts are filtered.
    crate::seccomp::apply(crate::seccomp::Role::Server);
    let mut channel = Channel::new(stream);
    managed::hello(&channel, &def.name)?;
    send_exports(&channel, &exports)?;
    channel.send(&ToManager::Ready, &[])?;
    info!(vios = %def.name, exports = exports.len(), "vios: running");
    loop {
        let (msg, fds) = match channel.recv::<ManagerToVios>() {
            Ok(m) => m,
            Err(ProtocolError::Json(e)) => {
                warn!(vios = %def.name, error = %e, "vios: malformed control message ignored");
                let message = format!("malformed control message: {e}");
                let _ = channel.send(&ToManager::Failed { message }, &[]);
                continue;
            }
            Err(e) if !e.is_fatal() => {
                warn!(vios = %def.name, error = %e, "vios: control message refused");
                let message = e.to_string();
                let _ = channel.send(&ToManager::Failed { message }, &[]);
                continue;
            }
            Err(e) => {
                // Partitions outlive the manager: keep serving the clients
                // already connected, and come back to a restarted manager.
                warn!(vios = %def.name, error = %e, "vios: control channel closed; re-attaching");
                channel = reattach(&def.name, manager_socket, &token);
                if let Err(e) = send_exports(&channel, &exports) {
                    warn!(vios = %def.name, error = %e, "vios: cannot report the exports");
                }
                continue;
            }
        };
        match msg {
            ManagerToVios::Token { token: t } => token.set(&def.name, t),
            ManagerToVios::Stop => {
                info!(vios = %def.name, "vios: stop requested by the manager");
                let _ = channel.send(
                    &ToManager::Exit {
                        status: ExitStatus::Stopped,
                        code: 0,
                    },
                    &[],
                );
                return Ok(0);
            }
            ManagerToVios::ViosConnect {
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
                    let _ = channel.send(&ToManager::Failed { message }, &[]);
                }
            }
            ManagerToVios::ViosDisconnect { disk, client } => {
                let n = connections.disconnect(&client, &disk);
                info!(vios = %def.name, %disk, %client, connections = n, "vios: grant revoked; connections closed");
            }
            ManagerToVios::Stats => {
                let disks = exports
                    .iter()
                    .map(|(id, e)| e.stats().snapshot(id))
                    .collect();
                if let Err(e) = channel.send(&ToManager::DiskStats { disks }, &[]) {
                    warn!(vios = %def.name, error = %e, "vios: cannot report the disk figures");
                }
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
    // The channel has checked that exactly the one socket came with it.
    let Some(fd) = fds.into_iter().next() else {
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
