//! A guest disk served by a VIOS *through the VMM*: the block core's
//! [`DiskBackend`] over a [`PagingDisk`] connection, for partitions whose
//! guest RAM must not be mapped by another process (shared-memory
//! partitions, docs/ams.md). The VIOS sees only the driver's private
//! memfd; guest buffers are copied through its bounce area by the VMM's
//! device thread, whose accesses to guest RAM the pager's userfaultfd
//! covers.
//!
//! A lost backend is waited for: a request that meets `Disconnected` asks
//! for a new connection (a socket handed over through
//! [`BouncedDisk::reconnect_handle`]
//! by the partition manager, or the socket path dialled again) every
//! [`RETRY_INTERVAL`] for up to [`RETRY_FOR`], then is retried from the
//! start (block reads and writes are idempotent). Only then does the guest
//! see an I/O error.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{info, warn};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

use super::{HandOver, PagingDisk, PagingError, MAX_TRANSFER};
use crate::block::{DiskBackend, SECTOR_SIZE};

/// How often a lost backend is asked for again.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// How long a request waits for its backend before the guest sees EIO.
pub const RETRY_FOR: Duration = Duration::from_secs(60);

struct Inner {
    disk: PagingDisk,
    path: Option<PathBuf>,
}

/// A VIOS disk as a [`DiskBackend`].
pub struct BouncedDisk {
    inner: Mutex<Inner>,
    handed: HandOver,
}

fn io_error(e: PagingError) -> io::Error {
    io::Error::other(e.to_string())
}

impl BouncedDisk {
    /// The disk on a connected socket; `path` is where to dial again (a
    /// `vhost-user:SOCKET` disk), `None` for a brokered one.
    pub fn connect(
        id: &str,
        stream: UnixStream,
        path: Option<PathBuf>,
    ) -> Result<Self, PagingError> {
        let disk = PagingDisk::connect_disk(id, stream)?;
        Ok(BouncedDisk {
            inner: Mutex::new(Inner { disk, path }),
            handed: HandOver::default(),
        })
    }

    /// The handle a re-brokered socket comes through.
    pub fn reconnect_handle(&self) -> HandOver {
        self.handed.clone()
    }

    /// Whether the export is read-only.
    pub fn read_only(&self) -> bool {
        self.lock().disk.read_only()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `op` on the disk, waiting for a lost backend to come back.
    fn with_disk<T>(
        &self,
        mut op: impl FnMut(&mut PagingDisk) -> Result<T, PagingError>,
    ) -> io::Result<T> {
        let mut inner = self.lock();
        let mut since: Option<Instant> = None;
        loop {
            match op(&mut inner.disk) {
                Ok(v) => {
                    if since.is_some() {
                        info!(disk = %inner.disk.id(), "disk through the VMM: backend back; request retried");
                    }
                    return Ok(v);
                }
                Err(e) if e.is_lost() => {
                    let start = *since.get_or_insert_with(|| {
                        warn!(disk = %inner.disk.id(), error = %e, "disk through the VMM: backend lost; requests wait for it");
                        Instant::now()
                    });
                    if start.elapsed() > RETRY_FOR {
                        return Err(io_error(e));
                    }
                    std::thread::sleep(RETRY_INTERVAL);
                    let Inner { disk, path } = &mut *inner;
                    // Failing again is seen by the next try of `op`.
                    let _ = disk.reconnect_via(&self.handed, path.as_deref());
                }
                Err(e) => return Err(io_error(e)),
            }
        }
    }
}

/// Bytes in `bufs`, at most `max`.
fn total(bufs: &[VolatileSlice<'_, impl BitmapSlice>], max: usize) -> usize {
    bufs.iter().map(|b| b.len()).sum::<usize>().min(max)
}

impl BouncedDisk {
    /// The whole sectors `[start, end)` covering the `n` bytes from `offset`
    /// that one transfer moves: `n` at most what `bufs` hold and what the
    /// bounce area takes once widened to whole sectors, clipped at the end
    /// of the disk. `None`: nothing to move (at or past the end).
    fn sectors(
        &self,
        offset: u64,
        bufs: &[VolatileSlice<'_, impl BitmapSlice>],
    ) -> io::Result<Option<(u64, u64, usize)>> {
        let capacity = self.len()?;
        let start = offset - offset % SECTOR_SIZE;
        let n = total(
            bufs,
            MAX_TRANSFER - (offset - start) as usize - SECTOR_SIZE as usize,
        );
        let end = ((offset + n as u64).div_ceil(SECTOR_SIZE) * SECTOR_SIZE).min(capacity);
        if end <= offset {
            return Ok(None);
        }
        Ok(Some((start, end, (end - offset).min(n as u64) as usize)))
    }
}

impl DiskBackend for BouncedDisk {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().disk.capacity())
    }

    fn read_at<B: BitmapSlice>(
        &self,
        offset: u64,
        bufs: &[VolatileSlice<'_, B>],
    ) -> io::Result<usize> {
        let Some((start, end, n)) = self.sectors(offset, bufs)? else {
            return Ok(0);
        };
        self.with_disk(|disk| {
            let data = disk.read_at(start, (end - start) as usize)?;
            let mut from = &data[(offset - start) as usize..][..n];
            for b in bufs {
                if from.is_empty() {
                    break;
                }
                let k = b.len().min(from.len());
                if let Ok(s) = b.subslice(0, k) {
                    s.copy_from(&from[..k]);
                }
                from = &from[k..];
            }
            Ok(n)
        })
    }

    fn write_at<B: BitmapSlice>(
        &self,
        offset: u64,
        bufs: &[VolatileSlice<'_, B>],
    ) -> io::Result<usize> {
        let Some((start, end, n)) = self.sectors(offset, bufs)? else {
            return Ok(0);
        };
        let mut data = vec![0u8; (end - start) as usize];
        // A partial sector at either end keeps its other bytes.
        let head = (offset - start) as usize;
        if head != 0 || !(head + n).is_multiple_of(SECTOR_SIZE as usize) {
            let old = self.with_disk(|disk| disk.read_at(start, data.len()).map(|d| d.to_vec()))?;
            data.copy_from_slice(&old);
        }
        let mut at = head;
        for b in bufs {
            if at >= head + n {
                break;
            }
            let k = b.len().min(head + n - at);
            if let Ok(s) = b.subslice(0, k) {
                s.copy_to(&mut data[at..at + k]);
            }
            at += k;
        }
        self.with_disk(|disk| disk.write_at(start, &data))?;
        Ok(n)
    }

    fn flush(&self) -> io::Result<()> {
        self.with_disk(|disk| disk.flush())
    }

    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        // A hint: the blocks keep their data.
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        let zeros = vec![0u8; MAX_TRANSFER];
        let mut done = 0u64;
        while done < len {
            let k = (len - done).min(MAX_TRANSFER as u64) as usize;
            let at = offset + done;
            self.with_disk(|disk| disk.write_at(at, &zeros[..k]))?;
            done += k as u64;
        }
        Ok(())
    }
}
