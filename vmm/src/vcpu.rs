//! vCPUs: configuration (CPUID, MSRs, LAPIC, FPU, boot registers) and the
//! run loop, one thread each. Exits are forwarded to the port-I/O and MMIO
//! buses; a triple fault or KVM error becomes an [`ExitReason::Crash`] with
//! the registers.

use crate::devices::bus::Bus;
use crate::devices::exit::{CrashKind, ExitReason, ExitSignal};
use crate::dump::cpu::CpuStates;
use crate::pause::PauseGate;
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {0}: {1}")]
    Create(u8, kvm_ioctls::Error),
    #[error("cannot configure vCPU {0}: {1} failed: {2}")]
    Configure(u8, &'static str, String),
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

pub struct Vcpu {
    pub index: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitSignal>,
    pause: Arc<PauseGate>,
    hooks: DumpHooks,
}

/// What the vCPU leaves for a dump: its registers when it stops or is
/// held at the pause gate, and a count of its exits to the VMM (the
/// watchdog's sign of life).
#[derive(Clone)]
pub struct DumpHooks {
    pub states: Arc<CpuStates>,
    pub life: Arc<AtomicU64>,
}

fn cfg_err<E: std::fmt::Display>(i: u8, what: &'static str) -> impl FnOnce(E) -> VcpuError {
    move |e| VcpuError::Configure(i, what, e.to_string())
}

impl Vcpu {
    pub fn new(
        vm: &VmFd,
        index: u8,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: Arc<ExitSignal>,
        pause: Arc<PauseGate>,
        hooks: DumpHooks,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Create(index, e))?;
        Ok(Vcpu {
            index,
            fd,
            pio,
            mmio,
            exit,
            pause,
            hooks,
        })
    }

    /// CPUID, MSRs, FPU and LAPIC for every vCPU.
    pub fn configure(&self, cpuid: &CpuId) -> Result<(), VcpuError> {
        let i = self.index;
        self.fd
            .set_cpuid2(cpuid)
            .map_err(cfg_err(i, "KVM_SET_CPUID2"))?;
        let entries: Vec<kvm_msr_entry> = [
            (MSR_IA32_SYSENTER_CS, 0),
            (MSR_IA32_SYSENTER_ESP, 0),
            (MSR_IA32_SYSENTER_EIP, 0),
            (MSR_STAR, 0),
            (MSR_CSTAR, 0),
            (MSR_KERNEL_GS_BASE, 0),
            (MSR_SYSCALL_MASK, 0),
            (MSR_LSTAR, 0),
            (MSR_IA32_TSC, 0),
            (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        ]
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
        let msrs = Msrs::from_entries(&entries).map_err(cfg_err(i, "building MSR list"))?;
        let set = self
            .fd
            .set_msrs(&msrs)
            .map_err(cfg_err(i, "KVM_SET_MSRS"))?;
        if set != entries.len() {
            tracing::warn!(
                vcpu = i,
                set,
                wanted = entries.len(),
                "KVM accepted only some boot MSRs"
            );
        }
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd.set_fpu(&fpu).map_err(cfg_err(i, "KVM_SET_FPU"))?;
        let mut lapic = self.fd.get_lapic().map_err(cfg_err(i, "KVM_GET_LAPIC"))?;
        for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let raw: [u8; 4] = std::array::from_fn(|k| lapic.regs[reg + k] as u8);
            let v = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
            for (k, b) in v.to_le_bytes().iter().enumerate() {
                lapic.regs[reg + k] = *b as _;
            }
        }
        self.fd
            .set_lapic(&lapic)
            .map_err(cfg_err(i, "KVM_SET_LAPIC"))?;
        Ok(())
    }

    pub fn sregs(&self) -> Result<kvm_sregs, VcpuError> {
        self.fd
            .get_sregs()
            .map_err(cfg_err(self.index, "KVM_GET_SREGS"))
    }

    /// The boot vCPU's entry state.
    pub fn set_boot_state(&self, regs: &kvm_regs, sregs: &kvm_sregs) -> Result<(), VcpuError> {
        let i = self.index;
        self.fd
            .set_sregs(sregs)
            .map_err(cfg_err(i, "KVM_SET_SREGS"))?;
        self.fd.set_regs(regs).map_err(cfg_err(i, "KVM_SET_REGS"))
    }

    /// Runs until the VMM is asked to stop.
    pub fn run(mut self) {
        self.pause.enter();
        while !self.exit.requested() {
            let (states, index, fd) = (&self.hooks.states, self.index, &self.fd);
            self.pause.checkpoint(&self.exit, || states.save(index, fd));
            if let Some(reason) = self.run_once() {
                self.exit.request(reason);
            }
        }
        self.hooks.states.save(self.index, &self.fd);
        self.pause.leave();
        tracing::debug!(vcpu = self.index, "vCPU stopped");
    }

    /// One KVM_RUN and the handling of its exit; `Some` means stop the VM.
    fn run_once(&mut self) -> Option<ExitReason> {
        let index = self.index;
        let exit = self.fd.run();
        if matches!(
            exit,
            Ok(VcpuExit::IoIn(..)
                | VcpuExit::IoOut(..)
                | VcpuExit::MmioRead(..)
                | VcpuExit::MmioWrite(..))
        ) {
            self.hooks.life.fetch_add(1, Ordering::Relaxed);
        }
        match exit {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !self.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                self.pio.write(u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio.read(addr, data) {
                    tracing::debug!(vcpu = index, addr = format_args!("{addr:#x}"), "read of unmapped guest physical address");
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !self.mmio.write(addr, data) {
                    tracing::debug!(vcpu = index, addr = format_args!("{addr:#x}"), "write to unmapped guest physical address");
                }
                None
            }
            Ok(VcpuExit::Hlt) => None,
            Ok(VcpuExit::Shutdown) => Some(self.crash_as(CrashKind::TripleFault, format!("guest triple fault on vCPU {index}"))),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Some(ExitReason::PowerOff),
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => Some(ExitReason::Reset),
                other => Some(self.crash(format!("guest system event {other} on vCPU {index}"))),
            },
            Ok(VcpuExit::InternalError) => {
                Some(self.crash(format!("KVM internal error on vCPU {index} (instruction emulation failed?)")))
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(self.crash(format!(
                "KVM failed to enter vCPU {index}: hardware entry failure {reason:#x} on host cpu {cpu}"
            ))),
            Ok(other) => {
                let what = format!("unhandled KVM exit on vCPU {index}: {other:?}");
                Some(self.crash(what))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(self.crash(format!("KVM_RUN failed on vCPU {index}: {e}"))),
        }
    }

    fn crash(&self, reason: String) -> ExitReason {
        self.crash_as(CrashKind::InternalError, reason)
    }

    fn crash_as(&self, kind: CrashKind, reason: String) -> ExitReason {
        ExitReason::Crash {
            kind,
            reason,
            registers: self.dump_registers(),
        }
    }

    /// The registers, formatted for stderr.
    pub fn dump_registers(&self) -> String {
        let mut out = String::new();
        match self.fd.get_regs() {
            Ok(r) => out.push_str(&format!(
                "  rip={:#018x} rsp={:#018x} rflags={:#x}\n  rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}\n",
                r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp
            )),
            Err(e) => out.push_str(&format!("  (registers unavailable: {e})\n")),
        }
        if let Ok(s) = self.fd.get_sregs() {
            out.push_str(&format!(
                "  cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x} ss={:#x} idt={:#x}+{:#x}\n",
                s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.ss.selector, s.idt.base, s.idt.limit
            ));
        }
        out
    }
}
