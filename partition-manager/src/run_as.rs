//! Running every VMM and VIOS as another user (`--run-as USER[:GROUP]`,
//! docs/security.md, "Running the VMM and the VIOS unprivileged").
//!
//! - [`RunAs::resolve`] turns `USER[:GROUP]` (names or numbers) into ids,
//!   once, in the manager: nothing is looked up after a fork.
//! - [`RunAs::check`] answers whether that user may open a partition's
//!   files as its process will: a forked child takes the user's ids and
//!   calls `access(2)`, so modes, ACLs and group memberships count exactly
//!   as they will for the VMM. The manager never changes an operator's
//!   files to make them fit.
//! - [`RunAs::drop_privileges`] is what a spawned child does before `exec`:
//!   `setgroups`, `setgid`, `setuid`, `PR_SET_NO_NEW_PRIVS`.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RunAsError {
    #[error("--run-as {spec}: no user `{name}` in the user database")]
    UnknownUser { spec: String, name: String },
    #[error("--run-as {spec}: no group `{name}` in the group database")]
    UnknownGroup { spec: String, name: String },
    #[error(
        "--run-as {spec}: uid {uid} has no entry in the user database: give its group too (UID:GID)"
    )]
    NoPrimaryGroup { spec: String, uid: u32 },
    #[error("--run-as {spec}: {why}")]
    Invalid { spec: String, why: &'static str },
    #[error("{who} cannot {what} {path}: {source}")]
    Denied {
        who: String,
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{who} cannot page a shared-memory partition: userfaultfd serving KVM's faults needs vm.unprivileged_userfaultfd=1 (it is {value})"
    )]
    Userfaultfd { who: String, value: String },
    #[error("cannot check file access as {who}: {source}")]
    Check { who: String, source: std::io::Error },
}

/// What a partition's process does with a file it opens by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads it (a kernel, an initrd, a read-only disk).
    Read,
    /// Reads and writes it (a disk, the KVM device).
    ReadWrite,
    /// Connects to it (a vhost-user socket, the manager's socket).
    Connect,
    /// Runs it (the `vmm` or `vios` binary).
    Execute,
}

impl Access {
    fn mode(self) -> libc::c_int {
        match self {
            Access::Read => libc::R_OK,
            Access::ReadWrite => libc::R_OK | libc::W_OK,
            // connect(2) on a Unix socket needs write permission on it.
            Access::Connect => libc::W_OK,
            Access::Execute => libc::X_OK,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::ReadWrite => "read and write",
            Access::Connect => "connect to",
            Access::Execute => "run",
        }
    }
}

/// The user and groups the manager's children run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// The supplementary groups the child keeps: its group, and the group
    /// owning the KVM node when the user is a member of it.
    pub groups: Vec<u32>,
    /// `uid 65534 (nobody)`, for messages.
    who: String,
}

/// A user: its database entry, or only a number (empty name, no group).
struct Passwd {
    name: CString,
    uid: u32,
    gid: Option<u32>,
}

