//! Partition definitions as the VMM takes them: the types, limits, defaults
//! and the reader live in the `parvm-config` crate (shared with the VIOS,
//! the partition manager and `parctl`); `vmm`'s flags fill in the same
//! [`PartitionDefinition`] (`DiskConfig::from_flag` for `--disk`) and
//! override the file's fields before [`PartitionDefinition::validate`].

pub use parvm_config::{
    ConfigError, Console, CrashAction, DiskConfig, DiskSource, MemoryMode, MemorySpec, OnCrash,
    PartitionConfig, PartitionDefinition, SharedMemory, DEFAULT_CMDLINE, DEFAULT_MEMORY_MIB,
    DEFAULT_VCPUS, MAX_DISKS, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB, VHOST_USER_FD_PREFIX,
    VHOST_USER_PREFIX, VIOS_PREFIX,
};
