//! `parctl`: the operator's command line to the partition manager. See
//! docs/manager.md.
//!
//! Modules: `output` (text printing), `console` (the console session),
//! `follow` (`parctl events`), `edit` (`show`, `edit`, `update`,
//! `validate`); this file: the commands, one request each, `--json`,
//! errors and exit codes.

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use partition_manager::client::{Client, ClientError};
use partition_manager::daemon::default_socket;
use partition_manager::definition;
use partition_manager::protocol::{
    PagingDevice, PartitionStatus, Request, Response, RestartPolicy, Rights,
};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

#[path = "common/dump_view.rs"]
mod dump_view;
#[path = "common/pool_view.rs"]
mod pool_view;
use pool_view::print_pool;
#[path = "common/workload_view.rs"]
mod workload_view;

#[path = "parctl/console.rs"]
mod console;
#[path = "parctl/edit.rs"]
mod edit;
#[path = "parctl/follow.rs"]
mod follow;
#[path = "parctl/output.rs"]
mod output;
use output::{print_doorbells, print_grants, print_status, print_table, status_line};

/// Control parvm partitions through the partition manager.
///
/// Every command prints one line of error when it fails and exits with a
/// status that says why: 3 the manager cannot be reached, 4 it did not
/// answer within --timeout, 5 protocol error, 10 and up the manager's
/// error kind (11 not_found, 13 invalid_state, ...; docs/manager.md, "Exit
/// status"), 1 anything else, 2 a usage error. With --json every command
/// prints JSON, errors too ({"error": {"kind", "message"}}); the shapes
/// are stable and documented in docs/manager.md.
#[derive(Parser, Debug)]
#[command(name = "parctl", version)]
struct Args {
    /// The manager's socket [default: $XDG_RUNTIME_DIR/parvm/pm.sock, else
    /// /run/parvm/pm.sock].
    #[arg(long, global = true, value_name = "PATH", env = "PARVM_SOCKET")]
    socket: Option<PathBuf>,
    /// Print the answer (or the error) as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for the manager's answer [default: 5, or 60 for
    /// commands that wait for a VMM: start, stop, restart, kill, pause,
    /// resume, accept, revoke, share, pool resize].
    #[arg(long, global = true, value_name = "SECS", value_parser = parse_secs)]
    timeout: Option<Duration>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Register a partition from a JSON definition file (vmm's format or a VIOS's, plus
    /// an optional "restart": "never" | "on-failure"). Relative paths in the
    /// file are relative to the file.
    Define {
        file: PathBuf,
        /// Restart policy, overriding the file's "restart".
        #[arg(long, value_name = "never|on-failure")]
        restart: Option<RestartPolicy>,
        /// Have the manager check everything a define checks, and define
        /// nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check a definition file as `define` reads it (fields, ranges,
    /// paths), without a manager; `define --dry-run` asks the manager too.
    Validate { file: PathBuf },
    /// Print a partition's stored definition (a file `update` and
    /// `define` take).
    Show { name: String },
    /// Replace a stopped partition's definition with FILE (same name), and/or
    /// change its restart policy (any time).
    Update {
        name: String,
        file: Option<PathBuf>,
        #[arg(long, value_name = "never|on-failure")]
        restart: Option<RestartPolicy>,
    },
    /// Edit a partition's stored definition in $VISUAL or $EDITOR, then
    /// update it.
    Edit { name: String },
    /// Follow what happens: state changes, restarts, grant revokes and
    /// faults, VIOS reconnects, pool changes, as they happen.
    Events {
        /// Start after this event number (0: from the oldest the manager
        /// holds).
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Print what the manager holds and exit instead of following.
        #[arg(long)]
        no_follow: bool,
    },
    /// Remove a stopped partition from the registry (its logs stay).
    Undefine { name: String },
    /// Start a partition; returns once its vCPUs run.
    Start { name: String },
    /// Stop a partition in an orderly way (killed if it takes too long); a
    /// partition that is not running is left as it is (exit 0).
    Stop { name: String },
    /// Stop (if running) and start a partition.
    Restart { name: String },
    /// Kill a partition's VMM at once (SIGKILL); it is not restarted.
    Kill { name: String },
    /// Hold a running partition's vCPUs.
    Pause { name: String },
    /// Let a paused partition's vCPUs run again.
    Resume { name: String },
    /// Change a partition's processor entitlement, running or not:
    /// cpu.entitled=UNITS (1.0 is one core), cpu.mode=capped|uncapped,
    /// cpu.weight=0-255 (docs/workload.md).
    Set {
        name: String,
        #[arg(value_name = "KEY=VALUE", required = true)]
        settings: Vec<String>,
    },
    /// A live table of the partitions: entitlement and use of processors,
    /// memory and page-ins (like AIX's topas/lparstat).
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2.0, value_name = "SECS")]
        interval: f64,
        /// Print this many tables, then exit (default: until interrupted).
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// The workload policy: entitlement moved between partitions by use.
    #[command(subcommand)]
    Policy(workload_view::PolicyCmd),
    /// List partitions (a table, or JSON).
    List,
    /// Show one partition.
    Status { name: String },
    /// Attach to a running partition's serial console: its output follows,
    /// input goes to the guest. On a terminal, Ctrl-] detaches.
    Console { name: String },
    /// Print a partition's console log.
    Logs { name: String },
    /// Memory segments (shared memory a partition owns and can grant).
    #[command(subcommand)]
    Segment(SegmentCmd),
    /// Grant segment OWNER/ID (or VIOS disk VIOS/DISK) to a partition;
    /// prints the cookie.
    Grant {
        /// The segment (OWNER/ID) or VIOS disk (VIOS/DISK).
        segment: String,
        /// The grantee partition.
        #[arg(long = "to", value_name = "NAME")]
        grantee: String,
        #[arg(long, value_name = "ro|rw", default_value = "ro")]
        rights: Rights,
    },
    /// Accept a cookie on behalf of its grantee: its VMM maps the segment
    /// (a VIOS disk is only recorded as accepted; its next start connects).
    Accept {
        cookie: String,
        /// The accepting partition (must be the cookie's grantee).
        #[arg(long = "as", value_name = "NAME")]
        partition: String,
        /// Guest physical address (default: the VMM chooses).
        #[arg(long, value_name = "ADDR", value_parser = parse_number)]
        gpa: Option<u64>,
    },
    /// Grant an accepted cookie on (rights at most the holder's); prints
    /// the new cookie.
    Regrant {
        cookie: String,
        /// The holder of the cookie.
        #[arg(long = "as", value_name = "NAME")]
        partition: String,
        #[arg(long = "to", value_name = "NAME")]
        grantee: String,
        #[arg(long, value_name = "ro|rw", default_value = "ro")]
        rights: Rights,
    },
    /// Revoke a cookie and everything granted on from it; returns once every
    /// affected partition has unmapped it.
    Revoke {
        cookie: String,
        /// Act as this partition (the grantor or the owner; default: the
        /// grantor).
        #[arg(long = "as", value_name = "NAME")]
        partition: Option<String>,
    },
    /// Copy bytes between two segments a partition holds cookies for.
    Copy {
        #[arg(long = "as", value_name = "NAME")]
        partition: String,
        #[arg(long)]
        src: String,
        #[arg(long, default_value = "0", value_parser = parse_number)]
        src_offset: u64,
        #[arg(long)]
        dst: String,
        #[arg(long, default_value = "0", value_parser = parse_number)]
        dst_offset: u64,
        #[arg(long, value_parser = parse_number)]
        len: u64,
    },
    /// Apply a shared-segment configuration (segments, who maps them where
    /// at start, doorbells; see docs/manager.md).
    Share { file: PathBuf },
    /// Show segments and the grant tree (resource, grantor, grantee, rights,
    /// state).
    Grants,
    /// The shared memory pool (Active Memory Sharing, docs/ams.md).
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell), e.g. `parctl completions bash > /etc/bash_completion.d/parctl`.
    Completions { shell: clap_complete::Shell },
    /// Print parctl's man page (roff), e.g. `parctl manpage | man -l -`.
    Manpage,
    /// Dump a running partition to its dump disk (docs/dump.md); it keeps
    /// running (its vCPUs pause while its memory is written).
    Dump { name: String },
    /// The partition's dumps on its dump disk, with state and progress.
    Dumps { name: String },
    /// Copy dump ID (an ELF core) of the partition to FILE.
    DumpGet {
        name: String,
        id: u64,
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum PoolCmd {
    /// Create the pool: SIZE MiB of physical memory for shared-memory
    /// partitions, and its paging devices (VIOS exports).
    Create {
        #[arg(long, value_name = "MIB")]
        size: u64,
        #[arg(long, value_name = "vios:VIOS/DISK")]
        paging: Vec<PagingDevice>,
    },
    /// A new physical size; returns once the partitions hold no more.
    Resize {
        #[arg(long, value_name = "MIB")]
        size: u64,
    },
    /// Add a paging device (a writable VIOS export nobody has as a disk).
    AddPaging {
        #[arg(value_name = "vios:VIOS/DISK")]
        device: PagingDevice,
    },
    /// Remove a paging device (refused while a running partition has it).
    RemovePaging {
        #[arg(value_name = "vios:VIOS/DISK")]
        device: PagingDevice,
    },
    /// Size, paging devices and who has each, pages resident, loaned, free.
    Show,
}

#[derive(Subcommand, Debug)]
enum SegmentCmd {
    /// Create segment OWNER/ID of SIZE bytes (suffixes K, M, G), mapped in
    /// its owner at --gpa while it runs.
    Create {
        segment: String,
        #[arg(long, value_parser = parse_number)]
        size: u64,
        #[arg(long, value_name = "ADDR", value_parser = parse_number)]
        gpa: Option<u64>,
    },
}

/// A number in decimal or 0x-hex, with an optional K/M/G suffix (binary).
fn parse_number(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') if !s.starts_with("0x") => (&s[..s.len() - 1], 20),
        Some('G' | 'g') if !s.starts_with("0x") => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let v = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => digits.parse(),
    }
    .map_err(|_| format!("`{s}` is not a number (decimal or 0x-hex, optional K/M/G)"))?;
    v.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("`{s}` is not a number of seconds from 0 to 86400")),
    }
}

