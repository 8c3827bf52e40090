//! Shared memory from other partitions (grant cookies, DESIGN.md) as the
//! guest sees it: segments mapped as extra KVM memory slots in the *grant
//! windows*, doorbells, and the hcall device through which the guest
//! grants, accepts, regrants, revokes and copies (docs/hcall.md).
//!
//! Windows (guest physical):
//!
//! | range | what |
//! |---|---|
//! | `0xe000_0000 - 0xefff_ffff` | low grant window, in the MMIO hole (reachable by 32-bit guests) |
//! | `0xf000_0000 - 0xf000_0fff` | the hcall page |
//! | `0xf000_1000 - 0xf000_1fff` | the doorbell registers |
//! | top of RAM above 4 GiB (at least 4 GiB) `- 2^46` | high grant window |
//!
//! By job:
//! - [`slots`]: where a segment goes, its KVM memory slot, the host mmap.
//! - [`faults`]: refused accesses, counted and reported (rate-limited).
//! - [`doorbells`]: eventfds wired as ioeventfd or irqfd.
//! - [`link`]: the [`ManagerLink`] that fault reports and hcalls go out on.
//! - [`hcall`]: the hcall page's registers and the call decoder.
//! - [`devices`]: the bus devices, [`GrantWindow`] and [`HcallDevice`].
//! - this file: [`GrantMaps`], the one object the rest of the VMM holds.
//!
//! Data flows: the control thread gets `Map` (with a memfd) or `Unmap` from
//! the manager and calls [`GrantMaps::map`] / [`GrantMaps::unmap`], then
//! acknowledges. Guest accesses that exit to the VMM inside a window (an
//! unmapped address, or a write to a read-only slot) reach a
//! [`GrantWindow`], which answers reads with `0xff` bytes, ignores writes
//! and reports accesses to revoked mappings and writes to read-only ones to
//! the manager through the [`ManagerLink`]. The [`HcallDevice`] sends the
//! guest's calls on the same link; the calling vCPU waits for the answer.

pub mod devices;
pub mod doorbells;
pub mod faults;
pub mod hcall;
pub mod link;
pub mod slots;

pub use devices::{GrantWindow, HcallDevice};
pub use doorbells::DoorbellError;
pub use hcall::{decode_call, op, regs};
pub use link::{ManagerLink, Sender};
pub use slots::MapError;

use crate::devices::bus::lock;
use crate::interrupts::Interrupts;
use faults::FaultLog;
use kvm_ioctls::VmFd;
use slots::Slots;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

/// The low grant window (in the MMIO hole, below the hcall page).
pub const GRANT_WINDOW_START: u64 = 0xe000_0000;
pub const GRANT_WINDOW_SIZE: u64 = 0x1000_0000;
/// The hcall page.
pub const HCALL_BASE: u64 = 0xf000_0000;
pub const HCALL_SIZE: u64 = 0x1000;
/// The doorbell page: register `n` (8 bytes) at `DOORBELL_BASE + 8 * n`.
pub const DOORBELL_BASE: u64 = 0xf000_1000;
/// End of the high grant window (46 address bits).
pub const HIGH_WINDOW_END: u64 = 1 << 46;

/// The slots and their faults change together, under one lock.
struct Table {
    slots: Slots,
    faults: FaultLog,
}

/// The grants of one partition: mappings, doorbells, the manager link.
pub struct GrantMaps {
    high_start: u64,
    table: Mutex<Table>,
    doorbells: doorbells::Doorbells,
    pub link: ManagerLink,
}

impl GrantMaps {
    /// `ram_bytes` of RAM fix where the high window starts; `max_slots` is
    /// KVM's memory slot limit; doorbells ask `interrupts` for their lines.
    pub fn new(
        vm: Arc<VmFd>,
        ram_bytes: u64,
        max_slots: usize,
        interrupts: Arc<Interrupts>,
    ) -> Self {
        let slots = Slots::new(vm.clone(), ram_bytes, max_slots);
        GrantMaps {
            high_start: slots.high_start,
            table: Mutex::new(Table {
                slots,
                faults: FaultLog::default(),
            }),
            doorbells: doorbells::Doorbells::new(vm, interrupts),
            link: ManagerLink::default(),
        }
    }

    /// Where the high window starts.
    pub fn high_start(&self) -> u64 {
        self.high_start
    }

    /// Maps `size` bytes of `fd` at `gpa` (or a place chosen here) as a
    /// new KVM slot, read-only if asked. Returns the address.
    pub fn map(
        &self,
        key: &str,
        fd: OwnedFd,
        gpa: Option<u64>,
        size: u64,
        read_only: bool,
    ) -> Result<u64, MapError> {
        let mut t = lock(&self.table);
        let gpa = t.slots.map(key, fd, gpa, size, read_only)?;
        t.faults.mapped(gpa, size);
        Ok(gpa)
    }

    /// Removes mapping `key`: once this returns the guest can no longer
    /// reach the memory (KVM has dropped the slot). Unknown keys are fine
    /// (already gone).
    pub fn unmap(&self, key: &str) -> Result<(), MapError> {
        let mut t = lock(&self.table);
        if let Some(m) = t.slots.unmap(key)? {
            t.faults.unmapped(&m.key, m.gpa, m.size);
        }
        Ok(())
    }

    /// A read that exited although the address is mapped (KVM may emulate
    /// an access to a read-only slot in userspace): served from the
    /// mapping. False if `gpa` is not inside a live mapping.
    pub fn read_live(&self, gpa: u64, data: &mut [u8]) -> bool {
        lock(&self.table).slots.read(gpa, data)
    }

