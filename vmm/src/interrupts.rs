//! The partition's interrupt lines, in one place: which GSI goes where, who
//! holds it, and the one routing table KVM is given.
//!
//! At start [`Interrupts::new`] commits the routing a PC has (and the MADT
//! describes). Then devices ask for lines instead of computing GSIs:
//! [`Interrupts::claim`] for a fixed ISA IRQ (COM1's 4),
//! [`Interrupts::allocate_pin`] for the next free IO-APIC pin (the virtio
//! disks, in order from [`FIRST_FREE_PIN`]), [`Interrupts::share_pin`] for a
//! doorbell on a pin the guest programs itself, and [`Interrupts::add_msi`]
//! for a message-signalled vector (a new GSI above the IO-APIC's, its route
//! committed here). [`Interrupts::connect`] attaches an irqfd to a line.
//!
//! Pins are handed out at boot and never given back (no hot-unplug); MSI
//! routes are added while the partition runs (the control thread wires
//! doorbells), so the table sits behind a lock.

use crate::acpi::{IOAPIC_PINS, PIT_GSI};
use crate::devices::bus::lock;
use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// The first IO-APIC pin the allocator hands out (0-4 are the PIT,
/// keyboard, cascade, COM2 and COM1 of a PC).
pub const FIRST_FREE_PIN: u32 = 5;
/// The first GSI of message-signalled routes (after the IO-APIC's pins).
const FIRST_MSI_GSI: u32 = IOAPIC_PINS;
/// Where an MSI to local APIC 0, fixed delivery, is written.
const MSI_ADDRESS_APIC0: u32 = 0xfee0_0000;

#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("no free IO-APIC pin for {owner} (pins {FIRST_FREE_PIN}-{} are all taken)", IOAPIC_PINS - 1)]
    NoPin { owner: String },
    #[error("IRQ {gsi} for {owner} is taken by {holder}")]
    Taken {
        gsi: u32,
        owner: String,
        holder: String,
    },
    #[error("GSI {gsi} is not free here (use {first}-{last})")]
    NotFree { gsi: u32, first: u32, last: u32 },
    #[error("vector {vector} is reserved for exceptions (use 32-255)")]
    Vector { vector: u8 },
    #[error("the GSI routing table cannot grow to {0} entries")]
    TableFull(usize),
    #[error("KVM: {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

#[derive(Default)]
struct Table {
    /// What KVM was last given.
    routes: Vec<kvm_irq_routing_entry>,
    /// IO-APIC pins held by a device (exclusive), by GSI.
    pins: BTreeMap<u32, String>,
    /// Pins doorbells share (the guest programs them), by GSI.
    shared: BTreeMap<u32, Vec<String>>,
    next_msi: u32,
}

/// The interrupt lines of one VM.
pub struct Interrupts {
    vm: Arc<VmFd>,
    table: Mutex<Table>,
}

