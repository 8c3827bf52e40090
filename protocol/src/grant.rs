//! Grant cookies and shared memory segments as they cross process
//! boundaries: the cookie's printable form, rights, the grant table's rows
//! as `parctl grants --json` shows them, segment declarations, and the
//! guest's hcalls as the VMM forwards them. See DESIGN.md ("Grant cookies"),
//! docs/manager.md and docs/hcall.md.

use crate::ErrorKind;
use serde::{Deserialize, Serialize};

/// Prefix of a cookie's printable form: `pvg1-` then 32 lowercase hex digits.
pub const COOKIE_PREFIX: &str = "pvg1-";
pub use parvm_config::manager::{
    check_segment_size, valid_segment_id, SegmentSpec, MAX_SEGMENT_SIZE, SEGMENT_PAGE,
};

/// A grant cookie: 128 random bits naming one grant. Whoever presents it
/// must also be its grantee, so a leaked cookie alone is worth nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantCookie(pub [u8; 16]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    #[error("malformed grant cookie `{0}`: expected pvg1- and 32 hex digits")]
    Malformed(String),
}

impl GrantCookie {
    /// The cookie as two little-endian 64-bit halves (how a guest holds it
    /// in the hcall page: low half at the lower address).
    pub fn halves(&self) -> (u64, u64) {
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&self.0[..8]);
        hi.copy_from_slice(&self.0[8..]);
        (u64::from_le_bytes(lo), u64::from_le_bytes(hi))
    }

    pub fn from_halves(lo: u64, hi: u64) -> Self {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&lo.to_le_bytes());
        b[8..].copy_from_slice(&hi.to_le_bytes());
        GrantCookie(b)
    }
}

impl std::fmt::Display for GrantCookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(COOKIE_PREFIX)?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for GrantCookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GrantCookie({self})")
    }
}

impl std::str::FromStr for GrantCookie {
    type Err = CookieError;
    fn from_str(s: &str) -> Result<Self, CookieError> {
        let bad = || {
            let shown: String = s.chars().take(48).collect();
            CookieError::Malformed(shown)
        };
        let hex = s.strip_prefix(COOKIE_PREFIX).ok_or_else(bad)?;
        if hex.len() != 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(GrantCookie(out))
    }
}

impl Serialize for GrantCookie {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GrantCookie {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a grantee may do with a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Rights {
    /// Read only: mapped as a KVM_MEM_READONLY slot.
    Ro,
    /// Read and write.
    Rw,
}

impl Rights {
    pub fn as_str(self) -> &'static str {
        match self {
            Rights::Ro => "ro",
            Rights::Rw => "rw",
        }
    }
}

impl std::fmt::Display for Rights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Rights {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ro" => Ok(Rights::Ro),
            "rw" => Ok(Rights::Rw),
            _ => Err(format!("unknown rights `{s}`: use ro or rw")),
        }
    }
}

/// Where a grant is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    /// Minted, not accepted yet.
    Granted,
    /// Accepted: mapped into the grantee.
    Accepted,
    /// Revoked (by its grantor, the owner, or a revoke of an ancestor).
    Revoked,
    /// Released because the grantee's VMM ended (or an ancestor's did).
    Released,
}

impl GrantState {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Granted => "granted",
            GrantState::Accepted => "accepted",
            GrantState::Revoked => "revoked",
            GrantState::Released => "released",
        }
    }

    /// Whether the cookie still works for anything.
    pub fn is_live(self) -> bool {
        matches!(self, GrantState::Granted | GrantState::Accepted)
    }
}

impl std::fmt::Display for GrantState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for GrantState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| format!("unknown grant state `{s}`"))
    }
}

/// One row of the grant table (`parctl grants --json`). Stable shape:
/// fields may be added, never renamed or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GrantInfo {
    /// Short number of the grant (also names its mapping in the VMM).
    pub id: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^pvg1-[0-9a-f]{32}$"))]
    pub cookie: GrantCookie,
    /// `OWNER/ID` of the segment.
    pub segment: String,
    pub grantor: String,
    pub grantee: String,
    pub rights: Rights,
    /// The grant this one was regranted from.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub parent: Option<GrantCookie>,
    pub state: GrantState,
    /// Where the grantee mapped it (while accepted).
    pub gpa: Option<u64>,
    /// Guest accesses the grantee's VMM reported (after revoke, or writes to
    /// a read-only grant).
    pub faults: u64,
    pub last_fault: Option<String>,
    /// Unix time (s) of the last state change.
    pub since: u64,
    /// A standing grant of a shared-segment configuration: accepted at this
    /// address whenever the grantee starts (and back to `granted` when its
    /// VMM ends).
    #[serde(default)]
    pub auto_gpa: Option<u64>,
}

