//! The virtio-blk core: executes requests against a disk backend.
//!
//! Knows nothing about transports or notifications. The in-VMM device
//! ([`super::handler`]) and the VIOS vhost-user-blk server both pop
//! descriptor chains from their queues, pass each to
//! [`BlockCore::process`] and put the returned [`Completion`] on the used
//! ring. Generic over the guest memory type, so it works with the VMM's
//! `GuestMemoryAtomic<GuestMemoryMmap>` guards and with vhost-user-backend's
//! memory alike.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{debug, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::DescriptorChain;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Bytes, GuestMemory, Permissions, VolatileSlice};

pub use super::request::Completion;
use super::request::{total_len, GuestBuffer, ParseError, Request, RequestType, Transfer};

/// Bytes per virtio-blk sector (fixed by the specification).
pub const SECTOR_SIZE: u64 = 512;
/// Size of each queue (descriptors).
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request advertised in `seg_max`.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Descriptors accepted in one request: header + `SEG_MAX` data + status.
pub const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;
/// Largest discard, in sectors (32 MiB), advertised in `max_discard_sectors`.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 16;
/// Largest write-zeroes, in sectors (32 MiB).
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 16;
/// Segments per discard request.
pub const MAX_DISCARD_SEG: u32 = 1;
/// Segments per write-zeroes request.
pub const MAX_WRITE_ZEROES_SEG: u32 = 1;
/// Size of `struct virtio_blk_discard_write_zeroes`.
pub const DISCARD_SEGMENT_LEN: u64 = 16;
/// Length of the configuration space (up to `write_zeroes_may_unmap` and its
/// padding).
pub const CONFIG_SPACE_LEN: usize = 60;
/// Length of the GET_ID serial.
pub const SERIAL_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;

/// The most iovecs handed to one preadv/pwritev.
const MAX_IOVECS: usize = 1024;

/// A disk image the core reads and writes. Implemented for a raw image in a
/// [`std::fs::File`].
///
/// The I/O methods take guest memory as [`VolatileSlice`]s and may transfer
/// fewer bytes than asked (like `preadv`); the core loops. They write guest
/// memory through raw pointers: the core marks the dirty bitmap.
pub trait DiskBackend: Send {
    /// Size of the disk in bytes.
    fn len(&self) -> io::Result<u64>;

