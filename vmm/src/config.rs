//! Partition definitions: the JSON file an operator writes, the `vmm` flags
//! that override it, and the checks that turn both into a [`PartitionConfig`].

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Largest vCPU count a partition may have: APIC ids and the MADT's
/// processor ids are 8-bit in the xAPIC model the VMM describes.
pub const MAX_VCPUS: u32 = 254;
/// Smallest guest RAM: the kernel is loaded at 1 MiB and needs room above it.
pub const MIN_MEMORY_MIB: u64 = 2;
/// Largest guest RAM accepted from a definition (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Command line used when the definition gives none.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

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
}

/// Most virtio-mmio disks one partition may have (one IO-APIC pin each).
pub const MAX_DISKS: usize = 16;

/// A disk of the partition: a raw image file served by the VMM's virtio-blk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Name of the disk; the guest reads it as the virtio-blk serial (GET_ID).
    pub id: String,
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

impl DiskConfig {
    /// Parses the `--disk PATH[,ro][,id=ID]` flag; `index` names unnamed disks.
    pub fn from_flag(flag: &str, index: usize) -> Result<Self, ConfigError> {
        let mut parts = flag.split(',');
        let path = parts.next().filter(|p| !p.is_empty());
        let Some(path) = path else {
            return Err(ConfigError::DiskFlag(flag.into()));
        };
        let mut disk = DiskConfig {
            id: format!("disk{index}"),
            path: PathBuf::from(path),
            read_only: false,
        };
        for part in parts {
            match part.split_once('=') {
                None if part == "ro" => disk.read_only = true,
                None if part == "rw" => disk.read_only = false,
                Some(("id", id)) => disk.id = id.to_string(),
                _ => return Err(ConfigError::DiskFlag(flag.into())),
            }
        }
        Ok(disk)
    }
}

/// Prefix of a disk `path` served by a vhost-user-blk backend listening on
/// a Unix socket: `vhost-user:/run/vios/data.sock` (docs/vios.md).
pub const VHOST_USER_PREFIX: &str = "vhost-user:";
/// Prefix of a disk `path` served by a vhost-user-blk backend on an
/// inherited, already connected socket: `vhost-user-fd:4`. The partition
/// manager writes this form for `vios:` disks, with its end of the
/// socketpair it brokered between the VMM and the VIOS.
pub const VHOST_USER_FD_PREFIX: &str = "vhost-user-fd:";
/// Prefix of a disk `path` naming a VIOS export: `vios:<vios>/<disk>`. Only
/// the partition manager resolves it (docs/vios.md).
pub const VIOS_PREFIX: &str = "vios:";

/// Where a disk's blocks come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource<'a> {
    /// A raw image served by the VMM's own virtio-blk.
    Image(&'a Path),
    /// A vhost-user-blk backend on this socket path.
    VhostUser(&'a Path),
    /// A vhost-user-blk backend on this inherited file descriptor.
    VhostUserFd(i32),
    /// A VIOS export, `vios:<vios>/<disk>`, for the manager to broker.
    Vios { vios: &'a str, disk: &'a str },
}

impl DiskConfig {
    /// What `path` names: an image, or one of the vhost-user forms.
    pub fn source(&self) -> Result<DiskSource<'_>, ConfigError> {
        let bad = |why: &str| ConfigError::DiskSource(self.id.clone(), why.to_string());
        let Some(text) = self.path.to_str() else {
            return Ok(DiskSource::Image(&self.path));
        };
        if let Some(socket) = text.strip_prefix(VHOST_USER_PREFIX) {
            if socket.is_empty() {
                return Err(bad("vhost-user: needs a socket path"));
            }
            Ok(DiskSource::VhostUser(Path::new(socket)))
        } else if let Some(fd) = text.strip_prefix(VHOST_USER_FD_PREFIX) {
            let fd: i32 = fd
                .parse()
                .ok()
                .filter(|fd| *fd > 2)
                .ok_or_else(|| bad("vhost-user-fd: needs a file descriptor number above 2"))?;
            Ok(DiskSource::VhostUserFd(fd))
        } else if let Some(name) = text.strip_prefix(VIOS_PREFIX) {
            match name.split_once('/') {
                Some((vios, disk)) if valid_name(vios, 64) && valid_name(disk, 20) => {
                    Ok(DiskSource::Vios { vios, disk })
                }
                _ => Err(bad("use vios:<vios-name>/<disk-id>")),
            }
        } else {
            Ok(DiskSource::Image(&self.path))
        }
    }
}

fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Where the partition's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Console {
    Stdout,
    None,
    File(PathBuf),
}

impl TryFrom<String> for Console {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, ConfigError> {
        match s.as_str() {
            "stdout" => Ok(Console::Stdout),
            "none" => Ok(Console::None),
            "" => Err(ConfigError::Console(s)),
            _ => Ok(Console::File(PathBuf::from(s))),
        }
    }
}

