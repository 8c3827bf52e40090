//! The event log: every [`EventKind`] the manager's parts report, numbered
//! in order and kept in a bounded ring for followers (`parctl events`, the
//! HTTP API's `/v1/events`), with counts per type for `/metrics`.
//!
//! Its lock is its own, never held while another is taken: the parts push
//! events with the manager's lock held, followers wait here without it.

use parvm_protocol::{Event, EventBatch, EventKind, PartitionState};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Events kept for followers; older ones are dropped (and said to be).
pub const DEFAULT_CAPACITY: usize = 4096;
/// The longest a follower's request waits for an event.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

struct Ring {
    events: VecDeque<Event>,
    /// The `seq` of the next event.
    next: u64,
    capacity: usize,
    /// Events per type since the manager started.
    counts: BTreeMap<&'static str, u64>,
    /// Set at shutdown: waiting followers are answered at once.
    closed: bool,
}

pub struct EventLog {
    ring: Mutex<Ring>,
    added: Condvar,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl EventLog {
    pub fn new(capacity: usize) -> Self {
        EventLog {
            ring: Mutex::new(Ring {
                events: VecDeque::with_capacity(capacity.min(DEFAULT_CAPACITY)),
                next: 1,
                capacity: capacity.max(1),
                counts: BTreeMap::new(),
                closed: false,
            }),
            added: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `kind` as the next event; returns its `seq`.
    pub fn push(&self, kind: EventKind) -> u64 {
        let mut ring = self.lock();
        let seq = ring.next;
        ring.next += 1;
        *ring.counts.entry(kind.name()).or_insert(0) += 1;
        tracing::debug!(
            seq,
            event = kind.name(),
            partition = kind.partition().unwrap_or("-"),
            "event"
        );
        if ring.events.len() == ring.capacity {
            ring.events.pop_front();
        }
        ring.events.push_back(Event {
            seq,
            time_ms: now_ms(),
            kind,
        });
        drop(ring);
        self.added.notify_all();
        seq
    }

    /// A state change (nothing if `from == to`).
    pub fn state(
        &self,
        partition: &str,
        from: PartitionState,
        to: PartitionState,
        reason: Option<&str>,
    ) {
        if from != to {
            self.push(EventKind::State {
                partition: partition.into(),
                from,
                to,
                reason: reason.map(str::to_string),
            });
        }
    }

    /// The events after `since`, waiting up to `wait` (at most
    /// [`MAX_WAIT`]) for one if there is none yet.
    pub fn since(&self, since: u64, wait: Duration) -> EventBatch {
        let deadline = Instant::now() + wait.min(MAX_WAIT);
        let mut ring = self.lock();
        loop {
            if ring.next > since + 1 || since >= ring.next || ring.closed {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            ring = match self.added.wait_timeout(ring, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        let oldest = ring.events.front().map_or(ring.next, |e| e.seq);
        // Asked from before the oldest held: those in between are lost
        // (a `since` beyond the newest, e.g. from an earlier manager run,
        // starts over from what is held).
        let since = if since >= ring.next { 0 } else { since };
        let lost = oldest.saturating_sub(since + 1);
        let events: Vec<Event> = ring
            .events
            .iter()
            .filter(|e| e.seq > since)
            .cloned()
            .collect();
        let next = events.last().map_or(since.max(oldest - 1), |e| e.seq);
        EventBatch { events, next, lost }
    }

    /// The `seq` the last event got (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.lock().next - 1
    }

    /// Events per type since the manager started.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.lock().counts.clone()
    }

    /// Whether [`Self::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Wakes every waiting follower for good (manager shutdown).
    pub fn close(&self) {
        self.lock().closed = true;
        self.added.notify_all();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn defined(n: u32) -> EventKind {
        EventKind::Defined {
            partition: format!("p{n}"),
        }
    }

    #[test]
    fn followers_get_what_came_after_their_since_in_order() {
        let log = EventLog::new(8);
        for i in 0..3 {
            log.push(defined(i));
        }
        let b = log.since(0, Duration::ZERO);
        assert_eq!(
            b.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!((b.next, b.lost), (3, 0));
        let b = log.since(2, Duration::ZERO);
        assert_eq!(b.events.len(), 1);
        assert_eq!(b.events[0].seq, 3);
        let b = log.since(3, Duration::from_millis(10));
        assert!(b.events.is_empty());
        assert_eq!((b.next, b.lost), (3, 0));
    }

    #[test]
    fn an_overflow_is_counted_not_hidden() {
        let log = EventLog::new(4);
        for i in 0..10 {
            log.push(defined(i));
        }
        let b = log.since(0, Duration::ZERO);
        assert_eq!(b.events.first().unwrap().seq, 7);
        assert_eq!(b.lost, 6);
        assert_eq!(b.next, 10);
        let b = log.since(8, Duration::ZERO);
        assert_eq!(b.lost, 0);
        assert_eq!(b.events.len(), 2);
        assert_eq!(log.counts()["defined"], 10);
    }

    #[test]
    fn a_waiting_follower_wakes_on_the_next_event() {
        let log = std::sync::Arc::new(EventLog::new(4));
        let l = log.clone();
        let t = std::thread::spawn(move || l.since(0, Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(50));
        log.push(defined(1));
        let b = t.join().unwrap();
        assert_eq!(b.events.len(), 1);
    }

    #[test]
    fn a_since_from_another_run_starts_over() {
        let log = EventLog::new(4);
        log.push(defined(1));
        let b = log.since(500, Duration::ZERO);
        assert_eq!(b.events.len(), 1);
        assert_eq!(b.lost, 0);
    }
}
