//! parvm's per-partition VMM: one process runs one partition.
//!
//! Module map (boot follows this order, see [`Vmm::new`] and [`Vmm::run`]):
//! - [`config`]: the partition definition (JSON + flags) and its checks.
//! - [`builder`]: the boot steps `Vmm::new` calls in order (`create_vm`,
//!   `attach_memory`, `attach_irqchip`, then `attach_*` on a [`builder::Machine`]
//!   for the legacy devices, grants, virtio disks, ACPI tables, the kernel
//!   and the vCPUs).
//! - [`memory`]: the guest physical layout and guest RAM as a memfd.
//! - [`pager`]: the pager of a shared-memory partition (userfaultfd faults
//!   served from a paging device, eviction down to a resident target).
//! - [`acpi`]: RSDP/XSDT/FADT/MADT/DSDT so Linux finds every vCPU and device.
//! - [`boot`]: kernel/initrd/cmdline loading, boot_params or PVH start info,
//!   the boot vCPU's GDT, page tables and registers.
//! - [`cpuid`]: per-vCPU CPUID filtering.
//! - [`interrupts`]: GSI routing and the allocator devices get their
//!   interrupt lines from (IO-APIC pins, MSI routes for doorbells).
//! - [`devices`]: the bus, serial console, i8042, ACPI power port, exit signal.
//! - [`vcpu`]: vCPU configuration and the KVM_RUN loop (one thread each).
//! - [`control`]: the control channel to the partition manager.
//! - [`pause`]: the pause barrier the vCPUs pass before every KVM_RUN.
//! - [`seccomp`]: the syscall filter of each thread role, installed by each
//!   thread once set-up is over.
//! - [`dump`]: firmware-assisted dump: the core of a failed (or running)
//!   partition written to a dump disk on a VIOS, and the watchdog.
//! - [`grants`]: segments shared by other partitions (extra memory slots in
//!   the grant windows), doorbells, the hcall device and the link to the
//!   manager they report and call through; one file per job (see its map).
//!
//! Data flows one way at start (config -> VM -> memory -> interrupt lines ->
//! devices -> tables -> kernel -> vCPUs) and then stays on the vCPU threads;
//! the main thread only forwards console input and waits for an
//! [`devices::exit::ExitReason`].

pub mod acpi;
pub mod boot;
pub mod builder;
pub mod config;
pub mod control;
pub mod cpuid;
pub mod devices;
pub mod dump;
pub mod grants;
pub mod interrupts;
pub mod memory;
pub mod pager;
pub mod pause;
pub mod seccomp;
pub mod vcpu;

