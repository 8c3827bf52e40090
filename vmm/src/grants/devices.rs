//! The two bus devices of grants: a [`GrantWindow`] sees the accesses
//! that exit inside a grant window, the [`HcallDevice`] is the hcall page.

use super::hcall::{decode_call, regs};
use super::GrantMaps;
use crate::devices::bus::{lock, BusDevice, Completion};
use parvm_protocol::HcallOutcome;
use std::sync::{Arc, Mutex};

/// A grant window on the MMIO bus: sees only what exits (see the module
/// documentation).
pub struct GrantWindow {
    pub maps: Arc<GrantMaps>,
    pub base: u64,
}

impl BusDevice for GrantWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if !self.maps.read_live(self.base + offset, data) {
            data.fill(0xff);
            self.maps.fault(self.base + offset, false);
        }
    }
    fn write(&mut self, offset: u64, _data: &[u8]) {
        self.maps.fault(self.base + offset, true);
    }
}

/// The hcall page: a register file the guest fills, then a write of the
/// opcode runs the call. The writing vCPU waits for the manager's answer
/// in the write's [`Completion`], outside the bus's lock on this device:
/// other vCPUs keep reading and writing the page meanwhile.
pub struct HcallDevice {
    maps: Arc<GrantMaps>,
    /// Its own lock: a call's outcome is written into it by the completion,
    /// after the bus has let go of the device.
    file: Arc<Mutex<Registers>>,
}

/// The registers as the guest sees them.
struct Registers([u8; regs::END as usize]);

impl Registers {
    fn put(&mut self, offset: u64, bytes: &[u8]) {
        let o = offset as usize;
        self.0[o..o + bytes.len()].copy_from_slice(bytes);
    }

    fn set_outcome(&mut self, outcome: &HcallOutcome) {
        self.put(regs::STATUS, &outcome.status.to_le_bytes());
        self.put(regs::RESULT0, &outcome.result0.to_le_bytes());
        self.put(regs::RESULT1, &outcome.result1.to_le_bytes());
        if let Some(c) = &outcome.cookie {
            self.put(regs::COOKIE, &c.0);
        }
    }
}

impl HcallDevice {
    pub fn new(maps: Arc<GrantMaps>) -> Self {
        let mut file = [0u8; regs::END as usize];
        file[0..4].copy_from_slice(&regs::MAGIC_VALUE.to_le_bytes());
        file[4..8].copy_from_slice(&regs::ABI_VERSION.to_le_bytes());
        HcallDevice {
            maps,
            file: Arc::new(Mutex::new(Registers(file))),
        }
    }

    /// Starts the call the registers describe (its inputs are read now);
    /// the completion waits for the answer and fills in the outputs.
    fn start(&self, opcode: u32) -> Option<Completion> {
        let decoded = decode_call(opcode, &lock(&self.file).0);
        match decoded {
            Ok(call) => {
                let pending = self.maps.link.start(call);
                let (maps, file) = (self.maps.clone(), self.file.clone());
                Some(Box::new(move || {
                    let outcome = maps.link.wait(pending);
                    lock(&file).set_outcome(&outcome);
                }))
            }
            Err(status) => {
                lock(&self.file).set_outcome(&HcallOutcome {
                    status,
                    result0: 0,
                    result1: 0,
                    cookie: None,
                });
                None
            }
        }
    }
}

impl BusDevice for HcallDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let end = offset.saturating_add(data.len() as u64);
        if end <= regs::END {
            data.copy_from_slice(&lock(&self.file).0[offset as usize..end as usize]);
        } else {
            data.fill(0);
        }
    }

    /// A write outside the bus: a call waits for its answer right here.
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(finish) = self.write_deferred(offset, data) {
            finish();
        }
    }

    fn write_deferred(&mut self, offset: u64, data: &[u8]) -> Option<Completion> {
        let end = offset.saturating_add(data.len() as u64);
        if offset == regs::OP && (data.len() == 4 || data.len() == 8) {
            let mut b = [0u8; 4];
            b.copy_from_slice(&data[..4]);
            return self.start(u32::from_le_bytes(b));
        }
        // Writable: arguments, cookies, name.
        let writable = (offset >= regs::ARG0 && end <= regs::RESULT0)
            || (offset >= regs::COOKIE && end <= regs::END);
        if writable {
            lock(&self.file).put(offset, data);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::grants::hcall::op;
    use crate::interrupts::Interrupts;
    use parvm_protocol::grant::status;

    #[test]
    fn the_hcall_page_reads_its_magic_and_ignores_stray_writes() {
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let irq = Arc::new(Interrupts::new(vm.clone()).unwrap());
        let maps = Arc::new(GrantMaps::new(vm, 16 << 20, 32, irq));
        let mut dev = HcallDevice::new(maps);
        let mut b = [0u8; 4];
        dev.read(regs::MAGIC, &mut b);
        assert_eq!(&b, b"PVHC");
        dev.write(regs::MAGIC, &[0, 0, 0, 0]);
        dev.read(regs::MAGIC, &mut b);
        assert_eq!(&b, b"PVHC");
        let mut far = [1u8; 8];
        dev.read(0xff8, &mut far);
        assert_eq!(far, [0; 8]);
        dev.write(0xff8, &far);
        // A call without a manager answers NO_MANAGER at once.
        dev.write(regs::NAME, b"bob\0");
        dev.write(regs::ARG1, &1u64.to_le_bytes());
        dev.write(regs::OP, &op::GRANT.to_le_bytes());
        dev.read(regs::STATUS, &mut b);
        assert_eq!(u32::from_le_bytes(b), status::NO_MANAGER);
    }
}
