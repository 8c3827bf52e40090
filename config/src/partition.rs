//! A VMM partition's definition: the JSON an operator writes (also what
//! `vmm`'s flags fill in), and the checks that turn it into a
//! [`PartitionConfig`].

use crate::cpu::CpuSpec;
use crate::crash::OnCrash;
use crate::manager::{RestartPolicy, SegmentSpec};
use crate::memory::{MemorySpec, SharedMemory};
use crate::source::DiskSource;
use crate::{valid_name, ConfigError, MAX_DISK_ID_LEN, MAX_NAME_LEN};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// vCPUs of a partition whose definition gives none.
pub const DEFAULT_VCPUS: u64 = 1;
/// Guest RAM (MiB) of a partition whose definition gives none.
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// Name of a partition whose definition gives none (a `vmm` run by hand).
pub const DEFAULT_NAME: &str = "partition";
/// Largest vCPU count a partition may have: APIC ids and the MADT's
/// processor ids are 8-bit in the xAPIC model the VMM describes.
pub const MAX_VCPUS: u32 = 254;
/// Smallest guest RAM: the kernel is loaded at 1 MiB and needs room above it.
pub const MIN_MEMORY_MIB: u64 = 2;
/// Largest guest RAM accepted from a definition (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Command line used when the definition gives none.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
/// Longest kernel command line, in bytes (the VMM's command-line area
/// holds it with its terminating NUL; Linux's own limit is no larger).
pub const MAX_CMDLINE_LEN: usize = 4095;
/// Most virtio-mmio disks one partition may have (one IO-APIC pin each).
pub const MAX_DISKS: usize = 16;

/// A disk of the partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DiskJson", into = "DiskJson")]
pub struct DiskConfig {
    /// Name of the disk; the guest reads it as the virtio-blk serial (GET_ID).
    pub id: String,
    /// Where its blocks come from (`path` in JSON).
    pub source: DiskSource,
    pub read_only: bool,
}

/// A disk as written in JSON.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskJson {
    id: String,
    path: String,
    #[serde(default)]
    read_only: bool,
}

impl TryFrom<DiskJson> for DiskConfig {
    type Error = ConfigError;
    fn try_from(d: DiskJson) -> Result<Self, ConfigError> {
        let source =
            DiskSource::parse(&d.path).map_err(|m| ConfigError::DiskSource(d.id.clone(), m))?;
        Ok(DiskConfig {
            id: d.id,
            source,
            read_only: d.read_only,
        })
    }
}

impl From<DiskConfig> for DiskJson {
    fn from(d: DiskConfig) -> Self {
        DiskJson {
            id: d.id,
            path: d.source.to_string(),
            read_only: d.read_only,
        }
    }
}

impl DiskConfig {
    /// Parses the `--disk PATH[,ro][,id=ID]` flag; `index` names unnamed disks.
    pub fn from_flag(flag: &str, index: usize) -> Result<Self, ConfigError> {
        let mut parts = flag.split(',');
        let path = parts.next().filter(|p| !p.is_empty());
        let Some(path) = path else {
            return Err(ConfigError::DiskFlag(flag.into()));
        };
        let mut id = format!("disk{index}");
        let mut read_only = false;
        for part in parts {
            match part.split_once('=') {
                None if part == "ro" => read_only = true,
                None if part == "rw" => read_only = false,
                Some(("id", i)) => id = i.to_string(),
                _ => return Err(ConfigError::DiskFlag(flag.into())),
            }
        }
        let source = DiskSource::parse(path).map_err(|m| ConfigError::DiskSource(id.clone(), m))?;
        Ok(DiskConfig {
            id,
            source,
            read_only,
        })
    }
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Manager-side: what to do when the VMM fails (the VMM ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    /// Manager-side: memory segments the partition owns (the VMM ignores
    /// them; the manager creates and maps them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<SegmentSpec>>,
    /// Dedicated (default) or shared memory (Active Memory Sharing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Box<MemorySpec>>,
    /// Manager-side: processor entitlement (docs/workload.md; the VMM
    /// ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuSpec>,
    /// A failure's dump and what follows it (docs/dump.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_crash: Option<Box<OnCrash>>,
}

impl PartitionDefinition {
    /// Parses a definition; errors name the offending field. A definition of
    /// another kind (a VIOS) is an error.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, ConfigError> {
        crate::Definition::from_json(text, path)?.into_partition(path)
    }

