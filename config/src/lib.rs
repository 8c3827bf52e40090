//! parvm's definitions: what an operator writes to describe a partition,
//! shared by every process (`vmm`, `vios`, the partition manager, `parctl`)
//! without linking any of them. No KVM, no I/O beyond reading a file.
//!
//! Module map (a file flows top to bottom):
//! - this file: [`Definition`], one definition of either kind (told apart
//!   by `kind`: absent for a VMM partition, `"vios"` for a VIOS), and its
//!   one reader ([`Definition::from_file`], [`Definition::from_json`]) whose
//!   errors name the file and the field ([`ConfigError`]).
//! - [`partition`]: a VMM partition ([`PartitionDefinition`]: vCPUs,
//!   memory, kernel, disks with a typed [`DiskSource`], console), its limits
//!   and defaults, and [`PartitionDefinition::validate`] into the
//!   [`PartitionConfig`] a VMM boots.
//! - [`source`]: where a disk's or paging device's blocks come from
//!   ([`DiskSource`]: image, vhost-user socket or fd, `vios:` export).
//! - [`memory`]: the `memory` section ([`MemorySpec`]): dedicated or
//!   shared (Active Memory Sharing) memory, checked into [`SharedMemory`].
//! - [`cpu`]: the `cpu` section ([`CpuSpec`]): processor entitlement in
//!   processing units, capped or uncapped with a weight.
//! - [`crash`]: the `on_crash` section ([`OnCrash`]): the dump disk, the
//!   action after a failure, the watchdog.
//! - [`vios`]: a VIOS partition ([`ViosDefinition`]: the images it exports).
//! - [`manager`]: the fields only the partition manager acts on:
//!   [`RestartPolicy`] (`restart`) and [`SegmentSpec`] (`segments`).
//!
//! See docs/manager.md and docs/vios.md for the JSON schema.

pub mod cpu;
pub mod crash;
pub mod manager;
pub mod memory;
pub mod partition;
pub mod source;
pub mod vios;

pub use cpu::{CpuMode, CpuSpec, ProcUnits, DEFAULT_CPU_WEIGHT};
pub use crash::{CrashAction, OnCrash, MAX_WATCHDOG_SECS};
pub use manager::{
    check_segment_size, check_segments, valid_segment_id, RestartPolicy, SegmentSpec,
    MAX_SEGMENT_SIZE, SEGMENT_PAGE,
};
pub use memory::{MemoryMode, MemorySpec, SharedMemory, DEFAULT_MEMORY_WEIGHT, MIN_RESIDENT_MIB};
pub use partition::{
    Console, DiskConfig, PartitionConfig, PartitionDefinition, DEFAULT_CMDLINE, DEFAULT_MEMORY_MIB,
    DEFAULT_NAME, DEFAULT_VCPUS, MAX_CMDLINE_LEN, MAX_DISKS, MAX_MEMORY_MIB, MAX_VCPUS,
    MIN_MEMORY_MIB,
};
pub use source::{DiskSource, VHOST_USER_FD_PREFIX, VHOST_USER_PREFIX, VIOS_PREFIX};
pub use vios::{ViosDefinition, ViosDisk, DEFAULT_VIOS_QUEUES, MAX_VIOS_QUEUES, VIOS_KIND};

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The field that tells the kinds of definition apart.
pub const KIND_FIELD: &str = "kind";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read partition definition {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("partition definition {path}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("partition definition {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("partition definition {0}: expected a JSON object")]
    NotAnObject(PathBuf),
    #[error("no kernel given: use --kernel PATH or a definition with \"kernel\"")]
    NoKernel,
    #[error("vcpus must be between 1 and {MAX_VCPUS} (got {0})")]
    Vcpus(u64),
    #[error("memory_mib must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} (got {0})")]
    Memory(u64),
    #[error("invalid console `{0}`: use stdout, none or a file path")]
    Console(String),
    #[error("invalid partition name `{0}`: use 1-64 characters from [A-Za-z0-9._-]")]
    Name(String),
    #[error("invalid disk id `{0}`: use 1-20 characters from [A-Za-z0-9._-]")]
    DiskId(String),
    #[error("duplicate disk id `{0}`")]
    DuplicateDisk(String),
    #[error("invalid --disk `{0}`: use PATH[,ro][,id=ID]")]
    DiskFlag(String),
    #[error("too many disks ({0}); at most {MAX_DISKS}")]
    TooManyDisks(usize),
    #[error("disk `{0}`: {1}")]
    DiskSource(String, String),
    #[error("queues {0} is outside 1..={MAX_VIOS_QUEUES}")]
    Queues(usize),
    #[error("cmdline is {0} bytes; at most {MAX_CMDLINE_LEN}")]
    CmdlineTooLong(usize),
    #[error("memory: {0}")]
    MemorySpec(String),
    #[error("cpu: {0}")]
    Cpu(String),
    #[error("on_crash: {0}")]
    OnCrash(String),
}

/// Longest partition name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest disk id (the virtio-blk serial is 20 bytes).
pub const MAX_DISK_ID_LEN: usize = 20;

/// Whether `name` is 1 to `max` characters from `[A-Za-z0-9._-]` (partition
/// names, disk ids, segment ids).
pub fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A definition of either kind. In JSON a VIOS has `"kind": "vios"`; a VMM
/// partition has no `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Definition {
    /// Run by `vmm`.
    Partition(PartitionDefinition),
    /// Run by `vios`.
    Vios(ViosDefinition),
}

