//! Serving connections: one vhost-user-backend daemon (protocol thread plus
//! one worker thread per queue) per client connection, each with its own
//! [`VhostUserBlk`] over the shared [`Export`].
//!
//! A connection that misbehaves (malformed or out-of-order messages, a bad
//! memory table) gets an error reply or is dropped by vhost-user-backend;
//! only that connection ends, the listener keeps accepting.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use tracing::{info, warn};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::VhostUserBlk;
use crate::export::{Export, ExportError};

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listening socket could not be created.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// Socket path.
        path: String,
        /// Underlying error.
        #[source]
        source: vhost::vhost_user::Error,
    },
    /// The socket path is in use: another server listens on it, or it is
    /// not a socket (never unlinked).
    #[error("cannot listen on {path}: in use ({why})")]
    PathInUse {
        /// Socket path.
        path: String,
        /// What holds it.
        why: &'static str,
    },
    /// Accepting a connection failed.
    #[error("accepting a client failed: {0}")]
    Accept(String),
    /// The export could not be prepared for a client.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// A per-connection thread could not be started.
    #[error("cannot start a connection thread: {0}")]
    Thread(#[source] std::io::Error),
    /// Setting up a brokered connection failed.
    #[error("cannot set up the client connection: {0}")]
    Io(#[from] std::io::Error),
}

/// Settings shared by every connection to one export.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Queues offered to each client (VIRTIO_BLK_F_MQ when more than 1).
    pub queues: usize,
    /// Serve read-only even if the export is writable (a brokered client
    /// whose grant of the disk is `ro`).
    pub read_only: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            queues: 1,
            read_only: false,
        }
    }
}

fn new_daemon(
    export: &Export,
    client: &str,
    options: &ServeOptions,
) -> Result<(VhostUserDaemon<Arc<VhostUserBlk>>, Arc<VhostUserBlk>), ServerError> {
    let backend = Arc::new(
        VhostUserBlk::new(
            &export.spec().id,
            client,
            export.core_for(options.read_only)?,
            options.queues,
        )
        .with_stats(export.stats().clone()),
    );
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
    let daemon = VhostUserDaemon::new(format!("vios-{}", export.spec().id), backend.clone(), mem)
        .map_err(|e| {
        backend.close_exit_events();
        ServerError::Accept(e.to_string())
    })?;
    Ok((daemon, backend))
}

/// Wait for a connection's protocol thread to end, then stop its workers.
fn finish(mut daemon: VhostUserDaemon<Arc<VhostUserBlk>>, backend: &VhostUserBlk, client: &str) {
    match daemon.wait() {
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => info!(
            client,
            completed = backend.completed(),
            "vios: client disconnected"
        ),
        Err(e) => {
            warn!(client, completed = backend.completed(), error = %e, "vios: client connection ended with an error")
        }
    }
    stop_daemon(daemon, backend);
}

/// Stop a daemon's queue workers, wait for them (dropping the daemon joins
/// them), then close their exit eventfds, which vhost-user-backend leaves
/// open ([`VhostUserBlk::close_exit_events`]).
fn stop_daemon(daemon: VhostUserDaemon<Arc<VhostUserBlk>>, backend: &VhostUserBlk) {
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    drop(daemon);
    backend.close_exit_events();
}

/// Accepts vhost-user-blk clients on a Unix socket and serves each in its
/// own threads until [`Server::shutdown`] or the process ends.
pub struct Server {
    stop: Arc<AtomicBool>,
    path: std::path::PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Bind `path` and start accepting. A stale socket file (nobody
    /// listening) is replaced; a socket a live server listens on, or a path
    /// that is not a socket, is refused.
    pub fn listen(
        path: &Path,
        export: Arc<Export>,
        options: ServeOptions,
    ) -> Result<Self, ServerError> {
        check_socket_path(path)?;
        let mut listener = Listener::new(path, true).map_err(|source| ServerError::Listen {
            path: path.display().to_string(),
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let client = path.display().to_string();
        info!(socket = %client, disk = %export.spec().id, read_only = export.spec().read_only, "vios: listening");
        let thread = thread::Builder::new()
            .name("vios-accept".into())
            .spawn(move || accept_loop(&mut listener, &export, &options, &client, &stop2))
            .map_err(ServerError::Thread)?;
        Ok(Server {
            stop,
            path: path.to_owned(),
            thread: Some(thread),
        })
    }

    /// Block until the accept loop ends (it only ends on shutdown or a fatal
    /// listener error).
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Stop accepting new clients (connected ones keep being served).
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept.
        let _ = UnixStream::connect(&self.path);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whether `path` may be (re)bound: absent, or a socket nobody accepts on.
fn check_socket_path(path: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::PathInUse {
            path: path.display().to_string(),
            why: "it exists and is not a socket",
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ServerError::PathInUse {
            path: path.display().to_string(),
            why: "a live server listens on it",
        }),
        Err(_) => Ok(()),
    }
}

fn accept_loop(
    listener: &mut Listener,
    export: &Arc<Export>,
    options: &ServeOptions,
    socket: &str,
    stop: &AtomicBool,
) {
    let mut n: u64 = 0;
    loop {
        let (mut daemon, backend) = match new_daemon(export, socket, options) {
            Ok(d) => d,
            Err(e) => {
                warn!(socket, error = %e, "vios: cannot prepare a connection; retrying");
                thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let started = daemon.start(listener);
        if stop.load(Ordering::Acquire) {
            daemon.request_shutdown();
            stop_daemon(daemon, &backend);
            return;
        }
        if let Err(e) = started {
            warn!(socket, error = %e, "vios: accept failed");
            stop_daemon(daemon, &backend);
            thread::sleep(std::time::Duration::from_millis(10));
            continue;
        }
        n += 1;
        let client = format!("{socket}#{n}");
        info!(client = %client, "vios: client connected");
        let spawned = thread::Builder::new()
            .name(format!("vios-conn-{n}"))
            .spawn(move || finish(daemon, &backend, &client));
        if let Err(e) = spawned {
            warn!(socket, error = %e, "vios: cannot start a connection thread");
        }
    }
}

/// Serve one already connected stream (the VIOS end of a socketpair the
/// partition manager brokered) until the client disconnects.
pub fn serve_stream(
    stream: UnixStream,
    export: &Export,
    client: &str,
    options: &ServeOptions,
) -> Result<(), ServerError> {
    crate::relay::serve_via_relay(stream, |listener| {
        let (mut daemon, backend) = new_daemon(export, client, options)?;
        let started = daemon.start(listener);
        if let Err(e) = started {
            stop_daemon(daemon, &backend);
            return Err(ServerError::Accept(e.to_string()));
        }
        info!(client, disk = %export.spec().id, "vios: client connected");
        finish(daemon, &backend, client);
        Ok(())
    })
}
