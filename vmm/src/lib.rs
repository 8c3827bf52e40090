//! parvm's per-partition VMM: one process runs one partition.
//!
//! Module map (boot follows this order, see [`Vmm::new`] and [`Vmm::run`]):
//! - [`config`]: the partition definition (JSON + flags) and its checks.
//! - [`memory`]: the guest physical layout and guest RAM as a memfd.
//! - [`acpi`]: RSDP/XSDT/FADT/MADT/DSDT so Linux finds every vCPU and device.
//! - [`boot`]: kernel/initrd/cmdline loading, boot_params or PVH start info,
//!   the boot vCPU's GDT, page tables and registers.
//! - [`cpuid`]: per-vCPU CPUID filtering.
//! - [`interrupts`]: GSI routing and the allocator devices get their
//!   interrupt lines from (IO-APIC pins, MSI routes for doorbells).
//! - [`devices`]: the bus, serial console, i8042, ACPI power port, exit signal.
//! - [`vcpu`]: vCPU configuration and the KVM_RUN loop (one thread each).
//! - [`control`]: the control channel to the partition manager and the
//!   pause barrier the vCPUs pass.
//! - [`grants`]: segments shared by other partitions (extra memory slots in
//!   the grant windows), doorbells, the hcall device and the link to the
//!   manager they report and call through; one file per job (see its map).
//!
//! Data flows one way at start (config -> memory -> tables -> kernel ->
//! devices -> vCPUs) and then stays on the vCPU threads; the main thread only
//! forwards console input and waits for an [`devices::exit::ExitReason`].

pub mod acpi;
pub mod boot;
pub mod config;
pub mod control;
pub mod cpuid;
pub mod devices;
pub mod grants;
pub mod interrupts;
pub mod memory;
pub mod vcpu;

use crate::config::{Console, PartitionConfig};
use crate::devices::bus::{lock, Bus};
use crate::devices::exit::{ExitReason, ExitSignal};
use crate::devices::legacy::{AcpiPowerPort, ResetTrigger, I8042};
use crate::devices::serial::{ConsoleOut, EventFdTrigger, SerialPort, COM1_BASE, COM1_IRQ};
use crate::devices::virtio::VirtioDevices;
use crate::interrupts::Interrupts;
use crate::memory::GuestRam;
use crate::vcpu::Vcpu;
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::ffi::CString;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

/// Default KVM device.
pub const KVM_DEVICE: &str = "/dev/kvm";
/// Where KVM's task-state segment goes (Intel needs three pages below 4 GiB).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

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
    pause: Arc<control::PauseGate>,
    virtio: VirtioDevices,
}