/// One memory segment (`parctl grants --json`, `parctl segment ...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SegmentInfo {
    /// `OWNER/ID`.
    pub name: String,
    pub owner: String,
    pub id: String,
    pub size: u64,
    /// Where the owner maps it while it runs (`null`: not mapped).
    pub gpa: Option<u64>,
}

/// A doorbell between two partitions: a guest write to doorbell register
/// `ring` in `from` interrupts `to` (ioeventfd -> irqfd, the VMMs are not
/// involved per ring), either on IO-APIC pin `gsi` (the guest programs the
/// pin) or with a message-signalled interrupt of `vector` to its first vCPU
/// (nothing to program; delivered without a kernel worker, so faster).
/// Exactly one of `gsi` and `vector`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DoorbellInfo {
    pub id: String,
    pub from: String,
    /// Doorbell register number in `from` (docs/hcall.md: 8 bytes each from
    /// 0xf0001000).
    pub ring: u32,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gsi: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<u8>,
}

impl DoorbellInfo {
    /// How `to` is interrupted, for messages and listings.
    pub fn target(&self) -> String {
        match (self.gsi, self.vector) {
            (Some(g), None) => format!("gsi {g}"),
            (None, Some(v)) => format!("vector {v:#x}"),
            _ => "(invalid)".into(),
        }
    }
}

/// A guest physical address in a configuration: a number or a "0x..." string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Address {
    Number(u64),
    Text(#[serde(with = "hex_address")] u64),
}

impl Address {
    pub fn value(self) -> u64 {
        match self {
            Address::Number(v) | Address::Text(v) => v,
        }
    }
}

mod hex_address {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{v:#x}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        let hex = s
            .strip_prefix("0x")
            .ok_or_else(|| serde::de::Error::custom(format!("address `{s}`: use 0x-hex")))?;
        u64::from_str_radix(hex, 16)
            .map_err(|_| serde::de::Error::custom(format!("address `{s}` is not 0x-hex")))
    }
}

/// Who maps a configured segment at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SharedMap {
    pub partition: String,
    /// A number or a "0x..." string.
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub gpa: Address,
    pub rights: Rights,
}

/// One segment of a shared-segment configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SharedSegment {
    pub owner: String,
    pub id: String,
    pub size_kib: u64,
    /// Where the owner maps it (none: the owner does not map it).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Value>))]
    pub gpa: Option<Address>,
    #[serde(default)]
    pub map: Vec<SharedMap>,
}

/// A shared-segment configuration (the patents' "configuration data set",
/// configs/*.shared.json): segments, their owners, who maps them where at
/// start, and doorbells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SharedConfig {
    #[serde(default)]
    pub segments: Vec<SharedSegment>,
    #[serde(default)]
    pub doorbells: Vec<DoorbellInfo>,
}

/// Doorbell registers per partition (one 4 KiB page of 8-byte registers).
pub const DOORBELLS: u32 = 512;

/// A guest's hcall, as the VMM forwards it to the manager (docs/hcall.md).
/// The caller is the partition behind the control channel it arrives on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case", deny_unknown_fields)]
pub enum Hcall {
    /// Grant the caller's segment number `segment` (its segments sorted by id).
    Grant {
        segment: u64,
        grantee: String,
        rights: Rights,
    },
    Accept {
        cookie: GrantCookie,
        gpa: Option<u64>,
    },
    /// Create a segment the caller owns, mapped in it at `gpa` if given.
    SegmentCreate {
        id: String,
        size: u64,
        gpa: Option<u64>,
    },
    Regrant {
        cookie: GrantCookie,
        grantee: String,
        rights: Rights,
    },
    Revoke {
        cookie: GrantCookie,
    },
    Copy {
        src: GrantCookie,
        src_offset: u64,
        dst: GrantCookie,
        dst_offset: u64,
        len: u64,
    },
}

