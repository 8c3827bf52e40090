//! Exported disks: what the operator names on the command line
//! (`--disk FILE[,ro]`) and the open image behind it.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::stats::DiskCounters;

use virtio_devices::block::{BlockCore, BlockCoreError, BlockOptions, DiskBackend, SECTOR_SIZE};

/// Errors of parsing and opening an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// `--disk` had an empty path or an unknown option.
    #[error("bad disk `{spec}`: {reason} (expected FILE[,ro][,id=ID])")]
    Spec {
        /// The argument as given.
        spec: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The image could not be opened.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// Image path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The image is not usable as a disk (size unknown, smaller than a sector).
    #[error("disk image {path}: {source}")]
    Image {
        /// Image path.
        path: PathBuf,
        /// Why.
        #[source]
        source: BlockCoreError,
    },
}

/// A disk id: what `vios:<vios>/<disk-id>` names and GET_ID returns.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 20
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// One disk the VIOS serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSpec {
    /// The disk id: returned by GET_ID (first 20 bytes) and used in logs.
    pub id: String,
    /// The raw image.
    pub path: PathBuf,
    /// Refuse writes (VIRTIO_BLK_F_RO).
    pub read_only: bool,
}

impl ExportSpec {
    /// Parse `FILE[,ro][,id=ID]` (also `,rw`). The id defaults to the file
    /// name.
    pub fn parse(spec: &str) -> Result<Self, ExportError> {
        let bad = |reason: &str| ExportError::Spec {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let mut parts = spec.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(bad("empty path"));
        }
        let mut read_only = false;
        let mut id = None;
        for option in parts {
            match option.split_once('=') {
                None if option == "ro" => read_only = true,
                None if option == "rw" => read_only = false,
                Some(("id", value)) if valid_id(value) => id = Some(value.to_owned()),
                Some(("id", _)) => {
                    return Err(bad("id must be 1-20 characters from [A-Za-z0-9._-]"))
                }
                _ => return Err(bad(&format!("unknown option `{option}`"))),
            }
        }
        let path = PathBuf::from(path);
        let id = id.unwrap_or_else(|| {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.to_string_lossy().into_owned())
        });
        Ok(ExportSpec {
            id,
            path,
            read_only,
        })
    }
}

/// An open exported disk. Each client connection gets its own
/// [`BlockCore`] over a clone of the file (positioned I/O only, so clones
/// never disturb each other).
#[derive(Debug)]
pub struct Export {
    spec: ExportSpec,
    file: File,
    capacity: u64,
    /// Over every connection serving it.
    stats: Arc<DiskCounters>,
}

impl Export {
    /// Open the image (read-only exports with O_RDONLY) and check it is at
    /// least one sector.
    pub fn open(spec: ExportSpec) -> Result<Self, ExportError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!spec.read_only)
            .open(&spec.path)
            .map_err(|source| ExportError::Open {
                path: spec.path.clone(),
                source,
            })?;
        let len = file.len().map_err(|source| ExportError::Open {
            path: spec.path.clone(),
            source,
        })?;
        if len < SECTOR_SIZE {
            return Err(ExportError::Image {
                path: spec.path.clone(),
                source: BlockCoreError::TooSmall(len),
            });
        }
        Ok(Export {
            capacity: len / SECTOR_SIZE,
            spec,
            file,
            stats: Arc::default(),
        })
    }

    /// The disk's id, path and mode.
    pub fn spec(&self) -> &ExportSpec {
        &self.spec
    }

    /// Capacity in 512-byte sectors when opened.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Its counters, shared by the connections serving it.
    pub fn stats(&self) -> &Arc<DiskCounters> {
        &self.stats
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        &self.spec.path
    }

    /// A fresh block core for one client connection.
    pub fn core(&self) -> Result<BlockCore<File>, ExportError> {
        self.core_for(false)
    }

    /// A fresh block core for one client connection, read-only if the
    /// export is or `read_only` asks (a client granted the disk `ro`).
    pub fn core_for(&self, read_only: bool) -> Result<BlockCore<File>, ExportError> {
        let file = self.file.try_clone().map_err(|source| ExportError::Open {
            path: self.spec.path.clone(),
            source,
        })?;
        BlockCore::new(
            file,
            &BlockOptions {
                read_only: self.spec.read_only || read_only,
                serial: self.spec.id.clone(),
            },
        )
        .map_err(|source| ExportError::Image {
            path: self.spec.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn parse_specs() {
        let s = ExportSpec::parse("/img/a.raw").unwrap();
        assert_eq!(s.id, "a.raw");
        assert!(!s.read_only);
        assert!(ExportSpec::parse("/img/a.raw,ro").unwrap().read_only);
        assert!(!ExportSpec::parse("/img/a.raw,ro,rw").unwrap().read_only);
        let s = ExportSpec::parse("/img/a.raw,ro,id=data").unwrap();
        assert_eq!((s.id.as_str(), s.read_only), ("data", true));
        assert!(ExportSpec::parse("/img/a.raw,id=").is_err());
        assert!(ExportSpec::parse("/img/a.raw,id=a/b").is_err());
        let e = ExportSpec::parse("/img/a.raw,fast")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown option `fast`"), "{e}");
        assert!(ExportSpec::parse(",ro").is_err());
        assert!(ExportSpec::parse("").is_err());
    }

    #[test]
    fn open_refuses_small_and_missing_images() {
        let dir = std::env::temp_dir().join(format!("vios-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = dir.join("small.raw");
        std::fs::write(&small, [0u8; 100]).unwrap();
        let e = Export::open(ExportSpec::parse(small.to_str().unwrap()).unwrap()).unwrap_err();
        assert!(
            e.to_string().contains("smaller than one 512-byte sector"),
            "{e}"
        );
        let e = Export::open(ExportSpec::parse("/nonexistent/x.raw").unwrap()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.raw"), "{e}");
        let ok = dir.join("ok.raw");
        std::fs::write(&ok, vec![0u8; 4096]).unwrap();
        let export = Export::open(ExportSpec::parse(ok.to_str().unwrap()).unwrap()).unwrap();
        assert_eq!(export.capacity(), 8);
        assert_eq!(export.core().unwrap().capacity(), 8);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