impl Vmm {
    /// Builds the partition, step by step, up to the first KVM_RUN.
    pub fn new(config: PartitionConfig, kvm_path: &Path) -> Result<Self, VmmError> {
        // 1. KVM and its capabilities.
        let kvm = open_kvm(kvm_path)?;
        let max = kvm.get_max_vcpus();
        if usize::from(config.vcpus) > max {
            return Err(VmmError::TooManyVcpus {
                wanted: config.vcpus,
                max,
            });
        }
        let vm = Arc::new(
            kvm.create_vm()
                .map_err(|e| VmmError::Kvm("KVM_CREATE_VM", e))?,
        );

        // 2. Guest RAM (a memfd) and its memory slots.
        let ram = GuestRam::new(config.memory_mib)?;
        ram.register(&vm)
            .map_err(|e| VmmError::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;

        // 3. In-kernel interrupt controllers and timer.
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(|e| VmmError::Kvm("KVM_SET_TSS_ADDR", e))?;
        vm.create_irq_chip()
            .map_err(|e| VmmError::Kvm("KVM_CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit)
            .map_err(|e| VmmError::Kvm("KVM_CREATE_PIT2", e))?;
        let interrupts = Arc::new(Interrupts::new(vm.clone())?);

        // 4. virtio-mmio devices (disks) on the MMIO bus.
        let mut mmio = Bus::new();
        let guest_memory = vm_memory::GuestMemoryAtomic::new(ram.memory.clone());
        let virtio = VirtioDevices::new(&vm, &guest_memory, &config.disks, &mut mmio, &interrupts)?;
        // Grant windows and the hcall page (shared segments, see grants/).
        let grants = Arc::new(grants::GrantMaps::new(
            vm.clone(),
            ram.size,
            kvm.get_nr_memslots(),
            interrupts.clone(),
        ));
        let grant_err = |e: devices::bus::BusError| VmmError::Setup("grant windows", e.to_string());
        for (base, len) in [
            (grants::GRANT_WINDOW_START, grants::GRANT_WINDOW_SIZE),
            (
                grants.high_start(),
                grants::HIGH_WINDOW_END - grants.high_start(),
            ),
        ] {
            let window = grants::GrantWindow {
                maps: grants.clone(),
                base,
            };
            mmio.insert(base, len, Arc::new(Mutex::new(window)))
                .map_err(grant_err)?;
        }
        let hcall = grants::HcallDevice::new(grants.clone());
        mmio.insert(
            grants::HCALL_BASE,
            grants::HCALL_SIZE,
            Arc::new(Mutex::new(hcall)),
        )
        .map_err(grant_err)?;
        let mmio = Arc::new(mmio);

        // 5. ACPI tables, then kernel, initrd, command line, boot info.
        let rsdp = acpi::create_acpi_tables(
            &ram.memory,
            &acpi::AcpiConfig {
                num_cpus: config.vcpus,
                virtio_mmio: virtio.acpi.clone(),
            },
        )?;
        let mut cmdline = config.cmdline.clone();
        for dev in &virtio.cmdline {
            cmdline.push(' ');
            cmdline.push_str(dev);
        }
        let entry = boot::load(
            &ram.memory,
            &boot::BootSetup {
                kernel: &config.kernel,
                initrd: config.initrd.as_deref(),
                cmdline: &cmdline,
                mem_mib: config.memory_mib,
                rsdp,
            },
        )?;
        tracing::info!(partition = %config.name, entry = format_args!("{:#x}", entry.addr.0), mode = ?entry.mode, "kernel loaded");

        // 6. Devices on the port-I/O bus.
        let exit = Arc::new(
            ExitSignal::new().map_err(|e| VmmError::Setup("exit eventfd", e.to_string()))?,
        );
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| VmmError::Setup("serial eventfd", e.to_string()))?;
        let gsi = interrupts.claim(COM1_IRQ, "serial")?;
        interrupts.connect(&serial_irq, gsi)?;
        let out: Box<dyn Write + Send> = match &config.console {
            Console::Stdout => Box::new(std::io::stdout()),
            Console::None => Box::new(std::io::sink()),
            Console::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| VmmError::Console(p.clone(), e))?,
            ),
        };
        let serial = Arc::new(Mutex::new(SerialPort(Serial::new(
            EventFdTrigger(serial_irq),
            ConsoleOut::new(out),
        ))));
        let mut pio = Bus::new();
        let bus_err = |e: devices::bus::BusError| VmmError::Setup("port I/O bus", e.to_string());
        pio.insert(u64::from(COM1_BASE), 8, serial.clone())
            .map_err(bus_err)?;
        pio.insert(
            0x60,
            5,
            Arc::new(Mutex::new(I8042(vm_superio::I8042Device::new(
                ResetTrigger(exit.clone()),
            )))),
        )
        .map_err(bus_err)?;
        pio.insert(
            u64::from(acpi::ACPI_SHUTDOWN_PORT),
            1,
            Arc::new(Mutex::new(AcpiPowerPort(exit.clone()))),
        )
        .map_err(bus_err)?;
        let pio = Arc::new(pio);

        // 7. vCPUs: CPUID, MSRs, LAPIC; the boot vCPU gets the entry state.
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmmError::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
        let pause = Arc::new(control::PauseGate::new());
        let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
        for index in 0..config.vcpus {
            let vcpu = Vcpu::new(
                &vm,
                index,
                pio.clone(),
                mmio.clone(),
                exit.clone(),
                pause.clone(),
            )?;
            let mut cpuid = supported.clone();
            cpuid::filter(&mut cpuid, index, config.vcpus);
            vcpu.configure(&cpuid)?;
            if index == 0 {
                let sregs = boot::setup_sregs(&ram.memory, entry.mode, vcpu.sregs()?)?;
                vcpu.set_boot_state(&boot::boot_regs(entry), &sregs)?;
            }
            vcpus.push(vcpu);
        }

        Ok(Vmm {
            config,
            _kvm: kvm,
            _vm: vm,
            grants,
            ram,
            vcpus,
            exit,
            serial,
            pause,
            virtio,
        })
    }

    /// A handle that stops the partition from another thread or a signal.
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }

    /// The barrier that pauses and resumes the vCPUs.
    pub fn pause_gate(&self) -> Arc<control::PauseGate> {
        self.pause.clone()
    }

    /// The grant mappings and the hcall link, for the control channel.
    pub fn grants(&self) -> Arc<grants::GrantMaps> {
        self.grants.clone()
    }

    /// The serial console, for input from the control channel.
    pub fn serial(&self) -> Arc<Mutex<SerialPort>> {
        self.serial.clone()
    }

    /// Runs the partition until it stops; returns why.
    pub fn run(self) -> Result<ExitReason, VmmError> {
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
                .spawn(move || vcpu.run())
                .map_err(|e| VmmError::Setup("vCPU thread", e.to_string()))?;
            threads.push(handle);
        }
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
        Ok(self.exit.reason().unwrap_or(ExitReason::PowerOff))
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
