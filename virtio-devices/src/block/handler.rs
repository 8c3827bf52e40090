//! The virtio-blk queue handler: the event loop side of [`super::Block`].
//!
//! A [`BlockHandler`] is registered with the VMM's `EventManager` when the
//! device is created. It sleeps in epoll until either the device sends it a
//! command (activate with the configured queue, or reset), or the guest
//! notifies the queue through its eventfd (an ioeventfd in KVM, no exit to
//! userspace). It then drains the queue with notification suppression
//! (EVENT_IDX when negotiated), hands each chain to the [`BlockCore`], puts
//! the completions on the used ring and raises the interrupt when the driver
//! asked for one. Before it sleeps again it polls the available ring for
//! [`POLL_WINDOW`] (notifications still off), so that a driver that keeps
//! the queue busy neither has to notify nor wakes the thread up on its own
//! CPU for every batch (docs/virtio.md, "Notification handling").

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use tracing::{debug, error, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

use super::core::{BlockCore, DiskBackend};
use crate::device::{Activation, InterruptKind, InterruptSignal};

/// epoll data of the device's command eventfd.
const WAKE_DATA: u32 = u32::MAX;
/// epoll data of the queue notification eventfd.
const QUEUE_DATA: u32 = 0;

/// Commands from the device (vCPU thread) to the handler (event loop).
pub(crate) enum HandlerCommand<M: GuestAddressSpace> {
    /// Start serving the queue.
    Activate {
        activation: Activation<M>,
        acked_features: u64,
    },
    /// Stop serving the queue; answer on `done` once guest memory is no
    /// longer touched.
    Reset { done: SyncSender<()> },
}

struct ActiveQueue<M: GuestAddressSpace> {
    mem: M,
    queue: Queue,
    notify: EventFd,
    interrupt: Arc<dyn InterruptSignal>,
}

/// What one pass over the queue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueRun {
    /// Chains taken from the available ring.
    pub chains: usize,
    /// Whether the guest was interrupted.
    pub interrupted: bool,
}

/// Event-loop side of a virtio-blk device; register it with an
/// `EventManager` (`Arc<Mutex<BlockHandler>>` as a `MutEventSubscriber`).
pub struct BlockHandler<M: GuestAddressSpace, D: DiskBackend> {
    id: String,
    core: BlockCore<D>,
    commands: Receiver<HandlerCommand<M>>,
    wake: EventFd,
    active: Option<ActiveQueue<M>>,
    guest_errors: u64,
}

impl<M: GuestAddressSpace, D: DiskBackend> BlockHandler<M, D> {
    pub(crate) fn new(
        id: String,
        core: BlockCore<D>,
        commands: Receiver<HandlerCommand<M>>,
        wake: EventFd,
    ) -> Self {
        BlockHandler {
            id,
            core,
            commands,
            wake,
            active: None,
            guest_errors: 0,
        }
    }

    /// The block core serving the requests.
    pub fn core(&self) -> &BlockCore<D> {
        &self.core
    }

    /// Whether the device is activated and the queue served.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Apply pending commands from the device. `ops` is `None` when driven
    /// without an event manager (tests); eventfds are then not registered.
    fn handle_commands(&mut self, mut ops: Option<&mut EventOps>) {
        loop {
            match self.commands.try_recv() {
                Ok(HandlerCommand::Activate {
                    activation,
                    acked_features,
                }) => {
                    self.deactivate(ops.as_deref_mut());
                    self.activate(activation, acked_features, ops.as_deref_mut());
                }
                Ok(HandlerCommand::Reset { done }) => {
                    self.deactivate(ops.as_deref_mut());
                    // The device may have given up waiting; nothing to do then.
                    let _ = done.send(());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    debug!(disk = %self.id, "virtio-blk: device gone, handler stops");
                    self.deactivate(ops.as_deref_mut());
                    if let Some(ops) = ops.as_deref_mut() {
                        let _ = ops.remove(Events::new(&self.wake, EventSet::IN));
                    }
                    break;
                }
            }
        }
    }

    fn activate(
        &mut self,
        activation: Activation<M>,
        acked_features: u64,
        ops: Option<&mut EventOps>,
    ) {
        let Activation {
            mem,
            queues,
            notify_evts,
            interrupt,
        } = activation;
        // Block::activate checked there is exactly one of each.
        let (Some(queue), Some(notify)) =
            (queues.into_iter().next(), notify_evts.into_iter().next())
        else {
            error!(disk = %self.id, "virtio-blk: activation without a queue");
            return;
        };
        if let Some(ops) = ops {
            if let Err(e) = ops.add(Events::with_data(&notify, QUEUE_DATA, EventSet::IN)) {
                error!(disk = %self.id, error = %e, "virtio-blk: cannot watch the queue eventfd; the device will not serve requests");
            }
        }
        self.core.set_acked_features(acked_features);
        debug!(disk = %self.id, features = acked_features, "virtio-blk: activated");
        self.active = Some(ActiveQueue {
            mem,
            queue,
            notify,
            interrupt,
        });
        // Requests queued before the eventfd was watched.
        self.process_queue();
    }

    fn deactivate(&mut self, ops: Option<&mut EventOps>) {
        if let Some(active) = self.active.take() {
            if let Some(ops) = ops {
                if let Err(e) = ops.remove(Events::new(&active.notify, EventSet::IN)) {
                    warn!(disk = %self.id, error = %e, "virtio-blk: cannot unwatch the queue eventfd");
                }
            }
            debug!(disk = %self.id, "virtio-blk: reset");
        }
    }

