//! The pager of a shared-memory partition (Active Memory Sharing,
//! docs/ams.md): guest RAM is registered with userfaultfd, at most a
//! *resident target* of it stays in the memfd, and the rest lives on a
//! paging device a VIOS serves.
//!
//! One thread, [`Pager::start`]ed before anything touches guest RAM (so
//! that every page that comes in is counted), does both jobs:
//!
//! - **faults**: a missing page of guest RAM (a vCPU through KVM, or a VMM
//!   thread) is served with `UFFDIO_ZEROPAGE` if it was never written or
//!   was zero when it left, else read from the paging device and placed
//!   with `UFFDIO_COPY`; sequential faults read the next pages too;
//! - **eviction**: while more pages are resident than the target (less a
//!   slack of two batches kept free ahead of the faults), a batch
//!   chosen by the clock ([`pages::PageTable::victims`]) is written out:
//!   write-protected (userfaultfd WP, so no vCPU or VMM write can land
//!   between the copy and the release), copied, written to the device
//!   (zero pages are not), punched out of the memfd (`FALLOC_FL_PUNCH_HOLE`)
//!   and unprotected, which wakes any writer that waited: it faults again
//!   and gets the page back from the device.
//!
//! A page's copy on the device is at its memfd offset. When the device is
//! gone (its VIOS died), faults that need it wait and eviction stops; the
//! store is asked to reconnect every [`RECONNECT_INTERVAL`], then the
//! waiting faults are served: the vCPUs stall and resume, nothing is lost.
//!
//! The only mappings of guest RAM are the VMM's own (registered here) and
//! KVM's, which goes through it: a shared-memory partition's disks served
//! by a VIOS go through the VMM's own virtio-blk
//! (`virtio_devices::paging::BouncedDisk`), so no VIOS maps its RAM
//! (docs/ams.md).

pub mod device;
pub mod latency;
pub mod pages;
pub mod uffd;

use pages::{PageState, PageTable, PAGE_SIZE};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use uffd::{Fault, Uffd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::memory::GuestMemoryMmap;

/// Pages written out in one batch.
pub const EVICT_BATCH: usize = 64;
/// Pages read in one go when faults are sequential.
pub const PREFETCH: usize = 16;
/// A page of zeros to compare evicted pages with.
static ZERO_PAGE: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];
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
    /// Pages written to the device.
    pub page_outs: u64,
    /// Pages released without a write (zero).
    pub zero_outs: u64,
    /// Faults served with a zero page.
    pub zero_fills: u64,
    /// Whether the paging device is unreachable right now.
    pub stalled: bool,
}

#[derive(Default)]
struct Counters {
    target: AtomicU64,
    resident: AtomicU64,
    page_ins: AtomicU64,
    page_in_ns: AtomicU64,
    page_in_latency: latency::Histogram,
    page_outs: AtomicU64,
    zero_outs: AtomicU64,
    zero_fills: AtomicU64,
    stalled: AtomicBool,
    stop: AtomicBool,
}

