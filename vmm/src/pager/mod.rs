//! The pager of a shared-memory partition (Active Memory Sharing,
//! docs/ams.md): guest RAM is registered with userfaultfd, at most a
//! *resident target* of it stays in the memfd, and the rest lives on a
//! paging device a VIOS serves.
//!
//! Two threads, [`Pager::start`]ed before anything touches guest RAM (so
//! that every page that comes in is counted), share the page table
//! ([`pages::PageTable`], behind one mutex held only for bookkeeping) and
//! each has its own connection to the paging device, so that a fault never
//! waits for a write-out:
//!
//! - **faults** ([`faults`]): a missing page of guest RAM (a vCPU through
//!   KVM, or a VMM thread) is served with `UFFDIO_ZEROPAGE` if it was never
//!   written or was zero when it left, else read from the paging device and
//!   placed with `UFFDIO_COPY`; sequential faults read the next pages too.
//!   Room for the pages is reserved first; when there is none the fault
//!   waits for the evictor.
//! - **eviction** ([`evict`]): while more pages are resident (or reserved)
//!   than the target less a slack of two batches kept free ahead of the
//!   faults, a batch chosen by the clock ([`pages::PageTable::victims`],
//!   which marks them *leaving*) is written out: write-protected
//!   (userfaultfd WP, so no vCPU or VMM write can land between the copy
//!   and the release), copied, written to the device (zero pages are not),
//!   punched out of the memfd (`FALLOC_FL_PUNCH_HOLE`), marked out, and
//!   unprotected, which wakes any writer that waited: it faults again and
//!   gets the page back from the device. A fault on a leaving page (after
//!   its punch, before it is marked out) waits for the batch to end.
//!
//! A page's copy on the device is at its memfd offset. When the device is
//! gone (its VIOS died), faults that need it wait and eviction stops; the
//! store is asked to reconnect every [`RECONNECT_INTERVAL`] (each thread
//! its own connection), then the waiting faults are served: the vCPUs
//! stall and resume, nothing is lost. A fault that needs room while the
//! evictor's connection is gone waits the same way (the budget holds).
//!
//! The only mappings of guest RAM are the VMM's own (registered here) and
//! KVM's, which goes through it: a shared-memory partition's disks served
//! by a VIOS go through the VMM's own virtio-blk
//! (`virtio_devices::paging::BouncedDisk`), so no VIOS maps its RAM
//! (docs/ams.md).

pub mod device;
mod evict;
mod faults;
pub mod latency;
pub mod pages;
pub mod uffd;

use pages::{PageTable, PAGE_SIZE};
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;
use uffd::Uffd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::memory::GuestMemoryMmap;

/// Pages written out in one batch.
pub const EVICT_BATCH: usize = 64;
/// Pages read in one go when faults are sequential.
pub const PREFETCH: usize = 16;
/// How often a lost paging device is asked to reconnect.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(100);

/// Errors of a paging device.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend went away; the pager waits for it to come back.
    #[error("the paging device is disconnected")]
    Disconnected,
    /// The request failed (I/O error, bad answer).
    #[error("{0}")]
    Failed(String),
}

