//! [`ErrorKind`]'s names: the wire name of each kind (`not_found`) and the
//! list of every kind in the order of docs/protocol.md (`parctl`'s exit
//! statuses follow it).

use crate::ErrorKind;

impl ErrorKind {
    /// Every kind, in the order of the table in docs/protocol.md.
    pub const ALL: [ErrorKind; 15] = [
        ErrorKind::BadRequest,
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::InvalidState,
        ErrorKind::PermissionDenied,
        ErrorKind::VersionMismatch,
        ErrorKind::StartFailed,
        ErrorKind::Internal,
        ErrorKind::UnknownCookie,
        ErrorKind::WrongPartition,
        ErrorKind::CookieUsed,
        ErrorKind::RightsEscalation,
        ErrorKind::GpaConflict,
        ErrorKind::TooLarge,
        ErrorKind::Busy,
    ];

    /// The wire name (`not_found`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::InvalidState => "invalid_state",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::VersionMismatch => "version_mismatch",
            ErrorKind::StartFailed => "start_failed",
            ErrorKind::Internal => "internal",
            ErrorKind::UnknownCookie => "unknown_cookie",
            ErrorKind::WrongPartition => "wrong_partition",
            ErrorKind::CookieUsed => "cookie_used",
            ErrorKind::RightsEscalation => "rights_escalation",
            ErrorKind::GpaConflict => "gpa_conflict",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Busy => "busy",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
