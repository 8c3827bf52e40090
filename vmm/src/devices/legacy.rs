//! Small legacy devices: the i8042 controller (only its CPU-reset command
//! matters: the VMM tears the partition down and exits 0) and the ACPI
//! hardware-reduced sleep/reset port described in the FADT.

use super::bus::BusDevice;
use super::exit::{CrashKind, ExitReason, ExitSignal};
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

/// pvpanic (QEMU's ISA device, one I/O port): reads offer the events
/// PANICKED (bit 0) and CRASH_LOADED (bit 1); a write of PANICKED is a
/// crash of kind pvpanic (dumped per `on_crash`); CRASH_LOADED (the guest
/// runs its own kdump kernel) is only logged.
pub struct Pvpanic(pub Arc<ExitSignal>);

pub const PVPANIC_PANICKED: u8 = 1;
pub const PVPANIC_CRASH_LOADED: u8 = 2;

impl BusDevice for Pvpanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        }
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else {
            return;
        };
        if v & PVPANIC_PANICKED != 0 {
            self.0.request(ExitReason::Crash {
                kind: CrashKind::Pvpanic,
                reason: "guest panic reported through pvpanic".into(),
                registers: String::new(),
            });
        } else if v & PVPANIC_CRASH_LOADED != 0 {
            tracing::warn!("guest reports a crash kernel loaded (pvpanic CRASH_LOADED)");
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
    fn pvpanic_offers_both_events_and_a_panic_is_a_crash() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut dev = Pvpanic(exit.clone());
        let mut b = [0u8; 1];
        dev.read(0, &mut b);
        assert_eq!(b[0], 3);
        dev.write(0, &[PVPANIC_CRASH_LOADED]);
        dev.write(0, &[]);
        assert!(!exit.requested());
        dev.write(0, &[PVPANIC_PANICKED]);
        assert!(matches!(
            exit.reason(),
            Some(ExitReason::Crash {
                kind: CrashKind::Pvpanic,
                ..
            })
        ));
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