use crate::builder::Machine;
use crate::config::PartitionConfig;
use crate::devices::bus::lock;
use crate::devices::exit::{CrashKind, ExitReason, ExitSignal};
use crate::devices::serial::SerialPort;
use crate::devices::virtio::VirtioDevices;
use crate::memory::GuestRam;
use crate::vcpu::Vcpu;
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Default KVM device.
pub const KVM_DEVICE: &str = "/dev/kvm";

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot open KVM device {0}: {1}")]
    KvmOpen(PathBuf, std::io::Error),
    #[error("{0} is not a usable KVM device: {1}")]
    KvmNotKvm(PathBuf, String),
    #[error("KVM lacks a capability parvm needs: {0}")]
    KvmCapability(&'static str),
    #[error("{wanted} vCPUs requested but KVM allows at most {max} here")]
    TooManyVcpus { wanted: u8, max: usize },
    #[error("KVM: {0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    #[error(transparent)]
    Virtio(#[from] devices::virtio::VirtioError),
    #[error(transparent)]
    Interrupt(#[from] interrupts::InterruptError),
    #[error("cannot open console file {0}: {1}")]
    Console(PathBuf, std::io::Error),
    #[error("cannot set up {0}: {1}")]
    Setup(&'static str, String),
    #[error("shared memory: {0}")]
    Pager(#[from] pager::PagerError),
    #[error(transparent)]
    Dump(#[from] dump::DumpError),
}

const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
];

/// Opens the KVM device and checks everything parvm relies on.
pub fn open_kvm(path: &Path) -> Result<Kvm, VmmError> {
    let cpath = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| VmmError::KvmNotKvm(path.into(), "path contains NUL".into()))?;
    let kvm = Kvm::new_with_path(&cpath).map_err(|e| {
        VmmError::KvmOpen(path.into(), std::io::Error::from_raw_os_error(e.errno()))
    })?;
    let api = kvm.get_api_version();
    if api != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(VmmError::KvmNotKvm(
            path.into(),
            format!("KVM_GET_API_VERSION answered {api}"),
        ));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(VmmError::KvmCapability(name));
        }
    }
    Ok(kvm)
}

/// A partition ready to run: VM, memory, devices and configured vCPUs.
pub struct Vmm {
    pub config: PartitionConfig,
    _kvm: Kvm,
    _vm: Arc<VmFd>,
    grants: Arc<grants::GrantMaps>,
    pub ram: GuestRam,
    vcpus: Vec<Vcpu>,
    exit: Arc<ExitSignal>,
    serial: Arc<Mutex<SerialPort>>,
    pause: Arc<pause::PauseGate>,
    virtio: VirtioDevices,
    pager: Option<Arc<pager::Pager>>,
    dumper: Option<Arc<dump::Dumper>>,
    /// With `then: reboot`: hands the partition back once its dump is
    /// under way (set by the control channel).
    detach: Option<dump::Detach>,
}

impl Vmm {
    /// Builds the partition, step by step, up to the first KVM_RUN (each
    /// step is in [`builder`]).
    pub fn new(config: PartitionConfig, kvm_path: &Path) -> Result<Self, VmmError> {
        let (kvm, vm) = builder::create_vm(&config, kvm_path)?;
        let ram = builder::attach_memory(&vm, config.memory_mib)?;
        let pager = builder::attach_pager(&ram, &config)?;
        let interrupts = builder::attach_irqchip(&vm)?;
        let mut machine = Machine::new(kvm, vm, ram, interrupts)?;
        let serial = machine.attach_legacy_devices(&config.console)?;
        let grants = machine.attach_grants()?;
        let virtio = machine.attach_virtio_disks(&config.disks, config.shared.is_some())?;
        let rsdp = machine.attach_acpi_tables(config.vcpus, &virtio)?;
        let entry = machine.load_kernel(&config, &virtio, rsdp)?;
        let pause = Arc::new(pause::PauseGate::new());
        let (dumper, hooks) = builder::attach_dumper(&machine.ram, &config, &pause, &machine.exit)?;
        let vcpus = machine.attach_vcpus(config.vcpus, entry, pause.clone(), &hooks)?;
        Ok(Vmm {
            config,
            _kvm: machine.kvm,
            _vm: machine.vm,
            grants,
            ram: machine.ram,
            vcpus,
            exit: machine.exit,
            serial,
            pause,
            virtio,
            pager: pager.map(Arc::new),
            dumper,
            detach: None,
        })
    }

    /// A handle that stops the partition from another thread or a signal.
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }

    /// The barrier that pauses and resumes the vCPUs.
    pub fn pause_gate(&self) -> Arc<pause::PauseGate> {
        self.pause.clone()
    }

    /// The grant mappings and the hcall link, for the control channel.
    pub fn grants(&self) -> Arc<grants::GrantMaps> {
        self.grants.clone()
    }

    /// The pager of a shared-memory partition.
    pub fn pager(&self) -> Option<Arc<pager::Pager>> {
        self.pager.clone()
    }

    /// The dump thread, when the definition has `on_crash`.
    pub fn dumper(&self) -> Option<Arc<dump::Dumper>> {
        self.dumper.clone()
    }

    /// After a crash with `then: reboot` (dedicated memory), `detach` is
    /// called once the dump is placed: the partition is handed back to the
    /// manager for its reboot while this process finishes the dump.
    pub fn set_detach(&mut self, detach: dump::Detach) {
        self.detach = Some(detach);
    }

    /// The serial console, for input from the control channel.
    pub fn serial(&self) -> Arc<Mutex<SerialPort>> {
        self.serial.clone()
    }

    /// Runs the partition until it stops; returns why.
    pub fn run(mut self) -> Result<ExitReason, VmmError> {
        install_kick_handler()?;
        let devices = self
            .virtio
            .spawn(self.exit.clone())
            .map_err(|e| VmmError::Setup("device thread", e.to_string()))?;
        let mut threads = Vec::new();
        for vcpu in self.vcpus {
            let name = format!("vcpu{}", vcpu.index);
            let handle = std::thread::Builder::new()
                .name(name)
                .stack_size(256 << 10)
                .spawn(move || {
                    seccomp::apply(seccomp::Role::Vcpu);
                    vcpu.run()
                })
                .map_err(|e| VmmError::Setup("vCPU thread", e.to_string()))?;
            threads.push(handle);
        }
        // Every other thread runs: from here the main thread only waits.
        seccomp::apply(seccomp::Role::Main);
        wait_for_exit(&self.exit, &self.serial);
        // Kick every vCPU out of KVM_RUN until it has seen the exit flag.
        while threads.iter().any(|t| !t.is_finished()) {
            for t in threads.iter().filter(|t| !t.is_finished()) {
                // SAFETY: the pthread is alive (not finished, not joined) and
                // the signal has a handler installed by install_kick_handler.
                unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a vCPU thread panicked");
            }
        }
        if devices.join().is_err() {
            tracing::error!("the device thread panicked");
        }
        let reason = self.exit.reason().unwrap_or(ExitReason::PowerOff);
        // A shared-memory partition's dump pages its evicted RAM back in:
        // the pager's figures after it.
        if let (Some(dumper), ExitReason::Crash { kind, reason, .. }) = (&self.dumper, &reason) {
            // Memory is released as it is written only for dedicated memory.
            let reboot = self.config.shared.is_none()
                && self
                    .config
                    .on_crash
                    .as_ref()
                    .is_some_and(|c| c.then == config::CrashAction::Reboot);
            let detach = self.detach.take().filter(|_| reboot);
            crash_dump(dumper, *kind, reason, detach);
        }
        if let Some(pager) = &self.pager {
            eprintln!("vmm: pager: {}", pager.report());
        }
        if let Some(dumper) = &self.dumper {
            dumper.shut_down();
        }
        Ok(reason)
    }
}

