//! For the binaries' seccomp tests (feature `test-support`): run one system
//! call under a role's filter in a forked child, so the test process itself
//! stays unfiltered.

use crate::filter::{build, install, Role, SeccompMode};

/// Forks a child that installs `role`'s filter for `mode`, then makes
/// system call `nr`; returns the child's wait status. The child exits 0
/// if the call returned, 100 if the filter could not be installed.
///
/// # Panics
/// If the filter cannot be built (or `mode` is [`SeccompMode::None`]), or
/// fork or waitpid fail.
pub fn child_calls<R: Role>(role: R, mode: SeccompMode, nr: i64, args: [u64; 3]) -> i32 {
    let filter = match build(role, mode) {
        Ok(Some(filter)) => filter,
        Ok(None) => panic!("{}: no filter in mode {mode:?}", role.name()),
        Err(e) => panic!("{e}"),
    };
    // SAFETY: the child only makes system calls (install is prctl and
    // seccomp on prepared programs) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        if install(role, &filter).is_err() {
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(100) };
        }
        // SAFETY: a raw system call with plain integer arguments.
        unsafe {
            libc::syscall(nr, args[0], args[1], args[2]);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

/// Whether a wait status is a death by SIGSYS (a seccomp kill).
pub fn killed_by_sigsys(status: i32) -> bool {
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
}
