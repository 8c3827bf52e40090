//! A role's allow-list compiled into seccomp-bpf filters (with
//! `seccompiler`, as Firecracker builds its own) and installed on a thread.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use std::collections::BTreeMap;

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

/// A binary's thread roles: a thread's job, which decides its filter.
pub trait Role: Copy + 'static {
    /// Every role (the ones [`configure`](crate::configure) compiles).
    const ALL: &'static [Self];
    /// The role's name in logs, errors and docs; unique among [`Role::ALL`].
    fn name(self) -> &'static str;
    /// The role's allow-list.
    fn allowed(self) -> Vec<Allow>;
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

fn add(rules: &mut Rules, role: &'static str, allow: Allow) -> Result<(), SeccompError> {
    let bad = |e: seccompiler::BackendError| SeccompError::Build(role, e.to_string());
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

/// The distinct system calls `role` may make (some only with certain
/// arguments), sorted.
pub fn syscalls<R: Role>(role: R) -> Vec<i64> {
    let mut v: Vec<i64> = role.allowed().iter().map(Allow::syscall).collect();
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
pub fn build<R: Role>(role: R, mode: SeccompMode) -> Result<Option<RoleFilter>, SeccompError> {
    let otherwise = match mode {
        SeccompMode::None => return Ok(None),
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
    };
    let name = role.name();
    let bad = |e: seccompiler::BackendError| SeccompError::Build(name, e.to_string());
    let mut rules = Rules::new();
    for allow in role.allowed() {
        add(&mut rules, name, allow)?;
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
pub fn install<R: Role>(role: R, filter: &RoleFilter) -> Result<(), SeccompError> {
    let err = |e| SeccompError::Install(role.name(), e);
    seccompiler::apply_filter(&filter.no_clone3).map_err(err)?;
    seccompiler::apply_filter(&filter.allow).map_err(err)?;
    Ok(())
}
