//! Devices the VMM emulates itself, reached through a [`bus::Bus`] of address
//! ranges: the 8250 serial console, the i8042 (guest reset = VMM exit), and
//! the ACPI power/reset port. [`exit::ExitSignal`] is how any device or vCPU
//! asks the VMM to stop.

pub mod bus;
pub mod exit;
pub mod legacy;
pub mod serial;
pub mod virtio;
