//! The pager's bookkeeping: where every page of guest RAM is, and the
//! clock that picks what to evict. Pure logic, no memory touched.
//!
//! A page is identified by its index in the guest-RAM memfd (file offset /
//! [`PAGE_SIZE`]); its copy on the paging device lives at the same offset,
//! so the device needs at least the logical size and no allocation map.

/// The pager's page size (x86 base pages).
pub const PAGE_SIZE: u64 = 4096;

/// Where a page's contents are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageState {
    /// Not in memory, and all zeros: never touched since start, or zero
    /// when it was evicted. A fault maps a zero page; the device is not read.
    Zero,
    /// In the memfd.
    Resident,
    /// Not in memory; its contents are on the paging device.
    Out,
    /// Being written out (the evictor picked it): still in the memfd and
    /// counted resident until [`PageTable::paged_out`], never picked or
    /// prefetched again; a fault on it (after its release) waits for the
    /// write-out to end.
    Leaving,
}

impl PageState {
    /// Whether the page's memory is in the memfd (counted resident).
    pub fn in_memory(self) -> bool {
        matches!(self, PageState::Resident | PageState::Leaving)
    }
}

/// Every page's state, the resident count and the eviction policy: a
/// clock for pages that came in one by one, and before it a *scan queue*
/// for pages that came in as part of a sequential run (docs/ams.md,
/// "Eviction policy, measured"): a sweep larger than the target would make
/// the clock (like LRU) evict each page just before it is used again, so
/// scan pages are evicted first, newest first, but never the newest
/// `guard` ones (where the sweep is now).
pub struct PageTable {
    state: Vec<PageState>,
    /// Reference bits for the clock: set when a page comes in, cleared as
    /// the hand passes.
    referenced: Vec<bool>,
    /// Pages that must stay resident (virtqueue rings a VIOS writes).
    pinned: Vec<bool>,
    resident: u64,
    hand: usize,
    /// Resident pages that came in sequentially, oldest first (entries of
    /// pages that left since are skipped and dropped).
    scan: std::collections::VecDeque<usize>,
    in_scan: Vec<bool>,
}

impl PageTable {
    /// `pages` pages, none resident.
    pub fn new(pages: usize) -> Self {
        PageTable {
            state: vec![PageState::Zero; pages],
            referenced: vec![false; pages],
            pinned: vec![false; pages],
            resident: 0,
            hand: 0,
            scan: std::collections::VecDeque::new(),
            in_scan: vec![false; pages],
        }
    }

