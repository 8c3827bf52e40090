//! Partition definitions as the manager takes them: vmm's JSON definition
//! (`vmm::config::PartitionDefinition`, parsed by vmm's own code) plus two
//! manager-side fields, `"restart": "never" | "on-failure"` and
//! `"segments": [{"id", "size_kib" | "size", "gpa"?}]` (memory segments the
//! partition owns), which are taken out before vmm's strict parser
//! (`deny_unknown_fields`) sees the rest.
//!
//! `parctl define FILE` parses the file here (errors name the file and the
//! field, relative paths become absolute), and the manager checks what it
//! receives again with [`check`]: never trust the peer.

use parvm_protocol::{RestartPolicy, SegmentSpec};
use std::path::{Path, PathBuf};
use vmm::config::{ConfigError, PartitionConfig, PartitionDefinition};

/// The manager-side field of a definition file.
pub const RESTART_FIELD: &str = "restart";
/// The manager-side list of segments a partition owns.
pub const SEGMENTS_FIELD: &str = "segments";

#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("cannot read partition definition {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("partition definition {path}: line {line}, column {column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("partition definition {0}: expected a JSON object")]
    NotAnObject(PathBuf),
    #[error("partition definition {path}: field `restart`: {message}")]
    Restart { path: PathBuf, message: String },
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
}

/// A checked definition: what vmm will parse, the config it yields, and the
/// restart policy.
#[derive(Debug, Clone)]
pub struct Checked {
    pub definition: PartitionDefinition,
    pub config: PartitionConfig,
    pub restart: RestartPolicy,
}

/// A definition file as `parctl define` sends it.
#[derive(Debug, Clone)]
pub struct FileDefinition {
    pub definition: PartitionDefinition,
    pub restart: Option<RestartPolicy>,
    pub segments: Vec<SegmentSpec>,
}

/// Reads a definition file as `parctl define` does: relative paths become
/// absolute (relative to the file), `restart` and `segments` are taken out.
pub fn from_file(path: &Path) -> Result<FileDefinition, DefinitionError> {
    let read_err = |source| DefinitionError::Read {
        path: path.to_path_buf(),
        source,
    };
    let abs = std::fs::canonicalize(path).map_err(read_err)?;
    let text = std::fs::read_to_string(&abs).map_err(read_err)?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| DefinitionError::Syntax {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| DefinitionError::NotAnObject(path.to_path_buf()))?;
    let restart = match obj.remove(RESTART_FIELD) {
        None => None,
        Some(serde_json::Value::String(s)) => {
            Some(s.parse().map_err(|message| DefinitionError::Restart {
                path: path.to_path_buf(),
                message,
            })?)
        }
        Some(other) => {
            return Err(DefinitionError::Restart {
                path: path.to_path_buf(),
                message: format!("expected \"never\" or \"on-failure\", got {other}"),
            })
        }
    };
    let segments = match obj.remove(SEGMENTS_FIELD) {
        None => Vec::new(),
        Some(v) => parse_segments(v).map_err(|message| DefinitionError::Segments {
            path: path.to_path_buf(),
            message,
        })?,
    };
    // vmm's parser names unknown fields and resolves relative paths against
    // the file's directory (absolute here, since the path is canonical).
    let def = PartitionDefinition::from_json(&value.to_string(), &abs)?;
    if def.name.is_none() {
        return Err(DefinitionError::NoName(path.to_path_buf()));
    }
    def.clone().validate()?;
    Ok(FileDefinition {
        definition: def,
        restart,
        segments,
    })
}

/// Parses and checks a `segments` list (ids, sizes, duplicates).
pub fn parse_segments(v: serde_json::Value) -> Result<Vec<SegmentSpec>, String> {
    let specs: Vec<SegmentSpec> = serde_json::from_value(v).map_err(|e| e.to_string())?;
    let mut seen = std::collections::HashSet::new();
    for s in &specs {
        if !parvm_protocol::grant::valid_segment_id(&s.id) {
            return Err(format!(
                "invalid segment id `{}`: use 1-32 characters from [A-Za-z0-9._-]",
                s.id
            ));
        }
        if !seen.insert(s.id.clone()) {
            return Err(format!("duplicate segment id `{}`", s.id));
        }
        s.bytes()?;
        if s.gpa.is_some_and(|g| !g.is_multiple_of(4096)) {
            return Err(format!("segment `{}`: gpa is not 4 KiB aligned", s.id));
        }
    }
    Ok(specs)
}

/// The manager's check of a definition received from a client.
pub fn check(
    value: &serde_json::Value,
    restart: RestartPolicy,
) -> Result<Checked, DefinitionError> {
    let origin = PathBuf::from("(received)");
    let definition = PartitionDefinition::from_json(&value.to_string(), &origin)?;
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
        definition,
        config,
        restart,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
        assert_eq!(restart, Some(RestartPolicy::OnFailure));
        let kernel = def.kernel.clone().unwrap();
        assert!(
            kernel.is_absolute() && kernel.ends_with("k.elf"),
            "{kernel:?}"
        );
        let checked = check(&serde_json::to_value(&def).unwrap(), RestartPolicy::Never).unwrap();
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
        let e = check(
            &serde_json::json!({"name":"a","kernel":"k"}),
            RestartPolicy::Never,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not an absolute path"), "{e}");
        let e = check(
            &serde_json::json!({"name":"a","kernel":"/nonexistent/k"}),
            RestartPolicy::Never,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/k"), "{e}");
        let e = check(
            &serde_json::json!({"name":"a","kernal":"/k"}),
            RestartPolicy::Never,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("kernal"), "{e}");
    }
}
