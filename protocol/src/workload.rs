//! The workload policy's settings and its moves, as `parctl policy` sends
//! and shows them (docs/workload.md, "Policy"); the logic is the
//! partition manager's.

use parvm_config::ProcUnits;
use serde::{Deserialize, Serialize};

/// The policy as its file (`parctl policy set FILE`) and `parctl policy
/// show` have it. Off by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub enabled: bool,
    /// Processing units the entitlements of running partitions may add up
    /// to (PowerVM's shared processor pool); `null`: the host's cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub pool: Option<ProcUnits>,
    /// A partition using at least this % of its entitlement is starved.
    pub starved_pct: u32,
    /// A partition using less than this % of its entitlement leaves it
    /// unused (a donor).
    pub idle_pct: u32,
    /// Consecutive samples (one a second) a partition must be starved or
    /// idle before a move.
    pub hold_samples: u32,
    /// Samples a partition is left alone after a move that touched it.
    pub cooldown_samples: u32,
    /// Processing units one move shifts at most.
    #[cfg_attr(feature = "openapi", schema(value_type = f64))]
    pub step: ProcUnits,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            enabled: false,
            pool: None,
            starved_pct: 90,
            idle_pct: 50,
            hold_samples: 3,
            cooldown_samples: 5,
            step: ProcUnits(10),
        }
    }
}

impl Policy {
    /// Checks a policy read from outside.
    pub fn check(&self) -> Result<(), String> {
        if self.idle_pct >= self.starved_pct || self.starved_pct > 100 {
            return Err(format!(
                "idle_pct {} must be below starved_pct {}, which is at most 100",
                self.idle_pct, self.starved_pct
            ));
        }
        if self.step.0 == 0 {
            return Err("step must be above 0".into());
        }
        if self.hold_samples == 0 || self.hold_samples > 3600 || self.cooldown_samples > 3600 {
            return Err("hold_samples must be 1-3600 and cooldown_samples 0-3600".into());
        }
        Ok(())
    }
}

/// A change of one partition's entitlement by the policy, with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyMove {
    /// Unix time (seconds) it was made.
    pub at: u64,
    pub partition: String,
    #[cfg_attr(feature = "openapi", schema(value_type = f64))]
    pub from: ProcUnits,
    #[cfg_attr(feature = "openapi", schema(value_type = f64))]
    pub to: ProcUnits,
    pub reason: String,
}

/// A partition's processor figures, as `parctl status` and `parctl top`
/// show them (`lparstat`'s entitlement and physical consumption).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CpuStatus {
    /// Processing units entitled now (`null` without a `cpu` section: no
    /// limit); the policy may have moved it from `desired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub entitled: Option<parvm_config::ProcUnits>,
    /// The definition's entitlement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub desired: Option<parvm_config::ProcUnits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub mode: Option<parvm_config::CpuMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u8>,
    /// Processing units the vCPU threads used over the last sample
    /// (about a second), `null` before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub used: Option<parvm_config::ProcUnits>,
    /// The cgroup the vCPU threads run in, while they run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}