/// After a crash, the dump to the dump disk (if one is configured); its
/// outcome goes to stderr (and, as progress, to the manager).
fn crash_dump(dumper: &dump::Dumper, kind: CrashKind, reason: &str, detach: Option<dump::Detach>) {
    if !dumper.has_disk() {
        return;
    }
    eprintln!("vmm: dumping after: {reason}");
    match dumper.crash_dump(kind.trigger(), reason, detach) {
        Ok(d) => eprintln!(
            "vmm: dump {} complete: {} bytes at offset {:#x} of the dump disk ({} of {} bytes of RAM were zero, not written) in {} ms",
            d.id,
            d.size,
            d.offset,
            d.zero_bytes,
            d.ram_bytes,
            d.finished_ms.unwrap_or(d.started_ms).saturating_sub(d.started_ms)
        ),
        Err(e) => eprintln!("vmm: dump failed: {e}"),
    }
}

fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() -> Result<(), VmmError> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler)
        .map_err(|e| VmmError::Setup("vCPU kick signal", e.to_string()))
}

/// Whether stdin carries console input: a terminal, a pipe or a socket
/// (a test or script driving the guest), but not /dev/null or a file.
fn stdin_is_console_input() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(0) } == 1 {
        return true;
    }
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes only into the `stat` it is given.
    if unsafe { libc::fstat(0, &mut st) } != 0 {
        return false;
    }
    matches!(st.st_mode & libc::S_IFMT, libc::S_IFIFO | libc::S_IFSOCK)
}

/// While it lives, a terminal on stdin passes each key to the guest as it is
/// typed, without local echo (the guest echoes), as Firecracker's and QEMU's
/// consoles do; Ctrl-C still signals the VMM (ISIG stays on) for an orderly
/// stop. The previous settings come back on drop. Nothing happens when stdin
/// is not a terminal.
struct CharacterMode(Option<libc::termios>);

impl CharacterMode {
    fn enter() -> Self {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(0) } != 1 {
            return CharacterMode(None);
        }
        // SAFETY: an all-zero termios is a valid value for tcgetattr to fill.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes only into the termios it is given.
        if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
            return CharacterMode(None);
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ECHONL | libc::IEXTEN);
        raw.c_iflag &= !(libc::ICRNL | libc::IXON);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: tcsetattr reads the termios it is given.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) } != 0 {
            return CharacterMode(None);
        }
        CharacterMode(Some(saved))
    }
}

impl Drop for CharacterMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restoring the settings read by tcgetattr above.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, saved) };
        }
    }
}

/// Waits for the exit request, forwarding host console input to the serial
/// port when stdin is a terminal, a pipe or a socket.
fn wait_for_exit(exit: &ExitSignal, serial: &Arc<Mutex<SerialPort>>) {
    let interactive = stdin_is_console_input();
    let _terminal = CharacterMode::enter();
    let mut fds = vec![libc::pollfd {
        fd: exit.eventfd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    if interactive {
        fds.push(libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        });
    }
    while !exit.requested() {
        // SAFETY: `fds` is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 500) };
        if n <= 0 {
            continue;
        }
        if fds.len() > 1 && fds[1].revents & libc::POLLIN != 0 {
            let mut buf = [0u8; 64];
            // SAFETY: reading into a local buffer of the given length.
            let got = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if got > 0 {
                let mut port = lock(serial);
                if let Err(e) = port.0.enqueue_raw_bytes(&buf[..got as usize]) {
                    tracing::warn!(error = ?e, "console input dropped");
                }
            } else {
                fds.truncate(1);
            }
        } else if fds.len() > 1 && fds[1].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            fds.truncate(1);
        }
    }
}
