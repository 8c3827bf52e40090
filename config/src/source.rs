//! Where a disk's (or a paging device's) blocks come from: an image, a
//! vhost-user-blk socket, an inherited socket, or a VIOS export.

use crate::{valid_name, MAX_DISK_ID_LEN, MAX_NAME_LEN};
use std::path::PathBuf;

/// Prefix of a disk `path` served by a vhost-user-blk backend listening on
/// a Unix socket: `vhost-user:/run/vios/data.sock` (docs/vios.md).
pub const VHOST_USER_PREFIX: &str = "vhost-user:";
/// Prefix of a disk `path` served by a vhost-user-blk backend on an
/// inherited, already connected socket: `vhost-user-fd:4`. The partition
/// manager writes this form for `vios:` disks, with its end of the
/// socketpair it brokered between the VMM and the VIOS.
pub const VHOST_USER_FD_PREFIX: &str = "vhost-user-fd:";
/// Prefix of a disk `path` naming a VIOS export: `vios:<vios>/<disk>`. Only
/// the partition manager resolves it (docs/vios.md).
pub const VIOS_PREFIX: &str = "vios:";

/// Where a disk's blocks come from; written in JSON as the disk's `path`
/// string (`FILE`, `vhost-user:SOCKET`, `vhost-user-fd:N`,
/// `vios:VIOS/DISK`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A raw image served by the VMM's own virtio-blk.
    Image(PathBuf),
    /// A vhost-user-blk backend on this socket path.
    VhostUser(PathBuf),
    /// A vhost-user-blk backend on this inherited file descriptor.
    VhostUserFd(i32),
    /// A VIOS export, `vios:<vios>/<disk>`, for the manager to broker.
    Vios { vios: String, disk: String },
}

impl DiskSource {
    /// Parses a disk `path`; the error says which form is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(socket) = text.strip_prefix(VHOST_USER_PREFIX) {
            if socket.is_empty() {
                return Err("vhost-user: needs a socket path".into());
            }
            Ok(DiskSource::VhostUser(PathBuf::from(socket)))
        } else if let Some(fd) = text.strip_prefix(VHOST_USER_FD_PREFIX) {
            fd.parse()
                .ok()
                .filter(|fd| *fd > 2)
                .map(DiskSource::VhostUserFd)
                .ok_or_else(|| "vhost-user-fd: needs a file descriptor number above 2".into())
        } else if let Some(name) = text.strip_prefix(VIOS_PREFIX) {
            match name.split_once('/') {
                Some((vios, disk))
                    if valid_name(vios, MAX_NAME_LEN) && valid_name(disk, MAX_DISK_ID_LEN) =>
                {
                    Ok(DiskSource::Vios {
                        vios: vios.into(),
                        disk: disk.into(),
                    })
                }
                _ => Err("use vios:<vios-name>/<disk-id>".into()),
            }
        } else {
            Ok(DiskSource::Image(PathBuf::from(text)))
        }
    }
}

impl std::fmt::Display for DiskSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskSource::Image(p) => write!(f, "{}", p.display()),
            DiskSource::VhostUser(p) => write!(f, "{VHOST_USER_PREFIX}{}", p.display()),
            DiskSource::VhostUserFd(fd) => write!(f, "{VHOST_USER_FD_PREFIX}{fd}"),
            DiskSource::Vios { vios, disk } => write!(f, "{VIOS_PREFIX}{vios}/{disk}"),
        }
    }
}

/// Serde for an optional source a VIOS serves (a paging device, a dump
/// disk): written as its text; read back refusing an image path, whose
/// error names `what`.
pub(crate) mod served {
    use super::DiskSource;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<DiskSource>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().map(|d| d.to_string()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
        what: &str,
    ) -> Result<Option<DiskSource>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        match DiskSource::parse(&text) {
            Ok(DiskSource::Image(_)) => Err(serde::de::Error::custom(format!(
                "{what} is served by a VIOS: use vios:<vios>/<disk>, vhost-user:SOCKET or vhost-user-fd:N"
            ))),
            Ok(source) => Ok(Some(source)),
            Err(m) => Err(serde::de::Error::custom(m)),
        }
    }
}
