//! The pause gate: a barrier the vCPU threads pass before every KVM_RUN.
//! The control channel pauses and resumes the partition with it
//! (`parctl pause`), an on-demand dump holds the vCPUs there while it
//! writes their memory, and it counts started vCPU threads (how the
//! control channel knows the partition is ready).

use crate::devices::bus::lock;
use crate::devices::exit::ExitSignal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// A barrier the vCPU threads pass before every KVM_RUN: `pause` holds them
/// there (kicking them out of KVM_RUN with the VMM's kick signal) and returns
/// once all are held; `resume` lets them go. It also counts started vCPU
/// threads, which is how the control channel knows the partition is ready.
pub struct PauseGate {
    requested: AtomicBool,
    inner: Mutex<GateInner>,
    changed: Condvar,
}

#[derive(Default)]
struct GateInner {
    /// vCPU threads between `enter` and `leave`.
    running: Vec<libc::pthread_t>,
    /// How many of them are held at the gate.
    held: usize,
    /// How many ever entered.
    started: usize,
}

impl Default for PauseGate {
    fn default() -> Self {
        Self::new()
    }
}

impl PauseGate {
    pub fn new() -> Self {
        PauseGate {
            requested: AtomicBool::new(false),
            inner: Mutex::new(GateInner::default()),
            changed: Condvar::new(),
        }
    }

    /// A vCPU thread starts running.
    pub fn enter(&self) {
        let mut g = lock(&self.inner);
        // SAFETY: pthread_self has no preconditions.
        g.running.push(unsafe { libc::pthread_self() });
        g.started += 1;
        self.changed.notify_all();
    }

    /// A vCPU thread is about to end; after this it is never signalled.
    pub fn leave(&self) {
        let mut g = lock(&self.inner);
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        // SAFETY: pthread_equal only compares two thread ids.
        g.running
            .retain(|&t| unsafe { libc::pthread_equal(t, me) } == 0);
        self.changed.notify_all();
    }

    /// Called by a vCPU thread before KVM_RUN: holds it while a pause is
    /// requested and the partition is not exiting. `on_hold` runs before
    /// the thread counts as held (it saves the registers for a dump), so a
    /// [`PauseGate::pause`] that returned true has seen it run on every vCPU.
    pub fn checkpoint(&self, exit: &ExitSignal, on_hold: impl FnOnce()) {
        if !self.requested.load(Ordering::SeqCst) {
            return;
        }
        on_hold();
        let mut g = lock(&self.inner);
        g.held += 1;
        self.changed.notify_all();
        while self.requested.load(Ordering::SeqCst) && !exit.requested() {
            g = match self.changed.wait_timeout(g, Duration::from_millis(50)) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        g.held -= 1;
    }

    /// Holds every vCPU; true once all are held, false on exit or timeout.
    pub fn pause(&self, exit: &ExitSignal, timeout: Duration) -> bool {
        self.requested.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.inner);
        loop {
            if g.held >= g.running.len() {
                return true;
            }
            if exit.requested() || Instant::now() >= deadline {
                return false;
            }
            for &t in &g.running {
                // SAFETY: `t` is a live vCPU thread: threads remove
                // themselves (under this lock, which we hold) before ending,
                // and Vmm::run installed a handler for the kick signal before
                // starting them.
                unsafe { libc::pthread_kill(t, crate::kick_signal()) };
            }
            g = match self.changed.wait_timeout(g, Duration::from_millis(2)) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Lets the held vCPUs run again.
    pub fn resume(&self) {
        self.requested.store(false, Ordering::SeqCst);
        let _g = lock(&self.inner);
        self.changed.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Waits until `n` vCPU threads have started; false if the partition
    /// exits first.
    pub fn wait_started(&self, n: usize, exit: &ExitSignal) -> bool {
        let mut g = lock(&self.inner);
        while g.started < n {
            if exit.requested() {
                return false;
            }
            g = match self.changed.wait_timeout(g, Duration::from_millis(50)) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::devices::exit::ExitReason;
    use std::sync::Arc;

    #[test]
    fn gate_holds_threads_until_resumed() {
        crate::install_kick_handler().unwrap();
        let gate = Arc::new(PauseGate::new());
        let exit = Arc::new(ExitSignal::new().unwrap());
        let passes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let t = {
            let (gate, exit, passes) = (gate.clone(), exit.clone(), passes.clone());
            std::thread::spawn(move || {
                gate.enter();
                while !exit.requested() {
                    gate.checkpoint(&exit, || {});
                    passes.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(1));
                }
                gate.leave();
            })
        };
        assert!(gate.wait_started(1, &exit));
        assert!(gate.pause(&exit, Duration::from_secs(5)));
        let held = passes.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(passes.load(Ordering::SeqCst), held, "a paused thread ran");
        gate.resume();
        std::thread::sleep(Duration::from_millis(30));
        assert!(passes.load(Ordering::SeqCst) > held);
        // An exit request releases a held thread.
        assert!(gate.pause(&exit, Duration::from_secs(5)));
        exit.request(ExitReason::PowerOff);
        t.join().unwrap();
    }
}
