//! A partition's memory mode (`memory` in its definition): dedicated (the
//! default: `memory_mib` of RAM the machine gives it) or **shared**, Active
//! Memory Sharing (docs/ams.md): the guest sees `logical_mib` of RAM, the
//! VMM keeps at most a resident target of it in the host's memory and
//! pages the rest to a paging device on a VIOS.
//!
//! ```json
//! "memory": {"mode": "shared", "logical_mib": 1024, "weight": 128}
//! ```
//!
//! The partition manager fills in `paging` (the paging device it assigned
//! from its pool, as `vhost-user-fd:N`) and `resident_mib` (the starting
//! target) in the definition it hands the VMM; a `vmm` run by hand takes
//! them from the file or from `--paging` / `--resident-mib`.

use crate::source::DiskSource;
use crate::ConfigError;
use serde::{Deserialize, Serialize};

/// Memory weight of a shared-memory partition whose definition gives none
/// (PowerVM's default; weights run from 0 to 255).
pub const DEFAULT_MEMORY_WEIGHT: u8 = 128;
/// The smallest resident target a VMM is given: the pager needs a few
/// pages of its own partition resident to make progress (rings, the page
/// a vCPU is running on).
pub const MIN_RESIDENT_MIB: u64 = 2;

/// How a partition's RAM is provided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryMode {
    /// All of it resident, all the time (the default).
    #[default]
    Dedicated,
    /// Paged by the VMM to a paging device (Active Memory Sharing).
    Shared,
}

/// `memory` as written in JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySpec {
    #[serde(default)]
    pub mode: MemoryMode,
    /// RAM the guest sees (shared mode); `memory_mib` if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_mib: Option<u64>,
    /// Share of the pool under pressure, 0-255 (shared mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u8>,
    /// The paging device: `vhost-user:SOCKET` or `vhost-user-fd:N` for the
    /// VMM, `vios:VIOS/DISK` for the manager to assign and broker.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "paging_source"
    )]
    pub paging: Option<DiskSource>,
    /// A second connection to the same paging device, for the pager's
    /// evictor (`vhost-user-fd:M`, which the manager sets beside `paging`;
    /// without it a `vhost-user:SOCKET` device is dialled twice).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "paging_source"
    )]
    pub paging_evictor: Option<DiskSource>,
    /// The starting resident target (shared mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident_mib: Option<u64>,
}

mod paging_source {
    use crate::source::{served, DiskSource};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<DiskSource>, s: S) -> Result<S::Ok, S::Error> {
        served::serialize(v, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DiskSource>, D::Error> {
        served::deserialize(d, "a paging device")
    }
}

/// A checked shared-memory configuration, as the VMM runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedMemory {
    pub weight: u8,
    /// `None` only in a definition the manager has yet to complete.
    pub paging: Option<DiskSource>,
    /// The evictor's connection, if not dialled again from `paging`.
    pub paging_evictor: Option<DiskSource>,
    /// Starting resident target, MiB; `None`: the whole logical size.
    pub resident_mib: Option<u64>,
}

impl MemorySpec {
    /// The guest's RAM size and, in shared mode, its sharing parameters,
    /// from this section and the definition's `memory_mib`.
    pub fn resolve(
        spec: Option<&MemorySpec>,
        memory_mib: Option<u64>,
    ) -> Result<(Option<u64>, Option<SharedMemory>), ConfigError> {
        let Some(spec) = spec else {
            return Ok((memory_mib, None));
        };
        let bad = |m: String| Err(ConfigError::MemorySpec(m));
        match spec.mode {
            MemoryMode::Dedicated => {
                if spec.logical_mib.is_some()
                    || spec.weight.is_some()
                    || spec.paging.is_some()
                    || spec.paging_evictor.is_some()
                    || spec.resident_mib.is_some()
                {
                    return bad(
                        "logical_mib, weight, paging, paging_evictor and resident_mib need \"mode\": \"shared\""
                            .into(),
                    );
                }
                Ok((memory_mib, None))
            }
            MemoryMode::Shared => {
                let logical = match (spec.logical_mib, memory_mib) {
                    (Some(l), Some(m)) if l != m => {
                        return bad(format!(
                            "logical_mib {l} and memory_mib {m} differ: give one of them"
                        ))
                    }
                    (Some(l), _) => Some(l),
                    (None, m) => m,
                };
                match (&spec.paging, &spec.paging_evictor) {
                    (_, Some(DiskSource::Vios { .. })) => {
                        return bad("paging_evictor is a connection the manager brokers (vhost-user-fd:N) or a socket (vhost-user:SOCKET), not vios:".into())
                    }
                    (None, Some(_)) => return bad("paging_evictor needs paging".into()),
                    _ => {}
                }
                if let Some(r) = spec.resident_mib {
                    if r < MIN_RESIDENT_MIB {
                        return bad(format!(
                            "resident_mib {r} is below the minimum of {MIN_RESIDENT_MIB}"
                        ));
                    }
                }
                Ok((
                    logical,
                    Some(SharedMemory {
                        weight: spec.weight.unwrap_or(DEFAULT_MEMORY_WEIGHT),
                        paging: spec.paging.clone(),
                        paging_evictor: spec.paging_evictor.clone(),
                        resident_mib: spec.resident_mib,
                    }),
                ))
            }
        }
    }
}