/// The default of `--timeout`: requests that wait for a VMM (start,
/// stop, ...) take up to the manager's own timeouts.
fn default_timeout(cmd: &Cmd) -> Duration {
    match cmd {
        Cmd::Start { .. }
        | Cmd::Stop { .. }
        | Cmd::Restart { .. }
        | Cmd::Kill { .. }
        | Cmd::Pause { .. }
        | Cmd::Resume { .. }
        | Cmd::Accept { .. }
        | Cmd::Revoke { .. }
        | Cmd::Share { .. }
        | Cmd::Pool(PoolCmd::Resize { .. })
        | Cmd::Dump { .. }
        | Cmd::DumpGet { .. } => Duration::from_secs(60),
        _ => Duration::from_secs(5),
    }
}

fn unexpected(answer: &Response) -> anyhow::Error {
    anyhow::Error::new(ClientError::Unexpected(format!("{answer:?}")))
}

fn expect_status(answer: Response) -> anyhow::Result<PartitionStatus> {
    match answer {
        Response::Status { status } => Ok(status),
        other => Err(unexpected(&other)),
    }
}

fn log_file(answer: (Response, Vec<OwnedFd>)) -> anyhow::Result<File> {
    match answer {
        (Response::LogFile { .. }, fds) => fds
            .into_iter()
            .next()
            .map(File::from)
            .ok_or_else(|| anyhow!("the partition manager sent no log file descriptor")),
        (other, _) => Err(unexpected(&other)),
    }
}

