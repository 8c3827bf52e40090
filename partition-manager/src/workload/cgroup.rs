//! The host's CPU controller as the workload part uses it: one cgroup per
//! partition, holding its VMM's vCPU threads, with a quota (capped) and a
//! weight (docs/workload.md, "What each cgroup version gives").
//!
//! - **cgroup v1 `cpu`** (these machines: `/sys/fs/cgroup/cpu`): threads
//!   move one by one through `tasks`; `cpu.cfs_quota_us` over
//!   `cpu.cfs_period_us` caps, `cpu.shares` weighs.
//! - **cgroup v2** with the `cpu` controller enabled (`cpu.max`,
//!   `cpu.weight`): threads move only into a *threaded* cgroup whose
//!   process is in its domain parent, so the partition gets a domain group
//!   holding the whole VMM and a threaded child `vcpus` holding its vCPU
//!   threads. Not available on the machines this was built on (their v2
//!   mount has no `cpu` controller); it is written to the kernel's
//!   documented interface and refuses clearly what it cannot do.

use std::path::{Path, PathBuf};

/// CFS period the quotas are expressed in, microseconds.
pub const PERIOD_US: u64 = 100_000;

/// Which interface the host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Controller {
    V1 {
        mount: PathBuf,
    },
    V2 {
        mount: PathBuf,
    },
    /// No CPU controller: entitlements cannot be enforced (why).
    None(String),
}

/// Settings for one partition's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Microseconds per [`PERIOD_US`]; `None`: no cap.
    pub quota_us: Option<u64>,
    /// PowerVM's uncapped weight, 0-255; only its ratio to the other
    /// partitions' counts (the manager's partitions are siblings under its
    /// own group): v1 `cpu.shares` = 8 x weight (128: 1024, the default),
    /// v2 `cpu.weight` = 39 x weight (1-9945), 0 as the least the kernel takes.
    pub weight: u8,
}

impl Controller {
    /// Looks at the usual mounts: v2's `cpu` controller at the root or
    /// under `unified`, else v1's `cpu` hierarchy.
    pub fn detect() -> Controller {
        for v2 in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            let controllers = std::fs::read_to_string(Path::new(v2).join("cgroup.controllers"));
            if controllers.is_ok_and(|c| c.split_whitespace().any(|w| w == "cpu")) {
                return Controller::V2 {
                    mount: PathBuf::from(v2),
                };
            }
        }
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        if v1.join("cpu.cfs_quota_us").exists() {
            return Controller::V1 {
                mount: v1.to_path_buf(),
            };
        }
        Controller::None(
            "no cgroup CPU controller is mounted (neither v2 `cpu` nor v1 `cpu`)".into(),
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            Controller::V1 { .. } => "cgroup v1 cpu",
            Controller::V2 { .. } => "cgroup v2 cpu",
            Controller::None(_) => "none",
        }
    }

    /// The group of partition `name` under `base` (the manager's own
    /// directory in the hierarchy).
    pub fn group(&self, base: &str, name: &str) -> Option<PathBuf> {
        match self {
            Controller::V1 { mount } | Controller::V2 { mount } => {
                Some(mount.join(base).join(name))
            }
            Controller::None(_) => None,
        }
    }

    /// Creates (or reuses) `group`, sets `limits` and moves the threads
    /// `tids` of process `pid` into it.
    pub fn place(
        &self,
        group: &Path,
        pid: u32,
        tids: &[u32],
        limits: Limits,
    ) -> Result<(), String> {
        let io =
            |what: &str, path: &Path, e: std::io::Error| format!("{what} {}: {e}", path.display());
        let write = |path: PathBuf, value: String| {
            std::fs::write(&path, &value)
                .map_err(|e| io(&format!("cannot write {value:?} to"), &path, e))
        };
        match self {
            Controller::V1 { .. } => {
                std::fs::create_dir_all(group).map_err(|e| io("cannot create", group, e))?;
                write(group.join("cpu.cfs_period_us"), PERIOD_US.to_string())?;
                let quota = limits.quota_us.map_or("-1".to_string(), |q| q.to_string());
                write(group.join("cpu.cfs_quota_us"), quota)?;
                write(
                    group.join("cpu.shares"),
                    (u64::from(limits.weight) * 8).max(2).to_string(),
                )?;
                for tid in tids {
                    write(group.join("tasks"), tid.to_string())?;
                }
                Ok(())
            }
            Controller::V2 { mount } => {
                // Controllers must be enabled on the way down.
                let mut dir = mount.clone();
                for part in group
                    .strip_prefix(mount)
                    .map_err(|_| "bad group".to_string())?
                {
                    let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+cpu");
                    dir.push(part);
                    std::fs::create_dir_all(&dir).map_err(|e| io("cannot create", &dir, e))?;
                }
                let _ = std::fs::write(group.join("cgroup.subtree_control"), "+cpu");
                write(group.join("cgroup.procs"), pid.to_string())?;
                let vcpus = group.join("vcpus");
                std::fs::create_dir_all(&vcpus).map_err(|e| io("cannot create", &vcpus, e))?;
                write(vcpus.join("cgroup.type"), "threaded".into())?;
                let max = limits.quota_us.map_or("max".to_string(), |q| q.to_string());
                write(vcpus.join("cpu.max"), format!("{max} {PERIOD_US}"))?;
                write(
                    vcpus.join("cpu.weight"),
                    (u64::from(limits.weight) * 39).max(1).to_string(),
                )?;
                for tid in tids {
                    write(vcpus.join("cgroup.threads"), tid.to_string())?;
                }
                Ok(())
            }
            Controller::None(why) => Err(why.clone()),
        }
    }

    /// Removes `group` once its threads are gone (the VMM exited).
    pub fn remove(&self, group: &Path) {
        if matches!(self, Controller::V2 { .. }) {
            let _ = std::fs::remove_dir(group.join("vcpus"));
        }
        let _ = std::fs::remove_dir(group);
        if let Some(parent) = group.parent() {
            // The manager's directory goes with its last partition.
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// The vCPU threads of process `pid` (named `vcpuN` by the VMM).
pub fn vcpu_threads(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut tids: Vec<u32> = dir
        .filter_map(|t| t.ok())
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| {
                c.trim_end()
                    .strip_prefix("vcpu")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .filter_map(|t| t.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    tids
}

/// Nanoseconds thread `tid` of `pid` has run (schedstat's first field).
pub fn run_ns(pid: u32, tid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
