//! [`ManagerConfig`]: where the manager keeps its state and logs, which
//! binaries it runs, as which user, and how long it waits for them.

use crate::run_as::RunAs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The KVM device a VMM opens unless told otherwise (`vmm --kvm-device`).
pub const DEFAULT_KVM_DEVICE: &str = "/dev/kvm";

/// Where the manager keeps things and how long it waits.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The listening socket (VMMs reconnect here).
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// The vmm binary.
    pub vmm: PathBuf,
    /// How long a start may take until the VMM reports ready.
    pub ready_timeout: Duration,
    /// How long a stop may take before the VMM is killed.
    pub stop_timeout: Duration,
    /// The user every VMM and VIOS runs as (`--run-as`); `None`: the
    /// manager's own.
    pub run_as: Option<RunAs>,
    /// The KVM device node handed to every VMM (`--kvm-device`); `None`:
    /// the VMM's default, [`DEFAULT_KVM_DEVICE`].
    pub kvm_device: Option<PathBuf>,
}

impl ManagerConfig {
    /// The KVM device node the VMMs open.
    pub fn kvm_device(&self) -> &Path {
        self.kvm_device
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_KVM_DEVICE))
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    pub fn console_log(&self, name: &str) -> PathBuf {
        self.logs_dir().join(format!("{name}.log"))
    }
    pub fn vmm_log(&self, name: &str) -> PathBuf {
        self.logs_dir().join(format!("{name}.vmm.log"))
    }
    /// The definition as the spawned `vmm` (or `vios`) reads it.
    pub fn definition_file(&self, name: &str) -> PathBuf {
        self.state_dir
            .join("partitions")
            .join(format!("{name}.json"))
    }
}
