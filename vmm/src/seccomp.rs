//! Syscall filters (seccomp-bpf, built with `seccompiler` as Firecracker
//! builds its own) for each thread role of the VMM.
//!
//! Once set-up is over every thread may make only the system calls its job
//! needs; any other call kills the whole process (`SECCOMP_RET_KILL_PROCESS`),
//! so the partition manager sees the VMM die of SIGSYS and marks the
//! partition crashed. The roles, and why each call is on its list, are in
//! docs/security.md:
//!
//! - [`Role::Vcpu`]: the KVM_RUN loop and the exit handling that runs on it
//!   (port I/O and MMIO devices, virtio-mmio activation, hcalls and fault
//!   reports sent on the control channel, the vhost-user frontend);
//! - [`Role::Device`]: the event-manager thread of the in-VMM virtio-blk
//!   (eventfds, epoll, reads and writes of the disk image);
//! - [`Role::Control`]: the control channel (SCM_RIGHTS messages, mapping of
//!   granted segments as KVM memory slots, doorbells as ioeventfd/irqfd,
//!   re-attaching to a restarted manager);
//! - [`Role::Main`]: the main thread once the others run (console input,
//!   kicking vCPUs out of KVM_RUN, the exit report).
//!
//! `main` calls [`configure`] once with the `--seccomp` mode; it compiles
//! every role's filter, so a filter that cannot be built is a start-up
//! error. Each thread then calls [`apply`] with its role before it does its
//! work. Without `configure` (the crate used as a library, its tests)
//! `apply` does nothing. A filter is inherited by the threads its thread
//! creates afterwards: the vhost-user call relay a vCPU starts when the
//! guest activates a vhost-user disk runs under the vCPU filter.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr};

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
    Main,
    Vcpu,
    Device,
    Control,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Main, Role::Vcpu, Role::Device, Role::Control];

    pub fn name(self) -> &'static str {
        match self {
            Role::Main => "main",
            Role::Vcpu => "vcpu",
            Role::Device => "device",
            Role::Control => "control",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {0} seccomp filter: {1}")]
    Build(&'static str, String),
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

// KVM ioctls the threads make after set-up (kvm-ioctls keeps its numbers
// private; these are the same definitions).
const KVMIO: u32 = 0xae;
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_bindings::kvm_sregs);
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_bindings::kvm_userspace_memory_region
);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_bindings::kvm_irqfd);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_bindings::kvm_ioeventfd);
ioctl_iow_nr!(
    KVM_SET_GSI_ROUTING,
    KVMIO,
    0x6a,
    kvm_bindings::kvm_irq_routing
);

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
/// the VMM's signal handlers (SIGTERM writes the exit eventfd, the vCPU kick
/// is a no-op handler), thread exit, and an abort on panic.
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
    ]
}

/// Starting threads (pthread_create through `clone`, never a process).
fn spawning() -> Vec<Allow> {
    use Allow::*;
    vec![
        ArgIn(libc::SYS_clone, 0, vec![THREAD_CLONE_FLAGS]),
        // Refused with ENOSYS by the second filter; allowed here so that
        // answer wins over this list's default.
        Any(libc::SYS_clone3),
        Any(libc::SYS_set_robust_list),
        Any(libc::SYS_rseq),
        // The new thread's name.
        ArgIn(libc::SYS_prctl, 0, vec![libc::PR_SET_NAME as u64]),
        Any(libc::SYS_sched_getaffinity),
    ]
}

/// Talking to the manager or a vhost-user backend over a Unix socket, with
/// descriptors beside the messages.
fn unix_messages() -> Vec<Allow> {
    use Allow::*;
    vec![
        Any(libc::SYS_sendmsg),
        Any(libc::SYS_recvmsg),
        Any(libc::SYS_recvfrom),
        Any(libc::SYS_sendto),
        Any(libc::SYS_read),
        Any(libc::SYS_poll),
        Any(libc::SYS_ppoll),
        Any(libc::SYS_shutdown),
        Any(libc::SYS_fcntl),
        Any(libc::SYS_dup),
        Any(libc::SYS_eventfd2),
    ]
}

/// Dialing a Unix socket by path (manager re-attach, vhost-user backend).
fn unix_connect() -> Vec<Allow> {
    use Allow::*;
    vec![
        ArgIn(libc::SYS_socket, 0, vec![libc::AF_UNIX as u64]),
        Any(libc::SYS_connect),
        Any(libc::SYS_setsockopt),
        // SO_PEERCRED of a re-attached manager, checked against our user.
        Any(libc::SYS_getsockopt),
        Any(libc::SYS_geteuid),
    ]
}

/// The distinct system calls `role` may make (some only with certain
/// arguments), sorted.
pub fn syscalls(role: Role) -> Vec<i64> {
    let mut v: Vec<i64> = allowed(role).iter().map(Allow::syscall).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The allow-list of `role`.
pub fn allowed(role: Role) -> Vec<Allow> {
    use Allow::*;
    let mut list = common();
    match role {
        Role::Main => {
            list.extend([
                Any(libc::SYS_poll),
                Any(libc::SYS_ppoll),
                Any(libc::SYS_read),
                // The terminal's settings come back when the VMM ends.
                ArgIn(libc::SYS_ioctl, 1, vec![libc::TCGETS, libc::TCSETS]),
                // The exit report on the control channel.
                Any(libc::SYS_sendmsg),
                Any(libc::SYS_fcntl),
                Any(libc::SYS_shutdown),
            ]);
        }
        Role::Vcpu => {
            list.push(ArgIn(
                libc::SYS_ioctl,
                1,
                vec![KVM_RUN(), KVM_GET_REGS(), KVM_GET_SREGS()],
            ));
            list.extend(unix_messages());
            list.extend(unix_connect());
            list.extend(spawning());
        }
        Role::Device => {
            list.extend([
                Any(libc::SYS_epoll_wait),
                Any(libc::SYS_epoll_pwait),
                Any(libc::SYS_epoll_ctl),
                Any(libc::SYS_read),
                Any(libc::SYS_pread64),
                Any(libc::SYS_pwrite64),
                Any(libc::SYS_preadv),
                Any(libc::SYS_pwritev),
                Any(libc::SYS_lseek),
                Any(libc::SYS_fsync),
                Any(libc::SYS_fdatasync),
                // Discard and write-zeroes punch or zero ranges.
                Any(libc::SYS_fallocate),
            ]);
        }
        Role::Control => {
            list.push(ArgIn(
                libc::SYS_ioctl,
                1,
                vec![
                    KVM_SET_USER_MEMORY_REGION(),
                    KVM_IOEVENTFD(),
                    KVM_IRQFD(),
                    KVM_SET_GSI_ROUTING(),
                ],
            ));
            list.extend(unix_messages());
            list.extend(unix_connect());
            list.extend(spawning());
        }
    }
    list
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