impl Interrupts {
    /// Commits the PC routing (needs the in-kernel irqchip): GSIs 0-15
    /// reach the 8259s, GSI 0 (the PIT) reaches IO-APIC pin 2 as the MADT's
    /// override says, every other GSI its own IO-APIC pin. KVM's default
    /// would send GSI 0 to pin 0.
    pub fn new(vm: Arc<VmFd>) -> Result<Self, InterruptError> {
        let route = |gsi: u32, chip: u32, pin: u32| {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_IRQCHIP,
                ..Default::default()
            };
            e.u.irqchip.irqchip = chip;
            e.u.irqchip.pin = pin;
            e
        };
        let mut routes = Vec::new();
        for gsi in 0..16u32 {
            match gsi {
                2 => {}
                0..8 => routes.push(route(gsi, KVM_IRQCHIP_PIC_MASTER, gsi)),
                _ => routes.push(route(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8)),
            }
        }
        for gsi in 0..IOAPIC_PINS {
            match gsi {
                0 => routes.push(route(0, KVM_IRQCHIP_IOAPIC, PIT_GSI)),
                2 => {}
                _ => routes.push(route(gsi, KVM_IRQCHIP_IOAPIC, gsi)),
            }
        }
        commit(&vm, &routes)?;
        Ok(Interrupts {
            vm,
            table: Mutex::new(Table {
                routes,
                next_msi: FIRST_MSI_GSI,
                ..Default::default()
            }),
        })
    }

    /// Takes the fixed line `gsi` (an ISA IRQ) for `owner`.
    pub fn claim(&self, gsi: u32, owner: &str) -> Result<u32, InterruptError> {
        let mut t = lock(&self.table);
        let holder = t
            .pins
            .get(&gsi)
            .cloned()
            .or_else(|| t.shared.get(&gsi).map(|d| d.join(", ")));
        if let Some(holder) = holder {
            return Err(InterruptError::Taken {
                gsi,
                owner: owner.into(),
                holder,
            });
        }
        t.pins.insert(gsi, owner.into());
        Ok(gsi)
    }

    /// The lowest free IO-APIC pin from [`FIRST_FREE_PIN`] on, for `owner`
    /// alone.
    pub fn allocate_pin(&self, owner: &str) -> Result<u32, InterruptError> {
        let mut t = lock(&self.table);
        let free = (FIRST_FREE_PIN..IOAPIC_PINS)
            .find(|g| !t.pins.contains_key(g) && !t.shared.contains_key(g));
        let Some(gsi) = free else {
            return Err(InterruptError::NoPin {
                owner: owner.into(),
            });
        };
        t.pins.insert(gsi, owner.into());
        Ok(gsi)
    }

    /// Pin `gsi` for a doorbell: any pin above the devices' that no device
    /// holds; several doorbells may share one.
    pub fn share_pin(&self, gsi: u32, owner: &str) -> Result<u32, InterruptError> {
        let mut t = lock(&self.table);
        let first = t
            .pins
            .range(FIRST_FREE_PIN..)
            .next_back()
            .map_or(FIRST_FREE_PIN, |(g, _)| g + 1);
        if gsi < first || gsi >= IOAPIC_PINS {
            return Err(InterruptError::NotFree {
                gsi,
                first,
                last: IOAPIC_PINS - 1,
            });
        }
        t.shared.entry(gsi).or_default().push(owner.into());
        Ok(gsi)
    }

    /// A new GSI routed as an MSI of `vector` to local APIC 0, fixed
    /// delivery, committed to KVM before this returns.
    pub fn add_msi(&self, vector: u8, owner: &str) -> Result<u32, InterruptError> {
        if vector < 32 {
            return Err(InterruptError::Vector { vector });
        }
        let mut t = lock(&self.table);
        let gsi = t.next_msi;
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = MSI_ADDRESS_APIC0;
        e.u.msi.address_hi = 0;
        e.u.msi.data = u32::from(vector);
        t.routes.push(e);
        if let Err(err) = commit(&self.vm, &t.routes) {
            t.routes.pop();
            return Err(err);
        }
        t.next_msi += 1;
        tracing::debug!(gsi, vector, owner, "MSI route added");
        Ok(gsi)
    }

    /// Signalling `evt` raises line `gsi` (KVM_IRQFD).
    pub fn connect(&self, evt: &EventFd, gsi: u32) -> Result<(), InterruptError> {
        self.vm
            .register_irqfd(evt, gsi)
            .map_err(|source| InterruptError::Kvm {
                what: "KVM_IRQFD",
                source,
            })
    }
}

fn commit(vm: &VmFd, routes: &[kvm_irq_routing_entry]) -> Result<(), InterruptError> {
    let table =
        KvmIrqRouting::from_entries(routes).map_err(|_| InterruptError::TableFull(routes.len()))?;
    vm.set_gsi_routing(&table)
        .map_err(|source| InterruptError::Kvm {
            what: "KVM_SET_GSI_ROUTING",
            source,
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn interrupts() -> Interrupts {
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        Interrupts::new(vm).unwrap()
    }

    #[test]
    fn pins_come_in_order_and_are_held_once() {
        let irq = interrupts();
        assert_eq!(irq.claim(4, "serial").unwrap(), 4);
        assert!(matches!(
            irq.claim(4, "other"),
            Err(InterruptError::Taken { gsi: 4, .. })
        ));
        assert_eq!(irq.allocate_pin("disk0").unwrap(), FIRST_FREE_PIN);
        assert_eq!(irq.allocate_pin("disk1").unwrap(), FIRST_FREE_PIN + 1);
        // Doorbells share pins above the devices'.
        let e = irq.share_pin(6, "db").unwrap_err();
        assert_eq!(e.to_string(), "GSI 6 is not free here (use 7-23)");
        assert!(irq.share_pin(24, "db").is_err());
        assert_eq!(irq.share_pin(22, "a").unwrap(), 22);
        assert_eq!(irq.share_pin(22, "b").unwrap(), 22);
        assert!(irq.claim(22, "c").is_err());
        for _ in FIRST_FREE_PIN + 2..IOAPIC_PINS - 1 {
            irq.allocate_pin("more").unwrap();
        }
        assert!(matches!(
            irq.allocate_pin("last"),
            Err(InterruptError::NoPin { .. })
        ));
    }

    #[test]
    fn msi_routes_get_gsis_above_the_io_apic() {
        let irq = interrupts();
        assert!(matches!(
            irq.add_msi(31, "x"),
            Err(InterruptError::Vector { vector: 31 })
        ));
        assert_eq!(irq.add_msi(0x40, "a").unwrap(), IOAPIC_PINS);
        assert_eq!(irq.add_msi(0x41, "b").unwrap(), IOAPIC_PINS + 1);
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        irq.connect(&evt, IOAPIC_PINS + 1).unwrap();
    }
}
