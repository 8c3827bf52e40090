//! Doorbells between partitions (docs/hcall.md, "Doorbells"): the manager
//! sends one eventfd per doorbell end, and this side wires it into KVM
//! either as the ringing end (an ioeventfd on a doorbell register: a guest
//! write signals it without an exit) or as the ringing-at end (an irqfd on
//! an interrupt line from [`Interrupts`]).

use super::DOORBELL_BASE;
use crate::devices::bus::lock;
use crate::interrupts::{InterruptError, Interrupts};
use kvm_ioctls::VmFd;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum DoorbellError {
    #[error("doorbell `{id}`: register {ring} does not exist (0-{max})")]
    Ring { id: String, ring: u32, max: u32 },
    #[error("doorbell `{id}`: {source}")]
    Interrupt { id: String, source: InterruptError },
    #[error("doorbell `{id}`: needs exactly one of ring, gsi and vector")]
    DoorbellEnd { id: String },
    #[error("doorbell `{id}`: {what} failed: {source}")]
    Wire {
        id: String,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

/// The wired doorbell ends of one partition.
pub(super) struct Doorbells {
    vm: Arc<VmFd>,
    interrupts: Arc<Interrupts>,
    /// Wired eventfds by doorbell id, kept open for the VM's life.
    wired: Mutex<Vec<(String, EventFd)>>,
}

impl Doorbells {
    pub fn new(vm: Arc<VmFd>, interrupts: Arc<Interrupts>) -> Self {
        Doorbells {
            vm,
            interrupts,
            wired: Mutex::new(Vec::new()),
        }
    }

    /// Wires one end of doorbell `id`: `ring`: guest writes to that
    /// doorbell register signal `fd` (ioeventfd, no exit to the VMM); `gsi`
    /// or `vector`: signalling `fd` interrupts the guest (irqfd) on that
    /// IO-APIC pin or as that MSI.
    pub fn wire(
        &self,
        id: &str,
        fd: OwnedFd,
        ring: Option<u32>,
        gsi: Option<u32>,
        vector: Option<u8>,
    ) -> Result<(), DoorbellError> {
        let max = parvm_protocol::grant::DOORBELLS;
        // SAFETY: `fd` is an eventfd the manager created and sent us; the
        // EventFd takes sole ownership of the descriptor.
        let evt = unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) };
        let irq = |source| DoorbellError::Interrupt {
            id: id.into(),
            source,
        };
        let owner = format!("doorbell {id}");
        match (ring, gsi, vector) {
            (Some(ring), None, None) => {
                if ring >= max {
                    return Err(DoorbellError::Ring {
                        id: id.into(),
                        ring,
                        max: max - 1,
                    });
                }
                let addr = kvm_ioctls::IoEventAddress::Mmio(DOORBELL_BASE + 8 * u64::from(ring));
                self.vm
                    .register_ioevent(&evt, &addr, kvm_ioctls::NoDatamatch)
                    .map_err(|source| DoorbellError::Wire {
                        id: id.into(),
                        what: "KVM_IOEVENTFD",
                        source,
                    })?;
            }
            (None, Some(gsi), None) => {
                let gsi = self.interrupts.share_pin(gsi, &owner).map_err(irq)?;
                self.interrupts.connect(&evt, gsi).map_err(irq)?;
            }
            (None, None, Some(vector)) => {
                let gsi = self.interrupts.add_msi(vector, &owner).map_err(irq)?;
                self.interrupts.connect(&evt, gsi).map_err(irq)?;
            }
            _ => return Err(DoorbellError::DoorbellEnd { id: id.into() }),
        }
        tracing::info!(doorbell = id, ?ring, ?gsi, ?vector, "doorbell wired");
        lock(&self.wired).push((id.to_string(), evt));
        Ok(())
    }

    /// A duplicate of every wired eventfd, as `doorbell:ID`.
    pub fn held(&self) -> Vec<(String, OwnedFd)> {
        let mut out = Vec::new();
        for (id, evt) in lock(&self.wired).iter() {
            // SAFETY: dup(2) of a descriptor the EventFd keeps open; the
            // result is checked and owned by the OwnedFd.
            let fd = unsafe { libc::dup(evt.as_raw_fd()) };
            if fd >= 0 {
                // SAFETY: a fresh descriptor owned by nobody else.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                out.push((format!("doorbell:{id}"), fd));
            }
        }
        out
    }
}