impl From<Console> for String {
    fn from(c: Console) -> String {
        match c {
            Console::Stdout => "stdout".into(),
            Console::None => "none".into(),
            Console::File(p) => p.display().to_string(),
        }
    }
}

/// A partition definition as written in JSON. Unknown fields are errors;
/// relative paths are relative to the directory of the file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionDefinition {
    pub name: Option<String>,
    pub vcpus: Option<u64>,
    pub memory_mib: Option<u64>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub console: Option<Console>,
    pub disks: Option<Vec<DiskConfig>>,
}

impl PartitionDefinition {
    /// Parses a definition; errors name the offending field.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let def: PartitionDefinition = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let message = e.inner().to_string();
            if field.is_empty() || field == "." {
                ConfigError::Syntax {
                    path: path.to_path_buf(),
                    message,
                }
            } else {
                ConfigError::Field {
                    path: path.to_path_buf(),
                    field,
                    message,
                }
            }
        })?;
        Ok(def.relative_to(path.parent().unwrap_or(Path::new("."))))
    }

    /// Reads and parses a definition file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    fn relative_to(mut self, dir: &Path) -> Self {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(path) = p {
                if path.is_relative() {
                    *path = dir.join(&*path);
                }
            }
        };
        fix(&mut self.kernel);
        fix(&mut self.initrd);
        for disk in self.disks.iter_mut().flatten() {
            match disk.source() {
                Ok(DiskSource::Image(path)) if path.is_relative() => {
                    disk.path = dir.join(&disk.path);
                }
                Ok(DiskSource::VhostUser(socket)) if socket.is_relative() => {
                    let socket = dir.join(socket);
                    disk.path = PathBuf::from(format!("{VHOST_USER_PREFIX}{}", socket.display()));
                }
                _ => {}
            }
        }
        if let Some(Console::File(path)) = &mut self.console {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        }
        self
    }

    /// Fields set in `over` replace those in `self` (flags override the file).
    pub fn overridden_by(self, over: PartitionDefinition) -> Self {
        PartitionDefinition {
            name: over.name.or(self.name),
            vcpus: over.vcpus.or(self.vcpus),
            memory_mib: over.memory_mib.or(self.memory_mib),
            kernel: over.kernel.or(self.kernel),
            initrd: over.initrd.or(self.initrd),
            cmdline: over.cmdline.or(self.cmdline),
            console: over.console.or(self.console),
            disks: over.disks.or(self.disks),
        }
    }

    /// Applies defaults and range checks.
    pub fn validate(self) -> Result<PartitionConfig, ConfigError> {
        let name = self.name.unwrap_or_else(|| "partition".to_string());
        if !valid_name(&name, 64) {
            return Err(ConfigError::Name(name));
        }
        let disks = self.disks.unwrap_or_default();
        if disks.len() > MAX_DISKS {
            return Err(ConfigError::TooManyDisks(disks.len()));
        }
        for (i, d) in disks.iter().enumerate() {
            if !valid_name(&d.id, 20) {
                return Err(ConfigError::DiskId(d.id.clone()));
            }
            if disks[..i].iter().any(|o| o.id == d.id) {
                return Err(ConfigError::DuplicateDisk(d.id.clone()));
            }
            d.source()?;
        }
        let vcpus = self.vcpus.unwrap_or(1);
        if vcpus == 0 || vcpus > u64::from(MAX_VCPUS) {
            return Err(ConfigError::Vcpus(vcpus));
        }
        let memory_mib = self.memory_mib.unwrap_or(128);
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
            return Err(ConfigError::Memory(memory_mib));
        }
        Ok(PartitionConfig {
            name,
            vcpus: vcpus as u8,
            memory_mib,
            kernel: self.kernel.ok_or(ConfigError::NoKernel)?,
            initrd: self.initrd,
            cmdline: self.cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
            console: self.console.unwrap_or(Console::Stdout),
            disks,
        })
    }
}

