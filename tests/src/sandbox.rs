//! Looking at how a running process is confined: the seccomp state of each
//! of its threads (`/proc/PID/task/TID/status`), and making one of its
//! threads issue a system call it would never make by itself (what code an
//! attacker took over would do), with ptrace.

use std::path::Path;
use std::time::{Duration, Instant};

/// One thread of a process, as `/proc` shows it.
#[derive(Debug, Clone)]
pub struct ThreadState {
    pub tid: i32,
    /// The thread's name (`comm`).
    pub name: String,
    /// `Seccomp:` 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
    /// `Seccomp_filters:` how many filters are stacked on it.
    pub filters: u32,
}

/// Every thread of `pid` (empty if the process is gone).
pub fn threads(pid: u32) -> Vec<ThreadState> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push(ThreadState {
            tid,
            name: field("Name:"),
            seccomp: field("Seccomp:").parse().unwrap_or(0),
            filters: field("Seccomp_filters:").parse().unwrap_or(0),
        });
    }
    out.sort_by_key(|t| t.tid);
    out
}

/// Waits until `pid` has threads named as every entry of `names` (a prefix
/// match: `vcpu` matches `vcpu0`); returns them all, or `None` on timeout.
pub fn wait_for_threads(pid: u32, names: &[&str], timeout: Duration) -> Option<Vec<ThreadState>> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let now = threads(pid);
        if names
            .iter()
            .all(|n| now.iter().any(|t| t.name.starts_with(n)))
        {
            return Some(now);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Waits until every thread of `pid` runs under at least `filters` seccomp
/// filters (threads install their own as they start, so a snapshot taken
/// as a thread appears may catch it before or between its filters);
/// returns the last snapshot either way, for the caller to assert on.
pub fn wait_until_filtered(pid: u32, filters: u32, timeout: Duration) -> Vec<ThreadState> {
    let start = Instant::now();
    loop {
        let now = threads(pid);
        let done = !now.is_empty() && now.iter().all(|t| t.seccomp == 2 && t.filters >= filters);
        if done || start.elapsed() >= timeout {
            return now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Makes thread `tid` (of a child of this process, or any process when
/// root) issue system call `nr` with `args`: attaches with ptrace, waits
/// until the thread is stopped right after a `syscall` instruction (it
/// blocks in one most of the time), points it back at that instruction
/// with the new number and arguments, and lets it go. Returns false when
/// the thread could not be caught in a system call within `timeout`.
pub fn inject_syscall(tid: i32, nr: i64, args: [u64; 3], timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(done) = try_inject(tid, nr, args) {
            return done;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// `Some(true)` injected, `Some(false)` cannot trace, `None` try again.
fn try_inject(tid: i32, nr: i64, args: [u64; 3]) -> Option<bool> {
    // SAFETY: ptrace and waitpid on a thread id, with valid out-pointers;
    // the tracee is another process.
    unsafe {
        if libc::ptrace(libc::PTRACE_ATTACH, tid, 0, 0) != 0 {
            return Some(false);
        }
        let mut status = 0;
        if libc::waitpid(tid, &mut status, libc::__WALL) != tid {
            return Some(false);
        }
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        if libc::ptrace(libc::PTRACE_GETREGS, tid, 0, &mut regs) != 0 {
            libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0);
            return Some(false);
        }
        // Stopped inside a system call: orig_rax is its number and the two
        // bytes before rip are `syscall` (0f 05).
        let word = libc::ptrace(libc::PTRACE_PEEKTEXT, tid, regs.rip - 2, 0);
        if (regs.orig_rax as i64) < 0 || (word & 0xffff) != 0x050f {
            libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0);
            return None;
        }
        regs.rip -= 2;
        regs.rax = nr as u64;
        // No restart of the interrupted call.
        regs.orig_rax = u64::MAX;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        if libc::ptrace(libc::PTRACE_SETREGS, tid, 0, &regs) != 0 {
            libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0);
            return Some(false);
        }
        Some(libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0) == 0)
    }
}

/// Whether this process runs as root (the tests that change users or
/// trace other processes need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The user the unprivileged tests run the binaries as (`nobody`).
pub const NOBODY: u32 = 65534;

/// Creates a character device node at `path` with the same device number
/// as `like` (a private `/dev/kvm` another user may open), owned by `uid`,
/// mode 0600. The real device's permissions are untouched.
pub fn private_device_node(like: &Path, path: &Path, uid: u32) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(like)?.rdev();
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: mknod and chown take a valid NUL-terminated path.
    unsafe {
        if libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, rdev) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::chown(c.as_ptr(), uid, uid) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `chown -R uid:uid path` of a scratch directory's files.
pub fn chown_tree(path: &Path, uid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(uid))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid)?;
        }
    }
    Ok(())
}
