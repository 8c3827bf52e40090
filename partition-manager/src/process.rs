//! The processes behind partitions: spawning a `vmm` (or `vios`) with one
//! end of a socketpair as its control channel, and what the manager knows
//! of a process by its pid (alive, start time, signals). Also the small
//! helper threads every part uses.
//!
//! A spawned process gets its own session (it survives the manager), the
//! control socket as fd 3, brokered VIOS disk sockets as fds 4, 5, ...
//! ([`FIRST_DISK_FD`]), its definition as a file
//! (`--config`; run as another user, an inherited descriptor too:
//! [`spawn`]); the reconnect token is the first message on the control
//! channel (`Token`), never in its environment or command line (both
//! readable in `/proc`).

use crate::config::ManagerConfig;
use crate::error::ManagerError;
use crate::run_as::{Access, RunAs, RunAsError};
use parvm_config::{Console, Definition, DiskSource, MemoryMode};
use parvm_protocol::{Channel, ManagerToVios, ManagerToVmm};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

/// First fd number a client VMM finds its brokered VIOS disk sockets on (3
/// is the control channel).
pub const FIRST_DISK_FD: i32 = 4;

/// The `vios` binary: next to the `vmm` binary the manager runs.
pub fn vios_binary(vmm: &Path) -> PathBuf {
    vmm.with_file_name("vios")
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The start time of process `pid` (clock ticks after boot), to tell a
/// process from a later one that reuses its pid.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces and ')').
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state); starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` started at `start` is still alive (not a zombie).
pub(crate) fn process_alive(pid: u32, start: Option<u64>) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let state = stat[close + 1..].split_whitespace().next();
    if matches!(state, Some("Z") | Some("X")) {
        return false;
    }
    start.is_none() || process_start_time(pid) == start
}

/// 128 random bits, hex.
pub(crate) fn random_token() -> Result<String, std::io::Error> {
    let buf = crate::grants::random_bytes()?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn send_signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid the registry believes is our VMM.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// The last non-empty line of a file (the vmm's error on a failed start).
pub(crate) fn last_line(path: &Path) -> Option<String> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut s = String::new();
    f.read_to_string(&mut s).ok()?;
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}

/// Starts a small helper thread; failure to start one is logged (the
/// system is out of threads, nothing better can be done).
pub fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new()
        .name(name.into())
        .stack_size(256 << 10)
        .spawn(f)
    {
        tracing::error!(thread = name, error = %e, "cannot start a thread");
    }
}

/// A process just spawned for a partition.
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) pid_start: Option<u64>,
    /// The reconnect token it was given.
    pub(crate) token: String,
    /// The manager's end of the control channel: the write side (with a
    /// write timeout) and the read side for the channel thread.
    pub(crate) writer: Channel,
    pub(crate) reader: Channel,
}

/// Whether `user` can run the process of `definition`: reach every file it
/// opens by path ([`files_needed`]) and, for a shared-memory partition,
/// have its pager.
pub(crate) fn check_run_as(
    cfg: &ManagerConfig,
    user: &RunAs,
    definition: &Definition,
) -> Result<(), RunAsError> {
    user.check(&files_needed(cfg, definition))?;
    if let Definition::Partition(def) = definition {
        if def
            .memory
            .as_deref()
            .is_some_and(|m| m.mode == MemoryMode::Shared)
        {
            user.check_userfaultfd()?;
        }
    }
    Ok(())
}

/// What the process of `definition` opens by path, and how: what the
/// `--run-as` user must be able to reach before the manager starts it.
/// (Its definition, console and logs come from the manager as inherited
/// descriptors; `vios:` disks as brokered sockets.)
fn files_needed(cfg: &ManagerConfig, definition: &Definition) -> Vec<(PathBuf, Access)> {
    let disk = |read_only: bool| {
        if read_only {
            Access::Read
        } else {
            Access::ReadWrite
        }
    };
    let mut files = Vec::new();
    // A bare `vmm` is looked up on PATH by exec itself.
    let mut binary = |path: PathBuf| {
        if path.is_absolute() {
            files.push((path, Access::Execute));
        }
    };
    match definition {
        Definition::Partition(_) => binary(cfg.vmm.clone()),
        Definition::Vios(_) => binary(vios_binary(&cfg.vmm)),
    }
    match definition {
        Definition::Partition(def) => {
            files.push((cfg.kvm_device().to_path_buf(), Access::ReadWrite));
            for path in [&def.kernel, &def.initrd].into_iter().flatten() {
                files.push((path.clone(), Access::Read));
            }
            let paging = def.memory.as_deref().and_then(|m| m.paging.as_ref());
            let sources = def.disks.iter().flatten().map(|d| (&d.source, d.read_only));
            for (source, read_only) in sources.chain(paging.map(|p| (p, false))) {
                match source {
                    DiskSource::Image(path) => files.push((path.clone(), disk(read_only))),
                    DiskSource::VhostUser(socket) => files.push((socket.clone(), Access::Connect)),
                    DiskSource::VhostUserFd(_) | DiskSource::Vios { .. } => {}
                }
            }
        }
        Definition::Vios(def) => {
            for d in &def.disks {
                files.push((d.path.clone(), disk(d.read_only)));
            }
        }
    }
    files
}

/// `fd` duplicated to a number of at least 64 (close-on-exec), out of the
/// way of the numbers the child gets its descriptors on.
fn dup_high(fd: &impl AsRawFd, what: &str) -> Result<OwnedFd, ManagerError> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates a valid fd we own; the copy is
    // owned by the OwnedFd built from it.
    let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 64) };
    if high < 0 {
        return Err(ManagerError::Io {
            what: format!("cannot duplicate {what}"),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `high` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}

/// Spawns the process of partition `name` running `definition` (its
/// `vios:` disks already resolved to `disk_fds` by the VIOS broker).
///
/// With `--run-as`, the child cannot reach the state directory (private to
/// the operator): its definition and console log are given to that user
/// (`fchown`) and inherited as descriptors after the disk sockets, which
/// the child opens as `/proc/self/fd/N`; its own log is its stdout and
/// stderr, as always.
pub(crate) fn spawn(
    cfg: &ManagerConfig,
    name: &str,
    mut definition: Definition,
    disk_fds: Vec<OwnedFd>,
) -> Result<Spawned, ManagerError> {
    let io = |what: String| move |source| ManagerError::Io { what, source };

    // The definition as vmm (or vios) reads it; the console always goes
    // to the log.
    let def_path = cfg.definition_file(name);
    match &mut definition {
        Definition::Partition(def) => {
            def.console = Some(Console::File(cfg.console_log(name)));
        }
        // A VIOS has no console.
        Definition::Vios(def) => def.console = None,
    }
    let text = serde_json::to_string(&definition)
        .map_err(|e| ManagerError::BadRequest(format!("definition of `{name}`: {e}")))?;
    std::fs::write(&def_path, text).map_err(io(format!("cannot write {}", def_path.display())))?;
    let vmm_log_path = cfg.vmm_log(name);
    let vmm_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&vmm_log_path)
        .map_err(io(format!("cannot open {}", vmm_log_path.display())))?;
    let vmm_log2 = vmm_log
        .try_clone()
        .map_err(io("cannot duplicate the vmm log".into()))?;

    let (ours, theirs) = UnixStream::pair().map_err(io("socketpair".into()))?;
    let token = random_token().map_err(io("getrandom".into()))?;
    let theirs_fd = theirs.as_raw_fd();
    // What the child inherits on 4, 5, ...: the brokered disk sockets,
    // then (run as another user) its definition and console log; each
    // moved above the numbers they go to.
    let mut inherited = Vec::with_capacity(disk_fds.len() + 2);
    for fd in &disk_fds {
        inherited.push(dup_high(fd, "a VIOS disk socket")?);
    }
    drop(disk_fds);
    let mut config_arg = def_path.clone();
    let mut console_arg = cfg.console_log(name);
    if let Some(user) = &cfg.run_as {
        let mut own = |path: &Path, file: File| -> Result<PathBuf, ManagerError> {
            std::os::unix::fs::fchown(&file, Some(user.uid), Some(user.gid)).map_err(io(
                format!("cannot give {} to {}", path.display(), user.who()),
            ))?;
            let n = FIRST_DISK_FD + inherited.len() as i32;
            inherited.push(dup_high(&file, "a partition file")?);
            Ok(PathBuf::from(format!("/proc/self/fd/{n}")))
        };
        let def_file =
            File::open(&def_path).map_err(io(format!("cannot open {}", def_path.display())))?;
        config_arg = own(&def_path, def_file)?;
        if !definition.is_vios() {
            let console = cfg.console_log(name);
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&console)
                .map_err(io(format!("cannot open {}", console.display())))?;
            console_arg = own(&console, file)?;
        }
    }
    let inherited_raw: Vec<i32> = inherited.iter().map(|f| f.as_raw_fd()).collect();
    // A VIOS partition runs the `vios` binary next to `vmm`, with the
    // same flags.
    let program: PathBuf = if definition.is_vios() {
        vios_binary(&cfg.vmm)
    } else {
        cfg.vmm.clone()
    };
    let mut cmd = Command::new(&program);
    cmd.arg("--config")
        .arg(&config_arg)
        .arg("--console")
        .arg(&console_arg)
        .arg("--control-fd")
        .arg("3")
        .arg("--manager-socket")
        .arg(&cfg.socket)
        .stdin(Stdio::null())
        .stdout(vmm_log)
        .stderr(vmm_log2);
    if let (Some(kvm), false) = (&cfg.kvm_device, definition.is_vios()) {
        cmd.arg("--kvm-device").arg(kvm);
    }
    let run_as = cfg.run_as.clone();
    if run_as.is_some() {
        // Nothing of the operator's: no runtime directory, no working
        // directory the user may not enter.
        cmd.env_remove("XDG_RUNTIME_DIR").current_dir("/");
    }
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe calls (setsid, dup2, fcntl, and those of
    // RunAs::drop_privileges) on memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session: the VMM survives the manager and its
            // terminal.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if theirs_fd == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(theirs_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Disk sockets and files on 4, 5, ... (dup2 clears
            // close-on-exec).
            for (i, high) in inherited_raw.iter().enumerate() {
                if libc::dup2(*high, FIRST_DISK_FD + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Last, once nothing else needs the manager's rights.
            if let Some(user) = &run_as {
                user.drop_privileges()?;
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| ManagerError::Spawn {
        path: program.clone(),
        source,
    })?;
    drop(theirs);
    drop(inherited);
    let pid = child.id();
    let pid_start = process_start_time(pid);
    let writer = Channel::new(
        ours.try_clone()
            .map_err(io("cannot clone the control socket".into()))?,
    );
    let _ = writer
        .stream()
        .set_write_timeout(Some(Duration::from_secs(2)));
    // The token goes first on the channel (the socket buffers it until the
    // process reads); a process that never gets it cannot re-attach.
    let sent = if definition.is_vios() {
        writer.send(
            &ManagerToVios::Token {
                token: token.clone(),
            },
            &[],
        )
    } else {
        writer.send(
            &ManagerToVmm::Token {
                token: token.clone(),
            },
            &[],
        )
    };
    if let Err(e) = sent {
        tracing::warn!(partition = %name, error = %e, "cannot send the reconnect token");
    }
    Ok(Spawned {
        child,
        pid,
        pid_start,
        token,
        writer,
        reader: Channel::new(ours),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn our_own_start_time_is_found_and_matches() {
        let me = std::process::id();
        let t = process_start_time(me).unwrap();
        assert!(process_alive(me, Some(t)));
        assert!(!process_alive(me, Some(t + 1)));
        assert!(!process_alive(u32::MAX - 1, None));
    }

    #[test]
    fn tokens_are_128_bit_hex_and_differ() {
        let a = random_token().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, random_token().unwrap());
        assert!(constant_time_eq(a.as_bytes(), a.as_bytes()));
        assert!(!constant_time_eq(a.as_bytes(), b"x"));
    }
}
