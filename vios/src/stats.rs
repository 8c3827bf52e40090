//! Per-export figures, over every client the export is served to:
//! requests, errors, bytes each way and the time each request took to
//! execute, in the buckets of [`LATENCY_BUCKETS_US`]. Counted with relaxed
//! atomics by the queue workers (no lock, no system call on the data
//! path); a managed VIOS reports them to the manager on request
//! (`ToManager::DiskStats`), which shows them in `/metrics`.

use parvm_protocol::{DiskStats, LATENCY_BUCKETS_US};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use virtio_devices::block::Transfer;

const BUCKETS: usize = LATENCY_BUCKETS_US.len() + 1;

/// One export's counters.
#[derive(Debug, Default)]
pub struct DiskCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    latency_ns: AtomicU64,
}

impl DiskCounters {
    /// One request done: `ok` if it ended with the OK status.
    pub fn record(&self, ok: bool, transfer: Transfer, took: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.read_bytes.fetch_add(transfer.read, Ordering::Relaxed);
        self.written_bytes
            .fetch_add(transfer.written, Ordering::Relaxed);
        let us = took.as_micros() as u64;
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS - 1);
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The figures now, as they travel.
    pub fn snapshot(&self, disk: &str) -> DiskStats {
        DiskStats {
            disk: disk.to_owned(),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            written_bytes: self.written_bytes.load(Ordering::Relaxed),
            latency: self
                .latency
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            latency_ns: self.latency_ns.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_land_in_their_latency_bucket() {
        let c = DiskCounters::default();
        let read = Transfer {
            read: 4096,
            written: 0,
        };
        c.record(true, read, Duration::from_micros(40));
        c.record(true, Transfer::default(), Duration::from_micros(300));
        c.record(false, Transfer::default(), Duration::from_secs(1));
        let s = c.snapshot("d");
        assert_eq!((s.requests, s.errors, s.read_bytes), (3, 1, 4096));
        assert_eq!(s.latency.len(), LATENCY_BUCKETS_US.len() + 1);
        assert_eq!(s.latency[0], 1);
        assert_eq!(s.latency[3], 1);
        assert_eq!(*s.latency.last().unwrap_or(&0), 1);
    }
}
