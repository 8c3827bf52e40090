//! `parctl`: the operator's command line to the partition manager. See
//! docs/manager.md.

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use partition_manager::client::Client;
use partition_manager::daemon::default_socket;
use partition_manager::definition;
use partition_manager::protocol::{
    PagingDevice, PartitionStatus, Request, Response, RestartPolicy, Rights,
};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;
use vmm_sys_util::terminal::Terminal;

#[path = "common/dump_view.rs"]
mod dump_view;
#[path = "common/grants_view.rs"]
mod grants_view;
use grants_view::print_grants;
#[path = "common/pool_view.rs"]
mod pool_view;
use pool_view::{print_pool, print_shared};
#[path = "common/workload_view.rs"]
mod workload_view;

/// Control parvm partitions through the partition manager.
///
/// Every command prints one line of error and exits with status 1 when it
/// fails. `--json` output shapes are stable and documented in
/// docs/manager.md.
#[derive(Parser, Debug)]
#[command(name = "parctl", version)]
struct Args {
    /// The manager's socket [default: $XDG_RUNTIME_DIR/parvm/pm.sock, else
    /// /run/parvm/pm.sock].
    #[arg(long, global = true, value_name = "PATH", env = "PARVM_SOCKET")]
    socket: Option<PathBuf>,
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
    },
    /// Remove a stopped partition from the registry (its logs stay).
    Undefine { name: String },
    /// Start a partition; returns once its vCPUs run.
    Start { name: String },
    /// Stop a partition in an orderly way (killed if it takes too long).
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
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one partition.
    Status {
        name: String,
        #[arg(long)]
        json: bool,
    },
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
    Grants {
        #[arg(long)]
        json: bool,
    },
    /// The shared memory pool (Active Memory Sharing, docs/ams.md).
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Dump a running partition to its dump disk (docs/dump.md); it keeps
    /// running (its vCPUs pause while its memory is written).
    Dump { name: String },
    /// The partition's dumps on its dump disk, with state and progress.
    Dumps {
        name: String,
        #[arg(long)]
        json: bool,
    },
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
    Show {
        #[arg(long)]
        json: bool,
    },
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

fn status_line(s: &PartitionStatus) -> String {
    match (s.pid, &s.last_exit) {
        (Some(pid), _) => format!("{}: {} (pid {pid})", s.name, s.state),
        (None, Some(why)) => format!("{}: {} ({why})", s.name, s.state),
        (None, None) => format!("{}: {}", s.name, s.state),
    }
}