/// Where evicted pages go: a paging device (through the VIOS in
/// production: `virtio_devices::paging::PagingDisk`).
pub trait PagingStore: Send {
    /// Size of the device, bytes.
    fn capacity(&self) -> u64;
    /// Writes each `(offset, 4 KiB page)`.
    fn write_pages(&mut self, pages: &[(u64, &[u8])]) -> Result<(), StoreError>;
    /// Reads the pages at `offsets`; returns them back to back, valid
    /// until the next call.
    fn read_pages(&mut self, offsets: &[u64]) -> Result<&[u8], StoreError>;
    /// Tries to reach the device again after [`StoreError::Disconnected`];
    /// `Ok` once it answers.
    fn reconnect(&mut self) -> Result<(), StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub enum PagerError {
    #[error("userfaultfd: {0} (a shared-memory partition needs userfaultfd with write protection on shared memory: Linux 6.4 or later, and CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1 to serve KVM's faults)")]
    Uffd(String),
    #[error("the paging device holds {device} bytes; the partition's {logical} bytes of memory need at least as many")]
    DeviceTooSmall { device: u64, logical: u64 },
    #[error("cannot start the pager thread: {0}")]
    Thread(std::io::Error),
    #[error("no paging device: give \"paging\" in the memory section (or --paging); under the partition manager it is assigned from the pool")]
    NoPagingDevice,
    #[error("paging device {source_text}: {message}")]
    Device {
        source_text: String,
        message: String,
    },
}

/// What the pager has done, for `parctl status` (the figures `lparstat -m`
/// shows on PowerVM).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PagerReport {
    pub logical_pages: u64,
    pub target_pages: u64,
    pub resident_pages: u64,
    /// Pages read back from the device.
    pub page_ins: u64,
    /// Time faults waited for those reads, nanoseconds.
    pub page_in_ns: u64,
    /// Page-in latency (fault read to page placed), 50th and 99th
    /// percentile, nanoseconds (0 before the first page-in).
    pub page_in_p50_ns: u64,
    pub page_in_p99_ns: u64,
    /// The same for page-ins of a single page (no read-ahead: one fault,
    /// one 4 KiB read, one copy).
    pub single_p50_ns: u64,
    pub single_p99_ns: u64,
    /// Faults that found no room and waited for the evictor.
    pub room_waits: u64,
    /// Pages written to the device.
    pub page_outs: u64,
    /// Pages released without a write (zero).
    pub zero_outs: u64,
    /// Faults served with a zero page.
    pub zero_fills: u64,
    /// Whether the paging device is unreachable right now.
    pub stalled: bool,
}

/// The paging device as the pager's two threads reach it: one connection
/// each, to the same device (two brokered sockets, or a socket path
/// dialled twice).
pub struct Stores {
    /// Page-ins, for the fault thread.
    pub faults: Box<dyn PagingStore>,
    /// Write-outs, for the evictor.
    pub evictor: Box<dyn PagingStore>,
}

/// Where a new brokered connection for each thread is handed over.
#[derive(Clone, Default)]
pub struct Reconnectors {
    pub faults: virtio_devices::paging::HandOver,
    pub evictor: virtio_devices::paging::HandOver,
}

#[derive(Default)]
struct Counters {
    target: AtomicU64,
    resident: AtomicU64,
    page_ins: AtomicU64,
    page_in_ns: AtomicU64,
    page_in_latency: latency::Histogram,
    single_latency: latency::Histogram,
    room_waits: AtomicU64,
    page_outs: AtomicU64,
    zero_outs: AtomicU64,
    zero_fills: AtomicU64,
    /// The fault thread's connection is gone.
    read_stalled: AtomicBool,
    /// The evictor's connection is gone.
    write_stalled: AtomicBool,
    stop: AtomicBool,
}

/// The page table and what the two threads agree on through it.
struct Ledger {
    table: PageTable,
    /// Pages the fault thread is bringing in (room taken, not yet placed).
    reserved: u64,
    /// The evictor found nothing to evict while over the target: a fault
    /// goes ahead anyway (the pages it could take are the ones in use).
    stuck: bool,
    /// A fault waits for a leaving page: wake the fault thread when a
    /// batch ends.
    deferred: bool,
    /// Pages a fault waits to reserve (0 when none waits).
    wanted: u64,
}

/// State both pager threads share.
struct Shared {
    ledger: Mutex<Ledger>,
    /// The evictor waits on it for work (pages came in, a new target, a
    /// new connection, stop).
    work: Condvar,
    /// A fault waiting for room waits on it (a batch went out).
    room: Condvar,
    counters: Counters,
    /// Wakes the fault thread's poll.
    wake: EventFd,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn target(&self) -> u64 {
        self.counters.target.load(Ordering::Relaxed)
    }

    /// Free pages kept below the target: two batches, at most an eighth
    /// of it.
    fn slack(&self) -> u64 {
        (2 * EVICT_BATCH as u64).min(self.target() / 8)
    }

