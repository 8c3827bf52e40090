//! Syscall filters (seccomp-bpf, built with `seccompiler` as Firecracker
//! builds its own) for the VIOS's threads.
//!
//! Once its exports are open every thread of the VIOS may make only the
//! system calls its job needs; any other call kills the whole process
//! (`SECCOMP_RET_KILL_PROCESS`), so the partition manager sees the VIOS die
//! of SIGSYS, marks it crashed and its clients reconnect to a new one. The
//! roles, and why each call is on its list, are in docs/security.md:
//!
//! - [`Role::Server`]: everything that speaks a protocol: the managed-mode
//!   control thread (the manager's channel, re-attaching), the accept loop,
//!   the per-connection threads and relays, and vhost-user-backend's
//!   protocol thread (memory tables mapped from the client's fds, vring
//!   eventfds). These threads start one another, and a filter is inherited
//!   by the threads its thread creates, so they share one list; it is
//!   installed on the main thread before the first of them starts.
//! - [`Role::Worker`]: a queue worker thread of vhost-user-backend (created
//!   by the library, so under the server filter at first) adds this
//!   narrower filter when it handles its first queue event: epoll, the
//!   kick/call eventfds and the image's reads, writes, flushes and
//!   discards.
//!
//! `main` calls [`configure`] once with the `--seccomp` mode (it compiles
//! both filters, so one that cannot be built is a start-up error); the
//! threads call [`apply`]. Without `configure` (the crate used as a
//! library, its tests) `apply` does nothing.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// What a forbidden system call does (`--seccomp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// No filter at all.
    None,
    /// Kill the process (the default).
    #[default]
    Kill,
    /// Allow the call and let the kernel log it (audit, `dmesg`): for
    /// finding what a new code path needs.
    Log,
}

impl std::str::FromStr for SeccompMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(SeccompMode::None),
            "kill" => Ok(SeccompMode::Kill),
            "log" => Ok(SeccompMode::Log),
            other => Err(format!("`{other}`: use none, kill or log")),
        }
    }
}

/// A thread's job, which decides its filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Control channel, accept loop, connections, relays, vhost-user
    /// protocol.
    Server,
    /// A queue worker.
    Worker,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 2] = [Role::Server, Role::Worker];

    /// The role's name in logs and docs.
    pub fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Worker => "worker",
        }
    }
}

