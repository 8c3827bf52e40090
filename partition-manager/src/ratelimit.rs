//! Bounded logging: what a flood of events (connections, failed cookie
//! guesses) may write to the manager's log.
//!
//! - [`LogLimiter`]: at most a burst of events per window, counting the
//!   rest, so the next line logged can say how many were left out.
//! - [`FailedGuesses`]: failed cookie guesses (`unknown_cookie` and
//!   `wrong_partition` answers to accept, regrant, revoke and copy) counted
//!   per caller (a partition's name for its guest's hcalls, `operator` for
//!   `parctl`) and logged through a [`LogLimiter`] of each caller's own, so
//!   one guessing guest neither floods the log nor hides another's guesses.

use parvm_protocol::ErrorKind;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The caller of a `parctl` request (operators act for any partition).
pub const OPERATOR: &str = "operator";
/// Failed-guess lines logged per caller and [`GUESS_WINDOW`] at most.
pub const GUESS_BURST: u32 = 3;
/// The window of [`GUESS_BURST`].
pub const GUESS_WINDOW: Duration = Duration::from_secs(1);

/// A window's events: when it began, how many were let through in it, how
/// many were suppressed since the last one let through.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    start: Option<Instant>,
    count: u32,
    suppressed: u64,
}

impl Window {
    fn allow(&mut self, burst: u32, period: Duration, now: Instant) -> Option<u64> {
        if self.start.is_none_or(|w| now.duration_since(w) >= period) {
            self.start = Some(now);
            self.count = 0;
        }
        if self.count < burst {
            self.count += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Lets through at most `burst` events per `period` and counts the rest,
/// so a flood of events cannot flood the log.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    period: Duration,
    state: Mutex<Window>,
}

impl LogLimiter {
    pub const fn new(burst: u32, period: Duration) -> Self {
        LogLimiter {
            burst,
            period,
            state: Mutex::new(Window {
                start: None,
                count: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when this event may be logged, `n` events having been
    /// suppressed since the last one logged; `None` to stay quiet.
    pub fn allow(&self) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.allow(self.burst, self.period, Instant::now())
    }
}

/// Whether an answer of this kind is a failed cookie guess.
pub fn is_failed_guess(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::UnknownCookie | ErrorKind::WrongPartition)
}

#[derive(Debug, Default)]
struct Caller {
    failed: u64,
    window: Window,
}

/// Failed cookie guesses per caller (see the module documentation).
#[derive(Debug, Default)]
pub struct FailedGuesses {
    callers: Mutex<HashMap<String, Caller>>,
}

impl FailedGuesses {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a failed guess of `caller`; `Some((total, suppressed))` when
    /// it may be logged (`suppressed`: this caller's guesses left out of
    /// the log since its last line), `None` to stay quiet.
    pub fn record(&self, caller: &str) -> Option<(u64, u64)> {
        self.record_at(caller, Instant::now())
    }

    fn record_at(&self, caller: &str, now: Instant) -> Option<(u64, u64)> {
        let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        // Callers are the operator and partitions with a control channel:
        // as many as there are partitions.
        let c = callers.entry(caller.to_string()).or_default();
        c.failed += 1;
        let suppressed = c.window.allow(GUESS_BURST, GUESS_WINDOW, now)?;
        Some((c.failed, suppressed))
    }

    /// The failed guesses of `caller` so far.
    pub fn count(&self, caller: &str) -> u64 {
        let callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        callers.get(caller).map_or(0, |c| c.failed)
    }

    /// Counts (and, within the bound, logs) `kind` as a failed guess of
    /// `caller` in operation `op` if it is one.
    pub fn note(&self, caller: &str, op: &str, kind: ErrorKind, message: &dyn std::fmt::Display) {
        if !is_failed_guess(kind) {
            return;
        }
        if let Some((failed_guesses, suppressed)) = self.record(caller) {
            tracing::warn!(
                caller = %caller,
                op = %op,
                failed_guesses,
                suppressed,
                error = %message,
                "failed grant cookie guess"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_limiter_lets_a_burst_through_and_counts_the_rest() {
        let l = LogLimiter::new(2, Duration::from_secs(3600));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        let mut w = Window::default();
        let t0 = Instant::now();
        assert_eq!(w.allow(1, Duration::from_secs(1), t0), Some(0));
        assert_eq!(w.allow(1, Duration::from_secs(1), t0), None);
        assert_eq!(w.allow(1, Duration::from_secs(1), t0), None);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(w.allow(1, Duration::from_secs(1), t1), Some(2));
    }

    #[test]
    fn guesses_are_counted_per_caller_and_logged_at_a_bounded_rate() {
        let g = FailedGuesses::new();
        let t0 = Instant::now();
        let logged = (0..1000)
            .filter(|_| g.record_at("web", t0).is_some())
            .count();
        assert_eq!(logged, GUESS_BURST as usize);
        assert_eq!(g.count("web"), 1000);
        // Another caller has a window of its own.
        assert_eq!(g.record_at(OPERATOR, t0), Some((1, 0)));
        let later = t0 + GUESS_WINDOW;
        assert_eq!(
            g.record_at("web", later),
            Some((1001, 1000 - u64::from(GUESS_BURST)))
        );
        assert!(is_failed_guess(ErrorKind::UnknownCookie));
        assert!(is_failed_guess(ErrorKind::WrongPartition));
        assert!(!is_failed_guess(ErrorKind::NotFound));
    }
}
