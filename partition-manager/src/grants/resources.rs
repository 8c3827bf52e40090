//! The resources of the grant table: segments (with their memfds),
//! doorbells (with their eventfds), VIOS block resources, and the OS
//! randomness cookies are made of.

use super::GrantError;
use parvm_protocol::{DoorbellInfo, SegmentInfo};
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

/// 16 bytes from the OS random source (getrandom(2)).
pub fn random_bytes() -> Result<[u8; 16], std::io::Error> {
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: getrandom writes at most the given length into the buffer.
        let n = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), buf.len() - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    Ok(buf)
}

/// A memfd of `size` bytes named after the segment.
pub fn create_memfd(name: &str, size: u64) -> Result<File, GrantError> {
    let os = |source| GrantError::Os {
        what: format!("segment `{name}`: cannot create its memory"),
        source,
    };
    // SAFETY: memfd_create with a valid NUL-terminated name; the result is
    // checked before use.
    let fd = unsafe { libc::memfd_create(c"parvm-segment".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(os(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).map_err(os)?;
    Ok(f)
}

/// A segment and, while the manager runs, its memory.
pub struct Segment {
    info: SegmentInfo,
    memfd: Option<Arc<File>>,
}

impl Segment {
    pub(crate) fn new(info: SegmentInfo, memfd: Option<Arc<File>>) -> Self {
        Segment { info, memfd }
    }

    pub fn info(&self) -> &SegmentInfo {
        &self.info
    }

    /// The segment's memfd, created on first use (a restarted manager
    /// creates it anew: see docs/manager.md, "Segments and grants").
    pub fn memfd(&mut self) -> Result<Arc<File>, GrantError> {
        if let Some(f) = &self.memfd {
            return Ok(f.clone());
        }
        let f = Arc::new(create_memfd(&self.info.name, self.info.size)?);
        self.memfd = Some(f.clone());
        Ok(f)
    }

    /// Adopts memory a VMM still maps (after a manager restart).
    pub fn adopt(&mut self, f: File) {
        if self.memfd.is_none() {
            self.memfd = Some(Arc::new(f));
        }
    }
}

/// A doorbell and, while the manager runs, its eventfd.
pub struct Doorbell {
    info: DoorbellInfo,
    eventfd: Option<Arc<File>>,
}

impl Doorbell {
    pub fn new(info: DoorbellInfo) -> Self {
        Doorbell {
            info,
            eventfd: None,
        }
    }

    pub fn info(&self) -> &DoorbellInfo {
        &self.info
    }

    /// Adopts the eventfd a running end still holds (after a restart).
    pub fn adopt(&mut self, f: File) -> bool {
        if self.eventfd.is_some() {
            return false;
        }
        self.eventfd = Some(Arc::new(f));
        true
    }

    /// The doorbell's eventfd, created on first use.
    pub fn eventfd(&mut self) -> Result<Arc<File>, GrantError> {
        if let Some(f) = &self.eventfd {
            return Ok(f.clone());
        }
        // SAFETY: eventfd(2) with valid flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(GrantError::Os {
                what: format!("doorbell `{}`: cannot create its eventfd", self.info.id),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        let f = Arc::new(unsafe { File::from_raw_fd(fd) });
        self.eventfd = Some(f.clone());
        Ok(f)
    }
}

/// A block resource: one export of a VIOS partition, named `VIOS/DISK`.
/// Derived from the VIOS's definition (not stored on its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockResource {
    pub owner: String,
    pub disk: String,
    /// The export is read-only: it can only be granted `ro`.
    pub read_only: bool,
}
