//! The contract between a virtio transport and a virtio device model.
//!
//! A transport (here only [`crate::transport::mmio::MmioTransport`]) owns the
//! guest-visible registers: feature negotiation, the status state machine and
//! the queue configuration. It calls into a [`VirtioDevice`] for what only the
//! device knows (its type, features, configuration space) and hands it the
//! configured queues in an [`Activation`] once the driver sets DRIVER_OK.

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::EventFd;

/// Why the device raises an interrupt; selects the bit the transport sets in
/// its interrupt status register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptKind {
    /// Buffers were added to a used ring (ISR bit 0, `VIRTIO_MMIO_INT_VRING`).
    UsedRing,
    /// The device configuration space changed (ISR bit 1,
    /// `VIRTIO_MMIO_INT_CONFIG`).
    Config,
}

impl InterruptKind {
    /// The bit of the virtio-mmio InterruptStatus register for this kind.
    pub fn isr_bit(self) -> u32 {
        match self {
            InterruptKind::UsedRing => virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING,
            InterruptKind::Config => virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG,
        }
    }
}

/// Raises the device's interrupt in the guest.
///
/// The VMM implements this with an irqfd wired to an IOAPIC pin; the
/// transport wraps it to keep the interrupt status register up to date before
/// the guest sees the interrupt. Called from the device's event loop thread.
pub trait InterruptSignal: Send + Sync {
    /// Signal one interrupt of `kind` to the guest.
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()>;
}

/// Everything a device needs to start serving its queues, handed over by the
/// transport when the driver sets DRIVER_OK.
pub struct Activation<M: GuestAddressSpace> {
    /// Guest memory the queues and buffers live in.
    pub mem: M,
    /// One queue per entry of [`VirtioDevice::queue_max_sizes`], as the driver
    /// configured them (check `ready()` before use). EVENT_IDX is already set
    /// on them according to the negotiated features.
    pub queues: Vec<Queue>,
    /// Per-queue notification eventfds (same index as `queues`): written by
    /// KVM through an ioeventfd on QueueNotify, or by the transport when the
    /// guest's write reaches userspace.
    pub notify_evts: Vec<EventFd>,
    /// Interrupt towards the guest; sets the transport's interrupt status.
    pub interrupt: Arc<dyn InterruptSignal>,
}

/// Errors of [`VirtioDevice::activate`].
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The device was activated twice without a reset in between.
    #[error("device is already active")]
    AlreadyActive,
    /// The driver did not mark a queue the device needs as ready.
    #[error("queue {0} was not set ready by the driver")]
    QueueNotReady(usize),
    /// The transport handed over fewer queues or eventfds than the device has.
    #[error("expected {expected} queues and notify eventfds, got {queues} and {evts}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues handed over.
        queues: usize,
        /// Eventfds handed over.
        evts: usize,
    },
    /// The device's event loop side could not be reached.
    #[error("device event handler is gone: {0}")]
    HandlerGone(String),
    /// Waking the device's event loop side failed.
    #[error("cannot signal the device event handler: {0}")]
    Signal(#[source] std::io::Error),
}

/// A virtio device model, independent of the transport that exposes it.
pub trait VirtioDevice<M: GuestAddressSpace>: Send {
    /// The virtio device id (`VIRTIO_ID_BLOCK` = 2, ...).
    fn device_type(&self) -> u32;

    /// The maximum size of each of the device's queues; its length is the
    /// number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// The features the device offers (device-specific bits and ring bits
    /// such as `VIRTIO_RING_F_EVENT_IDX`); the transport adds
    /// `VIRTIO_F_VERSION_1`.
    fn features(&self) -> u64;

    /// The features the driver accepted; only called with a subset of
    /// [`VirtioDevice::features`] (plus `VIRTIO_F_VERSION_1`).
    fn ack_features(&mut self, features: u64);

    /// Read the device configuration space at `offset` (relative to its
    /// start). Bytes past the end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Write the device configuration space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Start serving the queues.
    fn activate(&mut self, activation: Activation<M>) -> Result<(), ActivateError>;

    /// Stop serving the queues and forget them (device reset by the driver).
    /// When this returns the device no longer touches guest memory.
    fn reset(&mut self);
}