/// A running pager. Dropping it stops the thread (guest RAM must outlive it).
pub struct Pager {
    counters: Arc<Counters>,
    logical_pages: u64,
    reconnector: virtio_devices::paging::HandOver,
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Pager {
    /// Registers `memory` (backed by `memfd`) with a new userfaultfd and
    /// starts the pager thread with `target_pages` resident at most.
    pub fn start(
        memory: &GuestMemoryMmap,
        memfd: &File,
        store: Box<dyn PagingStore>,
        reconnector: virtio_devices::paging::HandOver,
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
        if store.capacity() < logical {
            return Err(PagerError::DeviceTooSmall {
                device: store.capacity(),
                logical,
            });
        }
        let uffd = Uffd::new().map_err(|e| uffd_err(&e))?;
        for s in &spans {
            uffd.register(s.host, s.len as usize)
                .map_err(|e| uffd_err(&format!("register {} bytes: {e}", s.len)))?;
        }
        let counters = Arc::new(Counters::default());
        counters.target.store(target_pages, Ordering::Relaxed);
        let wake = EventFd::new(EFD_NONBLOCK).map_err(PagerError::Thread)?;
        let mut worker = Worker {
            uffd,
            memory: memory.clone(),
            memfd: memfd.try_clone().map_err(PagerError::Thread)?,
            spans,
            table: PageTable::new((logical / PAGE_SIZE) as usize),
            store,
            counters: counters.clone(),
            wake: wake.try_clone().map_err(PagerError::Thread)?,
            waiting: Vec::new(),
            last_fault: None,
            buf: vec![0u8; EVICT_BATCH * PAGE_SIZE as usize],
        };
        let thread = std::thread::Builder::new()
            .name("pager".into())
            .stack_size(256 << 10)
            .spawn(move || {
                crate::seccomp::apply(crate::seccomp::Role::Pager);
                worker.run();
            })
            .map_err(PagerError::Thread)?;
        Ok(Pager {
            counters,
            logical_pages: logical / PAGE_SIZE,
            reconnector,
            wake,
            thread: Some(thread),
        })
    }

    /// A new resident target (the manager recomputes it as the pool's
    /// partitions start, stop and fault).
    pub fn set_target(&self, pages: u64) {
        self.counters.target.store(pages, Ordering::Relaxed);
        let _ = self.wake.write(1);
    }

    /// A new connection to the paging device (the partition manager
    /// re-brokered it after the VIOS came back); taken at the next
    /// reconnect attempt.
    pub fn hand_over_paging_socket(&self, stream: std::os::unix::net::UnixStream) {
        self.reconnector.hand_over(stream);
        let _ = self.wake.write(1);
    }

    pub fn report(&self) -> PagerReport {
        let c = &self.counters;
        PagerReport {
            logical_pages: self.logical_pages,
            target_pages: c.target.load(Ordering::Relaxed),
            resident_pages: c.resident.load(Ordering::Relaxed),
            page_ins: c.page_ins.load(Ordering::Relaxed),
            page_in_ns: c.page_in_ns.load(Ordering::Relaxed),
            page_in_p50_ns: c.page_in_latency.percentile(0.50),
            page_in_p99_ns: c.page_in_latency.percentile(0.99),
            page_outs: c.page_outs.load(Ordering::Relaxed),
            zero_outs: c.zero_outs.load(Ordering::Relaxed),
            zero_fills: c.zero_fills.load(Ordering::Relaxed),
            stalled: c.stalled.load(Ordering::Relaxed),
        }
    }
}

impl std::fmt::Display for PagerReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "logical={} target={} resident={} page_ins={} page_in_us={} page_in_p50_us={} page_in_p99_us={} page_outs={} zero_outs={} zero_fills={}{}",
            self.logical_pages,
            self.target_pages,
            self.resident_pages,
            self.page_ins,
            self.page_in_ns / 1000,
            self.page_in_p50_ns / 1000,
            self.page_in_p99_ns / 1000,
            self.page_outs,
            self.zero_outs,
            self.zero_fills,
            if self.stalled { " stalled" } else { "" }
        )
    }
}

