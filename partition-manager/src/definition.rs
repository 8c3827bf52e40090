//! Partition definitions as the manager takes them: parsed by the one
//! reader of `parvm-config` ([`parvm_config::Definition`], a VMM partition or
//! a VIOS told apart by `kind`), whose typed manager-side fields
//! (`"restart": "never" | "on-failure"`, `"segments": [{"id", "size_kib" |
//! "size", "gpa"?}]`, the memory segments the partition owns) travel beside
//! the definition in a `define` request, not in it.
//!
//! `parctl define FILE` parses the file here (errors name the file and the
//! field, relative paths become absolute), and the manager checks what it
//! receives again with [`check`] (and `vios::check` for a VIOS): never
//! trust the peer.

use parvm_config::{
    ConfigError, Definition, PartitionConfig, PartitionDefinition, RestartPolicy, SegmentSpec,
};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("cannot read partition definition {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("partition definition {path}: field `segments`: {message}")]
    Segments { path: PathBuf, message: String },
    #[error("partition definition {0}: field `name` is required")]
    NoName(PathBuf),
    #[error("partition definition {path}: field `{field}`: {message}")]
    Path {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A value out of range, named with the file it is in.
    #[error("partition definition {path}: {source}")]
    Invalid { path: PathBuf, source: ConfigError },
}

/// A checked definition: what vmm will parse, the config it yields, and the
/// restart policy.
#[derive(Debug, Clone)]
pub struct Checked {
    pub definition: PartitionDefinition,
    pub config: PartitionConfig,
    pub restart: RestartPolicy,
}

/// A definition file as `parctl define` sends it: the definition without
/// its manager-side fields, and those fields.
#[derive(Debug, Clone)]
pub struct FileDefinition {
    pub definition: Definition,
    pub restart: Option<RestartPolicy>,
    pub segments: Vec<SegmentSpec>,
}

/// Reads a definition file (either kind) as `parctl define` does: relative
/// paths become absolute (relative to the file), `restart` and `segments`
/// are taken out and checked.
pub fn from_file(path: &Path) -> Result<FileDefinition, DefinitionError> {
    let abs = std::fs::canonicalize(path).map_err(|source| DefinitionError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut definition = Definition::from_file(&abs)?;
    let (restart, segments) = definition.take_manager_fields();
    parvm_config::check_segments(&segments).map_err(|message| DefinitionError::Segments {
        path: path.to_path_buf(),
        message,
    })?;
    match &definition {
        Definition::Partition(def) => {
            if def.name.is_none() {
                return Err(DefinitionError::NoName(path.to_path_buf()));
            }
            def.clone()
                .validate()
                .map_err(|source| invalid(path, source))?;
        }
        Definition::Vios(def) => def.validate().map_err(|source| invalid(path, source))?,
    }
    Ok(FileDefinition {
        definition,
        restart,
        segments,
    })
}

fn invalid(path: &Path, source: ConfigError) -> DefinitionError {
    DefinitionError::Invalid {
        path: path.to_path_buf(),
        source,
    }
}

/// The manager's check of a partition definition received from a client.
pub fn check(
    definition: &PartitionDefinition,
    restart: RestartPolicy,
) -> Result<Checked, DefinitionError> {
    let origin = PathBuf::from("(received)");
    let name = definition
        .name
        .clone()
        .ok_or_else(|| DefinitionError::NoName(origin.clone()))?;
    let origin = PathBuf::from(format!("`{name}`"));
    for (field, p) in [
        ("kernel", definition.kernel.as_deref()),
        ("initrd", definition.initrd.as_deref()),
    ] {
        let Some(p) = p else { continue };
        if !p.is_absolute() {
            return Err(DefinitionError::Path {
                path: origin,
                field,
                message: format!("{} is not an absolute path", p.display()),
            });
        }
        if let Err(e) = std::fs::metadata(p) {
            return Err(DefinitionError::Path {
                path: origin,
                field,
                message: format!("{}: {e}", p.display()),
            });
        }
    }
    let config = definition.clone().validate()?;
    Ok(Checked {
        definition: definition.clone(),
        config,
        restart,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A definition as the manager receives it, then checked.
    fn check_json(value: serde_json::Value) -> Result<Checked, String> {
        let def = Definition::from_value(value, Path::new("(received)"))
            .and_then(|d| d.into_partition(Path::new("(received)")))
            .map_err(|e| e.to_string())?;
        check(&def, RestartPolicy::Never).map_err(|e| e.to_string())
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn restart_is_taken_out_and_paths_made_absolute() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let d = dir.as_path();
        write(d, "k.elf", "");
        let p = write(
            d,
            "a.json",
            r#"{"name":"a","kernel":"k.elf","restart":"on-failure"}"#,
        );
        let FileDefinition {
            definition: def,
            restart,
            ..
        } = from_file(&p).unwrap();
        let Definition::Partition(def) = def else {
            panic!("not a partition definition: {def:?}")
        };
        assert_eq!(restart, Some(RestartPolicy::OnFailure));
        let kernel = def.kernel.clone().unwrap();
        assert!(
            kernel.is_absolute() && kernel.ends_with("k.elf"),
            "{kernel:?}"
        );
        let checked = check(&def, RestartPolicy::Never).unwrap();
        assert_eq!(checked.config.name, "a");
    }

    #[test]
    fn bad_files_get_one_clear_error() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let d = dir.as_path();
        let cases = [
            ("broken.json", r#"{"name":"a","#, "line 1"),
            ("array.json", "[1]", "expected a JSON object"),
            (
                "unknown.json",
                r#"{"name":"a","kernel":"/k","memroy_mib":1}"#,
                "memroy_mib",
            ),
            (
                "restart.json",
                r#"{"name":"a","kernel":"/k","restart":"always"}"#,
                "always",
            ),
            (
                "restart2.json",
                r#"{"name":"a","kernel":"/k","restart":1}"#,
                "restart",
            ),
            ("noname.json", r#"{"kernel":"/k"}"#, "`name` is required"),
            (
                "badname.json",
                r#"{"name":"a b","kernel":"/k"}"#,
                "invalid partition name",
            ),
            (
                "vcpus.json",
                r#"{"name":"a","kernel":"/k","vcpus":0}"#,
                "vcpus",
            ),
            (
                "seg1.json",
                r#"{"name":"a","kernel":"/k","segments":[{"id":"s"}]}"#,
                "size_kib is required",
            ),
            (
                "seg2.json",
                r#"{"name":"a","kernel":"/k","segments":[{"id":"s","size_kib":4},{"id":"s","size_kib":4}]}"#,
                "duplicate segment",
            ),
            (
                "seg3.json",
                r#"{"name":"a","kernel":"/k","segments":[{"id":"s","size_kib":2097152}]}"#,
                "exceeds",
            ),
            (
                "seg4.json",
                r#"{"name":"a","kernel":"/k","segments":[{"id":"s","size_kib":4,"colour":1}]}"#,
                "colour",
            ),
            (
                "seg5.json",
                r#"{"name":"a","kernel":"/k","segments":{"id":"s"}}"#,
                "segments",
            ),
            (
                "seg6.json",
                r#"{"name":"a","kernel":"/k","segments":[{"id":"s","size_kib":4,"gpa":4097}]}"#,
                "aligned",
            ),
        ];
        for (file, text, want) in cases {
            let e = from_file(&write(d, file, text)).unwrap_err().to_string();
            assert!(e.contains(want), "{file}: {e}");
            assert!(!e.contains('\n'), "{file}: {e}");
        }
        let e = from_file(&d.join("missing.json")).unwrap_err().to_string();
        assert!(e.contains("missing.json"), "{e}");
    }

    #[test]
    fn the_manager_rejects_relative_or_missing_kernels_and_unknown_fields() {
        let e = check_json(serde_json::json!({"name":"a","kernel":"k"})).unwrap_err();
        assert!(e.contains("not an absolute path"), "{e}");
        let e = check_json(serde_json::json!({"name":"a","kernel":"/nonexistent/k"})).unwrap_err();
        assert!(e.contains("/nonexistent/k"), "{e}");
        let e = check_json(serde_json::json!({"name":"a","kernal":"/k"})).unwrap_err();
        assert!(e.contains("kernal"), "{e}");
    }
}
