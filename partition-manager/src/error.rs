//! [`ManagerError`]: what a request to the manager can fail with, and the
//! wire [`ErrorKind`] each failure is answered with.

use crate::grants::GrantError;
use crate::store::StoreError;
use parvm_protocol::{ErrorKind, PartitionState};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("no partition named `{0}`")]
    NotFound(String),
    #[error("a partition named `{0}` is already defined")]
    AlreadyExists(String),
    #[error("partition `{name}` is {state}: {message}")]
    InvalidState {
        name: String,
        state: PartitionState,
        message: &'static str,
    },
    #[error("partition `{0}` did not start: {1}")]
    StartFailed(String, String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start vmm {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("partition `{0}`: {1}")]
    Control(String, String),
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// The grantee's VMM refused a mapping.
    #[error("partition `{name}` cannot map it: {message}")]
    Map {
        name: String,
        message: String,
        conflict: bool,
    },
}

impl ManagerError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ManagerError::NotFound(_) => ErrorKind::NotFound,
            ManagerError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            ManagerError::InvalidState { .. } => ErrorKind::InvalidState,
            ManagerError::StartFailed(..) => ErrorKind::StartFailed,
            ManagerError::BadRequest(_) => ErrorKind::BadRequest,
            ManagerError::PermissionDenied(_) => ErrorKind::PermissionDenied,
            ManagerError::Store(_)
            | ManagerError::Spawn { .. }
            | ManagerError::Io { .. }
            | ManagerError::Control(..) => ErrorKind::Internal,
            ManagerError::Grant(e) => e.kind(),
            ManagerError::Map { conflict: true, .. } => ErrorKind::GpaConflict,
            ManagerError::Map { .. } => ErrorKind::BadRequest,
        }
    }
}
