//! The vCPUs' state for a dump, saved by each vCPU thread itself (only it
//! holds its vCPU fd): when it leaves its run loop (the partition is
//! stopping: a crash) and whenever it is held at the pause gate (an
//! on-demand dump pauses the partition first).

use crate::devices::bus::lock;
use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use std::sync::Mutex;

/// One vCPU's registers as the core file needs them.
#[derive(Clone, Debug, Default)]
pub struct CpuState {
    pub index: u8,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// Not read (it needs KVM_GET_MSRS); 0 in the QEMU note.
    pub kernel_gs_base: u64,
}

/// The last saved state of every vCPU.
pub struct CpuStates(Mutex<Vec<Option<CpuState>>>);

impl CpuStates {
    pub fn new(vcpus: u8) -> Self {
        CpuStates(Mutex::new(vec![None; usize::from(vcpus)]))
    }

    /// Reads vCPU `index`'s registers (on its own thread). A vCPU whose
    /// registers cannot be read keeps its previous state.
    pub fn save(&self, index: u8, fd: &VcpuFd) {
        let (Ok(regs), Ok(sregs)) = (fd.get_regs(), fd.get_sregs()) else {
            tracing::warn!(vcpu = index, "cannot read the vCPU's registers for a dump");
            return;
        };
        if let Some(slot) = lock(&self.0).get_mut(usize::from(index)) {
            *slot = Some(CpuState {
                index,
                regs,
                sregs,
                kernel_gs_base: 0,
            });
        }
    }

    /// Forgets every saved state (before an on-demand dump pauses).
    pub fn clear(&self) {
        lock(&self.0).iter_mut().for_each(|s| *s = None);
    }

    /// The saved states, by vCPU index (vCPUs never saved are left out).
    pub fn all(&self) -> Vec<CpuState> {
        lock(&self.0).iter().flatten().cloned().collect()
    }
}
