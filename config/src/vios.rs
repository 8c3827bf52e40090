//! A VIOS partition's definition (`"kind": "vios"`): the disk images it
//! exports and how it serves them (docs/vios.md).

use crate::manager::RestartPolicy;
use crate::{valid_name, ConfigError, MAX_DISK_ID_LEN, MAX_NAME_LEN};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `kind` of a VIOS partition definition.
pub const VIOS_KIND: &str = "vios";
/// Most queues a VIOS offers one client.
pub const MAX_VIOS_QUEUES: usize = 16;
/// Queues offered to each client when the definition gives none.
pub const DEFAULT_VIOS_QUEUES: usize = 1;

/// One export of a VIOS definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViosDisk {
    /// What clients name: `vios:<vios>/<id>`; also the GET_ID serial.
    pub id: String,
    /// The raw image.
    pub path: PathBuf,
    /// Export read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// A partition definition of kind `vios` (the `kind` field itself belongs
/// to [`crate::Definition`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViosDefinition {
    /// The partition name.
    pub name: String,
    /// The exported disks.
    #[serde(default)]
    pub disks: Vec<ViosDisk>,
    /// Queues offered to each client (default [`DEFAULT_VIOS_QUEUES`]).
    #[serde(default)]
    pub queues: Option<usize>,
    /// Ignored (the manager's console log); accepted for symmetry with vmm.
    #[serde(default)]
    pub console: Option<String>,
    /// Manager-side: what to do when the VIOS fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
}

impl ViosDefinition {
    /// Parses a definition, which must be of kind `vios`; relative image
    /// paths are relative to the directory of `path`. Not yet checked
    /// ([`ViosDefinition::validate`]).
    pub fn from_json(text: &str, path: &Path) -> Result<Self, ConfigError> {
        crate::Definition::from_json(text, path)?.into_vios(path)
    }

    /// Reads and parses a definition file of kind `vios`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        crate::Definition::from_file(path)?.into_vios(path)
    }

    /// Checks names, ids and limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !valid_name(&self.name, MAX_NAME_LEN) {
            return Err(ConfigError::Name(self.name.clone()));
        }
        if let Some(q) = self.queues {
            if q == 0 || q > MAX_VIOS_QUEUES {
                return Err(ConfigError::Queues(q));
            }
        }
        for (i, d) in self.disks.iter().enumerate() {
            if !valid_name(&d.id, MAX_DISK_ID_LEN) {
                return Err(ConfigError::DiskId(d.id.clone()));
            }
            if self.disks[..i].iter().any(|o| o.id == d.id) {
                return Err(ConfigError::DuplicateDisk(d.id.clone()));
            }
        }
        Ok(())
    }

    /// Queues offered to each client.
    pub fn queues(&self) -> usize {
        self.queues.unwrap_or(DEFAULT_VIOS_QUEUES)
    }

    /// The export named `id`, if any.
    pub fn disk(&self, id: &str) -> Option<&ViosDisk> {
        self.disks.iter().find(|d| d.id == id)
    }

    /// What `parctl list/status` shows as the exports: `id` or `id:ro`.
    pub fn export_names(&self) -> Vec<String> {
        self.disks
            .iter()
            .map(|x| {
                if x.read_only {
                    format!("{}:ro", x.id)
                } else {
                    x.id.clone()
                }
            })
            .collect()
    }

    pub(crate) fn relative_to(&mut self, dir: &Path) {
        for d in &mut self.disks {
            if d.path.is_relative() {
                d.path = dir.join(&d.path);
            }
        }
    }
}