    pub fn len(&self) -> usize {
        self.state.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    pub fn resident(&self) -> u64 {
        self.resident
    }

    pub fn state(&self, page: usize) -> Option<PageState> {
        self.state.get(page).copied()
    }

    /// The page is in memory now (a fault was served).
    pub fn paged_in(&mut self, page: usize) {
        self.paged_in_as(page, false);
    }

    /// The page is in memory now; `sequential`: as part of a sequential
    /// run of faults (it joins the scan queue instead of the clock).
    pub fn paged_in_as(&mut self, page: usize, sequential: bool) {
        let Some(s) = self.state.get_mut(page) else {
            return;
        };
        if !s.in_memory() {
            self.resident += 1;
        }
        *s = PageState::Resident;
        if sequential {
            if !self.in_scan[page] {
                self.in_scan[page] = true;
                self.scan.push_back(page);
            }
        } else {
            self.in_scan[page] = false;
            self.referenced[page] = true;
        }
    }

    /// The page left memory; `zero`: it held only zeros (nothing written).
    pub fn paged_out(&mut self, page: usize, zero: bool) {
        if let Some(s) = self.state.get_mut(page) {
            if s.in_memory() {
                self.resident -= 1;
            }
            *s = if zero {
                PageState::Zero
            } else {
                PageState::Out
            };
        }
    }

    /// A write-out of `page` failed: it is resident as before.
    pub fn stayed(&mut self, page: usize) {
        if let Some(s) = self.state.get_mut(page) {
            if *s == PageState::Leaving {
                *s = PageState::Resident;
            }
        }
    }

    /// Keeps `page` resident from now on (or lets it go again).
    pub fn set_pinned(&mut self, page: usize, pinned: bool) {
        if let Some(p) = self.pinned.get_mut(page) {
            *p = pinned;
        }
    }

    /// Marks `page` recently used (the clock passes it over once).
    pub fn touch(&mut self, page: usize) {
        if let Some(r) = self.referenced.get_mut(page) {
            *r = true;
        }
    }

    /// Up to `max` resident, unpinned pages to evict (marked
    /// [`PageState::Leaving`]), in ascending order:
    /// scan pages first, newest first, sparing the `guard` newest; then by
    /// the clock (second chance): a page referenced since the hand last
    /// passed is spared once. Looks at each page at most twice, so it ends
    /// even if everything is pinned.
    pub fn victims(&mut self, max: usize, guard: usize) -> Vec<usize> {
        let mut out = self.scan_victims(max, guard);
        let n = self.state.len();
        for _ in 0..2 * n {
            if out.len() >= max {
                break;
            }
            let p = self.hand;
            self.hand = (self.hand + 1) % n;
            // Scan pages left are the guarded ones (where the sweep is).
            if self.state[p] != PageState::Resident
                || self.pinned[p]
                || self.in_scan[p]
                || out.contains(&p)
            {
                continue;
            }
            if self.referenced[p] {
                self.referenced[p] = false;
                continue;
            }
            out.push(p);
        }
        out.sort_unstable();
        out.dedup();
        for &p in &out {
            self.state[p] = PageState::Leaving;
        }
        out
    }

    /// Up to `max` scan pages, newest first after the `guard` newest.
    fn scan_victims(&mut self, max: usize, guard: usize) -> Vec<usize> {
        let valid = |t: &PageTable, p: usize| t.in_scan[p] && t.state[p] == PageState::Resident;
        // Entries of pages that left (or were touched one by one since)
        // are dropped once they outnumber the live ones.
        if self.scan.len() > 2 * self.resident as usize + 64 {
            let live: std::collections::VecDeque<usize> = self
                .scan
                .iter()
                .copied()
                .filter(|&p| valid(self, p))
                .collect();
            self.scan = live;
        }
        let mut kept = Vec::with_capacity(guard);
        let mut out = Vec::with_capacity(max);
        while out.len() < max {
            let Some(p) = self.scan.pop_back() else {
                break;
            };
            if !valid(self, p) {
                continue;
            }
            if kept.len() < guard || self.pinned[p] {
                kept.push(p);
            } else {
                self.in_scan[p] = false;
                out.push(p);
            }
        }
        for p in kept.into_iter().rev() {
            self.scan.push_back(p);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residency_is_counted_once_per_page() {
        let mut t = PageTable::new(8);
        t.paged_in(3);
        t.paged_in(3);
        t.paged_in(100); // out of range: ignored
        assert_eq!(t.resident(), 1);
        t.paged_out(3, false);
        t.paged_out(3, false);
        assert_eq!(t.resident(), 0);
        assert_eq!(t.state(3), Some(PageState::Out));
        t.paged_in(4);
        t.paged_out(4, true);
        assert_eq!(t.state(4), Some(PageState::Zero));
    }

    #[test]
    fn the_clock_spares_referenced_pages_once_and_never_pinned_ones() {
        let mut t = PageTable::new(6);
        for p in 0..6 {
            t.paged_in(p);
        }
        t.set_pinned(2, true);
        // All referenced: the first lap clears the bits, the second picks.
        assert_eq!(t.victims(2, 0), vec![0, 1]);
        for &p in &[0, 1] {
            t.paged_out(p, false);
        }
        t.touch(3);
        assert_eq!(t.victims(2, 0), vec![4, 5]);
        // Only 3 is left unpinned and resident.
        for &p in &[4, 5] {
            t.paged_out(p, false);
        }
        assert_eq!(t.victims(8, 0), vec![3]);
        // Picked: leaving, still counted, not picked twice.
        assert_eq!(t.state(3), Some(PageState::Leaving));
        assert_eq!(t.resident(), 2);
        assert!(t.victims(8, 0).is_empty());
        // A failed write-out: resident again, and a victim again.
        t.stayed(3);
        assert_eq!(t.victims(8, 0), vec![3]);
        t.paged_out(3, false);
        assert_eq!(t.resident(), 1);
        assert!(
            t.victims(8, 0).is_empty(),
            "a pinned page is never a victim"
        );
    }

    #[test]
    fn scan_pages_go_first_newest_first_but_not_the_guarded_newest() {
        let mut t = PageTable::new(16);
        t.paged_in(0); // one by one: the clock's
        for p in 1..9 {
            t.paged_in_as(p, true); // a sequential run
        }
        // Guard 2 spares 8 and 7; then 6, 5, 4 (newest first).
        assert_eq!(t.victims(3, 2), vec![4, 5, 6]);
        for p in [4, 5, 6] {
            t.paged_out(p, false);
        }
        // A scan page touched one by one joins the clock.
        t.paged_in(3);
        assert_eq!(t.victims(2, 2), vec![1, 2]);
        for p in [1, 2] {
            t.paged_out(p, false);
        }
        // Only guarded scan pages and clock pages are left: the clock
        // takes a clock page, never where the sweep is.
        let v = t.victims(1, 2);
        assert!(v == [0] || v == [3], "{v:?}");
    }
}
