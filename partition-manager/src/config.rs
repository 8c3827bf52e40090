//! [`ManagerConfig`]: where the manager keeps its state and logs, which
//! binaries it runs, and how long it waits for them.

use std::path::PathBuf;
use std::time::Duration;

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
}

impl ManagerConfig {
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
