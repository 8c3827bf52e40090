//! `vmm`: run one partition from a JSON definition and/or flags.

use clap::Parser;
use std::path::PathBuf;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;
use vmm::config::{
    Console, DiskConfig, DiskSource, MemoryMode, MemorySpec, OnCrash, PartitionDefinition,
};
use vmm::devices::exit::{ExitReason, ExitSignal};

/// parvm's per-partition virtual machine monitor: boots one partition on KVM.
///
/// Exit status: 0 when the guest resets or powers off or on SIGTERM/SIGINT;
/// 1 when the partition cannot be started (the error names the problem);
/// 2 when the guest crashes (triple fault, KVM internal error), with the
/// vCPU registers on stderr.
#[derive(Parser, Debug)]
#[command(name = "vmm", version)]
struct Args {
    /// Partition definition (JSON); flags given beside it override its fields.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Partition name (used in logs).
    #[arg(long)]
    name: Option<String>,
    /// Kernel: ELF vmlinux (PVH or 64-bit entry) or bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Guest RAM in MiB (default 128).
    #[arg(long, value_name = "N")]
    memory_mib: Option<u64>,
    /// Number of vCPUs (1-254, default 1).
    #[arg(long, value_name = "N")]
    vcpus: Option<u64>,
    /// Serial console: stdout, none, or a file path (appended to).
    #[arg(long, value_name = "stdout|none|PATH")]
    console: Option<String>,
    /// A virtio-blk disk: raw image PATH, `ro` for read-only, `id=` for its
    /// name (default diskN). Repeat for several disks; replaces the file's.
    #[arg(long, value_name = "PATH[,ro][,id=ID]")]
    disk: Vec<String>,
    /// Shared memory (Active Memory Sharing, docs/ams.md): the paging
    /// device, a vhost-user-blk export (`vhost-user:SOCKET`, or
    /// `vhost-user-fd:N` as the partition manager passes it). Puts the
    /// partition in shared memory mode; `--memory-mib` is its logical size.
    #[arg(long, value_name = "vhost-user:SOCKET|vhost-user-fd:N")]
    paging: Option<String>,
    /// Shared memory: a second connection to the same paging device, for
    /// the pager's evictor thread (`vhost-user-fd:M`; a `vhost-user:SOCKET`
    /// device is dialled twice without it).
    #[arg(
        long,
        value_name = "vhost-user:SOCKET|vhost-user-fd:M",
        requires = "paging"
    )]
    paging_evictor: Option<String>,
    /// Shared memory: at most this much guest RAM stays resident (default:
    /// all of it until the partition manager sets a target).
    #[arg(long, value_name = "N")]
    resident_mib: Option<u64>,
    /// Firmware-assisted dump (docs/dump.md): the dump disk, a
    /// vhost-user-blk export (`vhost-user:SOCKET`, or `vhost-user-fd:N` as
    /// the partition manager passes it). After a crash the VMM writes an
    /// ELF core of the guest there before it exits.
    #[arg(long, value_name = "vhost-user:SOCKET|vhost-user-fd:N")]
    dump_disk: Option<String>,
    /// A guest with no port or MMIO exit for this many seconds has failed
    /// (dumped like a crash).
    #[arg(long, value_name = "SECONDS")]
    watchdog_secs: Option<u64>,
    /// KVM device to use.
    #[arg(long, value_name = "PATH", default_value = vmm::KVM_DEVICE)]
    kvm_device: PathBuf,
    /// Inherited socket to the partition manager (set by the manager).
    #[arg(long, value_name = "N")]
    control_fd: Option<i32>,
    /// The manager's socket, to reconnect to if the manager restarts (set by
    /// the manager; the token comes on the control channel).
    #[arg(long, value_name = "PATH", requires = "control_fd")]
    manager_socket: Option<PathBuf>,
    /// System-call filters per thread (docs/security.md): `kill` ends the
    /// VMM on any call outside its thread's list; `log` only logs it (kernel
    /// audit log, `dmesg`), for diagnosis; `none` installs no filter.
    #[arg(
        long,
        value_name = "kill|log|none",
        env = "PARVM_SECCOMP",
        default_value = "kill"
    )]
    seccomp: vmm::seccomp::SeccompMode,
}

/// The partition's exit signal, for the SIGTERM/SIGINT handler (set once,
/// never freed: the process exits with it alive).
static EXIT: AtomicPtr<ExitSignal> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_terminate(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let exit = EXIT.load(Ordering::SeqCst);
    // SAFETY: EXIT is null or a pointer from Arc::into_raw that is never
    // released, so it is valid for the whole process.
    if let Some(exit) = unsafe { exit.as_ref() } {
        exit.request_from_signal_handler(sig);
    }
}