    /// A guest access that exited to the VMM inside a window: a write to a
    /// read-only mapping, or any access to a revoked one, is counted and
    /// reported (at most every [`faults::REPORT_INTERVAL`] per mapping).
    pub fn fault(&self, gpa: u64, write: bool) {
        let report = {
            let mut t = lock(&self.table);
            let Table { slots, faults } = &mut *t;
            match slots.find(gpa).filter(|_| write) {
                Some(m) => faults.write_to_live(&m.key, m.read_only, gpa),
                None => faults.unmapped_access(gpa, write),
            }
        };
        if let Some(msg) = report {
            self.link.send(msg);
        }
    }

    /// Wires one end of doorbell `id` (see [`doorbells`]).
    pub fn doorbell(
        &self,
        id: &str,
        fd: OwnedFd,
        ring: Option<u32>,
        gsi: Option<u32>,
        vector: Option<u8>,
    ) -> Result<(), DoorbellError> {
        self.doorbells.wire(id, fd, ring, gsi, vector)
    }

    /// Every live mapping's key and a duplicate of its memory descriptor,
    /// and every wired doorbell's eventfd as `doorbell:ID` (for a manager
    /// that restarted and lost its own).
    pub fn held(&self) -> Vec<(String, Option<u64>, OwnedFd)> {
        let mut out: Vec<(String, Option<u64>, OwnedFd)> = lock(&self.table)
            .slots
            .live
            .values()
            .filter_map(|m| Some((m.key.clone(), Some(m.gpa), m.fd.try_clone().ok()?)))
            .collect();
        out.extend(
            self.doorbells
                .held()
                .into_iter()
                .map(|(key, fd)| (key, None, fd)),
        );
        out
    }

    /// The live mappings: (key, gpa, size, read-only).
    pub fn mappings(&self) -> Vec<(String, u64, u64, bool)> {
        lock(&self.table)
            .slots
            .live
            .values()
            .map(|m| (m.key.clone(), m.gpa, m.size, m.read_only))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use parvm_protocol::ToManager;
    use slots::PLACE_ALIGN;

    fn memfd(size: u64) -> OwnedFd {
        // SAFETY: memfd_create with a valid name; checked.
        let fd = unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh descriptor.
        let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.set_len(size).unwrap();
        f.into()
    }

    #[test]
    fn mappings_stay_inside_the_windows_and_apart() {
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let irq = Arc::new(Interrupts::new(vm.clone()).unwrap());
        let maps = GrantMaps::new(vm, 64 << 20, kvm.get_nr_memslots(), irq);
        assert_eq!(maps.high_start(), 4 << 30);
        let a = maps
            .map(
                "a",
                memfd(1 << 20),
                Some(GRANT_WINDOW_START),
                1 << 20,
                false,
            )
            .unwrap();
        assert_eq!(a, GRANT_WINDOW_START);
        for (gpa, conflict) in [
            (0x10_0000, true),          // RAM
            (0xfec0_0000, true),        // IOAPIC
            (GRANT_WINDOW_START, true), // taken
            (GRANT_WINDOW_START + 0x8_0000, true),
            (0xefff_f000, true), // crosses the window's end
            (GRANT_WINDOW_START + 1, false),
        ] {
            let e = maps
                .map("x", memfd(1 << 20), Some(gpa), 1 << 20, false)
                .unwrap_err();
            assert_eq!(e.is_conflict(), conflict, "{gpa:#x}: {e}");
        }
        assert!(matches!(
            maps.map("a", memfd(4096), None, 4096, false),
            Err(MapError::Duplicate(_))
        ));
        assert!(matches!(
            maps.map("s", memfd(4096), None, 8192, false),
            Err(MapError::Short { .. })
        ));
        let b = maps.map("b", memfd(4096), None, 4096, true).unwrap();
        assert_eq!(b, GRANT_WINDOW_START + PLACE_ALIGN);
        let hi = maps
            .map("h", memfd(4096), Some(5 << 30), 4096, false)
            .unwrap();
        assert_eq!(hi, 5 << 30);
        assert_eq!(maps.mappings().len(), 3);
        maps.unmap("a").unwrap();
        maps.unmap("a").unwrap();
        let c = maps.map("c", memfd(4096), None, 4096, false).unwrap();
        assert_eq!(c, GRANT_WINDOW_START);
        // Faults: a revoked range and a read-only write are reported.
        let sent = Arc::new(Mutex::new(Vec::new()));
        let s2 = sent.clone();
        maps.link.set_sender(Box::new(move |m| {
            s2.lock().unwrap().push(m);
            true
        }));
        maps.unmap("c").unwrap();
        maps.fault(GRANT_WINDOW_START + 8, false);
        maps.fault(GRANT_WINDOW_START + 8, false);
        maps.fault(b, true);
        maps.fault(0xe800_0000, false);
        let mut word = [0u8; 4];
        assert!(maps.read_live(b, &mut word));
        assert_eq!(word, [0; 4]);
        assert!(!maps.read_live(b + 4094, &mut word));
        let sent = sent.lock().unwrap();
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(
            matches!(&sent[0], ToManager::Fault { key, count: 1, write: false, .. } if key == "c")
        );
        assert!(matches!(&sent[1], ToManager::Fault { key, write: true, .. } if key == "b"));
    }
}