/// Writes `bytes` to stdout; a reader that went away is no error.
fn print_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn print_json(v: &serde_json::Value) {
    println!("{v}");
}

/// The request a command sends (`None`: a command that needs no manager).
fn request_of(cmd: &Cmd) -> anyhow::Result<Option<Request>> {
    Ok(Some(match cmd {
        Cmd::Define {
            file,
            restart,
            dry_run,
        } => {
            let file = definition::from_file(file)?;
            Request::Define {
                definition: file.definition,
                restart: restart.or(file.restart).unwrap_or_default(),
                segments: file.segments,
                dry_run: *dry_run,
            }
        }
        Cmd::Set { name, settings } => workload_view::set_request(name, settings)?,
        Cmd::Policy(cmd) => cmd.request()?,
        Cmd::Validate { .. }
        | Cmd::Edit { .. }
        | Cmd::Events { .. }
        | Cmd::Top { .. }
        | Cmd::Completions { .. }
        | Cmd::Manpage => return Ok(None),
        Cmd::Show { name } => Request::Show { name: name.clone() },
        Cmd::Update {
            name,
            file,
            restart,
        } => edit::update_request(name, file.as_deref(), *restart)?,
        Cmd::Undefine { name } => Request::Undefine { name: name.clone() },
        Cmd::Start { name } => Request::Start { name: name.clone() },
        Cmd::Stop { name } => Request::Stop { name: name.clone() },
        Cmd::Restart { name } => Request::Restart { name: name.clone() },
        Cmd::Kill { name } => Request::Kill { name: name.clone() },
        Cmd::Pause { name } => Request::Pause { name: name.clone() },
        Cmd::Resume { name } => Request::Resume { name: name.clone() },
        Cmd::List => Request::List,
        Cmd::Status { name } => Request::Status { name: name.clone() },
        Cmd::Console { name } => Request::Console { name: name.clone() },
        Cmd::Logs { name } => Request::Logs { name: name.clone() },
        Cmd::Segment(SegmentCmd::Create { segment, size, gpa }) => {
            let Some((owner, id)) = segment.split_once('/') else {
                bail!("segment `{segment}`: use OWNER/ID");
            };
            Request::SegmentCreate {
                owner: owner.into(),
                id: id.into(),
                size: *size,
                gpa: *gpa,
            }
        }
        Cmd::Grant {
            segment,
            grantee,
            rights,
        } => Request::Grant {
            segment: segment.clone(),
            grantee: grantee.clone(),
            rights: *rights,
        },
        Cmd::Accept {
            cookie,
            partition,
            gpa,
        } => Request::Accept {
            cookie: cookie.parse()?,
            partition: partition.clone(),
            gpa: *gpa,
        },
        Cmd::Regrant {
            cookie,
            partition,
            grantee,
            rights,
        } => Request::Regrant {
            cookie: cookie.parse()?,
            partition: partition.clone(),
            grantee: grantee.clone(),
            rights: *rights,
        },
        Cmd::Revoke { cookie, partition } => Request::Revoke {
            cookie: cookie.parse()?,
            partition: partition.clone(),
        },
        Cmd::Copy {
            partition,
            src,
            src_offset,
            dst,
            dst_offset,
            len,
        } => Request::Copy {
            partition: partition.clone(),
            src: src.parse()?,
            src_offset: *src_offset,
            dst: dst.parse()?,
            dst_offset: *dst_offset,
            len: *len,
        },
        Cmd::Grants => Request::Grants,
        Cmd::Pool(PoolCmd::Create { size, paging }) => Request::PoolCreate {
            size_mib: *size,
            paging: paging.clone(),
        },
        Cmd::Pool(PoolCmd::Resize { size }) => Request::PoolResize { size_mib: *size },
        Cmd::Pool(PoolCmd::AddPaging { device }) => Request::PoolAddPaging {
            device: device.clone(),
        },
        Cmd::Pool(PoolCmd::RemovePaging { device }) => Request::PoolRemovePaging {
            device: device.clone(),
        },
        Cmd::Pool(PoolCmd::Show) => Request::PoolShow,
        Cmd::Dump { name } => Request::Dump { name: name.clone() },
        Cmd::Dumps { name, .. } => Request::Dumps { name: name.clone() },
        Cmd::DumpGet { name, id, .. } => Request::DumpGet {
            name: name.clone(),
            id: *id,
        },
        Cmd::Share { file } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let config = serde_json::from_str(&text).map_err(|e| {
                anyhow!(
                    "shared configuration {}: line {}, column {}: {e}",
                    file.display(),
                    e.line(),
                    e.column()
                )
            })?;
            Request::Share { config }
        }
    }))
}