/// The manager's answer to an [`Hcall`]: a status code of docs/hcall.md and
/// up to two results (a cookie travels as its two halves).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HcallOutcome {
    pub status: u32,
    pub result0: u64,
    pub result1: u64,
    #[serde(default)]
    pub cookie: Option<GrantCookie>,
}

/// hcall status codes (docs/hcall.md).
pub mod status {
    pub const OK: u32 = 0;
    /// Unknown opcode.
    pub const BAD_OPCODE: u32 = 1;
    /// An argument is malformed (name, rights, ...).
    pub const BAD_ARGUMENT: u32 = 2;
    /// The cookie was never issued (forged).
    pub const UNKNOWN_COOKIE: u32 = 3;
    /// The cookie is another partition's, or the caller may not do this.
    pub const WRONG_PARTITION: u32 = 4;
    /// Revoked, released or already accepted.
    pub const COOKIE_USED: u32 = 5;
    /// A regrant with more rights than held.
    pub const RIGHTS_ESCALATION: u32 = 6;
    /// The address overlaps RAM, a device or another mapping.
    pub const GPA_CONFLICT: u32 = 7;
    /// A size beyond the limit.
    pub const TOO_LARGE: u32 = 8;
    /// No such segment or partition.
    pub const NOT_FOUND: u32 = 9;
    /// The VMM has no partition manager (started by hand, or it is away).
    pub const NO_MANAGER: u32 = 10;
    /// The partition is in a state that does not allow it.
    pub const INVALID_STATE: u32 = 11;
    /// Anything else went wrong.
    pub const INTERNAL: u32 = 12;
    /// The call is still running (never seen by a guest: the VMM answers
    /// before the vCPU resumes).
    pub const BUSY: u32 = 0xffff_ffff;
}

