//! How the VMM is asked to stop: by the guest (reset, power-off, crash), by a
//! signal, or by an error. The first request wins; the main thread waits on
//! the eventfd and tears everything down.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;
use vmm_sys_util::eventfd::EventFd;

/// Why the partition stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset itself (i8042 or ACPI reset): the VMM exits 0.
    Reset,
    /// The guest powered off through ACPI: exit 0.
    PowerOff,
    /// SIGTERM or SIGINT: orderly shutdown, exit 0.
    Signal(i32),
    /// Triple fault, KVM internal error, failed entry, a guest panic, the
    /// watchdog: exit 2 with a one-line reason and the registers.
    Crash {
        kind: CrashKind,
        reason: String,
        registers: String,
    },
}

/// What kind of failure a crash is (the dump records it, docs/dump.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashKind {
    /// KVM_EXIT_SHUTDOWN: the guest triple-faulted.
    TripleFault,
    /// KVM could not run the guest (internal error, failed entry, an exit
    /// the VMM does not handle), or the VMM had to stop it.
    InternalError,
    /// The guest reported a panic through the pvpanic device.
    Pvpanic,
    /// No sign of life for the watchdog's period.
    Watchdog,
}

impl CrashKind {
    /// The dump table's name for it.
    pub fn trigger(self) -> parvm_protocol::dump::DumpTrigger {
        use parvm_protocol::dump::DumpTrigger;
        match self {
            CrashKind::TripleFault => DumpTrigger::TripleFault,
            CrashKind::InternalError => DumpTrigger::InternalError,
            CrashKind::Pvpanic => DumpTrigger::Pvpanic,
            CrashKind::Watchdog => DumpTrigger::Watchdog,
        }
    }
}

impl ExitReason {
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Crash { .. } => 2,
            _ => 0,
        }
    }
}

pub struct ExitSignal {
    evt: EventFd,
    requested: AtomicBool,
    /// Set by a signal handler (which may not take the mutex below).
    signal: AtomicI32,
    reason: Mutex<Option<ExitReason>>,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            requested: AtomicBool::new(false),
            signal: AtomicI32::new(0),
            reason: Mutex::new(None),
        })
    }

    /// Records `reason` unless an earlier one exists, and wakes the waiter.
    pub fn request(&self, reason: ExitReason) {
        {
            let mut r = super::bus::lock(&self.reason);
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.requested.store(true, Ordering::SeqCst);
        // Writing an eventfd only fails on counter overflow; the flag above
        // is what the vCPUs check, so a failed wake-up only delays.
        let _ = self.evt.write(1);
    }

    /// The request of a signal handler: only atomics and write(2), both
    /// async-signal-safe. A reason recorded earlier still wins.
    pub fn request_from_signal_handler(&self, sig: i32) {
        self.signal.store(sig, Ordering::SeqCst);
        self.requested.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: write(2) on our eventfd from a local u64 of the size an
        // eventfd expects; async-signal-safe.
        unsafe { libc::write(self.evt.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    pub fn reason(&self) -> Option<ExitReason> {
        super::bus::lock(&self.reason).clone().or_else(|| {
            let sig = self.signal.load(Ordering::SeqCst);
            (sig != 0).then_some(ExitReason::Signal(sig))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = ExitSignal::new().unwrap();
        assert!(!s.requested());
        s.request(ExitReason::Reset);
        s.request(ExitReason::PowerOff);
        assert!(s.requested());
        assert_eq!(s.reason(), Some(ExitReason::Reset));
        assert_eq!(s.eventfd().read().unwrap(), 2);
    }

    #[test]
    fn signal_requests_are_seen_and_do_not_override() {
        let s = ExitSignal::new().unwrap();
        s.request_from_signal_handler(libc::SIGTERM);
        assert!(s.requested());
        assert_eq!(s.reason(), Some(ExitReason::Signal(libc::SIGTERM)));
        assert_eq!(s.eventfd().read().unwrap(), 1);
        let t = ExitSignal::new().unwrap();
        t.request(ExitReason::PowerOff);
        t.request_from_signal_handler(libc::SIGINT);
        assert_eq!(t.reason(), Some(ExitReason::PowerOff));
    }
}
