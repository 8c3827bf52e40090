//! The few userfaultfd operations the pager makes, on the kernel's ABI
//! (linux/userfaultfd.h): create, API handshake, register, and the
//! resolving ioctls. The `userfaultfd` crate generates its bindings with
//! bindgen at build time (libclang on every build machine) and predates
//! write protection on shared memory; the ABI used here is a handful of
//! fixed-layout structures.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use vmm_sys_util::{ioctl_ior_nr, ioctl_iowr_nr};

const UFFD_API: u64 = 0xaa;
const UFFDIO: u32 = 0xaa;

/// Features asked for at the handshake.
const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
const UFFD_FEATURE_MISSING_SHMEM: u64 = 1 << 5;
/// Write protection on shared memory (Linux 6.4): guest RAM is a memfd.
const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;

const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;
/// The `userfaultfd(2)` flag that would limit it to user-mode faults; not
/// set: KVM's accesses to guest RAM are kernel-mode faults.
const UFFD_USER_MODE_ONLY: i32 = 1;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `struct uffd_msg` (32 bytes): the event byte, then for a page fault
/// the flags and the address.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdMsg {
    event: u8,
    _reserved: [u8; 7],
    flags: u64,
    address: u64,
    _rest: u64,
}

ioctl_iowr_nr!(UFFDIO_API, UFFDIO, 0x3f, UffdioApi);
ioctl_iowr_nr!(UFFDIO_REGISTER, UFFDIO, 0x00, UffdioRegister);
ioctl_ior_nr!(UFFDIO_WAKE, UFFDIO, 0x02, UffdioRange);
ioctl_iowr_nr!(UFFDIO_COPY, UFFDIO, 0x03, UffdioCopy);
ioctl_iowr_nr!(UFFDIO_ZEROPAGE, UFFDIO, 0x04, UffdioZeropage);
ioctl_iowr_nr!(UFFDIO_WRITEPROTECT, UFFDIO, 0x06, UffdioWriteprotect);

/// A fault the kernel reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A missing page at this address.
    Missing(usize),
    /// A write to a write-protected page.
    WriteProtect(usize),
}

/// Outcome of placing a page.
#[derive(Debug, PartialEq, Eq)]
pub enum Placed {
    Done,
    /// It was there already (another fault on it was served first).
    Exists,
}

/// A userfaultfd with missing-page and write-protect faults on shared
/// memory.
pub struct Uffd {
    file: File,
}

