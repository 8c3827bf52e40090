//! Guest accesses that grants refuse, counted and reported: a write to a
//! read-only mapping, or any access to a mapping revoked a moment ago (it
//! exits to the VMM as an unmapped address). The count is exact; reports to
//! the manager are limited to one per mapping every [`REPORT_INTERVAL`].
//!
//! [`FaultLog`] sits beside the slots under [`super::GrantMaps`]' lock; it
//! only decides what to report, the caller sends it.

use parvm_protocol::ToManager;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Revoked mappings remembered for fault reports.
const GONE_REMEMBERED: usize = 64;
/// At most one fault report per mapping this often.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Counter {
    faults: u64,
    reported: Option<Instant>,
}

impl Counter {
    /// Counts one fault; a report if one is due.
    fn count(&mut self, key: &str, gpa: u64, write: bool) -> Option<ToManager> {
        self.faults += 1;
        let now = Instant::now();
        let due = self
            .reported
            .is_none_or(|t| now.duration_since(t) >= REPORT_INTERVAL);
        if !due {
            return None;
        }
        self.reported = Some(now);
        Some(ToManager::Fault {
            key: key.to_string(),
            gpa,
            write,
            count: self.faults,
        })
    }
}

/// A revoked range and its faults.
struct Gone {
    key: String,
    gpa: u64,
    size: u64,
    counter: Counter,
}

/// Faults of the live mappings (by key) and of recently revoked ranges.
#[derive(Default)]
pub(super) struct FaultLog {
    live: HashMap<String, Counter>,
    /// Newest last.
    gone: VecDeque<Gone>,
}

impl FaultLog {
    /// `gpa..gpa+size` is mapped again: faults there are no longer about
    /// an old mapping.
    pub fn mapped(&mut self, gpa: u64, size: u64) {
        self.gone
            .retain(|g| g.gpa + g.size <= gpa || gpa + size <= g.gpa);
    }

    /// Mapping `key` went away: remember its range (and its count).
    pub fn unmapped(&mut self, key: &str, gpa: u64, size: u64) {
        let faults = self.live.remove(key).map_or(0, |c| c.faults);
        self.gone.push_back(Gone {
            key: key.to_string(),
            gpa,
            size,
            counter: Counter {
                faults,
                reported: None,
            },
        });
        while self.gone.len() > GONE_REMEMBERED {
            self.gone.pop_front();
        }
    }

    /// A refused write to live mapping `key`.
    pub fn write_to_live(&mut self, key: &str, read_only: bool, gpa: u64) -> Option<ToManager> {
        let c = self.live.entry(key.to_string()).or_default();
        if c.faults == 0 {
            tracing::warn!(%key, gpa = format_args!("{gpa:#x}"), read_only, "guest write to a read-only grant refused");
        }
        c.count(key, gpa, true)
    }

    /// An access to an address no live mapping covers.
    pub fn unmapped_access(&mut self, gpa: u64, write: bool) -> Option<ToManager> {
        let Some(g) = self
            .gone
            .iter_mut()
            .rev()
            .find(|g| gpa >= g.gpa && gpa < g.gpa + g.size)
        else {
            tracing::debug!(
                gpa = format_args!("{gpa:#x}"),
                write,
                "access to an unmapped grant window address"
            );
            return None;
        };
        if g.counter.faults == 0 {
            tracing::warn!(key = %g.key, gpa = format_args!("{gpa:#x}"), write, "guest access to a revoked grant");
        }
        g.counter.count(&g.key, gpa, write)
    }
}
