//! The 8250 UART on COM1 (vm-superio), its output going to the partition's
//! console, its interrupt to an irqfd on IRQ 4, and host input fed in by the
//! main thread.

use super::bus::BusDevice;
use std::io::Write;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;

/// Raises the serial interrupt through an eventfd registered as an irqfd.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Console output that flushes every write, so a line appears as soon as the
/// guest has written it. If the console goes away (a closed pipe, a full
/// disk), that is logged once and the guest's further output is dropped: the
/// guest keeps running, and the log is not flooded with one line per byte.
pub struct ConsoleOut {
    out: Box<dyn Write + Send>,
    broken: bool,
}

impl ConsoleOut {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        ConsoleOut { out, broken: false }
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.broken {
            return Ok(buf.len());
        }
        let written = self
            .out
            .write(buf)
            .and_then(|n| self.out.flush().map(|_| n));
        match written {
            Ok(n) => Ok(n),
            Err(e) => {
                self.broken = true;
                tracing::warn!(error = %e, "console output failed; dropping further guest output");
                Ok(buf.len())
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.broken {
            return Ok(());
        }
        self.out.flush()
    }
}

pub type SerialDevice = Serial<EventFdTrigger, vm_superio::serial::NoEvents, ConsoleOut>;

pub struct SerialPort(pub SerialDevice);

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.0.read(offset as u8);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&v) = data.first() {
            if let Err(e) = self.0.write(offset as u8, v) {
                tracing::warn!(error = ?e, "serial write failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Broken(usize);
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            self.0 += 1;
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_broken_console_is_tried_once_then_dropped() {
        let mut out = ConsoleOut::new(Box::new(Broken(0)));
        for _ in 0..3 {
            assert_eq!(out.write(b"x").unwrap(), 1);
        }
        assert!(out.broken);
    }

    #[test]
    fn bytes_written_to_thr_reach_the_console() {
        let out = Shared::default();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut port = SerialPort(Serial::new(
            EventFdTrigger(evt),
            ConsoleOut::new(Box::new(out.clone())),
        ));
        for b in b"hi\n" {
            port.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        let mut lsr = [0u8];
        port.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter empty");
    }
}