    /// Drain the queue: process every available chain, re-enable
    /// notifications and loop if the driver added more meanwhile, then
    /// interrupt the guest if the used ring's suppression rules ask for it.
    pub fn process_queue(&mut self) -> QueueRun {
        let BlockHandler {
            id,
            core,
            active,
            guest_errors,
            ..
        } = self;
        let Some(active) = active.as_mut() else {
            return QueueRun::default();
        };
        let mem = active.mem.memory();
        let mut run = QueueRun::default();
        let mut used = false;
        // Whether the last pass popped nothing although the available index
        // had moved (see below).
        let mut retried = false;
        loop {
            if let Err(e) = active.queue.disable_notification(&*mem) {
                guest_error(id, guest_errors, "cannot disable notifications", &e);
                break;
            }
            let mut progressed = false;
            while let Some(chain) = active.queue.pop_descriptor_chain(&*mem) {
                progressed = true;
                retried = false;
                run.chains += 1;
                let completion = core.process(chain);
                match active
                    .queue
                    .add_used(&*mem, completion.head_index, completion.used_len)
                {
                    Ok(()) => used = true,
                    Err(e) => guest_error(id, guest_errors, "cannot add to the used ring", &e),
                }
            }
            if used {
                // Before waiting for more: the driver may be waiting for it.
                used = false;
                signal_used(active, &*mem, id, guest_errors, &mut run);
            }
            // Keep notifications off for a short while: a driver that is
            // still submitting adds chains without notifying, and the thread
            // does not go to sleep between its requests.
            if progressed && poll_avail(&active.queue, &*mem) {
                continue;
            }
            match active.queue.enable_notification(&*mem) {
                Ok(true) if progressed => continue,
                // The driver published a chain after the pop above found
                // none (and, notifications being off, did not notify):
                // take it now, or it would wait for a notification that
                // never comes.
                Ok(true) if !retried => {
                    retried = true;
                    continue;
                }
                Ok(true) => {
                    // Still nothing to pop although the available index
                    // moved: it is ahead by more than the queue size. Do not
                    // spin on it.
                    guest_error(
                        id,
                        guest_errors,
                        "available ring index is invalid",
                        &"the driver published more chains than the queue holds",
                    );
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    guest_error(id, guest_errors, "cannot enable notifications", &e);
                    break;
                }
            }
        }
        run
    }

    /// Handle a wake-up of the command eventfd without an event manager
    /// (tests and callers that drive the handler themselves).
    pub fn handle_commands_now(&mut self) {
        let _ = self.wake.read();
        self.handle_commands(None);
    }
}

/// Interrupt the guest for new used entries if the used ring's suppression
/// rules (`used_event` with EVENT_IDX) ask for it.
fn signal_used<M: GuestAddressSpace>(
    active: &mut ActiveQueue<M>,
    mem: &M::M,
    id: &str,
    guest_errors: &mut u64,
    run: &mut QueueRun,
) {
    let notify = active.queue.needs_notification(mem).unwrap_or_else(|e| {
        guest_error(id, guest_errors, "cannot read used_event", &e);
        true
    });
    if notify {
        run.interrupted = true;
        if let Err(e) = active.interrupt.trigger(InterruptKind::UsedRing) {
            error!(disk = %id, error = %e, "virtio-blk: cannot interrupt the guest");
        }
    }
}

/// How long the handler keeps polling the available ring after it served
/// chains, before it re-enables notifications and sleeps.
pub const POLL_WINDOW: Duration = Duration::from_micros(50);

/// Spin for at most [`POLL_WINDOW`] until the driver publishes another
/// chain; true if it did.
fn poll_avail<Mem: GuestMemory>(queue: &Queue, mem: &Mem) -> bool {
    let deadline = Instant::now() + POLL_WINDOW;
    loop {
        match queue.avail_idx(mem, Ordering::Acquire) {
            Ok(idx) if idx.0 != queue.next_avail() => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::hint::spin_loop();
    }
}

/// Log a queue-level failure caused by the guest, rate limited.
fn guest_error(id: &str, count: &mut u64, what: &str, error: &dyn std::fmt::Display) {
    *count += 1;
    if *count <= 16 || count.is_power_of_two() {
        warn!(disk = %id, failures = *count, error = %error, "virtio-blk: {what}");
    } else {
        debug!(disk = %id, error = %error, "virtio-blk: {what}");
    }
}

impl<M: GuestAddressSpace, D: DiskBackend> MutEventSubscriber for BlockHandler<M, D> {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.wake, WAKE_DATA, EventSet::IN)) {
            error!(disk = %self.id, error = %e, "virtio-blk: cannot watch the device command eventfd");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events
            .event_set()
            .intersects(EventSet::ERROR | EventSet::HANG_UP)
        {
            warn!(disk = %self.id, data = events.data(), "virtio-blk: error on a watched eventfd");
        }
        match events.data() {
            WAKE_DATA => {
                let _ = self.wake.read();
                self.handle_commands(Some(ops));
            }
            QUEUE_DATA => {
                if let Some(active) = &self.active {
                    let _ = active.notify.read();
                }
                self.process_queue();
            }
            other => warn!(disk = %self.id, data = other, "virtio-blk: unexpected event"),
        }
    }
}
