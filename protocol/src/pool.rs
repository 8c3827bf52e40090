//! The shared memory pool (Active Memory Sharing, docs/ams.md) as it
//! travels: paging devices named `vios:<vios>/<disk>`, the pool as
//! `parctl pool show --json` prints it, a shared-memory partition's
//! figures in `parctl status`, the pager's report a VMM sends, and the
//! export sizes a VIOS reports.

use parvm_config::{valid_name, MAX_DISK_ID_LEN, MAX_NAME_LEN, VIOS_PREFIX};
use serde::{Deserialize, Serialize};

/// Bytes in a page of guest RAM, as targets and reports count them.
pub const PAGE_SIZE: u64 = 4096;
/// Pages in a MiB.
pub const PAGES_PER_MIB: u64 = (1 << 20) / PAGE_SIZE;

/// A paging device of the pool: export `disk` of VIOS partition `vios`,
/// written `vios:<vios>/<disk>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PagingDevice {
    pub vios: String,
    pub disk: String,
}

impl std::str::FromStr for PagingDevice {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("paging device `{text}`: use vios:<vios>/<disk>");
        let rest = text.strip_prefix(VIOS_PREFIX).ok_or_else(bad)?;
        let (vios, disk) = rest.split_once('/').ok_or_else(bad)?;
        if !valid_name(vios, MAX_NAME_LEN) || !valid_name(disk, MAX_DISK_ID_LEN) {
            return Err(bad());
        }
        Ok(PagingDevice {
            vios: vios.into(),
            disk: disk.into(),
        })
    }
}

impl TryFrom<String> for PagingDevice {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<PagingDevice> for String {
    fn from(d: PagingDevice) -> String {
        d.to_string()
    }
}

impl std::fmt::Display for PagingDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{VIOS_PREFIX}{}/{}", self.vios, self.disk)
    }
}

/// One paging device as `parctl pool show --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PagingDeviceInfo {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub device: PagingDevice,
    /// Bytes, as its VIOS last reported (`null` before its VIOS ran
    /// under this manager).
    pub size: Option<u64>,
    /// The partition it is assigned to, while one runs with it.
    pub partition: Option<String>,
}

/// One member of the pool (a running shared-memory partition), in
/// `parctl pool show --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PoolMemberInfo {
    pub partition: String,
    pub weight: u8,
    pub logical_pages: u64,
    /// What the manager wants it to have (water-filling by weight).
    pub goal_pages: u64,
    /// What its VMM was told (at most the goal until the others are under
    /// theirs).
    pub target_pages: u64,
    /// What its VMM last reported resident.
    pub resident_pages: u64,
}

/// The pool, `parctl pool show --json` (pages of 4 KiB).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PoolInfo {
    pub size_mib: u64,
    pub pages: u64,
    /// Guest RAM resident in all shared-memory partitions.
    pub resident_pages: u64,
    /// The pool minus what is resident.
    pub loaned_pages: u64,
    /// The pool minus what is promised (targets, or more while a
    /// partition is still above a lowered target).
    pub free_pages: u64,
    pub paging: Vec<PagingDeviceInfo>,
    pub members: Vec<PoolMemberInfo>,
}

/// A shared-memory partition's figures in `parctl status` (those
/// `lparstat -m` shows on PowerVM); pages of 4 KiB.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SharedMemoryStatus {
    pub logical_mib: u64,
    pub weight: u8,
    /// Its paging device while it runs (or the one its definition names).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub paging: Option<PagingDevice>,
    /// The figures below come from its VMM's last report: `false` before
    /// the first one of this run.
    pub reported: bool,
    pub target_pages: u64,
    pub resident_pages: u64,
    pub page_ins: u64,
    /// Time faults waited for page-ins, microseconds.
    pub page_in_us: u64,
    pub page_outs: u64,
    pub zero_fills: u64,
    pub zero_outs: u64,
    /// Its paging device is unreachable right now.
    pub stalled: bool,
}

/// A VMM's pager figures (`ToManager::MemoryReport`), as
/// `vmm::pager::PagerReport` has them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryReport {
    pub logical_pages: u64,
    pub target_pages: u64,
    pub resident_pages: u64,
    pub page_ins: u64,
    pub page_in_ns: u64,
    pub page_outs: u64,
    pub zero_outs: u64,
    pub zero_fills: u64,
    pub stalled: bool,
}

/// One export of a VIOS as it reports it (`ToManager::Exports`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportInfo {
    pub id: String,
    /// Bytes served (whole 512-byte sectors).
    pub size: u64,
    pub read_only: bool,
}

/// Upper bounds (microseconds) of the latency buckets of [`DiskStats`];
/// the last bucket of `latency` counts the rest.
pub const LATENCY_BUCKETS_US: [u64; 9] = [50, 100, 250, 500, 1000, 2500, 5000, 10_000, 50_000];