impl RunAs {
    /// Resolves `spec` (`USER` or `USER:GROUP`, each a name or a number;
    /// without a group, the user's own). `kvm_device` is the node the VMMs
    /// open: its group is kept if the user is a member of it.
    pub fn resolve(spec: &str, kvm_device: &Path) -> Result<RunAs, RunAsError> {
        let invalid = |why| RunAsError::Invalid {
            spec: spec.into(),
            why,
        };
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        if user.is_empty() || group.is_some_and(str::is_empty) {
            return Err(invalid("use USER or USER:GROUP (names or numbers)"));
        }
        let passwd = match user.parse::<u32>() {
            Ok(uid) => passwd_by_uid(uid).or(Some(Passwd {
                name: CString::default(),
                uid,
                gid: None,
            })),
            Err(_) => passwd_by_name(user),
        };
        let Some(passwd) = passwd else {
            return Err(RunAsError::UnknownUser {
                spec: spec.into(),
                name: user.into(),
            });
        };
        let gid = match group {
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => group_by_name(g).ok_or_else(|| RunAsError::UnknownGroup {
                    spec: spec.into(),
                    name: g.into(),
                })?,
            },
            None => passwd.gid.ok_or_else(|| RunAsError::NoPrimaryGroup {
                spec: spec.into(),
                uid: passwd.uid,
            })?,
        };
        if passwd.uid == 0 {
            return Err(invalid(
                "that is root: leave the option out to run partitions as the manager's user",
            ));
        }
        if gid == 0 {
            return Err(invalid("group 0 is root's group: name another group"));
        }
        let mut groups = vec![gid];
        if let Ok(node) = std::fs::metadata(kvm_device) {
            let kvm_gid = node.gid();
            if kvm_gid != gid
                && kvm_gid != 0
                && !passwd.name.is_empty()
                && group_list(&passwd.name, gid).contains(&kvm_gid)
            {
                groups.push(kvm_gid);
            }
        }
        let who = match passwd.name.to_str() {
            Ok(name) if !name.is_empty() => format!("uid {} ({name})", passwd.uid),
            _ => format!("uid {}", passwd.uid),
        };
        Ok(RunAs {
            uid: passwd.uid,
            gid,
            groups,
            who,
        })
    }

    /// `uid 65534 (nobody)`.
    pub fn who(&self) -> &str {
        &self.who
    }

    /// Checks that this user may do what `files` says with each of them;
    /// the first it may not is the error, naming the file.
    pub fn check(&self, files: &[(PathBuf, Access)]) -> Result<(), RunAsError> {
        let check_err = |source| RunAsError::Check {
            who: self.who.clone(),
            source,
        };
        let mut paths = Vec::with_capacity(files.len());
        for (path, access) in files {
            let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| RunAsError::Denied {
                who: self.who.clone(),
                what: access.verb(),
                path: path.clone(),
                source: std::io::ErrorKind::InvalidInput.into(),
            })?;
            paths.push(c);
        }
        let modes: Vec<libc::c_int> = files.iter().map(|(_, a)| a.mode()).collect();
        let answers = self.access_as_user(&paths, &modes).map_err(check_err)?;
        for ((path, access), errno) in files.iter().zip(answers) {
            if errno != 0 {
                return Err(RunAsError::Denied {
                    who: self.who.clone(),
                    what: access.verb(),
                    path: path.clone(),
                    source: std::io::Error::from_raw_os_error(errno),
                });
            }
        }
        Ok(())
    }

    /// `access(2)` of each path with its mode, in a forked child running
    /// as this user: the errno of each (0: allowed).
    fn access_as_user(
        &self,
        paths: &[CString],
        modes: &[libc::c_int],
    ) -> std::io::Result<Vec<i32>> {
        let mut ends = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into a live array of two.
        if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both descriptors are fresh and owned here alone.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
        let ptrs: Vec<*const libc::c_char> = paths.iter().map(|p| p.as_ptr()).collect();
        // SAFETY: the child only makes async-signal-safe calls (setgroups,
        // setgid, setuid, access, write, _exit) on memory prepared before
        // the fork, and never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: as above; in the child.
            unsafe { self.access_child(&ptrs, modes, write_end.as_raw_fd()) }
        }
        drop(write_end);
        let mut out = Vec::new();
        let read = std::io::Read::read_to_end(&mut std::fs::File::from(read_end), &mut out);
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child with a live status pointer.
            let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
            if rc == pid {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        read?;
        let words: Vec<i32> = out
            .chunks_exact(4)
            .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        match words.split_first() {
            Some((0, answers)) if answers.len() == paths.len() => Ok(answers.to_vec()),
            Some((&errno, _)) if errno != 0 => Err(std::io::Error::from_raw_os_error(errno)),
            _ => Err(std::io::Error::other(format!(
                "the checking process ended early (wait status {status:#x})"
            ))),
        }
    }

    /// The forked checker: takes the ids, writes the outcome of that (0 or
    /// an errno), then one errno per path, and exits.
    ///
    /// # Safety
    /// Only in a child just forked from the manager; `paths` are valid
    /// NUL-terminated strings.
    unsafe fn access_child(
        &self,
        paths: &[*const libc::c_char],
        modes: &[libc::c_int],
        out: i32,
    ) -> ! {
        let put = |word: i32| {
            let bytes = word.to_ne_bytes();
            // SAFETY: writes 4 bytes from a live array to our pipe end.
            unsafe { libc::write(out, bytes.as_ptr().cast(), bytes.len()) };
        };
        // SAFETY: errno is thread-local and always readable.
        let errno = || unsafe { *libc::__errno_location() };
        if let Err(e) = self.drop_privileges() {
            put(e.raw_os_error().unwrap_or(libc::EPERM));
            // SAFETY: _exit ends the child without running anything of the
            // parent's (no atexit handlers, no buffered output).
            unsafe { libc::_exit(1) };
        }
        put(0);
        for (path, mode) in paths.iter().zip(modes) {
            // SAFETY: the caller passes valid NUL-terminated paths.
            let rc = unsafe { libc::access(*path, *mode) };
            put(if rc == 0 { 0 } else { errno() });
        }
        // SAFETY: as above.
        unsafe { libc::_exit(0) }
    }

    /// Checks that this user may have a shared-memory partition's pager:
    /// its userfaultfd serves KVM's (kernel-mode) faults, which a process
    /// without `CAP_SYS_PTRACE` only gets when the kernel allows it for
    /// everyone. A kernel without the setting (before 5.11) allows it.
    pub fn check_userfaultfd(&self) -> Result<(), RunAsError> {
        match std::fs::read_to_string(UNPRIVILEGED_USERFAULTFD) {
            Ok(v) if v.trim() != "1" => Err(RunAsError::Userfaultfd {
                who: self.who.clone(),
                value: v.trim().to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Becomes this user for good: supplementary groups, group, user, and
    /// no new privileges from set-id binaries or file capabilities. Only
    /// async-signal-safe calls on memory allocated before: for `pre_exec`.
    pub fn drop_privileges(&self) -> std::io::Result<()> {
        let fail = || Err(std::io::Error::last_os_error());
        // SAFETY: setgroups reads `groups.len()` ids from a live vector;
        // setgid, setuid and prctl take plain integers.
        unsafe {
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0 {
                return fail();
            }
            if libc::setgid(self.gid) != 0 {
                return fail();
            }
            if libc::setuid(self.uid) != 0 {
                return fail();
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return fail();
            }
        }
        Ok(())
    }
}

/// Whether processes without `CAP_SYS_PTRACE` may have userfaultfd handle
/// kernel-mode faults.
const UNPRIVILEGED_USERFAULTFD: &str = "/proc/sys/vm/unprivileged_userfaultfd";

/// Calls a reentrant `get*_r` lookup with a growing buffer; `None` when
/// there is no entry (or the lookup fails).
fn lookup<T>(
    mut call: impl FnMut(&mut T, &mut [libc::c_char], &mut *mut T) -> libc::c_int,
) -> Option<T> {
    let mut size = 1024;
    loop {
        // SAFETY: passwd and group are plain C structs for which all-zero
        // bytes are a valid value, overwritten by the lookup.
        let mut entry: T = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; size];
        let mut result: *mut T = std::ptr::null_mut();
        let rc = call(&mut entry, &mut buf, &mut result);
        if rc == libc::ERANGE && size < 1 << 20 {
            size *= 4;
            continue;
        }
        if rc != 0 || result.is_null() {
            return None;
        }
        return Some(entry);
    }
}

fn passwd_from(p: &libc::passwd) -> Passwd {
    // SAFETY: pw_name of an entry the lookup filled is a NUL-terminated
    // string inside its buffer, still alive here.
    let name = unsafe { CStr::from_ptr(p.pw_name) }.to_owned();
    Passwd {
        name,
        uid: p.pw_uid,
        gid: Some(p.pw_gid),
    }
}

fn passwd_by_name(name: &str) -> Option<Passwd> {
    let c = CString::new(name).ok()?;
    let mut found = None;
    lookup::<libc::passwd>(|entry, buf, result| {
        // SAFETY: every pointer is live for the call and `buf.len()` is
        // the buffer's size.
        let rc =
            unsafe { libc::getpwnam_r(c.as_ptr(), entry, buf.as_mut_ptr(), buf.len(), result) };
        if rc == 0 && !result.is_null() {
            found = Some(passwd_from(entry));
        }
        rc
    })?;
    found
}

fn passwd_by_uid(uid: u32) -> Option<Passwd> {
    let mut found = None;
    lookup::<libc::passwd>(|entry, buf, result| {
        // SAFETY: as in passwd_by_name.
        let rc = unsafe { libc::getpwuid_r(uid, entry, buf.as_mut_ptr(), buf.len(), result) };
        if rc == 0 && !result.is_null() {
            found = Some(passwd_from(entry));
        }
        rc
    })?;
    found
}

fn group_by_name(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    lookup::<libc::group>(|entry, buf, result| {
        // SAFETY: as in passwd_by_name.
        unsafe { libc::getgrnam_r(c.as_ptr(), entry, buf.as_mut_ptr(), buf.len(), result) }
    })
    .map(|g| g.gr_gid)
}

/// The groups `user` belongs to in the group database (with `gid`).
fn group_list(user: &CStr, gid: u32) -> Vec<u32> {
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let mut count = n;
        // SAFETY: `groups` holds `count` ids; getgrouplist writes at most
        // that many and sets `count` to the number it has.
        let rc = unsafe { libc::getgrouplist(user.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        if count <= n || n >= 65536 {
            return vec![gid];
        }
        n = count;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bad_specs_are_one_line_errors() {
        let kvm = Path::new("/dev/kvm");
        for (spec, want) in [
            ("", "use USER or USER:GROUP"),
            ("nobody:", "use USER or USER:GROUP"),
            (":65534", "use USER or USER:GROUP"),
            ("no-such-user-parvm", "no user `no-such-user-parvm`"),
            (
                "65534:no-such-group-parvm",
                "no group `no-such-group-parvm`",
            ),
            ("0:65534", "that is root"),
            ("65534:0", "group 0"),
        ] {
            let e = RunAs::resolve(spec, kvm).unwrap_err().to_string();
            assert!(e.contains(want), "{spec}: {e}");
            assert!(e.starts_with(&format!("--run-as {spec}: ")), "{e}");
        }
    }

    #[test]
    fn numbers_resolve_without_the_databases() {
        let r = RunAs::resolve("4000000000:4000000001", Path::new("/nonexistent")).unwrap();
        assert_eq!(
            (r.uid, r.gid, r.groups.clone()),
            (4_000_000_000, 4_000_000_001, vec![4_000_000_001])
        );
        assert_eq!(r.who(), "uid 4000000000");
        let e = RunAs::resolve("4000000000", Path::new("/nonexistent")).unwrap_err();
        assert!(e.to_string().contains("give its group too"), "{e}");
    }

    #[test]
    fn access_is_checked_as_the_user() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: cannot take another user's ids; skipping");
            return;
        }
        let nobody = RunAs::resolve("65534:65534", Path::new("/nonexistent")).unwrap();
        let dir = std::env::temp_dir().join(format!("parvm-run-as-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "x").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        nobody
            .check(&[
                ("/".into(), Access::Read),
                ("/dev/null".into(), Access::ReadWrite),
            ])
            .unwrap();
        let e = nobody
            .check(&[("/".into(), Access::Read), (secret.clone(), Access::Read)])
            .unwrap_err()
            .to_string();
        let want = format!(
            "cannot read {}: Permission denied (os error 13)",
            secret.display()
        );
        assert!(e.starts_with("uid 65534") && e.ends_with(&want), "{e}");
        let e = nobody
            .check(&[(dir.join("missing"), Access::ReadWrite)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read and write") && e.contains("No such file"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn root_is_resolved_by_name_and_refused() {
        let e = RunAs::resolve("root", Path::new("/dev/kvm")).unwrap_err();
        assert!(e.to_string().contains("that is root"), "{e}");
    }
}