    /// Pages the evictor should take out: resident and reserved ones above
    /// the target less the slack (or less what a waiting fault wants, if
    /// more).
    fn excess(&self, l: &Ledger) -> u64 {
        (l.table.resident() + l.reserved + self.slack().max(l.wanted)).saturating_sub(self.target())
    }

    fn stopping(&self) -> bool {
        self.counters.stop.load(Ordering::Relaxed)
    }

    fn publish_resident(&self, l: &Ledger) {
        self.counters
            .resident
            .store(l.table.resident(), Ordering::Relaxed);
    }

    /// Wakes both threads (a new target, a new connection, stop).
    fn nudge(&self) {
        let _ = self.wake.write(1);
        self.work.notify_all();
        self.room.notify_all();
    }
}

/// Records a failure of a paging device connection (`stalled` is the
/// thread's flag): faults or eviction wait until it reconnects.
fn stall(stalled: &AtomicBool, what: &str, e: StoreError) {
    match e {
        StoreError::Disconnected => {
            if !stalled.swap(true, Ordering::Relaxed) {
                tracing::warn!("pager: paging device gone during {what}; waiting for it");
            }
        }
        StoreError::Failed(m) => {
            // Not retried on a live device: treat as gone until it
            // answers a reconnect, so no page is served wrong.
            tracing::error!(error = %m, "pager: paging device failed during {what}");
            stalled.store(true, Ordering::Relaxed);
        }
    }
}

/// A running pager. Dropping it stops the threads (guest RAM must outlive it).
pub struct Pager {
    shared: Arc<Shared>,
    logical_pages: u64,
    reconnectors: Reconnectors,
    threads: Vec<JoinHandle<()>>,
}

