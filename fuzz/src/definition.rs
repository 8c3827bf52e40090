//! Target `definition`: partition definitions as text, through the one
//! reader every process uses (`parvm_config::Definition::from_json`).
//!
//! - a definition of either kind that parses has only absolute paths left
//!   where relative ones are resolved, serializes and parses back to the
//!   same definition;
//! - a partition definition that validates respects every documented limit
//!   (vCPUs, memory, disks, names, the command line);
//! - a VIOS definition that validates has valid, distinct disk ids and a
//!   queue count in range;
//! - the manager-side fields: `segments` that pass `check_segments` are
//!   valid, distinct, whole pages, page-aligned; the manager's own `check`
//!   of a received partition definition never accepts a relative kernel.

use std::path::Path;

use partition_manager::definition::check;
use parvm_config::{
    check_segments, valid_segment_id, Definition, DiskSource, PartitionDefinition, RestartPolicy,
    ViosDefinition, MAX_CMDLINE_LEN, MAX_DISKS, MAX_DISK_ID_LEN, MAX_MEMORY_MIB, MAX_NAME_LEN,
    MAX_VCPUS, MAX_VIOS_QUEUES, MIN_MEMORY_MIB,
};

/// Where the definition claims to come from: its directory resolves
/// relative paths (nothing is read from it).
const ORIGIN: &str = "/parvm-fuzz/definition.json";

pub fn definition(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Path::new(ORIGIN);
    let Ok(mut def) = Definition::from_json(text, origin) else {
        return;
    };
    let (_restart, segments) = def.take_manager_fields();
    if check_segments(&segments).is_ok() {
        for (i, s) in segments.iter().enumerate() {
            assert!(valid_segment_id(&s.id), "{s:?}");
            assert!(
                !segments[..i].iter().any(|o| o.id == s.id),
                "duplicate {}",
                s.id
            );
            let bytes = s.bytes().unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert!(bytes > 0 && bytes.is_multiple_of(4096), "{s:?}: {bytes}");
            assert!(s.gpa.is_none_or(|g| g.is_multiple_of(4096)));
        }
    }
    match def {
        Definition::Partition(p) => partition(p),
        Definition::Vios(v) => vios(v),
    }
}

fn partition(def: PartitionDefinition) {
    for p in [&def.kernel, &def.initrd].into_iter().flatten() {
        assert!(p.is_absolute(), "{p:?} left relative");
    }
    for d in def.disks.iter().flatten() {
        if let DiskSource::Image(p) | DiskSource::VhostUser(p) = &d.source {
            assert!(p.is_absolute(), "disk {:?} left relative", d.source);
        }
    }
    let json = serde_json::to_string(&def).unwrap_or_else(|e| panic!("{def:?}: {e}"));
    let again = PartitionDefinition::from_json(&json, Path::new(ORIGIN))
        .unwrap_or_else(|e| panic!("{json} does not parse back: {e}"));
    assert_eq!(
        serde_json::to_string(&again).ok().as_deref(),
        Some(json.as_str())
    );
    if let Ok(checked) = check(&def, RestartPolicy::Never) {
        // Only definitions whose kernel exists get here.
        assert!(checked.config.kernel.is_absolute());
    }
    let Ok(config) = def.validate() else { return };
    assert!(
        valid_name(&config.name, MAX_NAME_LEN),
        "name {:?}",
        config.name
    );
    assert!((1..=MAX_VCPUS).contains(&u32::from(config.vcpus)));
    assert!((MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&config.memory_mib));
    assert!(config.cmdline.len() <= MAX_CMDLINE_LEN);
    assert!(config.disks.len() <= MAX_DISKS);
    for (i, d) in config.disks.iter().enumerate() {
        assert!(valid_name(&d.id, MAX_DISK_ID_LEN), "disk id {:?}", d.id);
        assert!(!config.disks[..i].iter().any(|o| o.id == d.id));
    }
}

fn vios(def: ViosDefinition) {
    for d in &def.disks {
        assert!(d.path.is_absolute(), "{:?}", d.path);
    }
    let tagged = Definition::Vios(def.clone());
    let json = serde_json::to_string(&tagged).unwrap_or_else(|e| panic!("{def:?}: {e}"));
    let again = Definition::from_json(&json, Path::new(ORIGIN))
        .unwrap_or_else(|e| panic!("{json} does not parse back: {e}"));
    assert!(
        matches!(&again, Definition::Vios(v) if *v == def),
        "{json} parses back as {again:?}"
    );
    if def.validate().is_err() {
        return;
    }
    assert!(valid_name(&def.name, MAX_NAME_LEN), "name {:?}", def.name);
    assert!(def
        .queues
        .is_none_or(|q| (1..=MAX_VIOS_QUEUES).contains(&q)));
    for (i, d) in def.disks.iter().enumerate() {
        assert!(valid_name(&d.id, MAX_DISK_ID_LEN), "disk id {:?}", d.id);
        assert!(!def.disks[..i].iter().any(|o| o.id == d.id));
    }
}

/// The documented rule for names, written out here so the target checks
/// the reader against it rather than against itself.
fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}
