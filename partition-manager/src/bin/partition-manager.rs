//! `partition-manager`: the daemon. See docs/manager.md.

use anyhow::Context;
use clap::Parser;
use partition_manager::api::{self, Api};
use partition_manager::config::DEFAULT_KVM_DEVICE;
use partition_manager::daemon;
use partition_manager::run_as::{Access, RunAs};
use partition_manager::{Manager, ManagerConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// parvm's partition manager: keeps the registry of partitions (SQLite under
/// --state-dir) and runs one supervised `vmm` process per started partition.
/// `parctl` talks to it on --socket (mode 0600; only this uid and root are
/// served). Partitions keep running when the manager exits; a restarted
/// manager takes them back.
///
/// An HTTP API (REST, events, /metrics, /openapi.json; docs/api.md) is
/// served on --api-socket, and with --api-listen on a loopback port.
///
/// Logs go to stderr; set PARVM_LOG (e.g. `debug`) for more, and
/// --log-format json (or PARVM_LOG_FORMAT=json) for JSON lines. Under
/// systemd (Type=notify) it reports READY=1 once both sockets listen;
/// SIGTERM stops it in order (partitions keep running).
#[derive(Parser, Debug)]
#[command(name = "partition-manager", version)]
struct Args {
    /// Listening socket [default: $XDG_RUNTIME_DIR/parvm/pm.sock, else
    /// /run/parvm/pm.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Where the registry (partitions.db), console logs (logs/NAME.log) and
    /// VMM logs (logs/NAME.vmm.log) live [default: /var/lib/parvm, or
    /// $XDG_STATE_HOME/parvm for non-root users].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The vmm binary [default: `vmm` next to this program].
    #[arg(long, value_name = "PATH")]
    vmm: Option<PathBuf>,
    /// Seconds a start may take until the VMM reports ready.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    ready_timeout: u64,
    /// Seconds a stop may take before the VMM is killed.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    stop_timeout: u64,
    /// Client connections served at once (VMM control channels do not
    /// count); more are answered `busy`.
    #[arg(long, value_name = "N", default_value_t = daemon::DEFAULT_MAX_CLIENTS,
          value_parser = clap::value_parser!(usize))]
    max_clients: usize,
    /// Seconds a client may take to send its next whole request.
    #[arg(long, value_name = "SECS", default_value_t = daemon::DEFAULT_CLIENT_TIMEOUT.as_secs())]
    client_timeout: u64,
    /// Start every VMM and VIOS as this user: USER or USER:GROUP, names or
    /// numbers (e.g. nobody:nogroup). Needs root. The user must be able to
    /// open the KVM device, the kernels, initrds and disk images, and to
    /// connect to --socket (checked at start; docs/security.md).
    #[arg(long, value_name = "USER[:GROUP]")]
    run_as: Option<String>,
    /// The KVM device node every VMM opens [default: /dev/kvm], e.g. a
    /// node only the --run-as user may open.
    #[arg(long, value_name = "PATH")]
    kvm_device: Option<PathBuf>,
    /// The HTTP API's Unix socket (mode 0600; the same uids as --socket)
    /// [default: api.sock beside --socket].
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Also serve the HTTP API on this loopback address (127.0.0.1:PORT or
    /// [::1]:PORT), to clients that send the token of --api-token-file as
    /// `Authorization: Bearer TOKEN`.
    #[arg(long, value_name = "ADDR:PORT", requires = "api_token_file")]
    api_listen: Option<std::net::SocketAddr>,
    /// A file holding the bearer token of --api-listen (one line; keep it
    /// private).
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// Log lines as text or JSON (one object a line) [default: text, or
    /// PARVM_LOG_FORMAT].
    #[arg(long, value_name = "text|json")]
    log_format: Option<String>,
    /// Rotate a console or VMM log (STATE/logs/*.log) once it grows past
    /// this many MiB: copied to NAME.log.1, then emptied; 0 never rotates.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    log_max_mib: u64,
    /// Print the HTTP API's OpenAPI document and exit.
    #[arg(long)]
    openapi: bool,
}

fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/parvm");
    }
    match (std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME")) {
        (Some(d), _) if !d.is_empty() => PathBuf::from(d).join("parvm"),
        (_, Some(h)) => PathBuf::from(h).join(".local/state/parvm"),
        _ => PathBuf::from("/var/lib/parvm"),
    }
}

fn default_vmm() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("vmm")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("vmm"))
}