fn print_table(parts: &[PartitionStatus]) {
    let rows: Vec<[String; 7]> = parts
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.state.to_string(),
                p.pid.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                p.vcpus.to_string(),
                match p.memory {
                    Some(_) => format!("{}M-shared", p.memory_mib),
                    None => format!("{}M", p.memory_mib),
                },
                p.restart.to_string(),
                p.last_exit.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let head = [
        "NAME",
        "STATE",
        "PID",
        "VCPUS",
        "MEMORY",
        "RESTART",
        "LAST EXIT",
    ];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(head.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn print_status(s: &PartitionStatus) {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("name:        {}", s.name);
    println!("state:       {}", s.state);
    println!(
        "pid:         {}",
        s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
    );
    println!("vcpus:       {}", s.vcpus);
    println!("memory:      {} MiB", s.memory_mib);
    println!("kernel:      {}", s.kernel);
    println!(
        "restart:     {} ({} automatic restarts)",
        s.restart, s.restarts
    );
    println!("last exit:   {}", opt(&s.last_exit));
    println!("attached:    {}", if s.attached { "yes" } else { "no" });
    println!("console log: {}", s.console_log);
    if let Some(m) = &s.memory {
        print_shared(m);
    }
    if let Some(c) = &s.cpu {
        workload_view::print_cpu(c);
    }
}

fn expect_status(answer: Response) -> anyhow::Result<PartitionStatus> {
    match answer {
        Response::Status { status } => Ok(status),
        other => bail!("unexpected answer from the partition manager: {other:?}"),
    }
}

fn log_file(answer: (Response, Vec<OwnedFd>)) -> anyhow::Result<File> {
    match answer {
        (Response::LogFile { .. }, fds) => fds
            .into_iter()
            .next()
            .map(File::from)
            .ok_or_else(|| anyhow!("the partition manager sent no log file descriptor")),
        (other, _) => bail!("unexpected answer from the partition manager: {other:?}"),
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let socket = args.socket.unwrap_or_else(default_socket);
    if let Cmd::Top { interval, count } = &args.command {
        if !interval.is_finite() || *interval < 0.1 || *interval > 3600.0 {
            bail!("--interval {interval}: give 0.1 to 3600 seconds");
        }
        let client = Client::connect(&socket)?;
        return workload_view::top(&client, Duration::from_secs_f64(*interval), *count);
    }
    let request = match &args.command {
        Cmd::Set { name, settings } => workload_view::set_request(name, settings)?,
        Cmd::Policy(cmd) => cmd.request()?,
        Cmd::Top { .. } => bail!("top makes its own requests"),
        Cmd::Define { file, restart } => {
            let file = definition::from_file(file)?;
            Request::Define {
                definition: file.definition,
                restart: restart.or(file.restart).unwrap_or_default(),
                segments: file.segments,
            }
        }
        Cmd::Undefine { name } => Request::Undefine { name: name.clone() },
        Cmd::Start { name } => Request::Start { name: name.clone() },
        Cmd::Stop { name } => Request::Stop { name: name.clone() },
        Cmd::Restart { name } => Request::Restart { name: name.clone() },
        Cmd::Kill { name } => Request::Kill { name: name.clone() },
        Cmd::Pause { name } => Request::Pause { name: name.clone() },
        Cmd::Resume { name } => Request::Resume { name: name.clone() },
        Cmd::List { .. } => Request::List,
        Cmd::Status { name, .. } => Request::Status { name: name.clone() },
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
        Cmd::Grants { .. } => Request::Grants,
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
        Cmd::Pool(PoolCmd::Show { .. }) => Request::PoolShow,
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
    };
    let client = Client::connect(&socket)?;
    let answer = client.call(&request)?;
    match args.command {
        Cmd::Define { .. } => println!("defined {}", expect_status(answer.0)?.name),
        Cmd::Undefine { name } => println!("undefined {name}"),
        Cmd::List { json } => {
            let Response::List { partitions } = answer.0 else {
                bail!(
                    "unexpected answer from the partition manager: {:?}",
                    answer.0
                );
            };
            if json {
                println!("{}", serde_json::json!({ "partitions": partitions }));
            } else {
                print_table(&partitions);
            }
        }
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
        Cmd::Top { .. } => {}
        Cmd::Policy(cmd) => cmd.print(answer.0)?,
        Cmd::Status { json, .. } => {
            let s = expect_status(answer.0)?;
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                print_status(&s);
            }
        }
        Cmd::Logs { .. } => {
            let mut f = log_file(answer)?;
            f.seek(SeekFrom::Start(0))?;
            std::io::copy(&mut f, &mut std::io::stdout().lock())?;
        }
        Cmd::Console { name } => console(&client, log_file(answer)?, &name)?,
        Cmd::Segment(_) => match answer.0 {
            Response::Segment { segment } => {
                println!("created {} ({} bytes)", segment.name, segment.size)
            }
            other => bail!("unexpected answer from the partition manager: {other:?}"),
        },
        Cmd::Grant { .. } | Cmd::Regrant { .. } => match answer.0 {
            Response::Grant { grant } => println!("{}", grant.cookie),
            other => bail!("unexpected answer from the partition manager: {other:?}"),
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
            other => bail!("unexpected answer from the partition manager: {other:?}"),
        },
        Cmd::Revoke { .. } => match answer.0 {
            Response::Revoked { revoked } => {
                let ids: Vec<String> = revoked.iter().map(|g| format!("#{}", g.id)).collect();
                println!("revoked {} grant(s): {}", revoked.len(), ids.join(" "));
            }
            other => bail!("unexpected answer from the partition manager: {other:?}"),
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
                for d in &doorbells {
                    println!(
                        "doorbell {}: {} ring {} -> {} {}",
                        d.id,
                        d.from,
                        d.ring,
                        d.to,
                        d.target()
                    );
                }
            }
            other => bail!("unexpected answer from the partition manager: {other:?}"),
        },
        Cmd::Pool(cmd) => match answer.0 {
            Response::Pool { pool } => match cmd {
                PoolCmd::Show { json: true } => println!("{}", serde_json::to_string(&pool)?),
                PoolCmd::Show { json: false } => print_pool(&pool),
                PoolCmd::Create { .. } | PoolCmd::Resize { .. } => println!(
                    "pool: {} MiB, {} paging device(s)",
                    pool.size_mib,
                    pool.paging.len()
                ),
                PoolCmd::AddPaging { device } => println!("paging device {device} added"),
                PoolCmd::RemovePaging { device } => println!("paging device {device} removed"),
            },
            other => bail!("unexpected answer from the partition manager: {other:?}"),
        },
        Cmd::Copy { .. } => match answer.0 {
            Response::Copied { bytes } => println!("copied {bytes} bytes"),
            other => bail!("unexpected answer from the partition manager: {other:?}"),
        },
        Cmd::Grants { json } => match answer.0 {
            Response::Grants {
                segments,
                grants,
                doorbells,
            } => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({ "segments": segments, "grants": grants, "doorbells": doorbells })
                    );
                } else {
                    print_grants(&segments, &grants);
                    for d in &doorbells {
                        println!(
                            "doorbell {}: {} ring {} -> {} {}",
                            d.id,
                            d.from,
                            d.ring,
                            d.to,
                            d.target()
                        );
                    }
                }
            }
            other => bail!("unexpected answer from the partition manager: {other:?}"),
        },
        Cmd::Dump { .. } => dump_view::show(answer, false, None)?,
        Cmd::Dumps { json, .. } => dump_view::show(answer, json, None)?,
        Cmd::DumpGet { file, .. } => dump_view::show(answer, false, Some(&file))?,
        _ => println!("{}", status_line(&expect_status(answer.0)?)),
    }
    Ok(())
}

