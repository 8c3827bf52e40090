//! virtio-mmio transport, virtio 1.x "modern" register layout (version 2).
//!
//! The VMM places one [`MmioTransport`] per device at an MMIO range of
//! [`MMIO_REGION_SIZE`] bytes and forwards the guest's accesses to
//! [`MmioTransport::read`] / [`MmioTransport::write`] with the offset inside
//! that range. Queue notifications normally never reach the transport: the
//! VMM registers each of [`MmioTransport::queue_notify_evts`] as a KVM
//! ioeventfd on `base + QUEUE_NOTIFY_OFFSET` with datamatch = queue index (a
//! 4-byte match). A notification that does reach [`MmioTransport::write`]
//! (no ioeventfd registered) is forwarded to the same eventfd.
//!
//! Misbehaving drivers (wrong access size, unknown register, writes in the
//! wrong state) are ignored with a warning; nothing here panics.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tracing::{debug, warn};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{Activation, InterruptKind, InterruptSignal, VirtioDevice};

/// "virt" in little endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern (virtio 1.x) virtio-mmio layout.
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the guest: "PARV" in little endian.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"PARV");
/// Size of the MMIO window of one device (registers + configuration space).
pub const MMIO_REGION_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register, where the VMM registers ioeventfds.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
/// Offset of the device configuration space.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// The kernel command line fragment that makes Linux probe a virtio-mmio
/// device at `base` with interrupt `irq` (needs CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES):
/// `virtio_mmio.device=4K@0xd0000000:5`.
pub fn kernel_cmdline_device(base: u64, irq: u32) -> String {
    format!(
        "virtio_mmio.device={}K@{:#x}:{}",
        MMIO_REGION_SIZE / 1024,
        base,
        irq
    )
}

/// Register offsets of the virtio-mmio version 2 layout.
mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// Errors of [`MmioTransport::new`].
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// A queue notification eventfd could not be created.
    #[error("cannot create the notify eventfd of queue {queue}: {source}")]
    NotifyEventFd {
        /// Queue index.
        queue: usize,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The device reported a queue size virtio-queue refuses (0, not a power
    /// of two, or above 32768).
    #[error("device queue {queue} has an invalid maximum size {size}")]
    QueueSize {
        /// Queue index.
        queue: usize,
        /// The size the device reported.
        size: u16,
    },
    /// The device reported more queues than the 32-bit QueueSel can address.
    #[error("device has too many queues ({0})")]
    TooManyQueues(usize),
}

/// The interrupt status register shared between the transport (guest reads
/// and acks it) and the device's event loop (which sets bits and signals).
pub struct MmioInterrupt {
    isr: AtomicU32,
    signal: Arc<dyn InterruptSignal>,
}

impl MmioInterrupt {
    fn new(signal: Arc<dyn InterruptSignal>) -> Self {
        MmioInterrupt {
            isr: AtomicU32::new(0),
            signal,
        }
    }

    /// Current value of the InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.isr.load(Ordering::SeqCst)
    }

    fn ack(&self, bits: u32) {
        self.isr.fetch_and(!bits, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.isr.store(0, Ordering::SeqCst);
    }
}

impl InterruptSignal for MmioInterrupt {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        // The bit must be visible before the guest takes the interrupt.
        self.isr.fetch_or(kind.isr_bit(), Ordering::SeqCst);
        self.signal.trigger(kind)
    }
}

/// A virtio device exposed to the guest through virtio-mmio registers.
pub struct MmioTransport<M: GuestAddressSpace> {
    device: Box<dyn VirtioDevice<M>>,
    mem: M,
    interrupt: Arc<MmioInterrupt>,
    queues: Vec<Queue>,
    notify_evts: Vec<EventFd>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    shm_sel: u32,
    config_generation: u32,
    active: bool,
}