/// Errors of building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be compiled.
    #[error("cannot build the {0} seccomp filter: {1}")]
    Build(&'static str, String),
    /// The kernel refused the filter.
    #[error("cannot install the {0} seccomp filter: {1}")]
    Install(&'static str, seccompiler::Error),
}

/// One role's filters: the allow-list, and a second filter that answers
/// `clone3` with ENOSYS so the C library falls back to `clone`, whose flags
/// a filter can check (Firecracker does the same). The kernel runs both and
/// takes the stricter answer.
pub struct RoleFilter {
    allow: BpfProgram,
    no_clone3: BpfProgram,
}

/// The flags glibc's `pthread_create` passes to `clone`: a thread, never a
/// new process.
const THREAD_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// A syscall allowed with any arguments, or only with one of several
/// argument conditions.
pub enum Allow {
    /// Any arguments.
    Any(i64),
    /// `syscall`, argument `arg` (32 bits) equal to one of `values`.
    ArgIn(i64, u8, Vec<u64>),
    /// `syscall`, argument `arg` with none of the bits of `mask` set.
    ArgClear(i64, u8, u64),
}

impl Allow {
    /// The system call this entry allows.
    pub fn syscall(&self) -> i64 {
        match self {
            Allow::Any(s) | Allow::ArgIn(s, ..) | Allow::ArgClear(s, ..) => *s,
        }
    }
}

fn add(rules: &mut Rules, role: Role, allow: Allow) -> Result<(), SeccompError> {
    let bad = |e: seccompiler::BackendError| SeccompError::Build(role.name(), e.to_string());
    let (sys, new): (i64, Vec<SeccompRule>) = match allow {
        Allow::Any(sys) => (sys, Vec::new()),
        Allow::ArgIn(sys, arg, values) => {
            let mut v = Vec::new();
            for value in values {
                let cond =
                    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
                        .map_err(bad)?;
                v.push(SeccompRule::new(vec![cond]).map_err(bad)?);
            }
            (sys, v)
        }
        Allow::ArgClear(sys, arg, mask) => {
            let cond = SeccompCondition::new(
                arg,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(mask),
                0,
            )
            .map_err(bad)?;
            (sys, vec![SeccompRule::new(vec![cond]).map_err(bad)?])
        }
    };
    match rules.get_mut(&sys) {
        // Already allowed with any arguments.
        Some(old) if old.is_empty() => {}
        Some(_) if new.is_empty() => {
            rules.insert(sys, new);
        }
        Some(old) => old.extend(new),
        None => {
            rules.insert(sys, new);
        }
    }
    Ok(())
}

/// What every thread needs: Rust's std, the allocator, `tracing` to stderr,
/// thread exit, and an abort on panic.
fn common() -> Vec<Allow> {
    use Allow::*;
    let no_exec = libc::PROT_EXEC as u64;
    vec![
        Any(libc::SYS_brk),
        ArgClear(libc::SYS_mmap, 2, no_exec),
        ArgClear(libc::SYS_mprotect, 2, no_exec),
        Any(libc::SYS_munmap),
        Any(libc::SYS_mremap),
        Any(libc::SYS_madvise),
        Any(libc::SYS_futex),
        Any(libc::SYS_sched_yield),
        Any(libc::SYS_write),
        Any(libc::SYS_writev),
        Any(libc::SYS_read),
        Any(libc::SYS_close),
        Any(libc::SYS_clock_gettime),
        Any(libc::SYS_clock_nanosleep),
        Any(libc::SYS_nanosleep),
        Any(libc::SYS_getrandom),
        // What an open descriptor is (std's `File::metadata`).
        Any(libc::SYS_statx),
        Any(libc::SYS_fstat),
        Any(libc::SYS_newfstatat),
        // Descriptor flags (std's `try_clone`, non-blocking mode).
        Any(libc::SYS_fcntl),
        Any(libc::SYS_rt_sigreturn),
        Any(libc::SYS_rt_sigprocmask),
        Any(libc::SYS_sigaltstack),
        Any(libc::SYS_restart_syscall),
        Any(libc::SYS_exit),
        Any(libc::SYS_exit_group),
        // abort(): raise(SIGABRT).
        Any(libc::SYS_getpid),
        Any(libc::SYS_gettid),
        Any(libc::SYS_tgkill),
        // Waiting for the kick/call/exit eventfds.
        Any(libc::SYS_epoll_wait),
        Any(libc::SYS_epoll_pwait),
        Any(libc::SYS_epoll_ctl),
        // The image.
        Any(libc::SYS_pread64),
        Any(libc::SYS_pwrite64),
        Any(libc::SYS_preadv),
        Any(libc::SYS_pwritev),
        Any(libc::SYS_fsync),
        Any(libc::SYS_fdatasync),
        Any(libc::SYS_fallocate),
    ]
}

/// The allow-list of `role`.
pub fn allowed(role: Role) -> Vec<Allow> {
    use Allow::*;
    let mut list = common();
    if role == Role::Server {
        list.extend([
            // Threads (pthread_create through `clone`, never a process);
            // clone3 is refused with ENOSYS by the second filter, allowed
            // here so that answer wins over this list's default.
            ArgIn(libc::SYS_clone, 0, vec![THREAD_CLONE_FLAGS]),
            Any(libc::SYS_clone3),
            Any(libc::SYS_set_robust_list),
            Any(libc::SYS_rseq),
            Any(libc::SYS_sched_getaffinity),
            // A thread's name; a worker adding its own filter.
            ArgIn(
                libc::SYS_prctl,
                0,
                vec![libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
            ),
            ArgIn(
                libc::SYS_seccomp,
                0,
                vec![u64::from(libc::SECCOMP_SET_MODE_FILTER)],
            ),
            // Messages with descriptors: the manager's channel, vhost-user.
            Any(libc::SYS_sendmsg),
            Any(libc::SYS_recvmsg),
            Any(libc::SYS_sendto),
            Any(libc::SYS_recvfrom),
            Any(libc::SYS_poll),
            Any(libc::SYS_ppoll),
            Any(libc::SYS_shutdown),
            Any(libc::SYS_fcntl),
            Any(libc::SYS_dup),
            Any(libc::SYS_eventfd2),
            Any(libc::SYS_epoll_create1),
            // The size of an image a connection exports.
            Any(libc::SYS_lseek),
            Any(libc::SYS_rt_sigaction),
            // Unix sockets only: listening, accepting, dialing.
            ArgIn(libc::SYS_socket, 0, vec![libc::AF_UNIX as u64]),
            Any(libc::SYS_bind),
            Any(libc::SYS_listen),
            Any(libc::SYS_accept4),
            Any(libc::SYS_connect),
            Any(libc::SYS_setsockopt),
            // SO_PEERCRED of a re-attached manager, checked against our
            // user.
            Any(libc::SYS_getsockopt),
            Any(libc::SYS_geteuid),
            // The relay's private socket directory, and the random bytes
            // that name it.
            Any(libc::SYS_openat),
            Any(libc::SYS_mkdir),
            Any(libc::SYS_mkdirat),
            Any(libc::SYS_unlink),
            Any(libc::SYS_unlinkat),
            Any(libc::SYS_rmdir),
            Any(libc::SYS_getdents64),
        ]);
    }
    list
}

/// The distinct system calls `role` may make (some only with certain
/// arguments), sorted.
pub fn syscalls(role: Role) -> Vec<i64> {
    let mut v: Vec<i64> = allowed(role).iter().map(Allow::syscall).collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn arch() -> Result<seccompiler::TargetArch, SeccompError> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Build("any", e.to_string()))
}

/// Compiles `role`'s filters for `mode`; `None` for [`SeccompMode::None`].
pub fn build(role: Role, mode: SeccompMode) -> Result<Option<RoleFilter>, SeccompError> {
    let otherwise = match mode {
        SeccompMode::None => return Ok(None),
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
    };
    let bad = |e: seccompiler::BackendError| SeccompError::Build(role.name(), e.to_string());
    let mut rules = Rules::new();
    for allow in allowed(role) {
        add(&mut rules, role, allow)?;
    }
    let compile =
        |f: SeccompFilter| -> Result<BpfProgram, SeccompError> { f.try_into().map_err(bad) };
    let allow =
        compile(SeccompFilter::new(rules, otherwise, SeccompAction::Allow, arch()?).map_err(bad)?)?;
    let no_clone3 = compile(
        SeccompFilter::new(
            [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch()?,
        )
        .map_err(bad)?,
    )?;
    Ok(Some(RoleFilter { allow, no_clone3 }))
}

/// Installs `filter` on the calling thread (and so on every thread it
/// creates from now on). Sets `no_new_privs` first, as seccomp requires.
pub fn install(role: Role, filter: &RoleFilter) -> Result<(), SeccompError> {
    let err = |e| SeccompError::Install(role.name(), e);
    seccompiler::apply_filter(&filter.no_clone3).map_err(err)?;
    seccompiler::apply_filter(&filter.allow).map_err(err)?;
    Ok(())
}

/// The compiled filters, set once by [`configure`].
static FILTERS: OnceLock<Vec<(Role, RoleFilter)>> = OnceLock::new();

/// Compiles every role's filter for `mode`; from then on [`apply`] installs
/// them. Called once, by `main`.
pub fn configure(mode: SeccompMode) -> Result<(), SeccompError> {
    let mut filters = Vec::new();
    for role in Role::ALL {
        if let Some(f) = build(role, mode)? {
            filters.push((role, f));
        }
    }
    tracing::debug!(?mode, "seccomp filters compiled");
    let _ = FILTERS.set(filters);
    Ok(())
}

/// Installs `role`'s filter on the calling thread, if [`configure`] set one.
/// A thread that cannot filter itself must not run: the process exits.
pub fn apply(role: Role) {
    let Some(filter) = FILTERS
        .get()
        .and_then(|all| all.iter().find(|(r, _)| *r == role))
    else {
        return;
    };
    match install(role, &filter.1) {
        Ok(()) => {
            let thread = std::thread::current();
            tracing::debug!(
                role = role.name(),
                thread = thread.name().unwrap_or("?"),
                "seccomp filter installed"
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "exiting: a thread runs only with its filter");
            std::process::exit(1);
        }
    }
}

/// [`apply`] once per thread, for threads a library creates: they call
/// into the VIOS when they first have work, and filter themselves then.
pub fn apply_once(role: Role) {
    thread_local!(static DONE: Cell<bool> = const { Cell::new(false) });
    if !DONE.with(|d| d.replace(true)) {
        apply(role);
    }
}
