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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parvm_protocol::{Channel, ExitStatus, ManagerMessage, Request, Response, VmmMessage, VERSION};
use serde::Deserialize;
use tracing::{info, warn};

use crate::export::{valid_id, Export, ExportError, ExportSpec};
use crate::server::{serve_stream, ServeOptions};
use crate::MAX_QUEUES;

/// `kind` of a VIOS partition definition.
pub const KIND: &str = "vios";

/// Errors of managed mode.
#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    /// The definition file could not be read.
    #[error("cannot read VIOS definition {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The definition is not valid.
    #[error("VIOS definition {path}: {message}")]
    Definition {
        /// File (or `(received)`).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
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

/// One export of a VIOS definition.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ViosDisk {
    /// What clients name: `vios:<vios>/<id>`; also the GET_ID serial.
    pub id: String,
    /// The raw image.
    pub path: PathBuf,
    /// Export read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// A partition definition of kind `vios`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ViosDefinition {
    /// Always `vios`.
    pub kind: String,
    /// The partition name.
    pub name: String,
    /// The exported disks.
    #[serde(default)]
    pub disks: Vec<ViosDisk>,
    /// Queues offered to each client (default 1).
    #[serde(default)]
    pub queues: Option<usize>,
    /// Ignored (the manager's console log); accepted for symmetry with vmm.
    #[serde(default)]
    pub console: Option<String>,
}

impl ViosDefinition {
    /// Parse and check a definition; relative image paths are taken
    /// relative to `dir`.
    pub fn from_json(text: &str, origin: &Path, dir: Option<&Path>) -> Result<Self, ManagedError> {
        let bad = |message: String| ManagedError::Definition {
            path: origin.to_path_buf(),
            message,
        };
        let mut def: ViosDefinition = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if def.kind != KIND {
            return Err(bad(format!("kind is `{}`, expected `{KIND}`", def.kind)));
        }
        let name_ok = !def.name.is_empty()
            && def.name.len() <= 64
            && def
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name_ok {
            return Err(bad(format!(
                "invalid partition name `{}`: use 1-64 characters from [A-Za-z0-9._-]",
                def.name
            )));
        }
        if let Some(q) = def.queues {
            if q == 0 || q > MAX_QUEUES {
                return Err(bad(format!("queues {q} is outside 1..={MAX_QUEUES}")));
            }
        }
        for (i, d) in def.disks.iter().enumerate() {
            if !valid_id(&d.id) {
                return Err(bad(format!(
                    "invalid disk id `{}`: use 1-20 characters from [A-Za-z0-9._-]",
                    d.id
                )));
            }
            if def.disks[..i].iter().any(|o| o.id == d.id) {
                return Err(bad(format!("duplicate disk id `{}`", d.id)));
            }
        }
        if let Some(dir) = dir {
            for d in &mut def.disks {
                if d.path.is_relative() {
                    d.path = dir.join(&d.path);
                }
            }
        }
        Ok(def)
    }

    /// Read a definition file.
    pub fn from_file(path: &Path) -> Result<Self, ManagedError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManagedError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, path, path.parent())
    }

    /// The export named `id`, if any.
    pub fn disk(&self, id: &str) -> Option<&ViosDisk> {
        self.disks.iter().find(|d| d.id == id)
    }
}

/// Whether a definition (as JSON) is of kind `vios`.
pub fn is_vios_definition(value: &serde_json::Value) -> bool {
    value.get("kind").and_then(|k| k.as_str()) == Some(KIND)
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
        queues: def.queues.unwrap_or(1),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn definitions_are_checked() {
        let o = Path::new("v.json");
        let d = ViosDefinition::from_json(
            r#"{"kind":"vios","name":"vios1","disks":[{"id":"data","path":"d.raw"}]}"#,
            o,
            Some(Path::new("/srv")),
        )
        .unwrap();
        assert_eq!(d.disks[0].path, PathBuf::from("/srv/d.raw"));
        assert!(!d.disk("data").unwrap().read_only);
        for (text, want) in [
            (r#"{"kind":"vmm","name":"a"}"#, "expected `vios`"),
            (r#"{"kind":"vios","name":"a b"}"#, "invalid partition name"),
            (
                r#"{"kind":"vios","name":"a","disks":[{"id":"","path":"x"}]}"#,
                "invalid disk id",
            ),
            (
                r#"{"kind":"vios","name":"a","disks":[{"id":"d","path":"x"},{"id":"d","path":"y"}]}"#,
                "duplicate disk id",
            ),
            (
                r#"{"kind":"vios","name":"a","kernel":"k"}"#,
                "unknown field `kernel`",
            ),
            (r#"{"kind":"vios","name":"a","queues":0}"#, "queues 0"),
        ] {
            let e = ViosDefinition::from_json(text, o, None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        assert!(is_vios_definition(&serde_json::json!({"kind": "vios"})));
        assert!(!is_vios_definition(&serde_json::json!({"name": "x"})));
    }
}