fn absolute(p: PathBuf) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// The bearer token of `--api-listen`: the file's first line, at least 16
/// characters.
fn read_token(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--api-token-file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < 16 {
        anyhow::bail!(
            "--api-token-file {}: the token must be at least 16 characters",
            path.display()
        );
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %path.display(), "the API token file is readable by others: chmod 600 it");
        }
    }
    Ok(token)
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.openapi {
        use std::io::Write;
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = writeln!(std::io::stdout(), "{}", api::openapi::document());
        return Ok(());
    }
    if args.max_clients == 0 || args.client_timeout == 0 {
        anyhow::bail!("--max-clients and --client-timeout must be at least 1");
    }
    // Everything the manager creates (registry, WAL, logs, definitions) is
    // private to its user; the VMMs it spawns inherit the mask.
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0o077) };
    let socket = absolute(args.socket.unwrap_or_else(daemon::default_socket))?;
    let state_dir = absolute(args.state_dir.unwrap_or_else(default_state_dir))?;
    let vmm = args.vmm.unwrap_or_else(default_vmm);
    let vmm = if vmm.components().count() > 1 {
        absolute(vmm)?
    } else {
        vmm
    };
    let kvm_device = args.kvm_device.map(absolute).transpose()?;
    let run_as = match &args.run_as {
        Some(spec) => Some(partition_user(
            spec,
            kvm_device
                .as_deref()
                .unwrap_or(Path::new(DEFAULT_KVM_DEVICE)),
        )?),
        None => None,
    };
    warn_if_others_can_write(&socket);
    let _lock = daemon::lock_state_dir(&state_dir)?;
    let mgr = Manager::open(ManagerConfig {
        socket: socket.clone(),
        state_dir: state_dir.clone(),
        vmm,
        ready_timeout: Duration::from_secs(args.ready_timeout),
        stop_timeout: Duration::from_secs(args.stop_timeout),
        run_as: run_as.clone(),
        kvm_device,
    })?;
    let api_socket = match args.api_socket {
        Some(p) => absolute(p)?,
        None => socket.with_file_name("api.sock"),
    };
    let token = match &args.api_token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    let tcp = args.api_listen.map(api::listen_tcp).transpose()?;
    // The API's socket first: once --socket answers, so does the API.
    let partition_group = run_as.as_ref().map(|u| u.gid);
    daemon::socket_dir(&socket, partition_group)?;
    let api_listener = api::listen_unix(&api_socket)?;
    let listener = daemon::listen(&socket, partition_group)?;
    if args.log_max_mib > 0 {
        partition_manager::logrotate::start(state_dir.join("logs"), args.log_max_mib << 20);
    }
    service::on_shutdown(mgr.clone(), vec![socket.clone(), api_socket.clone()]);
    let limits = daemon::Limits {
        max_clients: args.max_clients,
        client_timeout: Duration::from_secs(args.client_timeout),
    };
    Api::new(mgr.clone(), limits, None).serve_unix(api_listener);
    if let Some(tcp) = tcp {
        let addr = tcp.local_addr()?;
        Api::new(mgr.clone(), limits, token).serve_tcp(tcp);
        tracing::info!(%addr, "HTTP API listening on loopback (bearer token)");
    }
    if let Some(user) = &run_as {
        // A partition that cannot dial the socket would run on, but never
        // come back to a restarted manager.
        user.check(&[(socket.clone(), Access::Connect)])
            .map_err(|e| {
                anyhow::anyhow!("{e} (its partitions could not re-attach after a manager restart: put --socket in a directory that user can search)")
            })?;
        tracing::info!(uid = user.uid, gid = user.gid, groups = ?user.groups, "partitions run as {}", user.who());
    }
    tracing::info!(socket = %socket.display(), api_socket = %api_socket.display(), state_dir = %state_dir.display(), "partition manager listening");
    service::notify("READY=1\nSTATUS=listening");
    daemon::serve(mgr, listener, limits);
    Ok(())
}

/// The `--run-as` user, resolved before anything starts: the manager must
/// be root to switch to it, and it must be able to use the KVM device.
fn partition_user(spec: &str, kvm_device: &Path) -> anyhow::Result<RunAs> {
    let user = RunAs::resolve(spec, kvm_device)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("--run-as {spec}: only root can start processes as another user");
    }
    user.check(&[(kvm_device.to_path_buf(), Access::ReadWrite)])
        .with_context(|| {
            format!(
                "--run-as {spec}: no VMM could start (give the user a group or ACL on {}, or --kvm-device a node it may open)",
                kvm_device.display()
            )
        })?;
    Ok(user)
}

/// A socket in a directory others can write (like /tmp) lets them bind the
/// path while the manager is down: the VMMs refuse such a peer, but the
/// manager cannot come back until it goes. Said once at start.
fn warn_if_others_can_write(socket: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let Some(dir) = socket.parent() else { return };
    if let Ok(meta) = std::fs::metadata(dir) {
        if meta.permissions().mode() & 0o022 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                "the socket's directory is writable by others: use a directory only the operator can write"
            );
        }
    }
}

#[path = "common/service.rs"]
mod service;

fn main() {
    let args = Args::parse();
    if let Some(format) = &args.log_format {
        std::env::set_var("PARVM_LOG_FORMAT", format);
    }
    parvm_protocol::cli::init_logging(tracing::Level::INFO);
    service::take_notify_socket();
    if let Err(e) = run(args) {
        eprintln!(
            "partition-manager: error: {}",
            partition_manager::one_line(&e)
        );
        std::process::exit(1);
    }
}