fn run(args: Args) -> anyhow::Result<()> {
    let socket = args.socket.clone().unwrap_or_else(default_socket);
    let timeout = args
        .timeout
        .unwrap_or_else(|| default_timeout(&args.command));
    let json = args.json;
    let connect = || Client::connect_within(&socket, Some(timeout));
    match &args.command {
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Args::command();
            // Into a buffer: the generator panics on a closed stdout.
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "parctl", &mut out);
            return print_bytes(&out);
        }
        Cmd::Manpage => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_mangen::Man::new(Args::command()).render(&mut out)?;
            return print_bytes(&out);
        }
        Cmd::Validate { file } => return edit::validate(file, json),
        Cmd::Edit { name } => return edit::edit(&connect()?, name, json),
        Cmd::Events { since, no_follow } => {
            return follow::events(&socket, args.timeout, *since, !*no_follow, json)
        }
        Cmd::Top { interval, count } => {
            if !interval.is_finite() || *interval < 0.1 || *interval > 3600.0 {
                bail!("--interval {interval}: give 0.1 to 3600 seconds");
            }
            if json {
                bail!("top is a live table: --json does not apply (use `list --json`)");
            }
            return workload_view::top(&connect()?, Duration::from_secs_f64(*interval), *count);
        }
        Cmd::Console { .. } if json => {
            bail!("console is interactive: --json does not apply (use `logs --json`)")
        }
        _ => {}
    }
    let Some(request) = request_of(&args.command)? else {
        return Ok(());
    };
    let mut client = connect()?;
    let answer = client.call(&request)?;
    if json {
        match args.command {
            Cmd::Logs { name } => {
                let path = match &answer.0 {
                    Response::LogFile { path, .. } => path.clone(),
                    other => return Err(unexpected(other)),
                };
                let mut f = log_file(answer)?;
                f.seek(SeekFrom::Start(0))?;
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut bytes)?;
                let text = String::from_utf8_lossy(&bytes);
                print_json(&serde_json::json!({ "name": name, "path": path, "log": text }));
            }
            Cmd::Dump { .. } | Cmd::Dumps { .. } => dump_view::show(answer, true, None)?,
            Cmd::DumpGet { file, .. } => dump_view::show(answer, true, Some(&file))?,
            _ => print_json(&partition_manager::api::routes::answer_body(answer.0)),
        }
        return Ok(());
    }
    match args.command {
        Cmd::Define { dry_run: true, .. } => {
            println!(
                "{}: valid (dry run: nothing defined)",
                expect_status(answer.0)?.name
            )
        }
        Cmd::Define { .. } => println!("defined {}", expect_status(answer.0)?.name),
        Cmd::Show { .. } => edit::print_stored(answer.0)?,
        Cmd::Update { name, .. } => {
            expect_status(answer.0)?;
            println!("updated {name}");
        }
        Cmd::Undefine { name } => println!("undefined {name}"),
        Cmd::List => {
            let Response::List { partitions } = answer.0 else {
                return Err(unexpected(&answer.0));
            };
            print_table(&partitions);
        }
        Cmd::Status { .. } => print_status(&expect_status(answer.0)?),
        Cmd::Set { .. } => {
            let s = expect_status(answer.0)?;
            match &s.cpu {
                Some(c) => println!(
                    "{}: cpu {} processing units, {}, weight {}",
                    s.name,
                    c.entitled.map(|e| e.to_string()).unwrap_or_default(),
                    c.mode.map(|m| m.to_string()).unwrap_or_default(),
                    c.weight.unwrap_or_default()
                ),
                None => println!("{}: set", s.name),
            }
        }
        Cmd::Policy(cmd) => cmd.print(answer.0)?,
        Cmd::Logs { .. } => {
            let mut f = log_file(answer)?;
            f.seek(SeekFrom::Start(0))?;
            std::io::copy(&mut f, &mut std::io::stdout().lock())?;
        }
        Cmd::Console { name } => {
            // The session lasts as long as the partition runs.
            client.set_timeout(None);
            console::console(&client, log_file(answer)?, &name)?
        }
        Cmd::Segment(_) => match answer.0 {
            Response::Segment { segment } => {
                println!("created {} ({} bytes)", segment.name, segment.size)
            }
            other => return Err(unexpected(&other)),
        },
        Cmd::Grant { .. } | Cmd::Regrant { .. } => match answer.0 {
            Response::Grant { grant } => println!("{}", grant.cookie),
            other => return Err(unexpected(&other)),
        },
        Cmd::Accept { .. } => match answer.0 {
            Response::Grant { grant } => match grant.gpa {
                Some(gpa) => println!(
                    "grant {}: {} mapped in {} at {gpa:#x} ({})",
                    grant.id, grant.segment, grant.grantee, grant.rights
                ),
                None => println!(
                    "grant {}: {} accepted by {} ({})",
                    grant.id, grant.segment, grant.grantee, grant.rights
                ),
            },
            other => return Err(unexpected(&other)),
        },
        Cmd::Revoke { .. } => match answer.0 {
            Response::Revoked { revoked } => {
                let ids: Vec<String> = revoked.iter().map(|g| format!("#{}", g.id)).collect();
                println!("revoked {} grant(s): {}", revoked.len(), ids.join(" "));
            }
            other => return Err(unexpected(&other)),
        },
        Cmd::Share { .. } => match answer.0 {
            Response::Shared {
                segments,
                grants,
                doorbells,
            } => {
                for s in &segments {
                    println!("segment {} ({} KiB)", s.name, s.size / 1024);
                }
                for g in &grants {
                    println!(
                        "grant #{} {} -> {} {} {}{}",
                        g.id,
                        g.segment,
                        g.grantee,
                        g.rights,
                        g.state,
                        g.gpa.map(|a| format!(" at {a:#x}")).unwrap_or_default()
                    );
                }
                print_doorbells(&doorbells);
            }
            other => return Err(unexpected(&other)),
        },
        Cmd::Pool(cmd) => match answer.0 {
            Response::Pool { pool } => match cmd {
                PoolCmd::Show => print_pool(&pool),
                PoolCmd::Create { .. } | PoolCmd::Resize { .. } => println!(
                    "pool: {} MiB, {} paging device(s)",
                    pool.size_mib,
                    pool.paging.len()
                ),
                PoolCmd::AddPaging { device } => println!("paging device {device} added"),
                PoolCmd::RemovePaging { device } => println!("paging device {device} removed"),
            },
            other => return Err(unexpected(&other)),
        },
        Cmd::Copy { .. } => match answer.0 {
            Response::Copied { bytes } => println!("copied {bytes} bytes"),
            other => return Err(unexpected(&other)),
        },
        Cmd::Grants => match answer.0 {
            Response::Grants {
                segments,
                grants,
                doorbells,
            } => {
                print_grants(&segments, &grants);
                print_doorbells(&doorbells);
            }
            other => return Err(unexpected(&other)),
        },
        Cmd::Dump { .. } | Cmd::Dumps { .. } => dump_view::show(answer, false, None)?,
        Cmd::DumpGet { file, .. } => dump_view::show(answer, false, Some(&file))?,
        _ => println!("{}", status_line(&expect_status(answer.0)?)),
    }
    Ok(())
}

