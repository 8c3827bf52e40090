//! The pager's fault thread: serves missing-page faults of guest RAM with
//! zero pages or pages read from the paging device, over its own
//! connection; never writes a page out (the evictor does, [`super::evict`]).

use super::pages::{PageState, PAGE_SIZE};
use super::uffd::{Fault, Uffd};
use super::{stall, Ledger, PagingStore, Shared, Span, StoreError, PREFETCH, RECONNECT_INTERVAL};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

/// How long a fault waits for room before it looks again (stop, a stalled
/// evictor).
const ROOM_WAIT: Duration = Duration::from_millis(20);

/// The fault thread's state.
pub(super) struct Faulter {
    uffd: Arc<Uffd>,
    spans: Arc<Vec<Span>>,
    shared: Arc<Shared>,
    store: Box<dyn PagingStore>,
    /// Faults that wait: for the device (gone), for room (the evictor's
    /// device gone), or for a leaving page (host address, since when).
    waiting: Vec<(usize, Instant)>,
    last_fault: Option<usize>,
}

/// What a fault needs once its page's state is known.
enum Need {
    /// Nothing (already resident: wake the faulting thread).
    Wake,
    /// Wait and try again later.
    Wait,
    /// Bring `count` pages in from `page` (room reserved), as zero pages
    /// or from the device.
    Place {
        page: usize,
        count: usize,
        zero: bool,
        sequential: bool,
    },
}

impl Faulter {
    pub(super) fn new(
        uffd: Arc<Uffd>,
        spans: Arc<Vec<Span>>,
        shared: Arc<Shared>,
        store: Box<dyn PagingStore>,
    ) -> Self {
        Faulter {
            uffd,
            spans,
            shared,
            store,
            waiting: Vec::new(),
            last_fault: None,
        }
    }

    pub(super) fn run(mut self) {
        loop {
            if self.shared.stopping() {
                return;
            }
            let stalled = self.stalled();
            let timeout = if stalled || !self.waiting.is_empty() {
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
                    fd: self.shared.wake.as_raw_fd(),
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
                let _ = self.shared.wake.read();
            }
            if stalled {
                self.try_reconnect();
            }
            if !self.waiting.is_empty() && !self.stalled() {
                for (addr, since) in std::mem::take(&mut self.waiting) {
                    self.serve(addr, since);
                }
            }
            self.serve_faults();
        }
    }

    fn stalled(&self) -> bool {
        self.shared.counters.read_stalled.load(Ordering::Relaxed)
    }