    /// Whether the disk has no bytes at all.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Read from byte `offset` into `bufs` in order; returns the bytes read
    /// (0 at end of file).
    fn read_at<B: BitmapSlice>(
        &self,
        offset: u64,
        bufs: &[VolatileSlice<'_, B>],
    ) -> io::Result<usize>;

    /// Write `bufs` in order at byte `offset`; returns the bytes written.
    fn write_at<B: BitmapSlice>(
        &self,
        offset: u64,
        bufs: &[VolatileSlice<'_, B>],
    ) -> io::Result<usize>;

    /// Make all completed writes durable (fdatasync).
    fn flush(&self) -> io::Result<()>;

    /// Deallocate `len` bytes at `offset`; the content reads as zeroes
    /// afterwards where the backend supports it.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Zero `len` bytes at `offset`; with `unmap` the range may be
    /// deallocated.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
}

fn to_off_t(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate only acts on the file behind a valid, owned fd; no
    // memory is passed to the kernel.
    let ret = unsafe { libc::fallocate(file.as_raw_fd(), mode, to_off_t(offset)?, to_off_t(len)?) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

impl DiskBackend for File {
    fn len(&self) -> io::Result<u64> {
        // Works for regular files and block devices alike (metadata().len()
        // is 0 for a block device). Positioned I/O never uses the cursor.
        let mut file = self;
        file.seek(SeekFrom::End(0))
    }

    fn read_at<B: BitmapSlice>(
        &self,
        offset: u64,
        bufs: &[VolatileSlice<'_, B>],
    ) -> io::Result<usize> {
        let bufs = &bufs[..bufs.len().min(MAX_IOVECS)];
        let guards: Vec<_> = bufs.iter().map(|b| b.ptr_guard_mut()).collect();
        let iovecs: Vec<libc::iovec> = guards
            .iter()
            .map(|g| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: g.len(),
            })
            .collect();
        // SAFETY: every iovec describes guest memory of a VolatileSlice that
        // is valid for writes of its length while its guard lives (until the
        // end of this function); the fd is owned by `self`; the count is at
        // most MAX_IOVECS, which fits in c_int.
        let ret = unsafe {
            libc::preadv(
                self.as_raw_fd(),
                iovecs.as_ptr(),
                iovecs.len() as libc::c_int,
                to_off_t(offset)?,
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret as usize)
        }
    }

    fn write_at<B: BitmapSlice>(
        &self,
        offset: u64,
        bufs: &[VolatileSlice<'_, B>],
    ) -> io::Result<usize> {
        let bufs = &bufs[..bufs.len().min(MAX_IOVECS)];
        let guards: Vec<_> = bufs.iter().map(|b| b.ptr_guard()).collect();
        let iovecs: Vec<libc::iovec> = guards
            .iter()
            .map(|g| libc::iovec {
                iov_base: g.as_ptr().cast_mut().cast(),
                iov_len: g.len(),
            })
            .collect();
        // SAFETY: every iovec describes guest memory of a VolatileSlice that
        // is valid for reads of its length while its guard lives; pwritev only
        // reads through them; the fd is owned by `self`; the count fits c_int.
        let ret = unsafe {
            libc::pwritev(
                self.as_raw_fd(),
                iovecs.as_ptr(),
                iovecs.len() as libc::c_int,
                to_off_t(offset)?,
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret as usize)
        }
    }

    fn flush(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match fallocate(
            self,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            // Discard is a hint: a file system without hole punching keeps the data.
            Err(e) if unsupported(&e) => Ok(()),
            other => other,
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if unmap
            && fallocate(
                self,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
            .is_ok()
        {
            return Ok(());
        }
        match fallocate(
            self,
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if unsupported(&e) => write_zeroes_by_hand(self, offset, len),
            other => other,
        }
    }
}

fn write_zeroes_by_hand(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let zeroes = vec![0u8; 64 * 1024];
    let mut done = 0u64;
    while done < len {
        let chunk = (len - done).min(zeroes.len() as u64) as usize;
        file.write_all_at(&zeroes[..chunk], offset + done)?;
        done += chunk as u64;
    }
    Ok(())
}

/// Errors of [`BlockCore::new`].
#[derive(Debug, thiserror::Error)]
pub enum BlockCoreError {
    /// The size of the image could not be determined.
    #[error("cannot determine the size of the disk image: {0}")]
    Size(#[source] io::Error),
    /// The image holds less than one sector.
    #[error("disk image is {0} bytes, smaller than one 512-byte sector")]
    TooSmall(u64),
}

/// Why a well-formed request failed; decides the status byte.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// Write, discard or write-zeroes on a read-only disk.
    #[error("{0:?} on a read-only disk")]
    ReadOnly(RequestType),
    /// A payload in the wrong direction (e.g. device-readable data for IN).
    #[error("{0:?} request with a payload in the wrong direction")]
    WrongDirection(RequestType),
    /// Data length not a multiple of the sector size.
    #[error("data length {0} is not a multiple of 512")]
    UnalignedLength(u64),
    /// The sector range is past the end of the disk or overflows.
    #[error("sectors {sector}+{bytes} bytes are outside the disk of {capacity} sectors")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Length in bytes.
        bytes: u64,
        /// Disk capacity in sectors.
        capacity: u64,
    },
    /// A GET_ID request without room for the serial.
    #[error("GET_ID without a device-writable buffer")]
    NoIdBuffer,
    /// Discard/write-zeroes payload not a whole number of segments.
    #[error("discard/write-zeroes payload of {0} bytes is not 1..=max segments of 16 bytes")]
    BadSegments(u64),
    /// Discard/write-zeroes with flags the device does not accept.
    #[error("segment flags {0:#x} not supported")]
    SegmentFlags(u32),
    /// Discard/write-zeroes of more sectors than advertised.
    #[error("segment of {0} sectors exceeds the advertised maximum")]
    SegmentTooLarge(u32),
    /// A command the driver did not negotiate the feature for.
    #[error("{0:?} without the feature negotiated")]
    NotNegotiated(RequestType),
    /// An unknown command.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// A buffer could not be mapped from guest memory.
    #[error("guest memory at {0:#x} is not accessible")]
    GuestMemory(u64),
    /// The disk backend failed.
    #[error("{op} at byte {offset} failed: {source}")]
    Io {
        /// Operation.
        op: &'static str,
        /// Byte offset on the disk.
        offset: u64,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
}

impl ExecuteError {
    /// The virtio-blk status byte reporting this error.
    pub fn status(&self) -> u8 {
        match self {
            ExecuteError::Unsupported(_)
            | ExecuteError::NotNegotiated(_)
            | ExecuteError::SegmentFlags(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// Options of a block device.
#[derive(Clone, Debug, Default)]
pub struct BlockOptions {
    /// Refuse writes (VIRTIO_BLK_F_RO).
    pub read_only: bool,
    /// Serial returned by GET_ID (truncated to 20 bytes).
    pub serial: String,
}

/// The block core: one disk, its options and the negotiated features.
pub struct BlockCore<D> {
    disk: D,
    /// Disk id for logs (the serial as given).
    id: String,
    capacity: u64,
    read_only: bool,
    serial: [u8; SERIAL_LEN],
    acked_features: u64,
    guest_errors: AtomicU64,
}

impl<D: DiskBackend> BlockCore<D> {
    /// A core serving `disk`. Its capacity is its length rounded down to
    /// whole sectors; an image smaller than one sector is refused.
    pub fn new(disk: D, options: &BlockOptions) -> Result<Self, BlockCoreError> {
        let len = disk.len().map_err(BlockCoreError::Size)?;
        if len < SECTOR_SIZE {
            return Err(BlockCoreError::TooSmall(len));
        }
        let mut serial = [0u8; SERIAL_LEN];
        let bytes = options.serial.as_bytes();
        let n = bytes.len().min(SERIAL_LEN);
        serial[..n].copy_from_slice(&bytes[..n]);
        Ok(BlockCore {
            disk,
            id: options.serial.clone(),
            capacity: len / SECTOR_SIZE,
            read_only: options.read_only,
            serial,
            acked_features: 0,
            guest_errors: AtomicU64::new(0),
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the disk refuses writes.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The disk backend.
    pub fn disk(&self) -> &D {
        &self.disk
    }

    /// Features to offer: VERSION_1, FLUSH, SEG_MAX, BLK_SIZE,
    /// RING_EVENT_IDX, RING_INDIRECT_DESC, plus RO for a read-only disk or
    /// DISCARD and WRITE_ZEROES for a writable one.
    pub fn features(&self) -> u64 {
        let mut features = (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_BLK_F_FLUSH)
            | (1u64 << VIRTIO_BLK_F_SEG_MAX)
            | (1u64 << VIRTIO_BLK_F_BLK_SIZE)
            | (1u64 << VIRTIO_RING_F_EVENT_IDX)
            | (1u64 << VIRTIO_RING_F_INDIRECT_DESC);
        if self.read_only {
            features |= 1u64 << VIRTIO_BLK_F_RO;
        } else {
            features |= (1u64 << VIRTIO_BLK_F_DISCARD) | (1u64 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        features
    }

    /// Record the features the driver accepted (gates DISCARD/WRITE_ZEROES).
    pub fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.features();
    }

    /// The negotiated features.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// The virtio-blk configuration space (`struct virtio_blk_config` up to
    /// `write_zeroes_may_unmap`), little endian.
    pub fn config_space(&self) -> [u8; CONFIG_SPACE_LEN] {
        let mut config = [0u8; CONFIG_SPACE_LEN];
        let mut put = |offset: usize, bytes: &[u8]| {
            config[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(0, &self.capacity.to_le_bytes()); // capacity
        put(12, &SEG_MAX.to_le_bytes()); // seg_max
        put(20, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
        put(34, &1u16.to_le_bytes()); // num_queues
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_discard_sectors
        put(40, &MAX_DISCARD_SEG.to_le_bytes()); // max_discard_seg
        put(44, &1u32.to_le_bytes()); // discard_sector_alignment
        put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        put(52, &MAX_WRITE_ZEROES_SEG.to_le_bytes()); // max_write_zeroes_seg
        put(56, &[1]); // write_zeroes_may_unmap
        config
    }

    /// Parse and execute one descriptor chain, write its status byte, and
    /// return what goes on the used ring. Never panics on guest input.
    pub fn process<M>(&self, chain: DescriptorChain<M>) -> Completion
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        self.process_counted(chain).0
    }

    /// As [`Self::process`], with the bytes moved (the VIOS's statistics).
    pub fn process_counted<M>(&self, mut chain: DescriptorChain<M>) -> (Completion, Transfer)
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let mut transfer = Transfer::default();
        let head_index = chain.head_index();
        let none = || Completion {
            head_index,
            used_len: 0,
            status: None,
        };
        let parsed = Request::parse(&mut chain, MAX_DESCRIPTORS);
        let mem = chain.memory();
        let (status_addr, status, used_len) = match parsed {
            Err(ParseError {
                error,
                status: None,
            }) => {
                self.guest_error(head_index, &error);
                return (none(), transfer);
            }
            Err(ParseError {
                error,
                status: Some(addr),
            }) => {
                self.guest_error(head_index, &error);
                (addr, VIRTIO_BLK_S_IOERR as u8, 1)
            }
            Ok(request) => match self.execute(mem, &request) {
                Ok(written) => {
                    transfer = Transfer::of(&request, written);
                    (
                        request.status,
                        VIRTIO_BLK_S_OK as u8,
                        written.saturating_add(1),
                    )
                }
                Err(error) => {
                    self.guest_error(head_index, &error);
                    (request.status, error.status(), 1)
                }
            },
        };
        if let Err(e) = mem.write_obj(status, status_addr) {
            // Checked during parsing; only a concurrent memory unplug gets here.
            self.guest_error(head_index, &e);
            return (none(), Transfer::default());
        }
        let done = Completion {
            head_index,
            used_len,
            status: Some(status),
        };
        (done, transfer)
    }

    /// Log a request failure caused by the guest; rate limited so a hostile
    /// guest cannot flood the log.
    fn guest_error(&self, head_index: u16, error: &dyn std::fmt::Display) {
        let n = self.guest_errors.fetch_add(1, Ordering::Relaxed);
        if n < 16 || n.is_power_of_two() {
            warn!(disk = %self.id, head_index, failures = n + 1, error = %error, "virtio-blk: request failed");
        } else {
            debug!(disk = %self.id, head_index, error = %error, "virtio-blk: request failed");
        }
    }

    /// Execute a parsed request; returns the payload bytes written to guest
    /// memory.
    pub fn execute<Mem: GuestMemory + ?Sized>(
        &self,
        mem: &Mem,
        request: &Request,
    ) -> Result<u32, ExecuteError> {
        let kind = request.request_type;
        match kind {
            RequestType::In => {
                if !request.readable.is_empty() {
                    return Err(ExecuteError::WrongDirection(kind));
                }
                let len = total_len(&request.writable);
                let offset = self.byte_range(request.sector, len)?;
                let slices = guest_slices(mem, &request.writable, Permissions::Write)?;
                read_exact(&self.disk, offset, slices).map_err(|source| ExecuteError::Io {
                    op: "read",
                    offset,
                    source,
                })?;
                // The chain is below 4 GiB (virtio-queue enforces it).
                Ok(u32::try_from(len).unwrap_or(u32::MAX))
            }
            RequestType::Out => {
                if self.read_only {
                    return Err(ExecuteError::ReadOnly(kind));
                }
                if !request.writable.is_empty() {
                    return Err(ExecuteError::WrongDirection(kind));
                }
                let len = total_len(&request.readable);
                let offset = self.byte_range(request.sector, len)?;
                let slices = guest_slices(mem, &request.readable, Permissions::Read)?;
                write_all(&self.disk, offset, slices).map_err(|source| ExecuteError::Io {
                    op: "write",
                    offset,
                    source,
                })?;
                Ok(0)
            }
            RequestType::Flush => {
                self.disk.flush().map_err(|source| ExecuteError::Io {
                    op: "flush",
                    offset: 0,
                    source,
                })?;
                Ok(0)
            }
            RequestType::GetId => {
                if request.writable.is_empty() {
                    return Err(ExecuteError::NoIdBuffer);
                }
                write_to_buffers(mem, &request.writable, &self.serial)
            }
            RequestType::Discard | RequestType::WriteZeroes => self.discard_or_zero(mem, request),
            RequestType::Unsupported(t) => Err(ExecuteError::Unsupported(t)),
        }
    }

    /// Byte offset of `bytes` bytes at `sector`, if whole sectors inside the
    /// disk.
    fn byte_range(&self, sector: u64, bytes: u64) -> Result<u64, ExecuteError> {
        if !bytes.is_multiple_of(SECTOR_SIZE) {
            return Err(ExecuteError::UnalignedLength(bytes));
        }
        match sector.checked_add(bytes / SECTOR_SIZE) {
            // end <= capacity, so sector * SECTOR_SIZE cannot overflow.
            Some(end) if end <= self.capacity => Ok(sector * SECTOR_SIZE),
            _ => Err(ExecuteError::OutOfRange {
                sector,
                bytes,
                capacity: self.capacity,
            }),
        }
    }

    fn discard_or_zero<Mem: GuestMemory + ?Sized>(
        &self,
        mem: &Mem,
        request: &Request,
    ) -> Result<u32, ExecuteError> {
        let kind = request.request_type;
        let (feature, max_seg, max_sectors) = if kind == RequestType::Discard {
            (VIRTIO_BLK_F_DISCARD, MAX_DISCARD_SEG, MAX_DISCARD_SECTORS)
        } else {
            (
                VIRTIO_BLK_F_WRITE_ZEROES,
                MAX_WRITE_ZEROES_SEG,
                MAX_WRITE_ZEROES_SECTORS,
            )
        };
        if self.acked_features & (1u64 << feature) == 0 {
            return Err(ExecuteError::NotNegotiated(kind));
        }
        if self.read_only {
            return Err(ExecuteError::ReadOnly(kind));
        }
        if !request.writable.is_empty() {
            return Err(ExecuteError::WrongDirection(kind));
        }
        let len = total_len(&request.readable);
        if len == 0
            || !len.is_multiple_of(DISCARD_SEGMENT_LEN)
            || len / DISCARD_SEGMENT_LEN > u64::from(max_seg)
        {
            return Err(ExecuteError::BadSegments(len));
        }
        // At most max_seg (small) segments of 16 bytes.
        let mut raw = vec![0u8; len as usize];
        read_from_buffers(mem, &request.readable, &mut raw)?;
        for segment in raw.chunks_exact(DISCARD_SEGMENT_LEN as usize) {
            let mut sector = [0u8; 8];
            let mut num_sectors = [0u8; 4];
            let mut flags = [0u8; 4];
            sector.copy_from_slice(&segment[0..8]);
            num_sectors.copy_from_slice(&segment[8..12]);
            flags.copy_from_slice(&segment[12..16]);
            let sector = u64::from_le_bytes(sector);
            let num_sectors = u32::from_le_bytes(num_sectors);
            let flags = u32::from_le_bytes(flags);

            let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
            if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0
                || (kind == RequestType::Discard && unmap)
            {
                return Err(ExecuteError::SegmentFlags(flags));
            }
            if num_sectors > max_sectors {
                return Err(ExecuteError::SegmentTooLarge(num_sectors));
            }
            let bytes = u64::from(num_sectors) * SECTOR_SIZE;
            let offset = self.byte_range(sector, bytes)?;
            let result = if kind == RequestType::Discard {
                self.disk.discard(offset, bytes)
            } else {
                self.disk.write_zeroes(offset, bytes, unmap)
            };
            result.map_err(|source| ExecuteError::Io {
                op: if kind == RequestType::Discard {
                    "discard"
                } else {
                    "write-zeroes"
                },
                offset,
                source,
            })?;
        }
        Ok(0)
    }
}

type GuestSlice<'a, Mem> =
    VolatileSlice<'a, <<Mem as GuestMemory>::Bitmap as vm_memory::bitmap::WithBitmapSlice<'a>>::S>;

/// Map `buffers` to host slices (already checked to be inside guest memory).
fn guest_slices<'a, Mem: GuestMemory + ?Sized>(
    mem: &'a Mem,
    buffers: &[GuestBuffer],
    access: Permissions,
) -> Result<Vec<GuestSlice<'a, Mem>>, ExecuteError> {
    let mut slices = Vec::with_capacity(buffers.len());
    for buffer in buffers.iter().filter(|b| b.len > 0) {
        let outside = || ExecuteError::GuestMemory(buffer.addr.0);
        let iter = mem
            .get_slices(buffer.addr, buffer.len as usize, access)
            .map_err(|_| outside())?;
        for slice in iter {
            slices.push(slice.map_err(|_| outside())?);
        }
    }
    Ok(slices)
}

/// Drop the first `n` bytes of `slices[*start..]`, marking them dirty when
/// `dirty` (they were written by the disk backend).
fn advance<B: BitmapSlice>(
    slices: &mut [VolatileSlice<'_, B>],
    start: &mut usize,
    mut n: usize,
    dirty: bool,
) -> io::Result<()> {
    while n > 0 {
        let Some(slice) = slices.get_mut(*start) else {
            return Err(io::Error::other("backend reported more bytes than asked"));
        };
        let take = n.min(slice.len());
        if dirty {
            slice.bitmap().mark_dirty(0, take);
        }
        if take == slice.len() {
            *start += 1;
        } else {
            *slice = slice
                .offset(take)
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        n -= take;
    }
    Ok(())
}

fn read_exact<D: DiskBackend, B: BitmapSlice>(
    disk: &D,
    mut offset: u64,
    mut slices: Vec<VolatileSlice<'_, B>>,
) -> io::Result<()> {
    let mut start = 0;
    while start < slices.len() {
        let n = match disk.read_at(offset, &slices[start..]) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        advance(&mut slices, &mut start, n, true)?;
        offset += n as u64;
    }
    Ok(())
}

fn write_all<D: DiskBackend, B: BitmapSlice>(
    disk: &D,
    mut offset: u64,
    mut slices: Vec<VolatileSlice<'_, B>>,
) -> io::Result<()> {
    let mut start = 0;
    while start < slices.len() {
        let n = match disk.write_at(offset, &slices[start..]) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        advance(&mut slices, &mut start, n, false)?;
        offset += n as u64;
    }
    Ok(())
}

/// Copy `data` into `buffers` in order, stopping at whichever ends first;
/// returns the bytes copied.
fn write_to_buffers<Mem: GuestMemory + ?Sized>(
    mem: &Mem,
    buffers: &[GuestBuffer],
    data: &[u8],
) -> Result<u32, ExecuteError> {
    let mut done = 0usize;
    for buffer in buffers {
        if done == data.len() {
            break;
        }
        let n = (buffer.len as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + n], buffer.addr)
            .map_err(|_| ExecuteError::GuestMemory(buffer.addr.0))?;
        done += n;
    }
    // data is at most SERIAL_LEN bytes.
    Ok(done as u32)
}

/// Fill `out` from `buffers` in order (their total is at least `out.len()`).
fn read_from_buffers<Mem: GuestMemory + ?Sized>(
    mem: &Mem,
    buffers: &[GuestBuffer],
    out: &mut [u8],
) -> Result<(), ExecuteError> {
    let mut done = 0usize;
    for buffer in buffers {
        if done == out.len() {
            break;
        }
        let n = (buffer.len as usize).min(out.len() - done);
        mem.read_slice(&mut out[done..done + n], buffer.addr)
            .map_err(|_| ExecuteError::GuestMemory(buffer.addr.0))?;
        done += n;
    }
    Ok(())
}