/// Follows the console log and forwards stdin until the partition stops,
/// stdin asks to detach (Ctrl-] on a terminal), or the manager goes away.
fn console(client: &Client, mut log: File, name: &str) -> anyhow::Result<()> {
    const DETACH: u8 = 0x1d; // Ctrl-]
    let len = log.seek(SeekFrom::End(0))?;
    log.seek(SeekFrom::Start(len.saturating_sub(4096)))?;
    let stdin = std::io::stdin();
    // SAFETY: isatty only inspects the descriptor.
    let tty = unsafe { libc::isatty(stdin.as_raw_fd()) } == 1;
    let _raw = if tty {
        eprintln!("parctl: attached to {name}'s console; Ctrl-] detaches");
        Some(RawMode::enter()?)
    } else {
        None
    };
    let mut out = std::io::stdout().lock();
    let mut stdin_open = true;
    let mut buf = vec![0u8; 4096];
    let drain = |log: &mut File, out: &mut std::io::StdoutLock<'_>| -> std::io::Result<()> {
        std::io::copy(log, out)?;
        out.flush()
    };
    loop {
        drain(&mut log, &mut out)?;
        let mut fds = vec![libc::pollfd {
            fd: client.channel().stream().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if stdin_open {
            fds.push(libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if n <= 0 {
            continue;
        }
        if fds[0].revents != 0 {
            // The manager speaks only to end the session (or on error).
            let ended = client.receive();
            std::thread::sleep(Duration::from_millis(20));
            drain(&mut log, &mut out)?;
            return match ended {
                Ok((Response::ConsoleEnded { reason }, _)) => {
                    eprintln!("parctl: {name} stopped: {reason}");
                    Ok(())
                }
                Ok((other, _)) => bail!("unexpected answer from the partition manager: {other:?}"),
                Err(e) => Err(e.into()),
            };
        }
        if stdin_open && fds.get(1).is_some_and(|f| f.revents != 0) {
            let got = std::io::stdin().lock().read(&mut buf)?;
            if got == 0 {
                stdin_open = false;
                continue;
            }
            let data = &buf[..got];
            let (data, detach) = match data.iter().position(|&b| b == DETACH && tty) {
                Some(i) => (&data[..i], true),
                None => (data, false),
            };
            if !data.is_empty() {
                client
                    .channel()
                    .send(
                        &Request::ConsoleInput {
                            data: data.to_vec(),
                        },
                        &[],
                    )
                    .context("cannot send console input")?;
            }
            if detach {
                eprintln!("\r\nparctl: detached from {name}");
                return Ok(());
            }
        }
    }
}

/// The terminal in raw mode until dropped.
struct RawMode;

impl RawMode {
    fn enter() -> anyhow::Result<Self> {
        std::io::stdin()
            .lock()
            .set_raw_mode()
            .map_err(|e| anyhow!("cannot put the terminal in raw mode: {e}"))?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = std::io::stdin().lock().set_canon_mode();
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        // One line, whatever the error chain.
        eprintln!("parctl: error: {}", partition_manager::one_line(&e));
        std::process::exit(1);
    }
}