/// A checked partition configuration, ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionConfig {
    pub name: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub console: Console,
    pub disks: Vec<DiskConfig>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(s: &str) -> Result<PartitionDefinition, ConfigError> {
        PartitionDefinition::from_json(s, Path::new("/etc/parvm/p.json"))
    }

    #[test]
    fn full_definition_parses_and_paths_are_relative_to_the_file() {
        let d = parse(
            r#"{"name":"a","vcpus":2,"memory_mib":64,"kernel":"k.elf",
                "initrd":"/abs/i","cmdline":"x y","console":"log.txt"}"#,
        )
        .unwrap();
        let c = d.validate().unwrap();
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.kernel, PathBuf::from("/etc/parvm/k.elf"));
        assert_eq!(c.initrd, Some(PathBuf::from("/abs/i")));
        assert_eq!(c.console, Console::File("/etc/parvm/log.txt".into()));
    }

    #[test]
    fn unknown_field_is_named() {
        let e = parse(r#"{"kernel":"k","memory":5}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("memory"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = parse(r#"{"kernel":"k","vcpus":"two"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `vcpus`"), "{e}");
    }

    #[test]
    fn broken_json_is_a_syntax_error() {
        let e = parse(r#"{"kernel":"#).unwrap_err().to_string();
        assert!(e.contains("p.json"), "{e}");
        assert!(parse("").is_err());
        assert!(parse("[]").is_err());
    }

    #[test]
    fn ranges_are_checked() {
        for v in [0, 255, 300] {
            let d = PartitionDefinition {
                kernel: Some("k".into()),
                vcpus: Some(v),
                ..Default::default()
            };
            assert!(matches!(d.validate(), Err(ConfigError::Vcpus(_))));
        }
        let d = PartitionDefinition {
            kernel: Some("k".into()),
            memory_mib: Some(1),
            ..Default::default()
        };
        assert!(matches!(d.validate(), Err(ConfigError::Memory(1))));
        assert!(matches!(
            PartitionDefinition::default().validate(),
            Err(ConfigError::NoKernel)
        ));
        let d = PartitionDefinition {
            kernel: Some("k".into()),
            name: Some("a b".into()),
            ..Default::default()
        };
        assert!(matches!(d.validate(), Err(ConfigError::Name(_))));
    }

    #[test]
    fn disks_parse_and_ids_are_checked() {
        let d = parse(r#"{"kernel":"k","disks":[{"id":"root","path":"r.img"},{"id":"data","path":"/d.img","read_only":true}]}"#)
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(d.disks[0].path, PathBuf::from("/etc/parvm/r.img"));
        assert!(d.disks[1].read_only && !d.disks[0].read_only);
        let dup = parse(r#"{"kernel":"k","disks":[{"id":"a","path":"x"},{"id":"a","path":"y"}]}"#)
            .unwrap();
        assert!(matches!(dup.validate(), Err(ConfigError::DuplicateDisk(_))));
        let bad = parse(r#"{"kernel":"k","disks":[{"id":"","path":"x"}]}"#).unwrap();
        assert!(matches!(bad.validate(), Err(ConfigError::DiskId(_))));
        let e = parse(r#"{"kernel":"k","disks":[{"id":"a","path":"x","size":1}]}"#).unwrap_err();
        assert!(e.to_string().contains("disks[0]"), "{e}");
        let e = parse(r#"{"kernel":"k","disks":[{"id":"a"}]}"#).unwrap_err();
        assert!(e.to_string().contains("path"), "{e}");
    }

    #[test]
    fn vhost_user_disk_sources() {
        let d = parse(
            r#"{"kernel":"k","disks":[{"id":"a","path":"vhost-user:vios.sock"},{"id":"b","path":"vhost-user-fd:4"},{"id":"c","path":"vios:vios1/data"}]}"#,
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(
            d.disks[0].source().unwrap(),
            DiskSource::VhostUser(Path::new("/etc/parvm/vios.sock"))
        );
        assert_eq!(d.disks[1].source().unwrap(), DiskSource::VhostUserFd(4));
        assert_eq!(
            d.disks[2].source().unwrap(),
            DiskSource::Vios {
                vios: "vios1",
                disk: "data"
            }
        );
        for bad in [
            "vhost-user:",
            "vhost-user-fd:x",
            "vhost-user-fd:1",
            "vios:x",
            "vios:/d",
            "vios:a/",
        ] {
            let e = parse(&format!(
                r#"{{"kernel":"k","disks":[{{"id":"a","path":"{bad}"}}]}}"#
            ))
            .unwrap()
            .validate()
            .unwrap_err();
            assert!(e.to_string().contains("disk `a`"), "{bad}: {e}");
        }
    }

    #[test]
    fn disk_flags() {
        let d = DiskConfig::from_flag("/x.img,ro,id=boot", 0).unwrap();
        assert_eq!((d.id.as_str(), d.read_only), ("boot", true));
        assert_eq!(DiskConfig::from_flag("y.img", 3).unwrap().id, "disk3");
        for bad in ["", ",ro", "x,rw=1", "x,bogus"] {
            assert!(DiskConfig::from_flag(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let file = parse(r#"{"kernel":"k","vcpus":1,"memory_mib":64}"#).unwrap();
        let flags = PartitionDefinition {
            vcpus: Some(2),
            ..Default::default()
        };
        let c = file.overridden_by(flags).validate().unwrap();
        assert_eq!((c.vcpus, c.memory_mib), (2, 64));
    }
}
