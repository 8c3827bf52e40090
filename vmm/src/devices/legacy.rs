//! Small legacy devices: the i8042 controller (only its CPU-reset command
//! matters: the VMM tears the partition down and exits 0) and the ACPI
//! hardware-reduced sleep/reset port described in the FADT.

use super::bus::BusDevice;
use super::exit::{ExitReason, ExitSignal};
use crate::acpi::{RESET_VALUE, S5_SLEEP_VALUE};
use std::sync::Arc;
use vm_superio::{I8042Device, Trigger};

/// Turns a device's "reset" into a VMM exit request.
pub struct ResetTrigger(pub Arc<ExitSignal>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::Reset);
        Ok(())
    }
}

/// i8042 at ports 0x60-0x64 (offsets 0 and 4).
pub struct I8042(pub I8042Device<ResetTrigger>);

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.0.read(offset as u8);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&v) = data.first() {
            // The trigger is infallible.
            let _ = self.0.write(offset as u8, v);
        }
    }
}

/// The FADT's sleep control/status and reset register (one I/O port).
pub struct AcpiPowerPort(pub Arc<ExitSignal>);

impl BusDevice for AcpiPowerPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        match data.first() {
            Some(&v) if v == S5_SLEEP_VALUE => self.0.request(ExitReason::PowerOff),
            Some(&v) if v == RESET_VALUE => self.0.request(ExitReason::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn i8042_reset_command_requests_exit() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut dev = I8042(I8042Device::new(ResetTrigger(exit.clone())));
        dev.write(4, &[0x20]);
        assert!(!exit.requested());
        dev.write(4, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn acpi_port_powers_off_only_on_s5() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut port = AcpiPowerPort(exit.clone());
        port.write(0, &[0x55]);
        port.write(0, &[]);
        assert!(!exit.requested());
        port.write(0, &[S5_SLEEP_VALUE]);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }
}