/// How a failure is reported: its kind (the manager's error kind, or
/// `unreachable`, `timeout`, `protocol`, `bad_request` for a definition or
/// argument parctl refused itself, `error` for the rest) and exit status.
fn classify(e: &anyhow::Error) -> (&'static str, i32) {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<ClientError>() {
            return (c.kind_name(), c.exit_code());
        }
        if cause
            .downcast_ref::<definition::DefinitionError>()
            .is_some()
            || cause
                .downcast_ref::<partition_manager::protocol::grant::CookieError>()
                .is_some()
            || cause.downcast_ref::<serde_json::Error>().is_some()
        {
            let kind = partition_manager::protocol::ErrorKind::BadRequest;
            return (kind.as_str(), partition_manager::client::exit_code(kind));
        }
    }
    ("error", 1)
}

fn main() {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // --help and --version are not failures; usage errors exit 2.
            let json = std::env::args().any(|a| a == "--json");
            if json && e.use_stderr() {
                let msg = e.to_string();
                let first = msg
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("error: ");
                println!(
                    "{}",
                    serde_json::json!({"error": {"kind": "usage", "message": first}})
                );
                std::process::exit(2);
            }
            e.exit();
        }
    };
    let json = args.json;
    if let Err(e) = run(args) {
        let message = partition_manager::one_line(&e);
        let (kind, code) = classify(&e);
        if json {
            println!(
                "{}",
                serde_json::json!({"error": {"kind": kind, "message": message}})
            );
        } else {
            // One line, whatever the error chain.
            eprintln!("parctl: error: {message}");
        }
        std::process::exit(code);
    }
}