    /// Reads and parses a definition file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        crate::Definition::from_file(path)?.into_partition(path)
    }

    /// Makes relative paths relative to `dir`.
    pub(crate) fn relative_to(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        for path in [&mut self.kernel, &mut self.initrd].into_iter().flatten() {
            fix(path);
        }
        for disk in self.disks.iter_mut().flatten() {
            match &mut disk.source {
                DiskSource::Image(path) | DiskSource::VhostUser(path) => fix(path),
                DiskSource::VhostUserFd(_) | DiskSource::Vios { .. } => {}
            }
        }
        if let Some(DiskSource::VhostUser(path)) =
            self.on_crash.as_mut().and_then(|c| c.dump.as_mut())
        {
            fix(path);
        }
        if let Some(Console::File(path)) = &mut self.console {
            fix(path);
        }
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
            restart: over.restart.or(self.restart),
            segments: over.segments.or(self.segments),
            memory: over.memory.or(self.memory),
            cpu: over.cpu.or(self.cpu),
            on_crash: over.on_crash.or(self.on_crash),
        }
    }

    /// Applies defaults and range checks.
    pub fn validate(self) -> Result<PartitionConfig, ConfigError> {
        let name = self.name.unwrap_or_else(|| DEFAULT_NAME.to_string());
        if !valid_name(&name, MAX_NAME_LEN) {
            return Err(ConfigError::Name(name));
        }
        let disks = self.disks.unwrap_or_default();
        if disks.len() > MAX_DISKS {
            return Err(ConfigError::TooManyDisks(disks.len()));
        }
        for (i, d) in disks.iter().enumerate() {
            if !valid_name(&d.id, MAX_DISK_ID_LEN) {
                return Err(ConfigError::DiskId(d.id.clone()));
            }
            if disks[..i].iter().any(|o| o.id == d.id) {
                return Err(ConfigError::DuplicateDisk(d.id.clone()));
            }
        }
        let vcpus = self.vcpus.unwrap_or(DEFAULT_VCPUS);
        if vcpus == 0 || vcpus > u64::from(MAX_VCPUS) {
            return Err(ConfigError::Vcpus(vcpus));
        }
        if let Some(cpu) = &self.cpu {
            cpu.check(vcpus).map_err(ConfigError::Cpu)?;
        }
        let (memory_mib, shared) = MemorySpec::resolve(self.memory.as_deref(), self.memory_mib)?;
        let memory_mib = memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
            return Err(ConfigError::Memory(memory_mib));
        }
        if let Some(r) = shared.as_ref().and_then(|s| s.resident_mib) {
            if r > memory_mib {
                return Err(ConfigError::MemorySpec(format!(
                    "resident_mib {r} is above the logical size of {memory_mib} MiB"
                )));
            }
        }
        if let Some(cmdline) = &self.cmdline {
            if cmdline.len() > MAX_CMDLINE_LEN {
                return Err(ConfigError::CmdlineTooLong(cmdline.len()));
            }
        }
        if let Some(c) = &self.on_crash {
            c.check()?;
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
            shared,
            on_crash: self.on_crash.map(|c| *c),
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
    /// Shared memory (Active Memory Sharing); `None`: dedicated.
    pub shared: Option<SharedMemory>,
    /// Dump and action on failure; `None`: the VMM just exits.
    pub on_crash: Option<OnCrash>,
}
