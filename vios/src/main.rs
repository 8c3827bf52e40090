//! `vios`: serve disk images over vhost-user-blk.
//!
//!     vios --listen PATH --disk FILE[,ro][,id=ID] [--queues N]      standalone
//!     vios --config FILE --control-fd N [--manager-socket PATH]     run by the partition manager
//!
//! Logs go to stderr, filtered by `PARVM_LOG` (e.g. `PARVM_LOG=debug`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use vios::managed::ViosDefinition;
use vios::{Export, ExportSpec, ServeOptions, Server, MAX_QUEUES};

/// parvm's virtual I/O server: exports raw disk images with vhost-user-blk.
#[derive(Parser, Debug)]
#[command(name = "vios", version)]
struct Args {
    /// Unix socket to listen on for vhost-user frontends (QEMU's
    /// `-chardev socket,path=PATH`, Cloud Hypervisor, parvm's vmm).
    #[arg(
        long,
        value_name = "PATH",
        requires = "disk",
        conflicts_with = "config"
    )]
    listen: Option<PathBuf>,
    /// The raw disk image to export; `,ro` exports it read-only, `,id=ID`
    /// names it (GET_ID serial; default: the file name).
    #[arg(long, value_name = "FILE[,ro][,id=ID]", requires = "listen")]
    disk: Option<String>,
    /// Queues offered to each client (1..=16).
    #[arg(long, default_value_t = 1, value_name = "N")]
    queues: usize,
    /// Managed mode: the VIOS partition definition (kind `vios`) the
    /// partition manager wrote.
    #[arg(long, value_name = "FILE", requires = "control_fd")]
    config: Option<PathBuf>,
    /// Managed mode: the inherited control socket to the partition manager.
    #[arg(long, value_name = "N")]
    control_fd: Option<i32>,
    /// Managed mode: the manager's socket, where the VIOS re-attaches if the
    /// manager restarts.
    #[arg(long, value_name = "PATH")]
    manager_socket: Option<PathBuf>,
    /// Accepted for symmetry with vmm (a VIOS has no console).
    #[arg(long, value_name = "PATH")]
    console: Option<String>,
    /// System-call filters per thread (docs/security.md): `kill` ends the
    /// VIOS on any call outside its thread's list; `log` only logs it
    /// (kernel audit log, `dmesg`), for diagnosis; `none` installs no filter.
    #[arg(
        long,
        value_name = "kill|log|none",
        env = "PARVM_SECCOMP",
        default_value = "kill"
    )]
    seccomp: vios::seccomp::SeccompMode,
}

fn init_logging() {
    parvm_protocol::cli::init_logging(tracing::Level::INFO);
}

fn run(args: Args) -> anyhow::Result<i32> {
    if args.queues == 0 || args.queues > MAX_QUEUES {
        anyhow::bail!("--queues {} is outside 1..={MAX_QUEUES}", args.queues);
    }
    vios::seccomp::configure(args.seccomp)?;
    if let Some(config) = args.config {
        let def = ViosDefinition::from_file(&config)?;
        def.validate()?;
        let fd = args
            .control_fd
            .context("--config needs --control-fd (the VIOS runs under the partition manager)")?;
        return Ok(vios::managed::run(def, fd, args.manager_socket.as_deref())?);
    }
    let (Some(listen), Some(disk)) = (args.listen, args.disk) else {
        anyhow::bail!("use --listen PATH --disk FILE[,ro], or --config FILE --control-fd N");
    };
    let spec = ExportSpec::parse(&disk)?;
    let export = Arc::new(Export::open(spec)?);
    // Set-up is over: this thread and every one it starts are filtered.
    vios::seccomp::apply(vios::seccomp::Role::Server);
    let server = Server::listen(
        &listen,
        export,
        ServeOptions {
            queues: args.queues,
            read_only: false,
        },
    )
    .with_context(|| format!("serving {disk}"))?;
    server.join();
    Ok(0)
}

fn main() {
    init_logging();
    let args = Args::parse();
    match run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("vios: error: {}", parvm_protocol::cli::one_line(&e));
            std::process::exit(1);
        }
    }
}