impl<M: GuestAddressSpace> MmioTransport<M> {
    /// Wrap `device`; `interrupt` raises the device's interrupt line (the
    /// VMM's irqfd). Creates one notify eventfd per device queue.
    pub fn new(
        device: Box<dyn VirtioDevice<M>>,
        mem: M,
        interrupt: Arc<dyn InterruptSignal>,
    ) -> Result<Self, MmioError> {
        let sizes = device.queue_max_sizes().to_vec();
        if u32::try_from(sizes.len()).is_err() {
            return Err(MmioError::TooManyQueues(sizes.len()));
        }
        let mut queues = Vec::with_capacity(sizes.len());
        let mut notify_evts = Vec::with_capacity(sizes.len());
        for (queue, &size) in sizes.iter().enumerate() {
            queues.push(Queue::new(size).map_err(|_| MmioError::QueueSize { queue, size })?);
            notify_evts.push(
                EventFd::new(EFD_NONBLOCK)
                    .map_err(|source| MmioError::NotifyEventFd { queue, source })?,
            );
        }
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(MmioInterrupt::new(interrupt)),
            queues,
            notify_evts,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            shm_sel: 0,
            config_generation: 0,
            active: false,
        })
    }

    /// Number of queues of the device.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Per-queue notification eventfds, index = queue index. The VMM
    /// registers `queue_notify_evts()[i]` as an ioeventfd on
    /// `base + QUEUE_NOTIFY_OFFSET` with a 4-byte datamatch of `i`.
    pub fn queue_notify_evts(&self) -> &[EventFd] {
        &self.notify_evts
    }

    /// The virtio device id of the wrapped device.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// The interrupt status register, shared with the device.
    pub fn interrupt(&self) -> &Arc<MmioInterrupt> {
        &self.interrupt
    }

    /// The device status register as the driver sees it.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device is serving its queues (DRIVER_OK accepted).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Tell the driver the device configuration changed: bump the
    /// configuration generation and raise a configuration interrupt.
    pub fn notify_config_change(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if let Err(e) = self.interrupt.trigger(InterruptKind::Config) {
            warn!(error = %e, "virtio-mmio: cannot signal a configuration change");
        }
    }

    /// Features offered to the driver: the device's plus VIRTIO_F_VERSION_1.
    fn offered_features(&self) -> u64 {
        self.device.features() | (1u64 << VIRTIO_F_VERSION_1)
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Handle a guest read of `data.len()` bytes at `offset` in the device's
    /// MMIO window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        data.fill(0);
        if data.len() != 4 {
            warn!(
                offset,
                len = data.len(),
                "virtio-mmio: register read with a size other than 4 ignored"
            );
            return;
        }
        let value = match offset {
            reg::MAGIC_VALUE => MMIO_MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_NUM => self.selected_queue().map_or(0, |q| u32::from(q.size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::QUEUE_DESC_LOW => self.selected_queue().map_or(0, |q| q.desc_table() as u32),
            reg::QUEUE_DESC_HIGH => self
                .selected_queue()
                .map_or(0, |q| (q.desc_table() >> 32) as u32),
            reg::QUEUE_DRIVER_LOW => self.selected_queue().map_or(0, |q| q.avail_ring() as u32),
            reg::QUEUE_DRIVER_HIGH => self
                .selected_queue()
                .map_or(0, |q| (q.avail_ring() >> 32) as u32),
            reg::QUEUE_DEVICE_LOW => self.selected_queue().map_or(0, |q| q.used_ring() as u32),
            reg::QUEUE_DEVICE_HIGH => self
                .selected_queue()
                .map_or(0, |q| (q.used_ring() >> 32) as u32),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            // No shared memory regions: a length of all ones means "absent".
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                warn!(
                    offset,
                    "virtio-mmio: read of an unknown or write-only register"
                );
                0
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// Handle a guest write of `data` at `offset` in the device's MMIO window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            if self.status & VIRTIO_CONFIG_S_DRIVER == 0 {
                warn!(offset, "virtio-mmio: config write before DRIVER ignored");
                return;
            }
            self.device.write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        let value = match <[u8; 4]>::try_from(data) {
            Ok(bytes) => u32::from_le_bytes(bytes),
            Err(_) => {
                warn!(
                    offset,
                    len = data.len(),
                    "virtio-mmio: register write with a size other than 4 ignored"
                );
                return;
            }
        };
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_register(offset, value),
            reg::QUEUE_NOTIFY => self.queue_notify(value),
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.write_status(value),
            reg::SHM_SEL => self.shm_sel = value,
            _ => warn!(
                offset,
                value, "virtio-mmio: write to an unknown or read-only register ignored"
            ),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & VIRTIO_CONFIG_S_DRIVER == 0
            || self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
        {
            warn!(
                status = self.status,
                "virtio-mmio: DriverFeatures written outside the DRIVER state, ignored"
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            sel => {
                if value != 0 {
                    warn!(
                        sel,
                        value, "virtio-mmio: driver features beyond bit 63 ignored"
                    );
                }
            }
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0
            || self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
        {
            warn!(
                offset,
                status = self.status,
                "virtio-mmio: queue register written outside FEATURES_OK..DRIVER_OK, ignored"
            );
            return;
        }
        let queue_sel = self.queue_sel;
        let Some(queue) = self.selected_queue() else {
            warn!(
                queue_sel,
                "virtio-mmio: queue register written for a queue that does not exist"
            );
            return;
        };
        if queue.ready() && offset != reg::QUEUE_READY {
            warn!(
                queue_sel,
                offset, "virtio-mmio: queue register written while the queue is ready, ignored"
            );
            return;
        }
        let low = |addr: u64| GuestAddress((addr & !0xffff_ffff) | u64::from(value));
        let high = |addr: u64| GuestAddress((addr & 0xffff_ffff) | (u64::from(value) << 32));
        let result = match offset {
            reg::QUEUE_NUM => match u16::try_from(value) {
                Ok(size) => queue.try_set_size(size),
                Err(_) => Err(virtio_queue::Error::InvalidSize),
            },
            reg::QUEUE_READY => {
                queue.set_ready(value == 1);
                Ok(())
            }
            reg::QUEUE_DESC_LOW => queue.try_set_desc_table_address(low(queue.desc_table())),
            reg::QUEUE_DESC_HIGH => queue.try_set_desc_table_address(high(queue.desc_table())),
            reg::QUEUE_DRIVER_LOW => queue.try_set_avail_ring_address(low(queue.avail_ring())),
            reg::QUEUE_DRIVER_HIGH => queue.try_set_avail_ring_address(high(queue.avail_ring())),
            reg::QUEUE_DEVICE_LOW => queue.try_set_used_ring_address(low(queue.used_ring())),
            reg::QUEUE_DEVICE_HIGH => queue.try_set_used_ring_address(high(queue.used_ring())),
            _ => Ok(()),
        };
        if let Err(e) = result {
            warn!(queue_sel, offset, value, error = %e, "virtio-mmio: invalid queue setting ignored");
        }
    }

    fn queue_notify(&mut self, value: u32) {
        if !self.active {
            warn!(
                queue = value,
                "virtio-mmio: queue notified before DRIVER_OK, ignored"
            );
            return;
        }
        // Only the low 16 bits carry the queue index (VIRTIO_F_NOTIFICATION_DATA is not offered).
        match self.notify_evts.get((value & 0xffff) as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    warn!(queue = value, error = %e, "virtio-mmio: cannot forward a queue notification");
                }
            }
            None => warn!(
                queue = value,
                "virtio-mmio: notification for a queue that does not exist"
            ),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value & old != old {
            warn!(
                old,
                new = value,
                "virtio-mmio: status bits may only be cleared by a reset, write ignored"
            );
            return;
        }
        let added = value & !old;
        if added & VIRTIO_CONFIG_S_ACKNOWLEDGE != 0 {
            self.status |= VIRTIO_CONFIG_S_ACKNOWLEDGE;
        }
        if added & VIRTIO_CONFIG_S_DRIVER != 0 {
            if self.status & VIRTIO_CONFIG_S_ACKNOWLEDGE != 0 {
                self.status |= VIRTIO_CONFIG_S_DRIVER;
            } else {
                warn!(
                    status = self.status,
                    "virtio-mmio: DRIVER set before ACKNOWLEDGE, ignored"
                );
            }
        }
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            self.features_ok();
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.driver_ok();
        }
        if added & VIRTIO_CONFIG_S_FAILED != 0 {
            warn!(
                device_type = self.device.device_type(),
                "virtio-mmio: the driver gave up on the device (FAILED)"
            );
            self.status |= VIRTIO_CONFIG_S_FAILED;
        }
        let unknown = added
            & !(VIRTIO_CONFIG_S_ACKNOWLEDGE
                | VIRTIO_CONFIG_S_DRIVER
                | VIRTIO_CONFIG_S_FEATURES_OK
                | VIRTIO_CONFIG_S_DRIVER_OK
                | VIRTIO_CONFIG_S_FAILED);
        if unknown != 0 {
            warn!(bits = unknown, "virtio-mmio: unknown status bits ignored");
        }
    }

    /// FEATURES_OK: accept the driver's features if they are a subset of the
    /// offered ones and include VIRTIO_F_VERSION_1; otherwise leave the bit
    /// clear so the driver sees the refusal when it reads the status back.
    fn features_ok(&mut self) {
        if self.status & VIRTIO_CONFIG_S_DRIVER == 0 {
            warn!(
                status = self.status,
                "virtio-mmio: FEATURES_OK set before DRIVER, ignored"
            );
            return;
        }
        let offered = self.offered_features();
        let unoffered = self.driver_features & !offered;
        if unoffered != 0 {
            warn!(
                driver = self.driver_features,
                offered,
                "virtio-mmio: driver accepted features that were not offered; FEATURES_OK refused"
            );
            return;
        }
        if self.driver_features & (1u64 << VIRTIO_F_VERSION_1) == 0 {
            warn!(
                driver = self.driver_features,
                "virtio-mmio: driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not supported); FEATURES_OK refused"
            );
            return;
        }
        self.device.ack_features(self.driver_features);
        self.status |= VIRTIO_CONFIG_S_FEATURES_OK;
    }

    /// DRIVER_OK: validate the ready queues against guest memory and hand them
    /// to the device. On failure the device reports DEVICE_NEEDS_RESET.
    fn driver_ok(&mut self) {
        if self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            warn!(
                status = self.status,
                "virtio-mmio: DRIVER_OK set before FEATURES_OK, ignored"
            );
            return;
        }
        self.status |= VIRTIO_CONFIG_S_DRIVER_OK;
        let event_idx = self.driver_features & (1u64 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mem = self.mem.memory();
        let mut invalid = None;
        for (index, queue) in self.queues.iter_mut().enumerate() {
            queue.set_event_idx(event_idx);
            if queue.ready() && !queue.is_valid(&*mem) {
                invalid = Some(index);
                break;
            }
        }
        drop(mem);
        if let Some(index) = invalid {
            let queue = &self.queues[index];
            warn!(
                queue = index,
                size = queue.size(),
                desc = queue.desc_table(),
                avail = queue.avail_ring(),
                used = queue.used_ring(),
                "virtio-mmio: queue lies outside guest memory or is misaligned; device needs reset"
            );
            self.needs_reset();
            return;
        }
        let mut notify_evts = Vec::with_capacity(self.notify_evts.len());
        for (queue, evt) in self.notify_evts.iter().enumerate() {
            match evt.try_clone() {
                Ok(evt) => notify_evts.push(evt),
                Err(e) => {
                    warn!(queue, error = %e, "virtio-mmio: cannot duplicate a notify eventfd; device needs reset");
                    self.needs_reset();
                    return;
                }
            }
        }
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, queue) in self.queues.iter().enumerate() {
            match Queue::try_from(queue.state()) {
                Ok(queue) => queues.push(queue),
                Err(e) => {
                    warn!(queue = index, error = %e, "virtio-mmio: invalid queue state; device needs reset");
                    self.needs_reset();
                    return;
                }
            }
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            notify_evts,
            interrupt: self.interrupt.clone(),
        };
        match self.device.activate(activation) {
            Ok(()) => {
                debug!(
                    device_type = self.device.device_type(),
                    features = self.driver_features,
                    "virtio-mmio: device activated"
                );
                self.active = true;
            }
            Err(e) => {
                warn!(device_type = self.device.device_type(), error = %e, "virtio-mmio: device activation failed; device needs reset");
                self.needs_reset();
            }
        }
    }

    fn needs_reset(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        if let Err(e) = self.interrupt.trigger(InterruptKind::Config) {
            warn!(error = %e, "virtio-mmio: cannot signal DEVICE_NEEDS_RESET");
        }
    }

    /// Device reset (the driver wrote 0 to Status): the device stops serving
    /// its queues, and every register returns to its initial value.
    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for queue in &mut self.queues {
            queue.reset();
        }
        // Drop notifications that arrived before the reset.
        for evt in &self.notify_evts {
            let _ = evt.read();
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.shm_sel = 0;
        self.interrupt.clear();
    }
}

#[cfg(test)]
mod tests;