    fn try_reconnect(&mut self) {
        if self.store.reconnect().is_ok() {
            tracing::info!(
                waiting = self.waiting.len(),
                "pager: paging device back; serving the faults that waited"
            );
            self.shared
                .counters
                .read_stalled
                .store(false, Ordering::Relaxed);
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

    /// Serves one missing-page fault at host address `addr`.
    fn serve(&mut self, addr: usize, since: Instant) {
        let Some((span, page)) = self.page_of(addr) else {
            tracing::warn!(
                addr = format_args!("{addr:#x}"),
                "pager: fault outside guest RAM"
            );
            return;
        };
        let host = self.spans[span].host_of(page);
        match self.need(span, page) {
            Need::Wake => {
                // Another mapping's fault already brought it in.
                let _ = self.uffd.wake(host, PAGE_SIZE as usize);
                self.last_fault = Some(page);
            }
            Need::Wait => self.waiting.push((addr, since)),
            Need::Place {
                page,
                count,
                zero,
                sequential,
            } => {
                let placed = if zero {
                    self.zero_fill(host, count)
                } else {
                    self.page_in(page, count, host)
                };
                self.placed(page, count, sequential, placed, zero, since);
                match placed {
                    // The next fault is sequential if it follows the
                    // last page placed (prefetched pages included).
                    Ok(true) => self.last_fault = Some(page + count - 1),
                    Ok(false) => {}
                    Err(()) => self.waiting.push((addr, since)),
                }
            }
        }
    }

    /// Looks the page up and, when it must come in, reserves room for it
    /// (and the pages a sequential run reads ahead).
    fn need(&mut self, span: usize, page: usize) -> Need {
        let shared = self.shared.clone();
        let mut l = shared.lock();
        let zero = match l.table.state(page) {
            Some(PageState::Resident) | None => return Need::Wake,
            Some(PageState::Leaving) => {
                l.deferred = true;
                return Need::Wait;
            }
            Some(PageState::Zero) => true,
            Some(PageState::Out) => {
                if self.stalled() {
                    return Need::Wait;
                }
                false
            }
        };
        let state = if zero {
            PageState::Zero
        } else {
            PageState::Out
        };
        let count = self.run_ahead(&l, span, page, state);
        let sequential = self.sequential(page);
        match self.reserve(l, count as u64) {
            true => Need::Place {
                page,
                count,
                zero,
                sequential,
            },
            false => Need::Wait,
        }
    }

    /// Takes room for `count` more pages under the target, waiting for the
    /// evictor when there is none; `false` (nothing taken) when it cannot
    /// make room: its device is gone, or the pager stops.
    fn reserve(&self, mut l: MutexGuard<'_, Ledger>, count: u64) -> bool {
        let shared = &self.shared;
        loop {
            if l.table.resident() + l.reserved + count <= shared.target() || l.stuck {
                l.reserved += count;
                l.wanted = 0;
                if shared.excess(&l) > 0 {
                    shared.work.notify_one();
                }
                return true;
            }
            if shared.counters.write_stalled.load(Ordering::Relaxed) || shared.stopping() {
                l.wanted = 0;
                return false;
            }
            if l.wanted == 0 {
                shared.counters.room_waits.fetch_add(1, Ordering::Relaxed);
            }
            l.wanted = count;
            shared.work.notify_one();
            l = match shared.room.wait_timeout(l, ROOM_WAIT) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Whether a fault on `page` continues a sequential run.
    fn sequential(&self, page: usize) -> bool {
        self.last_fault.is_some_and(|l| l + 1 == page)
    }

    /// How many pages from `page` to bring in at once: 1, or when faults
    /// run sequentially up to [`PREFETCH`] consecutive pages of the same
    /// span in `state`.
    fn run_ahead(&self, l: &Ledger, span: usize, page: usize, state: PageState) -> usize {
        if !self.sequential(page) {
            return 1;
        }
        let s = &self.spans[span];
        let span_end = s.first_page + s.pages();
        let mut count = 1;
        while count < PREFETCH
            && page + count < span_end
            && l.table.state(page + count) == Some(state)
        {
            count += 1;
        }
        count
    }

    /// Places `count` zero pages at `host`.
    fn zero_fill(&self, host: usize, count: usize) -> Result<bool, ()> {
        match self.uffd.zeropage(host, count * PAGE_SIZE as usize) {
            Ok(_) => Ok(true),
            Err(e) => {
                tracing::error!(error = %e, "pager: cannot place a zero page");
                Ok(false)
            }
        }
    }

    /// Reads `count` pages from `page` from the device and places them at
    /// `host`: `Ok(true)` placed, `Ok(false)` not placeable (logged),
    /// `Err` the device is gone (the fault waits).
    fn page_in(&mut self, page: usize, count: usize, host: usize) -> Result<bool, ()> {
        let offsets: Vec<u64> = (page..page + count).map(|p| p as u64 * PAGE_SIZE).collect();
        let len = count * PAGE_SIZE as usize;
        let placed = match self.store.read_pages(&offsets) {
            Ok(data) if data.len() >= len => {
                // SAFETY: `host..host+len` lies in one registered span and
                // every page of it is missing (state Out, which only this
                // thread changes); `data` holds `len` bytes and stays valid
                // until the store's next call.
                Ok(unsafe { self.uffd.copy(data.as_ptr(), host, len) })
            }
            Ok(data) => Err(StoreError::Failed(format!(
                "short read: {} of {len} bytes",
                data.len()
            ))),
            Err(e) => Err(e),
        };
        match placed {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "pager: cannot place a page");
                Ok(false)
            }
            Err(e) => {
                stall(&self.shared.counters.read_stalled, "a page-in", e);
                Err(())
            }
        }
    }

    /// Books the outcome of bringing `count` pages in from `page`: the
    /// reservation ends, the pages are resident if `placed`.
    fn placed(
        &self,
        page: usize,
        count: usize,
        sequential: bool,
        placed: Result<bool, ()>,
        zero: bool,
        since: Instant,
    ) {
        let shared = &self.shared;
        let mut l = shared.lock();
        l.reserved -= count as u64;
        if placed == Ok(true) {
            for p in page..page + count {
                l.table.paged_in_as(p, sequential);
            }
        }
        shared.publish_resident(&l);
        drop(l);
        if placed != Ok(true) {
            return;
        }
        let c = &shared.counters;
        if zero {
            c.zero_fills.fetch_add(count as u64, Ordering::Relaxed);
        } else {
            c.page_ins.fetch_add(count as u64, Ordering::Relaxed);
            let waited = since.elapsed().as_nanos() as u64;
            c.page_in_ns.fetch_add(waited, Ordering::Relaxed);
            c.page_in_latency.record(waited);
            if count == 1 {
                c.single_latency.record(waited);
            }
        }
    }
}