fn run(args: Args) -> anyhow::Result<i32> {
    let file = match &args.config {
        Some(path) => PartitionDefinition::from_file(path)?,
        None => PartitionDefinition::default(),
    };
    let memory = shared_memory_flags(
        file.memory.as_deref(),
        [args.paging.as_deref(), args.paging_evictor.as_deref()],
        args.resident_mib,
    )?;
    let on_crash = crash_flags(
        file.on_crash.as_deref(),
        args.dump_disk.as_deref(),
        args.watchdog_secs,
    )?;
    let flags = PartitionDefinition {
        name: args.name,
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        console: args.console.map(Console::try_from).transpose()?,
        disks: if args.disk.is_empty() {
            None
        } else {
            Some(
                args.disk
                    .iter()
                    .enumerate()
                    .map(|(i, d)| DiskConfig::from_flag(d, i))
                    .collect::<Result<_, _>>()?,
            )
        },
        memory,
        on_crash,
        ..Default::default()
    };
    let config = file.overridden_by(flags).validate()?;
    vmm::seccomp::configure(args.seccomp)?;
    let mut vmm = vmm::Vmm::new(config, &args.kvm_device)?;
    let control = vmm::control::Control::attach(args.control_fd, args.manager_socket, &vmm)?;
    if let Some(c) = &control {
        vmm.set_detach(c.detacher());
    }

    EXIT.store(
        Arc::into_raw(vmm.exit_signal()).cast_mut(),
        Ordering::SeqCst,
    );
    for sig in [libc::SIGTERM, libc::SIGINT] {
        vmm_sys_util::signal::register_signal_handler(sig, on_terminate)?;
    }
    let reason = vmm.run()?;
    if let Some(control) = control {
        control.finish(&reason);
    }
    match &reason {
        ExitReason::Crash {
            reason, registers, ..
        } => {
            eprintln!("vmm: guest crashed: {reason}");
            eprint!("{registers}");
        }
        ExitReason::Signal(sig) => tracing::info!(signal = sig, "stopped by signal"),
        other => tracing::info!(reason = ?other, "guest stopped"),
    }
    Ok(reason.exit_code())
}

/// The file's memory section with `--paging` (and `--paging-evictor`)
/// and `--resident-mib` applied (either puts the partition in shared
/// mode); `None` without either flag.
fn shared_memory_flags(
    file: Option<&MemorySpec>,
    [paging, evictor]: [Option<&str>; 2],
    resident_mib: Option<u64>,
) -> anyhow::Result<Option<Box<MemorySpec>>> {
    if paging.is_none() && resident_mib.is_none() {
        return Ok(None);
    }
    let mut spec = file.cloned().unwrap_or_default();
    spec.mode = MemoryMode::Shared;
    let parse = |flag: &str, p: &str| -> anyhow::Result<DiskSource> {
        let source = DiskSource::parse(p).map_err(|m| anyhow::anyhow!("--{flag} {p}: {m}"))?;
        if !matches!(
            source,
            DiskSource::VhostUser(_) | DiskSource::VhostUserFd(_)
        ) {
            anyhow::bail!("--{flag} {p}: use vhost-user:SOCKET or vhost-user-fd:N");
        }
        Ok(source)
    };
    if let Some(p) = paging {
        spec.paging = Some(parse("paging", p)?);
        spec.paging_evictor = evictor.map(|e| parse("paging-evictor", e)).transpose()?;
    }
    if resident_mib.is_some() {
        spec.resident_mib = resident_mib;
    }
    Ok(Some(Box::new(spec)))
}

/// The file's `on_crash` with `--dump-disk` and `--watchdog-secs` applied;
/// `None` without either flag.
fn crash_flags(
    file: Option<&OnCrash>,
    dump_disk: Option<&str>,
    watchdog_secs: Option<u64>,
) -> anyhow::Result<Option<Box<OnCrash>>> {
    if dump_disk.is_none() && watchdog_secs.is_none() {
        return Ok(None);
    }
    let mut on_crash = file.cloned().unwrap_or_default();
    if let Some(d) = dump_disk {
        let source = DiskSource::parse(d).map_err(|m| anyhow::anyhow!("--dump-disk {d}: {m}"))?;
        if !matches!(
            source,
            DiskSource::VhostUser(_) | DiskSource::VhostUserFd(_)
        ) {
            anyhow::bail!("--dump-disk {d}: use vhost-user:SOCKET or vhost-user-fd:N");
        }
        on_crash.dump = Some(source);
    }
    if watchdog_secs.is_some() {
        on_crash.watchdog_secs = watchdog_secs;
    }
    Ok(Some(Box::new(on_crash)))
}

fn main() {
    parvm_protocol::cli::init_logging(tracing::Level::WARN);
    let args = Args::parse();
    match run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("vmm: error: {}", parvm_protocol::cli::one_line(&e));
            std::process::exit(1);
        }
    }
}
