//! The boot steps [`crate::Vmm::new`] runs in order, one method each: a
//! [`Machine`] is the partition under construction (KVM, the VM, guest
//! RAM, its interrupt lines and the two buses), and each `attach_*` adds
//! one part to it. Firecracker's `build_microvm_for_boot` has the same
//! shape.

use crate::config::{Console, DiskConfig, PartitionConfig};
use crate::devices::bus::{Bus, BusError};
use crate::devices::exit::ExitSignal;
use crate::devices::legacy::{AcpiPowerPort, Pvpanic, ResetTrigger, I8042};
use crate::devices::serial::{ConsoleOut, EventFdTrigger, SerialPort, COM1_BASE, COM1_IRQ};
use crate::devices::virtio::VirtioDevices;
use crate::dump::cpu::CpuStates;
use crate::dump::{Dumper, DumperParts};
use crate::grants::{self, GrantMaps, GrantWindow, HcallDevice};
use crate::interrupts::Interrupts;
use crate::memory::GuestRam;
use crate::vcpu::{DumpHooks, Vcpu};
use crate::{acpi, boot, cpuid, open_kvm, VmmError};
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

/// Where KVM's task-state segment goes (Intel needs three pages below 4 GiB).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// The i8042's ports: data at 0x60, command/status at 0x64.
const I8042_BASE: u64 = 0x60;
const I8042_LEN: u64 = 5;

/// A partition being built.
pub struct Machine {
    pub kvm: Kvm,
    pub vm: Arc<VmFd>,
    pub ram: GuestRam,
    pub interrupts: Arc<Interrupts>,
    pub pio: Bus,
    pub mmio: Bus,
    pub exit: Arc<ExitSignal>,
}

/// KVM (with every capability parvm relies on) and a new VM on it.
pub fn create_vm(config: &PartitionConfig, kvm_path: &Path) -> Result<(Kvm, Arc<VmFd>), VmmError> {
    let kvm = open_kvm(kvm_path)?;
    let max = kvm.get_max_vcpus();
    if usize::from(config.vcpus) > max {
        return Err(VmmError::TooManyVcpus {
            wanted: config.vcpus,
            max,
        });
    }
    let vm = kvm
        .create_vm()
        .map_err(|e| VmmError::Kvm("KVM_CREATE_VM", e))?;
    Ok((kvm, Arc::new(vm)))
}

