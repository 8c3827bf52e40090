//! The pager's evictor thread: keeps resident pages under the target
//! (less a slack kept free for the faults) by writing batches out to the
//! paging device over its own connection, so the fault thread
//! ([`super::faults`]) never waits for a write-out.

use super::pages::PAGE_SIZE;
use super::uffd::Uffd;
use super::{
    stall, GuestMemoryMmap, Ledger, PagingStore, Shared, Span, EVICT_BATCH, RECONNECT_INTERVAL,
};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use vm_memory::{Bytes, GuestAddress};

/// A page of zeros to compare evicted pages with.
static ZERO_PAGE: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];

/// The evictor thread's state.
pub(super) struct Evictor {
    uffd: Arc<Uffd>,
    /// Keeps the mappings alive; the evictor reads pages through it.
    memory: GuestMemoryMmap,
    memfd: File,
    spans: Arc<Vec<Span>>,
    shared: Arc<Shared>,
    store: Box<dyn PagingStore>,
    /// Eviction copies, one batch.
    buf: Vec<u8>,
}

impl Evictor {
    pub(super) fn new(
        uffd: Arc<Uffd>,
        memory: GuestMemoryMmap,
        memfd: File,
        spans: Arc<Vec<Span>>,
        shared: Arc<Shared>,
        store: Box<dyn PagingStore>,
    ) -> Self {
        Evictor {
            uffd,
            memory,
            memfd,
            spans,
            shared,
            store,
            buf: vec![0u8; EVICT_BATCH * PAGE_SIZE as usize],
        }
    }

    pub(super) fn run(mut self) {
        let shared = self.shared.clone();
        let mut l = shared.lock();
        loop {
            if shared.stopping() {
                return;
            }
            if shared.counters.write_stalled.load(Ordering::Relaxed) {
                l = wait(&shared, l, Some(RECONNECT_INTERVAL));
                drop(l);
                self.try_reconnect();
                l = shared.lock();
                continue;
            }
            let excess = shared.excess(&l) as usize;
            if excess == 0 {
                l = wait(&shared, l, None);
                continue;
            }
            let guard = (2 * EVICT_BATCH).min(shared.target() as usize / 4);
            let victims = l.table.victims(excess.min(EVICT_BATCH), guard);
            if victims.is_empty() {
                // Nothing to take: faults go ahead over the target
                // until pages come in that can be evicted.
                l.stuck = true;
                shared.room.notify_all();
                l = wait(&shared, l, None);
                continue;
            }
            l.stuck = false;
            drop(l);
            self.evict(&victims);
            l = shared.lock();
        }
    }

    fn try_reconnect(&mut self) {
        if self.store.reconnect().is_ok() {
            tracing::info!("pager: paging device back for eviction");
            let c = &self.shared.counters;
            c.write_stalled.store(false, Ordering::Relaxed);
            // Faults that waited for room try again.
            self.shared.nudge();
        }
    }

    /// Writes `victims` (leaving, ascending) out and releases them; on
    /// failure they stay resident.
    fn evict(&mut self, victims: &[usize]) {
        let located: Vec<Victim> = victims
            .iter()
            .filter_map(|&page| {
                let (span, s) = self
                    .spans
                    .iter()
                    .enumerate()
                    .find(|(_, s)| s.holds_page(page))?;
                Some(Victim {
                    page,
                    span,
                    host: s.host_of(page),
                    gpa: s.gpa + (page - s.first_page) as u64 * PAGE_SIZE,
                })
            })
            .collect();
        let page_runs = Victim::runs(&located);
        let (zero, released) = self.write_out(&located, &page_runs);
        let shared = &self.shared;
        let mut l = shared.lock();
        for (v, &z) in located.iter().zip(&zero).take(released) {
            l.table.paged_out(v.page, z);
        }
        // What was not released is resident as before.
        for &p in victims {
            l.table.stayed(p);
        }
        shared.publish_resident(&l);
        let deferred = std::mem::take(&mut l.deferred);
        drop(l);
        self.unprotect(&page_runs);
        let written = zero.iter().take(released).filter(|z| !**z).count() as u64;
        let c = &shared.counters;
        c.page_outs.fetch_add(written, Ordering::Relaxed);
        c.zero_outs
            .fetch_add(released as u64 - written, Ordering::Relaxed);
        shared.room.notify_all();
        if deferred {
            let _ = shared.wake.write(1);
        }
    }

    /// Write-protects, copies, writes and punches out `located`: which of
    /// them were zero (not written) and how many of them, from the first,
    /// were released (all, or fewer after a failure; nothing is released
    /// that is not on the device).
    fn write_out(&mut self, located: &[Victim], page_runs: &[Run]) -> (Vec<bool>, usize) {
        let mut zero = vec![false; located.len()];
        // 1. No more writes through our mapping (vCPUs, VMM threads).
        for r in page_runs {
            if let Err(e) = self.uffd.write_protect(r.host, r.len(), true) {
                tracing::error!(error = %e, "pager: cannot write-protect pages to evict");
                return (zero, 0);
            }
        }
        // 2. Copy them; zero pages need no write.
        for (i, v) in located.iter().enumerate() {
            let slot = &mut self.buf[i * PAGE_SIZE as usize..(i + 1) * PAGE_SIZE as usize];
            if self.memory.read_slice(slot, GuestAddress(v.gpa)).is_err() {
                tracing::error!(
                    gpa = format_args!("{:#x}", v.gpa),
                    "pager: cannot read a page to evict"
                );
                return (zero, 0);
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
        // 3. To the device.
        if !writes.is_empty() {
            if let Err(e) = self.store.write_pages(&writes) {
                drop(writes);
                stall(&self.shared.counters.write_stalled, "a page-out", e);
                return (zero, 0);
            }
        }
        drop(writes);
        // 4. Out of memory; a fault on these pages now waits (leaving)
        // until they are marked out.
        let mut released = 0;
        for r in page_runs {
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
                // Earlier runs are gone already (their copies are on the
                // device); this one and the rest stay.
                tracing::error!(error = %std::io::Error::last_os_error(), "pager: cannot release pages");
                break;
            }
            released += r.pages;
        }
        (zero, released)
    }

    fn unprotect(&self, page_runs: &[Run]) {
        for r in page_runs {
            if let Err(e) = self.uffd.write_protect(r.host, r.len(), false) {
                tracing::error!(error = %e, "pager: cannot lift write protection");
            }
        }
    }
}

/// Waits on the evictor's condition variable (for at most `timeout`).
fn wait<'a>(
    shared: &'a Shared,
    l: MutexGuard<'a, Ledger>,
    timeout: Option<std::time::Duration>,
) -> MutexGuard<'a, Ledger> {
    match timeout {
        Some(t) => match shared.work.wait_timeout(l, t) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        },
        None => shared.work.wait(l).unwrap_or_else(|p| p.into_inner()),
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