impl Definition {
    /// Reads and parses a definition file; relative paths in it are taken
    /// relative to the file's directory.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// Parses the text of the definition file `path`; errors name the file
    /// and the offending field, relative paths become relative to the
    /// file's directory.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Syntax {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let mut def = Self::from_value(value, path)?;
        def.relative_to(path.parent().unwrap_or(Path::new(".")));
        Ok(def)
    }

    /// Parses a definition received as JSON (`origin` names it in errors);
    /// paths are left as they are.
    pub fn from_value(value: serde_json::Value, origin: &Path) -> Result<Self, ConfigError> {
        let serde_json::Value::Object(mut map) = value else {
            return Err(ConfigError::NotAnObject(origin.to_path_buf()));
        };
        match map.remove(KIND_FIELD) {
            None => typed(serde_json::Value::Object(map), origin).map(Definition::Partition),
            Some(serde_json::Value::String(k)) if k == VIOS_KIND => {
                typed(serde_json::Value::Object(map), origin).map(Definition::Vios)
            }
            Some(other) => Err(ConfigError::Field {
                path: origin.to_path_buf(),
                field: KIND_FIELD.into(),
                message: format!(
                    "unknown kind {other}, expected `{VIOS_KIND}` (or no kind for a VMM partition)"
                ),
            }),
        }
    }

    fn relative_to(&mut self, dir: &Path) {
        match self {
            Definition::Partition(d) => d.relative_to(dir),
            Definition::Vios(d) => d.relative_to(dir),
        }
    }

    /// The partition's name, if the definition gives one.
    pub fn name(&self) -> Option<&str> {
        match self {
            Definition::Partition(d) => d.name.as_deref(),
            Definition::Vios(d) => Some(&d.name),
        }
    }

    /// `vios` for a VIOS; none for a VMM partition.
    pub fn kind(&self) -> Option<&'static str> {
        match self {
            Definition::Partition(_) => None,
            Definition::Vios(_) => Some(VIOS_KIND),
        }
    }

    pub fn is_vios(&self) -> bool {
        matches!(self, Definition::Vios(_))
    }

    /// Takes the manager-side fields out (`restart`, `segments`), leaving
    /// what the VMM or VIOS reads.
    pub fn take_manager_fields(&mut self) -> (Option<RestartPolicy>, Vec<SegmentSpec>) {
        match self {
            Definition::Partition(d) => (d.restart.take(), d.segments.take().unwrap_or_default()),
            Definition::Vios(d) => (d.restart.take(), Vec::new()),
        }
    }

    /// The VMM partition definition, or an error naming the file if it is a
    /// VIOS.
    pub fn into_partition(self, path: &Path) -> Result<PartitionDefinition, ConfigError> {
        match self {
            Definition::Partition(d) => Ok(d),
            Definition::Vios(_) => Err(ConfigError::Field {
                path: path.to_path_buf(),
                field: KIND_FIELD.into(),
                message: format!(
                    "a `{VIOS_KIND}` partition is run by the vios binary (vios --config), not by vmm"
                ),
            }),
        }
    }

    /// The VIOS definition, or an error naming the file if it is not one.
    pub fn into_vios(self, path: &Path) -> Result<ViosDefinition, ConfigError> {
        match self {
            Definition::Vios(d) => Ok(d),
            Definition::Partition(_) => Err(ConfigError::Field {
                path: path.to_path_buf(),
                field: KIND_FIELD.into(),
                message: format!("missing, expected `{VIOS_KIND}`"),
            }),
        }
    }
}

/// Deserializes `value` into `T`, naming the field that is wrong.
fn typed<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    origin: &Path,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let message = e.inner().to_string();
        if field.is_empty() || field == "." {
            ConfigError::Syntax {
                path: origin.to_path_buf(),
                message,
            }
        } else {
            ConfigError::Field {
                path: origin.to_path_buf(),
                field,
                message,
            }
        }
    })
}

impl Serialize for Definition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Tagged<'a> {
            kind: &'static str,
            #[serde(flatten)]
            def: &'a ViosDefinition,
        }
        match self {
            Definition::Partition(d) => d.serialize(s),
            Definition::Vios(def) => Tagged {
                kind: VIOS_KIND,
                def,
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Definition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        Definition::from_value(value, Path::new("(received)")).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