impl Drop for Pager {
    fn drop(&mut self) {
        self.counters.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.write(1);
        if let Some(t) = self.thread.take() {
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

/// The pager thread's state.
struct Worker {
    uffd: Uffd,
    /// Keeps the mappings alive; the pager reads pages through it.
    memory: GuestMemoryMmap,
    memfd: File,
    spans: Vec<Span>,
    table: PageTable,
    store: Box<dyn PagingStore>,
    counters: Arc<Counters>,
    wake: EventFd,
    /// Faults that need the device while it is gone (host addresses).
    waiting: Vec<(usize, Instant)>,
    last_fault: Option<usize>,
    /// Eviction copies, one batch.
    buf: Vec<u8>,
}

impl Worker {
    fn run(&mut self) {
        loop {
            if self.counters.stop.load(Ordering::Relaxed) {
                return;
            }
            let stalled = self.counters.stalled.load(Ordering::Relaxed);
            // Eviction runs ahead of the faults: the pager keeps `slack`
            // pages free below the target, so a fault rarely waits for a
            // write-out.
            let over = !stalled && self.table.resident() + self.slack() > self.target();
            let timeout = if over {
                0
            } else if stalled {
                RECONNECT_INTERVAL.as_millis() as i32
            } else {
                -1
            };
            let mut fds = [
                libc::pollfd {
                    fd: self.uffd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfds that lives
            // across the call; poll only writes `revents`.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "pager: poll failed; paging stops");
                    return;
                }
                continue;
            }
            if fds[1].revents != 0 {
                let _ = self.wake.read();
            }
            if stalled {
                self.try_reconnect();
            }
            self.serve_faults();
            if over {
                self.evict_batch(self.slack());
            }
        }
    }

    fn target(&self) -> u64 {
        self.counters.target.load(Ordering::Relaxed)
    }

    /// Free pages kept below the target: two batches, at most an eighth
    /// of it.
    fn slack(&self) -> u64 {
        (2 * EVICT_BATCH as u64).min(self.target() / 8)
    }

    fn publish_resident(&self) {
        self.counters
            .resident
            .store(self.table.resident(), Ordering::Relaxed);
    }

    fn stall(&mut self, what: &str, e: StoreError) {
        match e {
            StoreError::Disconnected => {
                if !self.counters.stalled.swap(true, Ordering::Relaxed) {
                    tracing::warn!("pager: paging device gone during {what}; faults wait for it");
                }
            }
            StoreError::Failed(m) => {
                // Not retried on a live device: treat as gone until it
                // answers a reconnect, so no page is served wrong.
                tracing::error!(error = %m, "pager: paging device failed during {what}");
                self.counters.stalled.store(true, Ordering::Relaxed);
            }
        }
    }

    fn try_reconnect(&mut self) {
        if self.store.reconnect().is_ok() {
            tracing::info!(
                waiting = self.waiting.len(),
                "pager: paging device back; serving the faults that waited"
            );
            self.counters.stalled.store(false, Ordering::Relaxed);
            let waiting = std::mem::take(&mut self.waiting);
            for (addr, since) in waiting {
                self.serve(addr, since);
            }
        }
    }

    /// Reads every pending fault event and serves it.
    fn serve_faults(&mut self) {
        loop {
            match self.uffd.read_fault() {
                Ok(Some(Fault::Missing(addr))) => self.serve(addr, Instant::now()),
                // The writer is woken when its page's eviction ends (it
                // then faults as missing).
                Ok(Some(Fault::WriteProtect(_))) => {}
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "pager: cannot read a fault");
                    return;
                }
            }
        }
    }

    /// The span and page of host address `addr`.
    fn page_of(&self, addr: usize) -> Option<(usize, usize)> {
        self.spans.iter().enumerate().find_map(|(i, s)| {
            (addr >= s.host && ((addr - s.host) as u64) < s.len)
                .then(|| (i, s.first_page + (addr - s.host) / PAGE_SIZE as usize))
        })
    }

    fn host_of(&self, span: usize, page: usize) -> usize {
        let s = &self.spans[span];
        s.host + (page - s.first_page) * PAGE_SIZE as usize
    }

    /// Serves one missing-page fault at host address `addr`.
    fn serve(&mut self, addr: usize, since: Instant) {
        let Some((span, page)) = self.page_of(addr) else {
            tracing::warn!(
                addr = format_args!("{addr:#x}"),
                "pager: fault outside guest RAM"
            );
            return;
        };
        let host = self.host_of(span, page);
        match self.table.state(page) {
            Some(PageState::Resident) | None => {
                // Another mapping's fault already brought it in.
                let _ = self.uffd.wake(host, PAGE_SIZE as usize);
            }
            Some(PageState::Zero) => {
                // Sequential faults on pages never written (a guest
                // clearing or filling memory) get the next ones too.
                let count = self.run_ahead(span, page, PageState::Zero);
                let sequential = self.sequential(page);
                self.make_room(count as u64);
                if self.table.resident() + count as u64 > self.target()
                    && self.counters.stalled.load(Ordering::Relaxed)
                {
                    // No room until the device is back.
                    self.waiting.push((addr, since));
                    return;
                }
                if let Err(e) = self.uffd.zeropage(host, count * PAGE_SIZE as usize) {
                    tracing::error!(error = %e, "pager: cannot place a zero page");
                    return;
                }
                for p in page..page + count {
                    self.table.paged_in_as(p, sequential);
                }
                self.counters
                    .zero_fills
                    .fetch_add(count as u64, Ordering::Relaxed);
                self.publish_resident();
                self.last_fault = Some(page + count - 1);
                return;
            }
            Some(PageState::Out) => {
                if self.counters.stalled.load(Ordering::Relaxed) {
                    self.waiting.push((addr, since));
                    return;
                }
                // The next fault is sequential if it follows the last
                // page this one placed (prefetched pages included).
                if let Some(last) = self.page_in(span, page, since, addr) {
                    self.last_fault = Some(last);
                }
                return;
            }
        }
        self.last_fault = Some(page);
    }

    /// Whether a fault on `page` continues a sequential run.
    fn sequential(&self, page: usize) -> bool {
        self.last_fault.is_some_and(|l| l + 1 == page)
    }

    /// How many pages from `page` to bring in at once: 1, or when faults
    /// run sequentially up to [`PREFETCH`] consecutive pages of the same
    /// span in `state`.
    fn run_ahead(&self, span: usize, page: usize, state: PageState) -> usize {
        if !self.sequential(page) {
            return 1;
        }
        let s = &self.spans[span];
        let span_end = s.first_page + (s.len / PAGE_SIZE) as usize;
        let mut count = 1;
        while count < PREFETCH
            && page + count < span_end
            && self.table.state(page + count) == Some(state)
        {
            count += 1;
        }
        count
    }

    /// Reads `page` (and, when faults run sequentially, the out pages
    /// after it in the same span) from the device and places them; returns
    /// the last page placed.
    fn page_in(&mut self, span: usize, page: usize, since: Instant, addr: usize) -> Option<usize> {
        let count = self.run_ahead(span, page, PageState::Out);
        let sequential = self.sequential(page);
        self.make_room(count as u64);
        let offsets: Vec<u64> = (page..page + count).map(|p| p as u64 * PAGE_SIZE).collect();
        let host = self.host_of(span, page);
        let len = count * PAGE_SIZE as usize;
        let placed = match self.store.read_pages(&offsets) {
            Ok(data) if data.len() >= len => {
                // SAFETY: `host..host+len` lies in one registered span and
                // every page of it is missing (state Out); `data` holds
                // `len` bytes and stays valid until the store's next call.
                Ok(unsafe { self.uffd.copy(data.as_ptr(), host, len) })
            }
            Ok(data) => Err(StoreError::Failed(format!(
                "short read: {} of {len} bytes",
                data.len()
            ))),
            Err(e) => Err(e),
        };
        match placed {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "pager: cannot place a page");
                return None;
            }
            Err(e) => {
                self.stall("a page-in", e);
                self.waiting.push((addr, since));
                return None;
            }
        }
        for p in page..page + count {
            self.table.paged_in_as(p, sequential);
        }
        let c = &self.counters;
        c.page_ins.fetch_add(count as u64, Ordering::Relaxed);
        let waited = since.elapsed().as_nanos() as u64;
        c.page_in_ns.fetch_add(waited, Ordering::Relaxed);
        c.page_in_latency.record(waited);
        self.publish_resident();
        Some(page + count - 1)
    }

    /// Writes out one batch of victims to get nearer the target, or
    /// `room` pages below it (a fault about to bring them in).
    fn evict_batch(&mut self, room: u64) -> bool {
        let excess = (self.table.resident() + room).saturating_sub(self.target()) as usize;
        let guard = (2 * EVICT_BATCH).min(self.target() as usize / 4);
        let victims = self.table.victims(excess.min(EVICT_BATCH), guard);
        if victims.is_empty() {
            return false;
        }
        let located: Vec<Victim> = victims
            .iter()
            .filter_map(|&page| {
                let (span, s) = self.spans.iter().enumerate().find(|(_, s)| {
                    page >= s.first_page && page < s.first_page + (s.len / PAGE_SIZE) as usize
                })?;
                Some(Victim {
                    page,
                    span,
                    host: self.host_of(span, page),
                    gpa: s.gpa + (page - s.first_page) as u64 * PAGE_SIZE,
                })
            })
            .collect();
        let page_runs = Victim::runs(&located);
        // 1. No more writes through our mapping (vCPUs, VMM threads).
        for r in &page_runs {
            if let Err(e) = self.uffd.write_protect(r.host, r.len(), true) {
                tracing::error!(error = %e, "pager: cannot write-protect pages to evict");
                self.unprotect(&page_runs);
                return false;
            }
        }
        // 2. Copy them; zero pages need no write.
        let mut zero = vec![false; located.len()];
        for (i, v) in located.iter().enumerate() {
            let slot = &mut self.buf[i * PAGE_SIZE as usize..(i + 1) * PAGE_SIZE as usize];
            if self.memory.read_slice(slot, GuestAddress(v.gpa)).is_err() {
                tracing::error!(
                    gpa = format_args!("{:#x}", v.gpa),
                    "pager: cannot read a page to evict"
                );
                self.unprotect(&page_runs);
                return false;
            }
            // Slice equality is a memcmp, fast in every build.
            zero[i] = *slot == ZERO_PAGE[..];
        }
        let writes: Vec<(u64, &[u8])> = located
            .iter()
            .enumerate()
            .filter(|(i, _)| !zero[*i])
            .map(|(i, v)| {
                (
                    v.page as u64 * PAGE_SIZE,
                    &self.buf[i * PAGE_SIZE as usize..(i + 1) * PAGE_SIZE as usize],
                )
            })
            .collect();
        let written = writes.len() as u64;
        // 3. To the device.
        if !writes.is_empty() {
            if let Err(e) = self.store.write_pages(&writes) {
                drop(writes);
                self.unprotect(&page_runs);
                self.stall("a page-out", e);
                return false;
            }
        }
        drop(writes);
        // 4. Out of memory, then let blocked writers go (they fault back in).
        for r in &page_runs {
            let off = (r.first_page as u64 * PAGE_SIZE) as libc::off_t;
            // SAFETY: fallocate on our memfd; punching a hole frees the
            // pages' memory and touches no memory of ours.
            let ret = unsafe {
                libc::fallocate(
                    self.memfd.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    r.len() as libc::off_t,
                )
            };
            if ret < 0 {
                tracing::error!(error = %std::io::Error::last_os_error(), "pager: cannot release pages");
                self.unprotect(&page_runs);
                return false;
            }
        }
        for (i, v) in located.iter().enumerate() {
            self.table.paged_out(v.page, zero[i]);
        }
        self.unprotect(&page_runs);
        let c = &self.counters;
        c.page_outs.fetch_add(written, Ordering::Relaxed);
        c.zero_outs
            .fetch_add(located.len() as u64 - written, Ordering::Relaxed);
        self.publish_resident();
        true
    }

    /// Makes room for `pages` more resident pages under the target.
    /// When it has to evict at all it evicts a whole batch (down to the
    /// slack below the target), so that the next faults find room without
    /// waiting for a write-out.
    fn make_room(&mut self, pages: u64) {
        while self.table.resident() + pages > self.target()
            && !self.counters.stalled.load(Ordering::Relaxed)
        {
            if !self.evict_batch(pages + self.slack()) {
                return;
            }
        }
    }

    fn unprotect(&self, page_runs: &[Run]) {
        for r in page_runs {
            if let Err(e) = self.uffd.write_protect(r.host, r.len(), false) {
                tracing::error!(error = %e, "pager: cannot lift write protection");
            }
        }
    }
}

/// A page picked for eviction, located.
struct Victim {
    page: usize,
    span: usize,
    host: usize,
    gpa: u64,
}

/// Consecutive victims in one span: one ioctl, one punch.
struct Run {
    first_page: usize,
    host: usize,
    pages: usize,
}

impl Run {
    fn len(&self) -> usize {
        self.pages * PAGE_SIZE as usize
    }
}

impl Victim {
    /// `victims` (ascending) grouped into runs.
    fn runs(victims: &[Victim]) -> Vec<Run> {
        let mut out: Vec<(usize, Run)> = Vec::new();
        for v in victims {
            match out.last_mut() {
                Some((span, r)) if *span == v.span && r.first_page + r.pages == v.page => {
                    r.pages += 1
                }
                _ => out.push((
                    v.span,
                    Run {
                        first_page: v.page,
                        host: v.host,
                        pages: 1,
                    },
                )),
            }
        }
        out.into_iter().map(|(_, r)| r).collect()
    }
}

/// A paging store in memory, for the pager's own tests.
#[cfg(test)]
pub(crate) mod test_store;

#[cfg(test)]
mod tests;
