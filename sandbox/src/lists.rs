//! Allow-list entries more than one role (of both binaries) needs.

use crate::filter::Allow;

/// The flags glibc's `pthread_create` passes to `clone`: a thread, never a
/// new process.
pub const THREAD_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;

/// What every Rust thread needs: std, the allocator, `tracing` to stderr,
/// signal handlers (their return), thread exit, and an abort on panic.
pub fn rust_runtime() -> Vec<Allow> {
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

/// Starting threads (pthread_create through `clone` with
/// [`THREAD_CLONE_FLAGS`], never a process) and naming them.
pub fn thread_spawning() -> Vec<Allow> {
    use Allow::*;
    vec![
        ArgIn(libc::SYS_clone, 0, vec![THREAD_CLONE_FLAGS]),
        // Refused with ENOSYS by the second filter of every role; allowed
        // here so that answer wins over this list's default.
        Any(libc::SYS_clone3),
        Any(libc::SYS_set_robust_list),
        Any(libc::SYS_rseq),
        // The new thread's name.
        ArgIn(libc::SYS_prctl, 0, vec![libc::PR_SET_NAME as u64]),
        Any(libc::SYS_sched_getaffinity),
    ]
}
