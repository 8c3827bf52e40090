//! Wiring of virtio-mmio devices into the partition: each disk becomes a
//! virtio-blk behind a [`MmioTransport`] on the MMIO bus, its queue
//! notifications arrive through ioeventfds (QueueNotify, datamatch = queue
//! index: no exit to userspace), its interrupt leaves through an irqfd on its
//! own IO-APIC pin, and its handler runs on the device thread's
//! event-manager loop.

use super::bus::{Bus, BusDevice, BusError};
use super::exit::ExitSignal;
use crate::acpi::VirtioMmioAcpi;
use crate::config::{DiskConfig, DiskSource};
use crate::interrupts::{InterruptError, Interrupts};
use crate::memory::{GuestMemoryMmap, VIRTIO_MMIO_START};
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use virtio_devices::block::{Block, BlockConfig, BlockCore, BlockHandler, BlockOptions};
use virtio_devices::paging::{BouncedDisk, HandOver};
use virtio_devices::vhost_user_blk::{ReconnectHandle, VhostUserBlkDevice, VhostUserBlkError};
use virtio_devices::{
    kernel_cmdline_device, InterruptKind, InterruptSignal, MmioTransport, VirtioDevice,
    MMIO_REGION_SIZE, QUEUE_NOTIFY_OFFSET,
};
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::eventfd::EventFd;

pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap>;
type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The first disk's IO-APIC pin: disks ask the [`Interrupts`] allocator
/// for their lines in order, and it starts here.
pub const VIRTIO_GSI_BASE: u32 = crate::interrupts::FIRST_FREE_PIN;

#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error(transparent)]
    Block(#[from] virtio_devices::block::BlockError),
    #[error("disk {0}: {1}")]
    Transport(String, virtio_devices::MmioError),
    #[error("disk {0}: KVM: {1} failed: {2}")]
    Kvm(String, &'static str, kvm_ioctls::Error),
    #[error("disk {0}: interrupt: {1}")]
    Interrupt(String, InterruptError),
    #[error("disk {0}: cannot create eventfd: {1}")]
    EventFd(String, std::io::Error),
    #[error("disk {0}: {1}")]
    Bus(String, BusError),
    #[error("cannot create the device event loop: {0}")]
    EventManager(String),
    #[error(transparent)]
    VhostUser(#[from] VhostUserBlkError),
    #[error("disk {0}: vhost-user-fd:{1}: {2}")]
    VhostUserFd(String, i32, String),
    #[error("disk {0}: through the VMM: {1}")]
    Bounced(String, String),
    #[error("disk {0}: `vios:{1}/{2}` is resolved by the partition manager; start the partition with parctl")]
    UnbrokeredVios(String, String, String),
}

/// A disk's device: the VMM's own virtio-blk (with its event-loop half) or
/// a vhost-user frontend whose queues a backend (the VIOS) serves.
enum BlockDevice {
    Local(Block<GuestMemory>, BlockHandler<GuestMemory, std::fs::File>),
    VhostUser(VhostUserBlkDevice),
    /// A VIOS disk served through the VMM's own virtio-blk (shared-memory
    /// partitions: the VIOS must not map guest RAM, docs/ams.md).
    Bounced(
        Block<GuestMemory>,
        BlockHandler<GuestMemory, BouncedDisk>,
        HandOver,
    ),
}

/// How a reconnect reaches a disk's device.
#[derive(Clone)]
enum Reconnect {
    VhostUser(ReconnectHandle),
    Bounced(HandOver),
}

/// The vhost-user disks of this VMM by disk id, for the control channel's
/// `vhost_user_reconnect` (one partition per process).
static RECONNECT: Mutex<Vec<(String, Reconnect)>> = Mutex::new(Vec::new());

/// Give the vhost-user disk `id` a new connection to its backend (the
/// partition manager re-brokered it after the VIOS came back).
pub fn reconnect_disk(id: &str, stream: UnixStream) -> Result<(), String> {
    let handle = RECONNECT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(d, _)| d == id)
        .map(|(_, h)| h.clone());
    match handle {
        None => Err(format!("no vhost-user disk `{id}` in this partition")),
        Some(Reconnect::VhostUser(h)) => h.reconnect(stream).map_err(|e| e.to_string()),
        Some(Reconnect::Bounced(h)) => {
            h.hand_over(stream);
            Ok(())
        }
    }
}

/// File descriptors already taken by `vhost-user-fd:` disks (each may be
/// claimed once: a second claim would close it under the first).
static CLAIMED_FDS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Take ownership of an inherited, connected Unix stream socket.
pub(crate) fn inherited_socket(id: &str, fd: i32) -> Result<UnixStream, VirtioError> {
    let err = |why: String| VirtioError::VhostUserFd(id.to_string(), fd, why);
    let mut claimed = CLAIMED_FDS.lock().unwrap_or_else(|e| e.into_inner());
    if claimed.contains(&fd) {
        return Err(err("already used by another disk".into()));
    }
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat only writes into the `stat` it is given; a bad fd is an
    // error, not undefined behaviour.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(err(std::io::Error::last_os_error().to_string()));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(err("not a socket".into()));
    }
    claimed.push(fd);
    // SAFETY: `fd` is an open socket inherited from the parent for this disk
    // alone (claimed once above); ownership moves to the UnixStream.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // Not inherited by anything this process might spawn.
    // SAFETY: F_SETFD on a valid fd owned by `stream`.
    unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(stream)
}