fn ioctl<T>(fd: RawFd, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: every request used with this helper takes a pointer to the
    // structure `T` it was sized by (the ioctl_*_nr! lines above), which
    // lives across the call.
    let r = unsafe { libc::ioctl(fd, request as _, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Uffd {
    /// A new non-blocking, close-on-exec userfaultfd that also takes
    /// kernel-mode faults, with the features the pager needs.
    pub fn new() -> io::Result<Uffd> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        debug_assert_eq!(flags & UFFD_USER_MODE_ONLY, 0);
        // SAFETY: the userfaultfd system call takes flags only and returns
        // a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd as RawFd) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_PAGEFAULT_FLAG_WP
                | UFFD_FEATURE_MISSING_SHMEM
                | UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
            ioctls: 0,
        };
        ioctl(file.as_raw_fd(), UFFDIO_API(), &mut api)?;
        Ok(Uffd { file })
    }

    /// Registers `[start, start+len)` for missing and write-protect faults.
    pub fn register(&self, start: usize, len: usize) -> io::Result<()> {
        let mut r = UffdioRegister {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        ioctl(self.file.as_raw_fd(), UFFDIO_REGISTER(), &mut r)
    }

    /// The next fault, if one is pending.
    pub fn read_fault(&self) -> io::Result<Option<Fault>> {
        loop {
            let mut msg = UffdMsg::default();
            let size = std::mem::size_of::<UffdMsg>();
            // SAFETY: reads at most `size` bytes into `msg`, a plain
            // structure of that size.
            let n = unsafe {
                libc::read(
                    self.file.as_raw_fd(),
                    (&mut msg as *mut UffdMsg).cast(),
                    size,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) => Ok(None),
                    Some(libc::EINTR) => continue,
                    _ => Err(e),
                };
            }
            if n as usize != size {
                return Err(io::Error::other(format!(
                    "short userfaultfd message: {n} bytes"
                )));
            }
            if msg.event != UFFD_EVENT_PAGEFAULT {
                // No other events were asked for.
                continue;
            }
            let addr = msg.address as usize;
            return Ok(Some(if msg.flags & UFFD_PAGEFAULT_FLAG_WP != 0 {
                Fault::WriteProtect(addr)
            } else {
                Fault::Missing(addr)
            }));
        }
    }

    /// Places `len` bytes from `src` at `dst` (missing pages) and wakes
    /// the threads waiting there.
    ///
    /// # Safety
    /// `src` must be readable for `len` bytes; `dst` must lie in a range
    /// registered with this userfaultfd.
    pub unsafe fn copy(&self, src: *const u8, dst: usize, len: usize) -> io::Result<Placed> {
        let mut c = UffdioCopy {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: 0,
            copy: 0,
        };
        match ioctl(self.file.as_raw_fd(), UFFDIO_COPY(), &mut c) {
            Ok(()) => Ok(Placed::Done),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(Placed::Exists),
            Err(e) => Err(e),
        }
    }

    /// Places zero pages at `[dst, dst+len)` and wakes the waiters.
    pub fn zeropage(&self, dst: usize, len: usize) -> io::Result<Placed> {
        let mut z = UffdioZeropage {
            range: UffdioRange {
                start: dst as u64,
                len: len as u64,
            },
            mode: 0,
            zeropage: 0,
        };
        match ioctl(self.file.as_raw_fd(), UFFDIO_ZEROPAGE(), &mut z) {
            Ok(()) => Ok(Placed::Done),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(Placed::Exists),
            Err(e) => Err(e),
        }
    }

    /// Wakes threads waiting on `[start, start+len)`.
    pub fn wake(&self, start: usize, len: usize) -> io::Result<()> {
        let mut r = UffdioRange {
            start: start as u64,
            len: len as u64,
        };
        ioctl(self.file.as_raw_fd(), UFFDIO_WAKE(), &mut r)
    }

    /// Write-protects (`protect`) or unprotects `[start, start+len)`;
    /// unprotecting wakes the writers that waited.
    pub fn write_protect(&self, start: usize, len: usize, protect: bool) -> io::Result<()> {
        let mut w = UffdioWriteprotect {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: if protect {
                UFFDIO_WRITEPROTECT_MODE_WP
            } else {
                0
            },
        };
        ioctl(self.file.as_raw_fd(), UFFDIO_WRITEPROTECT(), &mut w)
    }
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_have_the_kernels_sizes() {
        assert_eq!(std::mem::size_of::<UffdioApi>(), 24);
        assert_eq!(std::mem::size_of::<UffdioRange>(), 16);
        assert_eq!(std::mem::size_of::<UffdioRegister>(), 32);
        assert_eq!(std::mem::size_of::<UffdioCopy>(), 40);
        assert_eq!(std::mem::size_of::<UffdioZeropage>(), 32);
        assert_eq!(std::mem::size_of::<UffdioWriteprotect>(), 24);
        assert_eq!(std::mem::size_of::<UffdMsg>(), 32);
        // The numbers linux/userfaultfd.h gives (x86-64).
        assert_eq!(UFFDIO_API(), 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER(), 0xc020_aa00);
        assert_eq!(UFFDIO_COPY(), 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE(), 0xc020_aa04);
        assert_eq!(UFFDIO_WAKE(), 0x8010_aa02);
        assert_eq!(UFFDIO_WRITEPROTECT(), 0xc018_aa06);
    }
}
