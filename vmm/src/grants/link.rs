//! The VMM's link to the partition manager for what grants send on their
//! own: fault reports and the guest's hcalls. The control channel installs
//! the [`Sender`] once it is connected and hands answers back through
//! [`ManagerLink::hcall_done`]. An hcall is sent ([`ManagerLink::start`])
//! and waited for ([`ManagerLink::wait`]) in two steps, so the hcall device
//! can let go of its lock in between.

use crate::devices::bus::lock;
use parvm_protocol::grant::status;
use parvm_protocol::{Hcall, HcallOutcome, ToManager};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long an hcall may wait for the manager.
const HCALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends to the partition manager; false if there is none.
pub type Sender = Box<dyn Fn(ToManager) -> bool + Send + Sync>;

/// The VMM's link to the manager for fault reports and hcalls.
#[derive(Default)]
pub struct ManagerLink {
    sender: Mutex<Option<Sender>>,
    results: Mutex<HashMap<u64, HcallOutcome>>,
    arrived: Condvar,
    seq: AtomicU64,
}

impl ManagerLink {
    pub fn set_sender(&self, s: Sender) {
        *lock(&self.sender) = Some(s);
    }

    pub(super) fn send(&self, msg: ToManager) -> bool {
        lock(&self.sender).as_ref().is_some_and(|s| s(msg))
    }

    /// An hcall's answer arrived.
    pub fn hcall_done(&self, seq: u64, outcome: HcallOutcome) {
        lock(&self.results).insert(seq, outcome);
        self.arrived.notify_all();
    }

    /// Sends an hcall; its answer is collected with [`ManagerLink::wait`].
    pub fn start(&self, call: Hcall) -> PendingCall {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let sent = self.send(ToManager::Hcall { seq, call });
        PendingCall {
            seq: sent.then_some(seq),
        }
    }

    /// Waits for the answer to `pending` (at most [`HCALL_TIMEOUT`]).
    pub fn wait(&self, pending: PendingCall) -> HcallOutcome {
        let fail = |status| HcallOutcome {
            status,
            result0: 0,
            result1: 0,
            cookie: None,
        };
        let Some(seq) = pending.seq else {
            return fail(status::NO_MANAGER);
        };
        let deadline = Instant::now() + HCALL_TIMEOUT;
        let mut results = lock(&self.results);
        loop {
            if let Some(o) = results.remove(&seq) {
                return o;
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(seq, "hcall: no answer from the partition manager");
                return fail(status::NO_MANAGER);
            }
            results = match self.arrived.wait_timeout(results, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// An hcall on its way to the manager (or that found no manager).
#[must_use = "an hcall's answer must be waited for"]
pub struct PendingCall {
    seq: Option<u64>,
}
