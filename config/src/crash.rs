//! What happens when a partition fails (`on_crash` in its definition,
//! docs/dump.md): a firmware-assisted dump of its memory to a dump disk on
//! a VIOS, then a reboot or a stop.
//!
//! ```json
//! "on_crash": {"dump": "vios:vios1/dumps", "then": "reboot", "watchdog_secs": 30}
//! ```
//!
//! The partition manager brokers `vios:` like a disk and hands the VMM
//! `vhost-user-fd:N`; a `vmm` run by hand takes `vhost-user:SOCKET` (a
//! standalone `vios --listen`). The dump disk is never visible to the guest.

use crate::source::DiskSource;
use crate::ConfigError;
use serde::{Deserialize, Serialize};

/// Longest watchdog period accepted (a day).
pub const MAX_WATCHDOG_SECS: u64 = 86_400;

/// After the dump (or without one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrashAction {
    /// The partition stays crashed (the default).
    #[default]
    Stop,
    /// The partition manager starts it again.
    Reboot,
}

/// `on_crash` as written in JSON and as the VMM runs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnCrash {
    /// The dump disk; `None`: no dump, only the action.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "dump_source")]
    pub dump: Option<DiskSource>,
    #[serde(default)]
    pub then: CrashAction,
    /// A guest that shows no sign of life (no port or MMIO access that
    /// leaves the kernel, on any vCPU) for this long has failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog_secs: Option<u64>,
}

impl OnCrash {
    /// Range checks.
    pub fn check(&self) -> Result<(), ConfigError> {
        if let Some(s) = self.watchdog_secs {
            if s == 0 || s > MAX_WATCHDOG_SECS {
                return Err(ConfigError::OnCrash(format!(
                    "watchdog_secs {s} is outside 1..={MAX_WATCHDOG_SECS}"
                )));
            }
        }
        Ok(())
    }
}

mod dump_source {
    use crate::source::{served, DiskSource};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<DiskSource>, s: S) -> Result<S::Ok, S::Error> {
        served::serialize(v, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DiskSource>, D::Error> {
        served::deserialize(d, "a dump disk")
    }
}
