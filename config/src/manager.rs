//! The manager-side fields of a definition: the restart policy
//! (`"restart"`) and the memory segments a partition owns (`"segments"`).
//! The VMM accepts and ignores them; the partition manager acts on them.

use serde::{Deserialize, Serialize};

/// Segments are made of whole 4 KiB pages.
pub const SEGMENT_PAGE: u64 = 4096;
/// Largest segment (1 GiB).
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;

/// What the manager does when a partition's VMM fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case", try_from = "String")]
pub enum RestartPolicy {
    /// Leave it crashed.
    #[default]
    Never,
    /// Start it again after a crash, with exponential backoff.
    OnFailure,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
        }
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for RestartPolicy {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "never" => Ok(RestartPolicy::Never),
            "on-failure" => Ok(RestartPolicy::OnFailure),
            _ => Err(format!(
                "unknown restart policy `{s}`: use never or on-failure"
            )),
        }
    }
}

/// A segment declared in a partition definition (`"segments": [...]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SegmentSpec {
    pub id: String,
    /// Size in KiB (or `size` in bytes); a multiple of 4.
    #[serde(default)]
    pub size_kib: Option<u64>,
    #[serde(default)]
    pub size: Option<u64>,
    /// Guest physical address at which the owner maps it at start.
    #[serde(default)]
    pub gpa: Option<u64>,
}

/// Checks a segment id (`[A-Za-z0-9._-]`, 1-32 characters).
pub fn valid_segment_id(id: &str) -> bool {
    crate::valid_name(id, 32)
}

impl SegmentSpec {
    /// The size in bytes, checked: whole pages, at most [`MAX_SEGMENT_SIZE`].
    pub fn bytes(&self) -> Result<u64, String> {
        let size = match (self.size_kib, self.size) {
            (Some(k), None) => k
                .checked_mul(1024)
                .ok_or_else(|| format!("segment `{}`: size_kib {k} is too large", self.id))?,
            (None, Some(b)) => b,
            (Some(_), Some(_)) => {
                return Err(format!(
                    "segment `{}`: give size_kib or size, not both",
                    self.id
                ))
            }
            (None, None) => return Err(format!("segment `{}`: size_kib is required", self.id)),
        };
        check_segment_size(size).map_err(|e| format!("segment `{}`: {e}", self.id))?;
        Ok(size)
    }
}

/// A segment size is whole 4 KiB pages, not zero, at most 1 GiB.
pub fn check_segment_size(size: u64) -> Result<(), String> {
    if size == 0 || !size.is_multiple_of(SEGMENT_PAGE) {
        return Err(format!("size {size} is not a positive multiple of 4 KiB"));
    }
    if size > MAX_SEGMENT_SIZE {
        return Err(format!(
            "size {size} exceeds the largest segment ({MAX_SEGMENT_SIZE} bytes, 1 GiB)"
        ));
    }
    Ok(())
}

/// Checks a `segments` list: ids, sizes, duplicates, alignment.
pub fn check_segments(specs: &[SegmentSpec]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for s in specs {
        if !valid_segment_id(&s.id) {
            return Err(format!(
                "invalid segment id `{}`: use 1-32 characters from [A-Za-z0-9._-]",
                s.id
            ));
        }
        if !seen.insert(s.id.as_str()) {
            return Err(format!("duplicate segment id `{}`", s.id));
        }
        s.bytes()?;
        if s.gpa.is_some_and(|g| !g.is_multiple_of(SEGMENT_PAGE)) {
            return Err(format!("segment `{}`: gpa is not 4 KiB aligned", s.id));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn segment_sizes_are_checked() {
        let spec = |k: Option<u64>, b: Option<u64>| SegmentSpec {
            id: "s".into(),
            size_kib: k,
            size: b,
            gpa: None,
        };
        assert_eq!(spec(Some(64), None).bytes().unwrap(), 65536);
        assert_eq!(spec(None, Some(8192)).bytes().unwrap(), 8192);
        assert!(spec(None, None).bytes().is_err());
        assert!(spec(Some(4), Some(4096)).bytes().is_err());
        assert!(spec(Some(6), None).bytes().unwrap_err().contains("4 KiB"));
        assert!(spec(Some(0), None).bytes().is_err());
        assert!(spec(Some(u64::MAX), None).bytes().is_err());
        assert!(spec(Some(2 << 20), None)
            .bytes()
            .unwrap_err()
            .contains("exceeds"));
        assert!(valid_segment_id("buf-0.a_b"));
        assert!(!valid_segment_id("a/b"));
        assert!(!valid_segment_id(""));
        assert!(!valid_segment_id(&"x".repeat(33)));
    }

    #[test]
    fn segment_lists_are_checked() {
        let s = |id: &str, gpa: Option<u64>| SegmentSpec {
            id: id.into(),
            size_kib: Some(4),
            size: None,
            gpa,
        };
        assert!(check_segments(&[s("a", Some(4096)), s("b", None)]).is_ok());
        for (list, want) in [
            (vec![s("a", None), s("a", None)], "duplicate segment"),
            (vec![s("a/b", None)], "invalid segment id"),
            (vec![s("a", Some(4097))], "aligned"),
        ] {
            let e = check_segments(&list).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn policies_round_trip_as_strings() {
        assert_eq!(
            "on-failure".parse::<RestartPolicy>().unwrap(),
            RestartPolicy::OnFailure
        );
        assert_eq!(
            serde_json::to_string(&RestartPolicy::OnFailure).unwrap(),
            r#""on-failure""#
        );
        assert!("always".parse::<RestartPolicy>().is_err());
        let e = serde_json::from_str::<RestartPolicy>(r#""always""#).unwrap_err();
        assert!(
            e.to_string().contains("unknown restart policy `always`"),
            "{e}"
        );
        assert!(serde_json::from_str::<RestartPolicy>("1").is_err());
    }
}