/// The hcall status for a manager error kind.
pub fn hcall_status(kind: ErrorKind) -> u32 {
    match kind {
        ErrorKind::BadRequest | ErrorKind::VersionMismatch => status::BAD_ARGUMENT,
        ErrorKind::NotFound => status::NOT_FOUND,
        ErrorKind::AlreadyExists | ErrorKind::InvalidState | ErrorKind::StartFailed => {
            status::INVALID_STATE
        }
        ErrorKind::PermissionDenied | ErrorKind::WrongPartition => status::WRONG_PARTITION,
        ErrorKind::Internal | ErrorKind::Busy => status::INTERNAL,
        ErrorKind::UnknownCookie => status::UNKNOWN_COOKIE,
        ErrorKind::CookieUsed => status::COOKIE_USED,
        ErrorKind::RightsEscalation => status::RIGHTS_ESCALATION,
        ErrorKind::GpaConflict => status::GPA_CONFLICT,
        ErrorKind::TooLarge => status::TOO_LARGE,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cookies_round_trip_through_text_and_halves() {
        let c = GrantCookie(*b"0123456789abcdef");
        let s = c.to_string();
        assert!(s.starts_with("pvg1-") && s.len() == 37, "{s}");
        assert_eq!(s.parse::<GrantCookie>().unwrap(), c);
        let (lo, hi) = c.halves();
        assert_eq!(GrantCookie::from_halves(lo, hi), c);
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<GrantCookie>(&j).unwrap(), c);
    }

    #[test]
    fn broken_cookies_are_refused() {
        for bad in [
            "",
            "pvg1-",
            "pvg2-00000000000000000000000000000000",
            "pvg1-0000000000000000000000000000000",
            "pvg1-000000000000000000000000000000000",
            "pvg1-0000000000000000000000000000000g",
            "pvg1-+0000000000000000000000000000000",
            "pvg1-ééééééééééééééé0",
            "PVG1-00000000000000000000000000000000",
            " pvg1-00000000000000000000000000000000",
        ] {
            assert!(bad.parse::<GrantCookie>().is_err(), "{bad:?} accepted");
        }
        assert!(serde_json::from_str::<GrantCookie>("12").is_err());
        assert!(serde_json::from_str::<GrantCookie>(r#""pvg1-xyz""#).is_err());
        let long = format!("pvg1-{}", "0".repeat(10000));
        let e = long.parse::<GrantCookie>().unwrap_err().to_string();
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn grant_messages_keep_their_shape_and_refuse_broken_input() {
        use crate::{ManagerToVmm, Request, ToManager};
        let c = "pvg1-000102030405060708090a0b0c0d0e0f";
        let r: Request = serde_json::from_str(&format!(
            r#"{{"op":"accept","cookie":"{c}","partition":"b"}}"#
        ))
        .unwrap();
        assert!(matches!(r, Request::Accept { gpa: None, .. }));
        for bad in [
            format!(r#"{{"op":"accept","cookie":"{c}"}}"#),
            format!(r#"{{"op":"accept","cookie":"{c}","partition":"b","x":1}}"#),
            r#"{"op":"accept","cookie":"pvg1-00","partition":"b"}"#.to_string(),
            r#"{"op":"accept","cookie":7,"partition":"b"}"#.to_string(),
            format!(r#"{{"op":"grant","segment":"a/b","grantee":"c","rights":"rwx","c":"{c}"}}"#),
            r#"{"op":"grant","segment":"a/b","grantee":"c","rights":"rwx"}"#.to_string(),
            r#"{"op":"segment_create","owner":"a","id":"s","size":-1}"#.to_string(),
            r#"{"op":"share","config":{"segments":[{"owner":"a","id":"s","size_kib":4,"gpa":"e000"}]}}"#
                .to_string(),
            r#"{"op":"share","config":{"doorbells":[{"id":"d","from":"a","ring":0,"to":"b","irq":3}]}}"#
                .to_string(),
        ] {
            assert!(serde_json::from_str::<Request>(&bad).is_err(), "{bad} accepted");
        }
        let m = ManagerToVmm::Map {
            key: "grant:1".into(),
            gpa: Some(0xe000_0000),
            size: 4096,
            read_only: true,
        };
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(
            j,
            r#"{"msg":"map","key":"grant:1","gpa":3758096384,"size":4096,"read_only":true}"#
        );
        assert!(serde_json::from_str::<ManagerToVmm>(
            r#"{"msg":"map","key":"k","size":4096,"read_only":true,"fd":3}"#
        )
        .is_err());
        assert!(serde_json::from_str::<ManagerToVmm>(r#"{"msg":"unmap"}"#).is_err());
        let f = ToManager::Fault {
            key: "grant:2".into(),
            gpa: 1,
            write: true,
            count: 3,
        };
        let back: ToManager = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(back, f);
        assert!(serde_json::from_str::<ToManager>(
            r#"{"msg":"hcall","seq":1,"call":{"call":"launch"}}"#
        )
        .is_err());
        let cfg: SharedConfig = serde_json::from_str(
            r#"{"segments":[{"owner":"a","id":"s","size_kib":4,"gpa":"0xe0000000",
                "map":[{"partition":"b","gpa":3758096384,"rights":"ro"}]}],
               "doorbells":[{"id":"d","from":"a","ring":0,"to":"b","vector":65}]}"#,
        )
        .unwrap();
        assert_eq!(cfg.segments[0].gpa.map(Address::value), Some(0xe000_0000));
        assert_eq!(cfg.segments[0].map[0].gpa.value(), 0xe000_0000);
        assert_eq!(cfg.doorbells[0].target(), "vector 0x41");
    }

    #[test]
    fn rights_and_states_parse() {
        assert_eq!("ro".parse::<Rights>().unwrap(), Rights::Ro);
        assert!("rwx".parse::<Rights>().is_err());
        assert!(Rights::Ro < Rights::Rw);
        assert_eq!(
            "revoked".parse::<GrantState>().unwrap(),
            GrantState::Revoked
        );
        assert!("gone".parse::<GrantState>().is_err());
        let h: Hcall = serde_json::from_str(
            r#"{"call":"accept","cookie":"pvg1-00000000000000000000000000000001","gpa":null}"#,
        )
        .unwrap();
        assert!(matches!(h, Hcall::Accept { gpa: None, .. }));
        assert!(serde_json::from_str::<Hcall>(r#"{"call":"accept","cookie":"x"}"#).is_err());
    }
}
