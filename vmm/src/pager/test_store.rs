//! A paging store in memory for the pager's unit tests: the pager's logic
//! against a device that can be unplugged. The real device is the VIOS.

use super::{PagingStore, StoreError, PAGE_SIZE};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One connection to an in-memory device; [`MemStore::connection`] makes
/// another to the same pages (the pager has one per thread).
pub(crate) struct MemStore {
    pages: Arc<Mutex<HashMap<u64, Vec<u8>>>>,
    capacity: u64,
    out: Vec<u8>,
    /// While set, every request fails as disconnected.
    pub(crate) down: Arc<AtomicBool>,
    /// Pages written and read so far.
    pub(crate) writes: Arc<AtomicU64>,
    pub(crate) reads: Arc<AtomicU64>,
}

/// Handles on a [`MemStore`] the test keeps once the pager owns it.
pub(crate) struct Probe {
    pub(crate) down: Arc<AtomicBool>,
    pub(crate) writes: Arc<AtomicU64>,
    pub(crate) reads: Arc<AtomicU64>,
}

impl MemStore {
    pub(crate) fn probe(&self) -> Probe {
        Probe {
            down: self.down.clone(),
            writes: self.writes.clone(),
            reads: self.reads.clone(),
        }
    }

    /// A second connection to the same device.
    pub(crate) fn connection(&self) -> Self {
        MemStore {
            pages: self.pages.clone(),
            capacity: self.capacity,
            out: Vec::new(),
            down: self.down.clone(),
            writes: self.writes.clone(),
            reads: self.reads.clone(),
        }
    }

    /// Both of the pager's connections to a new device.
    pub(crate) fn stores(capacity: u64) -> (super::Stores, Probe) {
        let faults = MemStore::new(capacity);
        let probe = faults.probe();
        let evictor = faults.connection();
        (
            super::Stores {
                faults: Box::new(faults),
                evictor: Box::new(evictor),
            },
            probe,
        )
    }

    pub(crate) fn new(capacity: u64) -> Self {
        MemStore {
            pages: Arc::default(),
            capacity,
            out: Vec::new(),
            down: Arc::default(),
            writes: Arc::default(),
            reads: Arc::default(),
        }
    }
}

impl PagingStore for MemStore {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn write_pages(&mut self, pages: &[(u64, &[u8])]) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Disconnected);
        }
        let mut stored = self.pages.lock().unwrap_or_else(|p| p.into_inner());
        for (offset, data) in pages {
            assert_eq!(data.len() as u64, PAGE_SIZE);
            assert!(offset + PAGE_SIZE <= self.capacity);
            stored.insert(*offset, data.to_vec());
        }
        self.writes.fetch_add(pages.len() as u64, Ordering::SeqCst);
        Ok(())
    }

    fn read_pages(&mut self, offsets: &[u64]) -> Result<&[u8], StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Disconnected);
        }
        self.out.clear();
        let stored = self.pages.lock().unwrap_or_else(|p| p.into_inner());
        for o in offsets {
            match stored.get(o) {
                Some(p) => self.out.extend_from_slice(p),
                // A page never written reads as zeros, as on a fresh disk.
                None => self.out.resize(self.out.len() + PAGE_SIZE as usize, 0),
            }
        }
        self.reads.fetch_add(offsets.len() as u64, Ordering::SeqCst);
        Ok(&self.out)
    }

    fn reconnect(&mut self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Disconnected)
        } else {
            Ok(())
        }
    }
}