/// Guest RAM as a memfd, registered as the VM's first memory slots.
pub fn attach_memory(vm: &VmFd, memory_mib: u64) -> Result<GuestRam, VmmError> {
    let ram = GuestRam::new(memory_mib)?;
    ram.register(vm)
        .map_err(|e| VmmError::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
    Ok(ram)
}

/// The pager of a shared-memory partition, on its paging device, before
/// anything touches guest RAM (so every page that comes in is counted);
/// `None` for dedicated memory.
pub fn attach_pager(
    ram: &GuestRam,
    config: &PartitionConfig,
) -> Result<Option<crate::pager::Pager>, VmmError> {
    let Some(shared) = &config.shared else {
        return Ok(None);
    };
    let Some(source) = &shared.paging else {
        return Err(crate::pager::PagerError::NoPagingDevice.into());
    };
    let (stores, reconnectors) =
        crate::pager::device::connect(source, shared.paging_evictor.as_ref())?;
    let logical_pages = ram.size / crate::pager::pages::PAGE_SIZE;
    let target = shared
        .resident_mib
        .map(|m| (m << 20) / crate::pager::pages::PAGE_SIZE)
        .unwrap_or(logical_pages);
    tracing::info!(partition = %config.name, logical_pages, target, paging = %source, "shared memory: pager starts");
    Ok(Some(crate::pager::Pager::start(
        &ram.memory,
        &ram.memfd,
        stores,
        reconnectors,
        target,
    )?))
}

/// The dump thread (docs/dump.md) with its dump disk connected and
/// checked, when the definition has `on_crash` with a dump disk or a
/// watchdog; `None` otherwise. Returns what the vCPUs leave for it.
pub fn attach_dumper(
    ram: &GuestRam,
    config: &PartitionConfig,
    pause: &Arc<crate::pause::PauseGate>,
    exit: &Arc<ExitSignal>,
) -> Result<(Option<Arc<Dumper>>, DumpHooks), VmmError> {
    let states = Arc::new(CpuStates::new(config.vcpus));
    let Some(on_crash) = config.on_crash.clone() else {
        let life = Arc::new(std::sync::atomic::AtomicU64::new(0));
        return Ok((None, DumpHooks { states, life }));
    };
    let memfd = ram
        .memfd
        .try_clone()
        .map_err(|e| VmmError::Setup("dump: guest RAM memfd", e.to_string()))?;
    let dumper = Dumper::start(
        DumperParts {
            partition: config.name.clone(),
            on_crash,
            memfd,
            pieces: crate::dump::ram::pieces(ram),
            // Shared memory: through the mapping, so that evicted pages
            // fault and the pager brings them back (docs/dump.md).
            mapped: config.shared.is_some().then(|| ram.memory.clone()),
            view: ram.memory.clone(),
            states: states.clone(),
            pause: pause.clone(),
            exit: exit.clone(),
        },
        ram.size,
    )?;
    let life = dumper.life.clone();
    Ok((Some(dumper), DumpHooks { states, life }))
}

/// IO-APIC, PICs and local APICs in the kernel, the PIT, and the GSI
/// routing the devices' lines come from.
pub fn attach_irqchip(vm: &Arc<VmFd>) -> Result<Arc<Interrupts>, VmmError> {
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
    Ok(Arc::new(Interrupts::new(vm.clone())?))
}

impl Machine {
    /// The VM with its RAM and interrupt controllers, empty buses, and the
    /// exit signal devices and vCPUs will share.
    pub fn new(
        kvm: Kvm,
        vm: Arc<VmFd>,
        ram: GuestRam,
        interrupts: Arc<Interrupts>,
    ) -> Result<Self, VmmError> {
        let exit = ExitSignal::new().map_err(|e| VmmError::Setup("exit eventfd", e.to_string()))?;
        Ok(Machine {
            kvm,
            vm,
            ram,
            interrupts,
            pio: Bus::new(),
            mmio: Bus::new(),
            exit: Arc::new(exit),
        })
    }

    /// The port-I/O devices: the COM1 serial console (IRQ 4, output to
    /// `console`), the i8042 (its reset stops the VMM), the pvpanic port
    /// (a guest panic is a crash) and the ACPI power port. Returns the serial port, which also takes console input.
    pub fn attach_legacy_devices(
        &mut self,
        console: &Console,
    ) -> Result<Arc<Mutex<SerialPort>>, VmmError> {
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| VmmError::Setup("serial eventfd", e.to_string()))?;
        let gsi = self.interrupts.claim(COM1_IRQ, "serial")?;
        self.interrupts.connect(&serial_irq, gsi)?;
        let out: Box<dyn Write + Send> = match console {
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
        let bus_err = |e: BusError| VmmError::Setup("port I/O bus", e.to_string());
        self.pio
            .insert(u64::from(COM1_BASE), 8, serial.clone())
            .map_err(bus_err)?;
        let reset = ResetTrigger(self.exit.clone());
        let i8042 = I8042(vm_superio::I8042Device::new(reset));
        self.pio
            .insert(I8042_BASE, I8042_LEN, Arc::new(Mutex::new(i8042)))
            .map_err(bus_err)?;
        let pvpanic = Pvpanic(self.exit.clone());
        self.pio
            .insert(
                u64::from(acpi::PVPANIC_PORT),
                1,
                Arc::new(Mutex::new(pvpanic)),
            )
            .map_err(bus_err)?;
        let power = AcpiPowerPort(self.exit.clone());
        self.pio
            .insert(
                u64::from(acpi::ACPI_SHUTDOWN_PORT),
                1,
                Arc::new(Mutex::new(power)),
            )
            .map_err(bus_err)?;
        Ok(serial)
    }

    /// The grant windows (segments other partitions share, mapped later by
    /// the control channel) and the hcall page on the MMIO bus.
    pub fn attach_grants(&mut self) -> Result<Arc<GrantMaps>, VmmError> {
        let grants = Arc::new(GrantMaps::new(
            self.vm.clone(),
            self.ram.size,
            self.kvm.get_nr_memslots(),
            self.interrupts.clone(),
        ));
        let bus_err = |e: BusError| VmmError::Setup("grant windows", e.to_string());
        let high = grants.high_start();
        for (base, len) in [
            (grants::GRANT_WINDOW_START, grants::GRANT_WINDOW_SIZE),
            (high, grants::HIGH_WINDOW_END - high),
        ] {
            let window = GrantWindow {
                maps: grants.clone(),
                base,
            };
            self.mmio
                .insert(base, len, Arc::new(Mutex::new(window)))
                .map_err(bus_err)?;
        }
        let hcall = HcallDevice::new(grants.clone());
        self.mmio
            .insert(
                grants::HCALL_BASE,
                grants::HCALL_SIZE,
                Arc::new(Mutex::new(hcall)),
            )
            .map_err(bus_err)?;
        Ok(grants)
    }

    /// One virtio-blk per disk on the MMIO bus, each with an IO-APIC pin.
    /// With `bounce` (a shared-memory partition) disks served by a VIOS go
    /// through the VMM's own virtio-blk: the VIOS never maps guest RAM.
    pub fn attach_virtio_disks(
        &mut self,
        disks: &[DiskConfig],
        bounce: bool,
    ) -> Result<VirtioDevices, VmmError> {
        let guest_memory = vm_memory::GuestMemoryAtomic::new(self.ram.memory.clone());
        Ok(VirtioDevices::new(
            &self.vm,
            &guest_memory,
            disks,
            &mut self.mmio,
            &self.interrupts,
            bounce,
        )?)
    }

    /// RSDP/XSDT/FADT/MADT/DSDT in guest memory; returns the RSDP's address.
    pub fn attach_acpi_tables(
        &self,
        vcpus: u8,
        virtio: &VirtioDevices,
    ) -> Result<vm_memory::GuestAddress, VmmError> {
        Ok(acpi::create_acpi_tables(
            &self.ram.memory,
            &acpi::AcpiConfig {
                num_cpus: vcpus,
                virtio_mmio: virtio.acpi.clone(),
            },
        )?)
    }

    /// Kernel, initrd and command line (with the disks' `virtio_mmio.device=`
    /// entries appended), boot_params or PVH start info; returns the entry.
    pub fn load_kernel(
        &self,
        config: &PartitionConfig,
        virtio: &VirtioDevices,
        rsdp: vm_memory::GuestAddress,
    ) -> Result<boot::EntryPoint, VmmError> {
        let mut cmdline = config.cmdline.clone();
        for dev in &virtio.cmdline {
            cmdline.push(' ');
            cmdline.push_str(dev);
        }
        let entry = boot::load(
            &self.ram.memory,
            &boot::BootSetup {
                kernel: &config.kernel,
                initrd: config.initrd.as_deref(),
                cmdline: &cmdline,
                mem_mib: config.memory_mib,
                rsdp,
            },
        )?;
        tracing::info!(partition = %config.name, entry = format_args!("{:#x}", entry.addr.0), mode = ?entry.mode, "kernel loaded");
        Ok(entry)
    }

    /// The vCPUs, on the finished buses: CPUID, MSRs, LAPIC each; the boot
    /// vCPU also gets the entry state. Returns them and their pause gate.
    pub fn attach_vcpus(
        &mut self,
        count: u8,
        entry: boot::EntryPoint,
        pause: Arc<crate::pause::PauseGate>,
        hooks: &DumpHooks,
    ) -> Result<Vec<Vcpu>, VmmError> {
        let supported = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmmError::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
        // The buses are complete: from here on the vCPUs share them.
        let pio = Arc::new(std::mem::take(&mut self.pio));
        let mmio = Arc::new(std::mem::take(&mut self.mmio));
        let mut vcpus = Vec::with_capacity(usize::from(count));
        for index in 0..count {
            let vcpu = Vcpu::new(
                &self.vm,
                index,
                pio.clone(),
                mmio.clone(),
                self.exit.clone(),
                pause.clone(),
                hooks.clone(),
            )?;
            let mut cpuid = supported.clone();
            cpuid::filter(&mut cpuid, index, count);
            vcpu.configure(&cpuid)?;
            if index == 0 {
                let sregs = boot::setup_sregs(&self.ram.memory, entry.mode, vcpu.sregs()?)?;
                vcpu.set_boot_state(&boot::boot_regs(entry), &sregs)?;
            }
            vcpus.push(vcpu);
        }
        Ok(vcpus)
    }
}
