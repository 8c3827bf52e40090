//! Wiring of virtio-mmio devices into the partition: each disk becomes a
//! virtio-blk behind a [`MmioTransport`] on the MMIO bus, its queue
//! notifications arrive through ioeventfds (QueueNotify, datamatch = queue
//! index: no exit to userspace), its interrupt leaves through an irqfd on its
//! own IO-APIC pin, and its handler runs on the device thread's
//! event-manager loop.

use super::bus::{Bus, BusDevice, BusError};
use super::exit::ExitSignal;
use crate::acpi::VirtioMmioAcpi;
use crate::config::DiskConfig;
use crate::memory::{GuestMemoryMmap, VIRTIO_MMIO_START};
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use virtio_devices::block::{Block, BlockConfig};
use virtio_devices::{
    kernel_cmdline_device, InterruptKind, InterruptSignal, MmioTransport, MMIO_REGION_SIZE,
    QUEUE_NOTIFY_OFFSET,
};
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::eventfd::EventFd;

pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap>;
type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// First IO-APIC pin used by virtio-mmio devices (0-4 are PIT, keyboard,
/// cascade and COM1's neighbours).
pub const VIRTIO_GSI_BASE: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error(transparent)]
    Block(#[from] virtio_devices::block::BlockError),
    #[error("disk {0}: {1}")]
    Transport(String, virtio_devices::MmioError),
    #[error("disk {0}: KVM: {1} failed: {2}")]
    Kvm(String, &'static str, kvm_ioctls::Error),
    #[error("disk {0}: cannot create eventfd: {1}")]
    EventFd(String, std::io::Error),
    #[error("disk {0}: {1}")]
    Bus(String, BusError),
    #[error("cannot create the device event loop: {0}")]
    EventManager(String),
}

/// The device's interrupt: an eventfd KVM turns into an IO-APIC edge.
struct Irqfd(EventFd);

impl InterruptSignal for Irqfd {
    fn trigger(&self, _kind: InterruptKind) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Wakes the event loop when the VMM is asked to stop (edge-triggered: the
/// exit eventfd stays readable for the other waiters).
struct ExitWaker(RawFd);

impl MutEventSubscriber for ExitWaker {
    fn init(&mut self, ops: &mut EventOps) {
        let events = Events::new_raw(self.0, EventSet::IN | EventSet::EDGE_TRIGGERED);
        if let Err(e) = ops.add(events) {
            tracing::warn!(error = ?e, "device loop cannot watch the exit eventfd");
        }
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {}
}

struct MmioDevice(MmioTransport<GuestMemory>);

impl BusDevice for MmioDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.write(offset, data)
    }
}

/// The devices of one partition and the event loop that serves them.
pub struct VirtioDevices {
    pub acpi: Vec<VirtioMmioAcpi>,
    /// `virtio_mmio.device=` entries for the kernel command line.
    pub cmdline: Vec<String>,
    event_manager: EventManager<Subscriber>,
}

impl VirtioDevices {
    /// Creates one virtio-blk per disk and puts it on `mmio`.
    pub fn new(
        vm: &VmFd,
        mem: &GuestMemory,
        disks: &[DiskConfig],
        mmio: &mut Bus,
    ) -> Result<Self, VirtioError> {
        let mut event_manager = EventManager::<Subscriber>::new()
            .map_err(|e| VirtioError::EventManager(format!("{e:?}")))?;
        let mut acpi = Vec::new();
        let mut cmdline = Vec::new();
        for (i, disk) in disks.iter().enumerate() {
            let id = disk.id.clone();
            let base = VIRTIO_MMIO_START + i as u64 * MMIO_REGION_SIZE;
            let gsi = VIRTIO_GSI_BASE + i as u32;
            let (block, handler) = Block::<GuestMemory>::open(&BlockConfig {
                id: disk.id.clone(),
                path: disk.path.clone(),
                read_only: disk.read_only,
            })?;
            let irq = EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|e| VirtioError::EventFd(id.clone(), e))?;
            vm.register_irqfd(&irq, gsi)
                .map_err(|e| VirtioError::Kvm(id.clone(), "KVM_IRQFD", e))?;
            let transport = MmioTransport::new(Box::new(block), mem.clone(), Arc::new(Irqfd(irq)))
                .map_err(|e| VirtioError::Transport(id.clone(), e))?;
            for (q, evt) in transport.queue_notify_evts().iter().enumerate() {
                vm.register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                    q as u32,
                )
                .map_err(|e| VirtioError::Kvm(id.clone(), "KVM_IOEVENTFD", e))?;
            }
            event_manager.add_subscriber(Arc::new(Mutex::new(handler)));
            mmio.insert(
                base,
                MMIO_REGION_SIZE,
                Arc::new(Mutex::new(MmioDevice(transport))),
            )
            .map_err(|e| VirtioError::Bus(id.clone(), e))?;
            acpi.push(VirtioMmioAcpi {
                base,
                size: MMIO_REGION_SIZE,
                gsi,
            });
            cmdline.push(kernel_cmdline_device(base, gsi));
            tracing::info!(disk = %id, base = format_args!("{base:#x}"), gsi, read_only = disk.read_only, "virtio-blk");
        }
        Ok(VirtioDevices {
            acpi,
            cmdline,
            event_manager,
        })
    }

    /// Runs the device event loop on its own thread until the VMM exits.
    pub fn spawn(mut self, exit: Arc<ExitSignal>) -> std::io::Result<std::thread::JoinHandle<()>> {
        self.event_manager
            .add_subscriber(Arc::new(Mutex::new(ExitWaker(exit.eventfd().as_raw_fd()))));
        std::thread::Builder::new()
            .name("virtio".into())
            .spawn(move || {
                while !exit.requested() {
                    if let Err(e) = self.event_manager.run_with_timeout(100) {
                        tracing::error!(error = ?e, "device event loop failed");
                        break;
                    }
                }
            })
    }
}
