//! A bus of address ranges (port I/O or MMIO): devices are registered by
//! `[base, base + len)` and receive accesses as offsets into their range.
//!
//! Each access locks the one device it reaches, for as long as the device
//! takes. A write that has to wait for something outside the VMM (an hcall
//! waiting for the partition manager) does not wait there: the device
//! returns a [`Completion`], which the bus runs on the writing vCPU's thread
//! after it has unlocked the device, so other vCPUs keep reaching it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The rest of a write, run by the bus once the device is unlocked; the
/// guest's write instruction completes (its vCPU re-enters the guest) only
/// after it has run. Cloud Hypervisor's `BusDevice::write` returns a
/// barrier for the same purpose.
pub type Completion = Box<dyn FnOnce() + Send>;

/// A device that answers reads and writes at offsets into its range.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
    /// What the bus calls for a write: a device whose write may have to
    /// wait returns the waiting part as a [`Completion`] instead of doing it
    /// under its lock. Most devices finish at once and need not override it.
    fn write_deferred(&mut self, offset: u64, data: &[u8]) -> Option<Completion> {
        self.write(offset, data);
        None
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap { base: u64, len: u64 },
}

type Entry = (u64, Arc<Mutex<dyn BusDevice>>);

/// Devices by base address. Built before the vCPUs start, then shared.
#[derive(Default, Clone)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::Overlap { base, len });
        };
        let before = self.devices.range(..end).next_back();
        if let Some((b, (l, _))) = before {
            if b + l > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        let (base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset.checked_add(size as u64)? <= *len).then_some((offset, dev))
    }

    /// Forwards a read; returns false (data untouched) if no device claims it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Forwards a write, and runs its [`Completion`] (if any) once the
    /// device is unlocked; returns false if no device claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                let completion = lock(dev).write_deferred(offset, data);
                if let Some(finish) = completion {
                    finish();
                }
                true
            }
            None => false,
        }
    }
}

/// Locks a device; a device whose holder panicked is still usable (its state
/// is plain data), so poisoning is ignored rather than spreading the panic.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Default)]
    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b[0], 5);
        assert!(bus.write(0x3f8, b"x"));
        assert_eq!(dev.lock().unwrap().0, vec![(0, vec![b'x'])]);
        assert!(!bus.read(0x400, &mut b));
        assert!(!bus.read(0x3f7, &mut b));
        // An access straddling the end of the range is not claimed.
        assert!(!bus.write(0x3ff, &[0, 0]));
    }

    /// Every write leaves a completion that waits for a message.
    struct Slow {
        release: Arc<Mutex<std::sync::mpsc::Receiver<()>>>,
        done: Arc<Mutex<bool>>,
    }
    impl BusDevice for Slow {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(0x5a);
        }
        fn write(&mut self, _offset: u64, _data: &[u8]) {}
        fn write_deferred(&mut self, _offset: u64, _data: &[u8]) -> Option<Completion> {
            let (release, done) = (self.release.clone(), self.done.clone());
            Some(Box::new(move || {
                let _ = lock(&release).recv();
                *lock(&done) = true;
            }))
        }
    }

    #[test]
    fn a_waiting_write_leaves_the_device_unlocked() {
        let (release, wait) = std::sync::mpsc::channel();
        let done = Arc::new(Mutex::new(false));
        let slow = Slow {
            release: Arc::new(Mutex::new(wait)),
            done: done.clone(),
        };
        let mut bus = Bus::new();
        bus.insert(0x1000, 0x10, Arc::new(Mutex::new(slow)))
            .unwrap();
        let bus = Arc::new(bus);
        let writer = {
            let bus = bus.clone();
            std::thread::spawn(move || assert!(bus.write(0x1000, &[1])))
        };
        // While the write waits, another thread reads the same device (a
        // device still locked would leave it waiting: no answer in time).
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (read_tx, read) = std::sync::mpsc::channel();
        let reader = bus.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 1];
            let claimed = reader.read(0x1004, &mut b);
            let _ = read_tx.send((claimed, b[0]));
        });
        let answer = read.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(answer, Ok((true, 0x5a)), "the device stayed locked");
        assert!(!*done.lock().unwrap(), "completed too early");
        assert!(!writer.is_finished(), "the write did not wait");
        release.send(()).unwrap();
        writer.join().unwrap();
        assert!(*done.lock().unwrap());
    }

    #[test]
    fn overlaps_and_empty_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(0x10, 0x10, Arc::new(Mutex::new(Recorder::default())))
            .unwrap();
        for (b, l) in [
            (0x18, 4),
            (0x8, 0x9),
            (0x0, 0x100),
            (0x40, 0),
            (u64::MAX, 2),
        ] {
            assert!(bus
                .insert(b, l, Arc::new(Mutex::new(Recorder::default())))
                .is_err());
        }
        bus.insert(0x20, 1, Arc::new(Mutex::new(Recorder::default())))
            .unwrap();
        bus.insert(0x8, 8, Arc::new(Mutex::new(Recorder::default())))
            .unwrap();
    }
}