/// A VIOS disk behind the VMM's own virtio-blk (see [`BlockDevice::Bounced`]).
fn bounced_device(
    disk: &DiskConfig,
    stream: UnixStream,
    path: Option<std::path::PathBuf>,
) -> Result<BlockDevice, VirtioError> {
    let backend = BouncedDisk::connect(&disk.id, stream, path)
        .map_err(|e| VirtioError::Bounced(disk.id.clone(), e.to_string()))?;
    let reconnect = backend.reconnect_handle();
    let options = BlockOptions {
        read_only: disk.read_only || backend.read_only(),
        serial: disk.id.clone(),
    };
    let core = BlockCore::new(backend, &options)
        .map_err(|e| VirtioError::Bounced(disk.id.clone(), e.to_string()))?;
    let (block, handler) = Block::with_core(&disk.id, core)?;
    Ok(BlockDevice::Bounced(block, handler, reconnect))
}

fn block_device(disk: &DiskConfig, bounce: bool) -> Result<BlockDevice, VirtioError> {
    match &disk.source {
        DiskSource::VhostUser(socket) if bounce => {
            let stream = UnixStream::connect(socket).map_err(|e| {
                VirtioError::Bounced(
                    disk.id.clone(),
                    format!("cannot connect to {}: {e}", socket.display()),
                )
            })?;
            bounced_device(disk, stream, Some(socket.clone()))
        }
        DiskSource::VhostUserFd(fd) if bounce => {
            let stream = inherited_socket(&disk.id, *fd)?;
            bounced_device(disk, stream, None)
        }
        DiskSource::Image(path) => {
            let (block, handler) = Block::<GuestMemory>::open(&BlockConfig {
                id: disk.id.clone(),
                path: path.to_path_buf(),
                read_only: disk.read_only,
            })?;
            Ok(BlockDevice::Local(block, handler))
        }
        DiskSource::VhostUser(socket) => Ok(BlockDevice::VhostUser(
            VhostUserBlkDevice::connect_path(&disk.id, socket)?,
        )),
        DiskSource::VhostUserFd(fd) => {
            let stream = inherited_socket(&disk.id, *fd)?;
            Ok(BlockDevice::VhostUser(VhostUserBlkDevice::connect(
                &disk.id, stream,
            )?))
        }
        DiskSource::Vios { vios, disk: export } => Err(VirtioError::UnbrokeredVios(
            disk.id.clone(),
            vios.clone(),
            export.clone(),
        )),
    }
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
    /// Creates one virtio-blk per disk, each with an IO-APIC pin from
    /// `interrupts`, and puts it on `mmio`.
    pub fn new(
        vm: &VmFd,
        mem: &GuestMemory,
        disks: &[DiskConfig],
        mmio: &mut Bus,
        interrupts: &Interrupts,
        bounce: bool,
    ) -> Result<Self, VirtioError> {
        let mut event_manager = EventManager::<Subscriber>::new()
            .map_err(|e| VirtioError::EventManager(format!("{e:?}")))?;
        let mut acpi = Vec::new();
        let mut cmdline = Vec::new();
        for (i, disk) in disks.iter().enumerate() {
            let id = disk.id.clone();
            let base = VIRTIO_MMIO_START + i as u64 * MMIO_REGION_SIZE;
            let device = block_device(disk, bounce)?;
            let irq_err = |e| VirtioError::Interrupt(id.clone(), e);
            let gsi = interrupts
                .allocate_pin(&format!("disk {id}"))
                .map_err(irq_err)?;
            let irq = EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|e| VirtioError::EventFd(id.clone(), e))?;
            interrupts.connect(&irq, gsi).map_err(irq_err)?;
            let remember = |r: Reconnect| {
                RECONNECT
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((id.clone(), r));
            };
            let (device, handler): (Box<dyn VirtioDevice<GuestMemory>>, Option<Subscriber>) =
                match device {
                    BlockDevice::Local(block, handler) => {
                        (Box::new(block), Some(Arc::new(Mutex::new(handler))))
                    }
                    BlockDevice::VhostUser(device) => {
                        remember(Reconnect::VhostUser(device.reconnect_handle()));
                        (Box::new(device), None)
                    }
                    BlockDevice::Bounced(block, handler, reconnect) => {
                        remember(Reconnect::Bounced(reconnect));
                        (Box::new(block), Some(Arc::new(Mutex::new(handler))))
                    }
                };
            let transport = MmioTransport::new(device, mem.clone(), Arc::new(Irqfd(irq)))
                .map_err(|e| VirtioError::Transport(id.clone(), e))?;
            for (q, evt) in transport.queue_notify_evts().iter().enumerate() {
                vm.register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                    q as u32,
                )
                .map_err(|e| VirtioError::Kvm(id.clone(), "KVM_IOEVENTFD", e))?;
            }
            if let Some(handler) = handler {
                event_manager.add_subscriber(handler);
            }
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
                crate::seccomp::apply(crate::seccomp::Role::Device);
                while !exit.requested() {
                    if let Err(e) = self.event_manager.run_with_timeout(100) {
                        tracing::error!(error = ?e, "device event loop failed");
                        break;
                    }
                }
            })
    }
}