impl Pager {
    /// Registers `memory` (backed by `memfd`) with a new userfaultfd and
    /// starts the fault and evictor threads with `target_pages` resident
    /// at most.
    pub fn start(
        memory: &GuestMemoryMmap,
        memfd: &File,
        stores: Stores,
        reconnectors: Reconnectors,
        target_pages: u64,
    ) -> Result<Pager, PagerError> {
        let uffd_err = |e: &dyn std::fmt::Display| PagerError::Uffd(e.to_string());
        let mut spans = Vec::new();
        let mut logical = 0u64;
        for region in memory.iter() {
            let file_offset = region.file_offset().map(|f| f.start()).unwrap_or(0);
            spans.push(Span {
                gpa: region.start_addr().0,
                host: region.as_ptr() as usize,
                len: region.len(),
                first_page: (file_offset / PAGE_SIZE) as usize,
            });
            logical = logical.max(file_offset + region.len());
        }
        let capacity = stores.faults.capacity().min(stores.evictor.capacity());
        if capacity < logical {
            return Err(PagerError::DeviceTooSmall {
                device: capacity,
                logical,
            });
        }
        let uffd = Arc::new(Uffd::new().map_err(|e| uffd_err(&e))?);
        for s in &spans {
            uffd.register(s.host, s.len as usize)
                .map_err(|e| uffd_err(&format!("register {} bytes: {e}", s.len)))?;
        }
        let shared = Arc::new(Shared {
            ledger: Mutex::new(Ledger {
                table: PageTable::new((logical / PAGE_SIZE) as usize),
                reserved: 0,
                stuck: false,
                deferred: false,
                wanted: 0,
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            counters: Counters::default(),
            wake: EventFd::new(EFD_NONBLOCK).map_err(PagerError::Thread)?,
        });
        shared
            .counters
            .target
            .store(target_pages, Ordering::Relaxed);
        let spans = Arc::new(spans);
        let faulter =
            faults::Faulter::new(uffd.clone(), spans.clone(), shared.clone(), stores.faults);
        let evictor = evict::Evictor::new(
            uffd,
            memory.clone(),
            memfd.try_clone().map_err(PagerError::Thread)?,
            spans,
            shared.clone(),
            stores.evictor,
        );
        let mut pager = Pager {
            shared,
            logical_pages: logical / PAGE_SIZE,
            reconnectors,
            threads: Vec::new(),
        };
        pager.spawn("pager", move || faulter.run())?;
        pager.spawn("pager-evict", move || evictor.run())?;
        Ok(pager)
    }

    fn spawn(
        &mut self,
        name: &str,
        body: impl FnOnce() + Send + 'static,
    ) -> Result<(), PagerError> {
        let thread = std::thread::Builder::new()
            .name(name.into())
            .stack_size(256 << 10)
            .spawn(move || {
                crate::seccomp::apply(crate::seccomp::Role::Pager);
                body();
            })
            .map_err(PagerError::Thread)?;
        self.threads.push(thread);
        Ok(())
    }

    /// A new resident target (the manager recomputes it as the pool's
    /// partitions start, stop and fault).
    pub fn set_target(&self, pages: u64) {
        self.shared.counters.target.store(pages, Ordering::Relaxed);
        self.shared.nudge();
    }

    /// A new connection to the paging device (the partition manager
    /// re-brokered it after the VIOS came back), for the evictor's
    /// connection if `evictor`, else the fault thread's; taken at that
    /// thread's next reconnect attempt.
    pub fn hand_over_paging_socket(&self, stream: std::os::unix::net::UnixStream, evictor: bool) {
        let slot = if evictor {
            &self.reconnectors.evictor
        } else {
            &self.reconnectors.faults
        };
        slot.hand_over(stream);
        self.shared.nudge();
    }

    pub fn report(&self) -> PagerReport {
        let c = &self.shared.counters;
        PagerReport {
            logical_pages: self.logical_pages,
            target_pages: c.target.load(Ordering::Relaxed),
            resident_pages: c.resident.load(Ordering::Relaxed),
            page_ins: c.page_ins.load(Ordering::Relaxed),
            page_in_ns: c.page_in_ns.load(Ordering::Relaxed),
            page_in_p50_ns: c.page_in_latency.percentile(0.50),
            page_in_p99_ns: c.page_in_latency.percentile(0.99),
            single_p50_ns: c.single_latency.percentile(0.50),
            single_p99_ns: c.single_latency.percentile(0.99),
            room_waits: c.room_waits.load(Ordering::Relaxed),
            page_outs: c.page_outs.load(Ordering::Relaxed),
            zero_outs: c.zero_outs.load(Ordering::Relaxed),
            zero_fills: c.zero_fills.load(Ordering::Relaxed),
            stalled: c.read_stalled.load(Ordering::Relaxed)
                || c.write_stalled.load(Ordering::Relaxed),
        }
    }
}

impl std::fmt::Display for PagerReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "logical={} target={} resident={} page_ins={} page_in_us={} page_in_p50_us={} page_in_p99_us={} single_p50_us={} single_p99_us={} room_waits={} page_outs={} zero_outs={} zero_fills={}{}",
            self.logical_pages,
            self.target_pages,
            self.resident_pages,
            self.page_ins,
            self.page_in_ns / 1000,
            self.page_in_p50_ns / 1000,
            self.page_in_p99_ns / 1000,
            self.single_p50_ns / 1000,
            self.single_p99_ns / 1000,
            self.room_waits,
            self.page_outs,
            self.zero_outs,
            self.zero_fills,
            if self.stalled { " stalled" } else { "" }
        )
    }
}

impl Drop for Pager {
    fn drop(&mut self) {
        self.shared.counters.stop.store(true, Ordering::Relaxed);
        // Under the lock, so a thread about to wait cannot miss it.
        drop(self.shared.lock());
        self.shared.nudge();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One RAM region: its guest address, where this process maps it, and
/// its first page in the memfd.
struct Span {
    gpa: u64,
    host: usize,
    len: u64,
    first_page: usize,
}

impl Span {
    fn pages(&self) -> usize {
        (self.len / PAGE_SIZE) as usize
    }

    fn holds_page(&self, page: usize) -> bool {
        page >= self.first_page && page < self.first_page + self.pages()
    }

    /// Where this process maps `page` (one of this span's).
    fn host_of(&self, page: usize) -> usize {
        self.host + (page - self.first_page) * PAGE_SIZE as usize
    }
}

/// A paging store in memory, for the pager's own tests.
#[cfg(test)]
pub(crate) mod test_store;

#[cfg(test)]
mod tests;
