//! Syscall filters (seccomp-bpf) for the VIOS's threads: the roles and
//! their allow-lists; `parvm-sandbox` compiles (with `seccompiler`, as
//! Firecracker builds its own) and installs them.
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

pub use parvm_sandbox::{
    apply, apply_once, build, install, syscalls, Allow, RoleFilter, SeccompError, SeccompMode,
};

/// A thread's job, which decides its filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Control channel, accept loop, connections, relays, vhost-user
    /// protocol.
    Server,
    /// A queue worker.
    Worker,
}

/// What every thread needs: Rust's std, the allocator, `tracing` to stderr,
/// thread exit, and an abort on panic ([`parvm_sandbox::rust_runtime`]);
/// and the queue work every role does.
fn common() -> Vec<Allow> {
    use Allow::*;
    let mut list = parvm_sandbox::rust_runtime();
    list.extend([
        Any(libc::SYS_read),
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
    ]);
    list
}

impl parvm_sandbox::Role for Role {
    const ALL: &'static [Role] = &[Role::Server, Role::Worker];

    fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Worker => "worker",
        }
    }

    /// The role's allow-list.
    fn allowed(self) -> Vec<Allow> {
        use Allow::*;
        let mut list = common();
        if self == Role::Server {
            // Threads (pthread_create through `clone`, never a process; clone3
            // answered ENOSYS), a thread's name.
            list.extend(parvm_sandbox::thread_spawning());
            list.extend([
                // A worker adding its own filter.
                ArgIn(libc::SYS_prctl, 0, vec![libc::PR_SET_NO_NEW_PRIVS as u64]),
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
}

/// Compiles both roles' filters for `mode`; from then on [`apply`] installs
/// them. Called once, by `main`.
pub fn configure(mode: SeccompMode) -> Result<(), SeccompError> {
    parvm_sandbox::configure::<Role>(mode)
}