/// One export's figures since the VIOS started, over all its clients
/// (`ToManager::DiskStats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskStats {
    pub disk: String,
    /// Requests completed (a used-ring entry written).
    pub requests: u64,
    /// Requests that ended with an error status, or none.
    pub errors: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// Requests by time to execute, per [`LATENCY_BUCKETS_US`] bound and
    /// one more for the rest (not cumulative).
    pub latency: Vec<u64>,
    /// Their sum, nanoseconds.
    pub latency_ns: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Request, Response, ToManager};

    #[test]
    fn paging_devices_parse_and_print() {
        let d: PagingDevice = "vios:vios1/pg0".parse().unwrap();
        assert_eq!((d.vios.as_str(), d.disk.as_str()), ("vios1", "pg0"));
        assert_eq!(d.to_string(), "vios:vios1/pg0");
        for bad in [
            "",
            "vios:",
            "vios:vios1",
            "vios:/pg0",
            "vios:vios1/",
            "vios:a b/c",
            "vios:a/b/c",
            "/img/paging.raw",
            "vhost-user:/run/pg.sock",
            "vios:a/this-id-is-longer-than-20",
        ] {
            let e = bad.parse::<PagingDevice>().unwrap_err();
            assert!(e.contains("use vios:<vios>/<disk>"), "{bad}: {e}");
        }
    }

    #[test]
    fn pool_requests_have_a_stable_shape_and_refuse_broken_input() {
        let r: Request = serde_json::from_str(
            r#"{"op":"pool_create","size_mib":48,"paging":["vios:v/a","vios:v/b"]}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::PoolCreate {
                size_mib: 48,
                paging: vec!["vios:v/a".parse().unwrap(), "vios:v/b".parse().unwrap()],
            }
        );
        let r: Request = serde_json::from_str(r#"{"op":"pool_create","size_mib":8}"#).unwrap();
        assert_eq!(
            r,
            Request::PoolCreate {
                size_mib: 8,
                paging: vec![]
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::PoolResize { size_mib: 64 }).unwrap(),
            r#"{"op":"pool_resize","size_mib":64}"#
        );
        let r: Request =
            serde_json::from_str(r#"{"op":"pool_add_paging","device":"vios:v/c"}"#).unwrap();
        assert!(matches!(r, Request::PoolAddPaging { .. }));
        let r: Request = serde_json::from_str(r#"{"op":"pool_show"}"#).unwrap();
        assert_eq!(r, Request::PoolShow);
        for broken in [
            r#"{"op":"pool_create"}"#,
            r#"{"op":"pool_create","size_mib":-1}"#,
            r#"{"op":"pool_create","size_mib":"48"}"#,
            r#"{"op":"pool_create","size_mib":48,"paging":"vios:v/a"}"#,
            r#"{"op":"pool_create","size_mib":48,"paging":["/img/a"]}"#,
            r#"{"op":"pool_create","size_mib":48,"colour":1}"#,
            r#"{"op":"pool_resize"}"#,
            r#"{"op":"pool_resize","size_mib":1e3}"#,
            r#"{"op":"pool_add_paging","device":"vios:v"}"#,
            r#"{"op":"pool_add_paging"}"#,
            r#"{"op":"pool_remove_paging","device":7}"#,
            r#"{"op":"pool_explode"}"#,
        ] {
            assert!(
                serde_json::from_str::<Request>(broken).is_err(),
                "accepted: {broken}"
            );
        }
    }

    #[test]
    fn pool_answers_round_trip() {
        let pool = PoolInfo {
            size_mib: 48,
            pages: 48 * PAGES_PER_MIB,
            resident_pages: 100,
            loaned_pages: 48 * PAGES_PER_MIB - 100,
            free_pages: 5,
            paging: vec![PagingDeviceInfo {
                device: "vios:v/a".parse().unwrap(),
                size: Some(64 << 20),
                partition: Some("p".into()),
            }],
            members: vec![PoolMemberInfo {
                partition: "p".into(),
                weight: 128,
                logical_pages: 16384,
                goal_pages: 12288,
                target_pages: 12288,
                resident_pages: 100,
            }],
        };
        let r = Response::Pool { pool };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""device":"vios:v/a""#), "{text}");
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), r);
    }

    #[test]
    fn memory_reports_and_exports_travel_typed() {
        let m = ToManager::MemoryReport {
            report: MemoryReport {
                logical_pages: 16384,
                target_pages: 4096,
                resident_pages: 4000,
                page_ins: 7,
                ..Default::default()
            },
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<ToManager>(&text).unwrap(), m);
        let e: ToManager = serde_json::from_str(
            r#"{"msg":"exports","exports":[{"id":"pg0","size":67108864,"read_only":false}]}"#,
        )
        .unwrap();
        assert!(matches!(e, ToManager::Exports { ref exports } if exports[0].size == 64 << 20));
        for broken in [
            r#"{"msg":"memory_report"}"#,
            r#"{"msg":"memory_report","report":{"logical_pages":1}}"#,
            r#"{"msg":"memory_report","report":{"logical_pages":1,"target_pages":1,"resident_pages":1,"page_ins":0,"page_in_ns":0,"page_outs":0,"zero_outs":0,"zero_fills":0,"stalled":false,"extra":1}}"#,
            r#"{"msg":"exports","exports":[{"id":"pg0","size":-4,"read_only":false}]}"#,
            r#"{"msg":"exports","exports":[{"id":"pg0"}]}"#,
        ] {
            assert!(
                serde_json::from_str::<ToManager>(broken).is_err(),
                "accepted: {broken}"
            );
        }
    }
}
