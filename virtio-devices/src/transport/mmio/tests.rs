//! virtio-mmio transport tests with a recording mock device.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACK, VIRTIO_CONFIG_S_DRIVER as DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FAILED as FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET as NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

use super::*;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

const DEVICE_FEATURES: u64 = (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << 5) | (1 << 40);
const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

#[derive(Default)]
struct Record {
    acked: Option<u64>,
    activations: usize,
    resets: usize,
    queue_state: Vec<(bool, u16, u64, u64, u64, bool)>,
    notify_evts: Vec<EventFd>,
    interrupt: Option<Arc<dyn InterruptSignal>>,
    config_writes: Vec<(u64, Vec<u8>)>,
    fail_activation: bool,
}

struct MockDevice {
    record: Arc<Mutex<Record>>,
    sizes: Vec<u16>,
    config: Vec<u8>,
}

impl VirtioDevice<Mem> for MockDevice {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        DEVICE_FEATURES
    }
    fn ack_features(&mut self, features: u64) {
        self.record.lock().unwrap().acked = Some(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        for (i, b) in data.iter_mut().enumerate() {
            if let Some(v) = self.config.get(offset as usize + i) {
                *b = *v;
            }
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.record
            .lock()
            .unwrap()
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(&mut self, activation: Activation<Mem>) -> Result<(), crate::ActivateError> {
        let mut record = self.record.lock().unwrap();
        if record.fail_activation {
            return Err(crate::ActivateError::QueueNotReady(0));
        }
        record.activations += 1;
        record.queue_state = activation
            .queues
            .iter()
            .map(|q| {
                (
                    q.ready(),
                    q.size(),
                    q.desc_table(),
                    q.avail_ring(),
                    q.used_ring(),
                    q.event_idx_enabled(),
                )
            })
            .collect();
        record.notify_evts = activation.notify_evts;
        record.interrupt = Some(activation.interrupt);
        Ok(())
    }
    fn reset(&mut self) {
        self.record.lock().unwrap().resets += 1;
    }
}

#[derive(Default)]
struct CountingInterrupt {
    count: AtomicUsize,
}

impl InterruptSignal for CountingInterrupt {
    fn trigger(&self, _kind: InterruptKind) -> std::io::Result<()> {
        self.count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Fixture {
    transport: MmioTransport<Mem>,
    record: Arc<Mutex<Record>>,
    irq: Arc<CountingInterrupt>,
}

fn fixture() -> Fixture {
    let mem = GuestMemoryAtomic::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap(),
    );
    let record = Arc::new(Mutex::new(Record::default()));
    let device = MockDevice {
        record: record.clone(),
        sizes: vec![256, 64],
        config: (0u8..32).collect(),
    };
    let irq = Arc::new(CountingInterrupt::default());
    let transport = MmioTransport::new(Box::new(device), mem, irq.clone()).unwrap();
    Fixture {
        transport,
        record,
        irq,
    }
}

impl Fixture {
    fn r(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn w(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    fn negotiate(&mut self, features: u64) {
        self.w(reg::STATUS, ACK);
        self.w(reg::STATUS, ACK | DRIVER);
        self.w(reg::DRIVER_FEATURES_SEL, 0);
        self.w(reg::DRIVER_FEATURES, features as u32);
        self.w(reg::DRIVER_FEATURES_SEL, 1);
        self.w(reg::DRIVER_FEATURES, (features >> 32) as u32);
        self.w(reg::STATUS, ACK | DRIVER | FEATURES_OK);
    }

    fn setup_queue(&mut self, index: u32, size: u32, base: u64) {
        self.w(reg::QUEUE_SEL, index);
        self.w(reg::QUEUE_NUM, size);
        self.w(reg::QUEUE_DESC_LOW, base as u32);
        self.w(reg::QUEUE_DESC_HIGH, (base >> 32) as u32);
        self.w(reg::QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
        self.w(reg::QUEUE_DRIVER_HIGH, 0);
        self.w(reg::QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
        self.w(reg::QUEUE_DEVICE_HIGH, 0);
        self.w(reg::QUEUE_READY, 1);
    }

    fn activate(&mut self) {
        self.negotiate(VERSION_1 | DEVICE_FEATURES);
        self.setup_queue(0, 128, 0x1_0000);
        self.setup_queue(1, 64, 0x2_0000);
        self.w(reg::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    }
}

#[test]
fn identification_registers() {
    let mut f = fixture();
    assert_eq!(f.r(reg::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(f.r(reg::VERSION), 2);
    assert_eq!(f.r(reg::DEVICE_ID), 42);
    assert_eq!(f.r(reg::VENDOR_ID), VENDOR_ID);
    assert_eq!(f.r(reg::CONFIG_GENERATION), 0);
    assert_eq!(f.r(reg::SHM_LEN_LOW), u32::MAX);
    assert_eq!(f.transport.queue_count(), 2);
    assert_eq!(f.transport.queue_notify_evts().len(), 2);
    assert_eq!(f.transport.device_type(), 42);
}

#[test]
fn device_features_by_selector() {
    let mut f = fixture();
    let offered = DEVICE_FEATURES | VERSION_1;
    f.w(reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(f.r(reg::DEVICE_FEATURES), offered as u32);
    f.w(reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(f.r(reg::DEVICE_FEATURES), (offered >> 32) as u32);
    f.w(reg::DEVICE_FEATURES_SEL, 2);
    assert_eq!(f.r(reg::DEVICE_FEATURES), 0);
}

#[test]
fn feature_negotiation_acks_the_device() {
    let mut f = fixture();
    f.negotiate(VERSION_1 | (1 << VIRTIO_RING_F_EVENT_IDX));
    assert_eq!(f.r(reg::STATUS), ACK | DRIVER | FEATURES_OK);
    assert_eq!(
        f.record.lock().unwrap().acked,
        Some(VERSION_1 | (1 << VIRTIO_RING_F_EVENT_IDX))
    );
    // Features cannot change after FEATURES_OK.
    f.w(reg::DRIVER_FEATURES_SEL, 0);
    f.w(reg::DRIVER_FEATURES, 0);
    f.w(reg::STATUS, ACK | DRIVER | FEATURES_OK);
    assert_eq!(f.transport.driver_features & VERSION_1, VERSION_1);
}

#[test]
fn features_ok_refused_without_version_1() {
    let mut f = fixture();
    f.negotiate(DEVICE_FEATURES);
    assert_eq!(
        f.r(reg::STATUS),
        ACK | DRIVER,
        "FEATURES_OK must stay clear"
    );
    assert_eq!(f.record.lock().unwrap().acked, None);
    // DRIVER_OK is then refused too.
    f.w(reg::STATUS, ACK | DRIVER | DRIVER_OK);
    assert_eq!(f.r(reg::STATUS), ACK | DRIVER);
    assert_eq!(f.record.lock().unwrap().activations, 0);
}

#[test]
fn features_ok_refused_with_unoffered_features() {
    let mut f = fixture();
    f.negotiate(VERSION_1 | (1 << 3));
    assert_eq!(f.r(reg::STATUS), ACK | DRIVER);
    assert_eq!(f.record.lock().unwrap().acked, None);
}

#[test]
fn driver_features_need_driver_state() {
    let mut f = fixture();
    f.w(reg::DRIVER_FEATURES_SEL, 1);
    f.w(reg::DRIVER_FEATURES, 1);
    assert_eq!(f.transport.driver_features, 0);
}

#[test]
fn status_bits_in_order_only() {
    let mut f = fixture();
    f.w(reg::STATUS, DRIVER);
    assert_eq!(f.r(reg::STATUS), 0, "DRIVER before ACKNOWLEDGE");
    f.w(reg::STATUS, ACK);
    f.w(reg::STATUS, ACK | FEATURES_OK);
    assert_eq!(f.r(reg::STATUS), ACK, "FEATURES_OK before DRIVER");
    f.w(reg::STATUS, ACK | DRIVER);
    f.w(reg::STATUS, ACK);
    assert_eq!(f.r(reg::STATUS), ACK | DRIVER, "bits only clear on reset");
    f.w(reg::STATUS, ACK | DRIVER | FAILED);
    assert_eq!(f.r(reg::STATUS), ACK | DRIVER | FAILED);
    // All bits at once in one write are applied in order.
    let mut f = fixture();
    f.w(reg::DRIVER_FEATURES_SEL, 1);
    f.w(reg::STATUS, ACK | DRIVER);
    f.w(reg::DRIVER_FEATURES, 1);
    f.w(reg::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(f.r(reg::STATUS), ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(f.record.lock().unwrap().activations, 1);
}

#[test]
fn queue_registers() {
    let mut f = fixture();
    f.w(reg::QUEUE_SEL, 1);
    assert_eq!(f.r(reg::QUEUE_NUM_MAX), 64);
    f.w(reg::QUEUE_SEL, 0);
    assert_eq!(f.r(reg::QUEUE_NUM_MAX), 256);
    f.w(reg::QUEUE_SEL, 7);
    assert_eq!(f.r(reg::QUEUE_NUM_MAX), 0, "no such queue");

    // Before FEATURES_OK, queue writes are ignored.
    f.w(reg::QUEUE_SEL, 0);
    f.w(reg::QUEUE_NUM, 16);
    assert_eq!(f.r(reg::QUEUE_NUM), 256);

    f.negotiate(VERSION_1);
    f.setup_queue(0, 16, 0x1_2345_0000);
    assert_eq!(f.r(reg::QUEUE_NUM), 16);
    assert_eq!(f.r(reg::QUEUE_READY), 1);
    assert_eq!(f.r(reg::QUEUE_DESC_LOW), 0x2345_0000);
    assert_eq!(f.r(reg::QUEUE_DESC_HIGH), 1);
    assert_eq!(f.r(reg::QUEUE_DRIVER_LOW), 0x2345_1000);
    assert_eq!(f.r(reg::QUEUE_DEVICE_LOW), 0x2345_2000);
    // No changes while the queue is ready.
    f.w(reg::QUEUE_NUM, 32);
    assert_eq!(f.r(reg::QUEUE_NUM), 16);
    f.w(reg::QUEUE_READY, 0);
    assert_eq!(f.r(reg::QUEUE_READY), 0);

    // Invalid sizes and misaligned rings are ignored.
    f.w(reg::QUEUE_NUM, 0);
    f.w(reg::QUEUE_NUM, 24);
    f.w(reg::QUEUE_NUM, 512);
    f.w(reg::QUEUE_NUM, 0x1_0000);
    assert_eq!(f.r(reg::QUEUE_NUM), 16);
    f.w(reg::QUEUE_DESC_LOW, 0x1008);
    assert_eq!(f.r(reg::QUEUE_DESC_LOW), 0x2345_0000);
    f.w(reg::QUEUE_DRIVER_LOW, 0x1001);
    assert_eq!(f.r(reg::QUEUE_DRIVER_LOW), 0x2345_1000);
    f.w(reg::QUEUE_DEVICE_LOW, 0x1002);
    assert_eq!(f.r(reg::QUEUE_DEVICE_LOW), 0x2345_2000);
    // Writes to a queue that does not exist are ignored.
    f.w(reg::QUEUE_SEL, 9);
    f.w(reg::QUEUE_NUM, 16);
    assert_eq!(f.r(reg::QUEUE_NUM), 0);
}

#[test]
fn driver_ok_activates_with_the_configured_queues() {
    let mut f = fixture();
    f.activate();
    assert_eq!(f.r(reg::STATUS), ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(f.transport.is_active());
    let record = f.record.lock().unwrap();
    assert_eq!(record.activations, 1);
    assert_eq!(
        record.queue_state,
        vec![
            (true, 128, 0x1_0000, 0x1_1000, 0x1_2000, true),
            (true, 64, 0x2_0000, 0x2_1000, 0x2_2000, true)
        ]
    );
    assert_eq!(record.notify_evts.len(), 2);
    drop(record);
    // Queue registers are frozen after DRIVER_OK.
    f.w(reg::QUEUE_SEL, 0);
    f.w(reg::QUEUE_READY, 0);
    assert_eq!(f.r(reg::QUEUE_READY), 1);
}

#[test]
fn event_idx_follows_negotiation() {
    let mut f = fixture();
    f.negotiate(VERSION_1);
    f.setup_queue(0, 16, 0x1_0000);
    f.w(reg::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    let record = f.record.lock().unwrap();
    assert!(!record.queue_state[0].5);
}

#[test]
fn queue_outside_memory_needs_reset() {
    let mut f = fixture();
    f.negotiate(VERSION_1);
    f.setup_queue(0, 256, 0xff000);
    f.w(reg::STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(
        f.r(reg::STATUS) & NEEDS_RESET,
        NEEDS_RESET,
        "rings past the end of memory"
    );
    assert_eq!(f.record.lock().unwrap().activations, 0);
    assert!(!f.transport.is_active());
    assert_eq!(f.r(reg::INTERRUPT_STATUS), 2, "config interrupt");
    assert_eq!(f.irq.count.load(Ordering::SeqCst), 1);
    // A reset recovers.
    f.w(reg::STATUS, 0);
    assert_eq!(f.r(reg::STATUS), 0);
    f.activate();
    assert_eq!(f.record.lock().unwrap().activations, 1);
}

#[test]
fn failed_activation_needs_reset() {
    let mut f = fixture();
    f.record.lock().unwrap().fail_activation = true;
    f.activate();
    assert_eq!(f.r(reg::STATUS) & NEEDS_RESET, NEEDS_RESET);
    assert!(!f.transport.is_active());
}

#[test]
fn reset_returns_to_initial_state() {
    let mut f = fixture();
    f.activate();
    f.w(reg::QUEUE_SEL, 1);
    f.w(reg::INTERRUPT_ACK, 0);
    f.transport.notify_config_change();
    f.w(reg::STATUS, 0);
    assert_eq!(f.r(reg::STATUS), 0);
    assert!(!f.transport.is_active());
    assert_eq!(f.record.lock().unwrap().resets, 1);
    assert_eq!(f.r(reg::INTERRUPT_STATUS), 0);
    assert_eq!(f.transport.driver_features, 0);
    assert_eq!(f.transport.queue_sel, 0);
    for q in 0..2 {
        f.w(reg::QUEUE_SEL, q);
        assert_eq!(f.r(reg::QUEUE_READY), 0);
        assert_eq!(f.r(reg::QUEUE_NUM), f.r(reg::QUEUE_NUM_MAX));
        assert_eq!(f.r(reg::QUEUE_DESC_LOW), 0);
    }
    // The device can be brought up again.
    f.activate();
    assert_eq!(f.record.lock().unwrap().activations, 2);
    // A reset before activation does not reset the device model again.
    let mut f = fixture();
    f.w(reg::STATUS, ACK);
    f.w(reg::STATUS, 0);
    assert_eq!(f.record.lock().unwrap().resets, 0);
}

#[test]
fn interrupt_status_and_ack() {
    let mut f = fixture();
    f.activate();
    let interrupt = f.record.lock().unwrap().interrupt.clone().unwrap();
    interrupt.trigger(InterruptKind::UsedRing).unwrap();
    assert_eq!(f.r(reg::INTERRUPT_STATUS), 1);
    assert_eq!(f.irq.count.load(Ordering::SeqCst), 1);
    f.transport.notify_config_change();
    assert_eq!(f.r(reg::INTERRUPT_STATUS), 3);
    f.w(reg::INTERRUPT_ACK, 1);
    assert_eq!(f.r(reg::INTERRUPT_STATUS), 2);
    f.w(reg::INTERRUPT_ACK, 2);
    assert_eq!(f.r(reg::INTERRUPT_STATUS), 0);
    assert_eq!(f.irq.count.load(Ordering::SeqCst), 2);
}

#[test]
fn config_generation_and_space() {
    let mut f = fixture();
    assert_eq!(f.r(reg::CONFIG_GENERATION), 0);
    f.transport.notify_config_change();
    assert_eq!(f.r(reg::CONFIG_GENERATION), 1);
    assert_eq!(f.r(reg::INTERRUPT_STATUS), 2);

    let mut byte = [0u8; 1];
    f.transport.read(CONFIG_SPACE_OFFSET + 5, &mut byte);
    assert_eq!(byte, [5]);
    let mut quad = [0u8; 8];
    f.transport.read(CONFIG_SPACE_OFFSET + 8, &mut quad);
    assert_eq!(quad, [8, 9, 10, 11, 12, 13, 14, 15]);
    f.transport.read(CONFIG_SPACE_OFFSET + 30, &mut quad);
    assert_eq!(quad, [30, 31, 0, 0, 0, 0, 0, 0]);

    // Config writes reach the device only once the driver is there.
    f.transport.write(CONFIG_SPACE_OFFSET, &[1]);
    assert!(f.record.lock().unwrap().config_writes.is_empty());
    f.w(reg::STATUS, ACK);
    f.w(reg::STATUS, ACK | DRIVER);
    f.transport.write(CONFIG_SPACE_OFFSET + 4, &[1, 2]);
    assert_eq!(
        f.record.lock().unwrap().config_writes,
        vec![(4, vec![1, 2])]
    );
}

#[test]
fn bad_accesses_are_ignored() {
    let mut f = fixture();
    // Wrong sizes.
    let mut two = [0xffu8; 2];
    f.transport.read(reg::MAGIC_VALUE, &mut two);
    assert_eq!(two, [0, 0]);
    let mut eight = [0xffu8; 8];
    f.transport.read(reg::MAGIC_VALUE, &mut eight);
    assert_eq!(eight, [0; 8]);
    f.transport.write(reg::STATUS, &[1]);
    f.transport.write(reg::STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
    f.transport.write(reg::STATUS, &[]);
    assert_eq!(f.r(reg::STATUS), 0);
    // Unknown and write-only/read-only offsets.
    assert_eq!(f.r(0x0f8), 0);
    assert_eq!(f.r(reg::QUEUE_NOTIFY), 0);
    assert_eq!(f.r(reg::INTERRUPT_ACK), 0);
    assert_eq!(f.r(0x3), 0);
    f.w(reg::MAGIC_VALUE, 0);
    f.w(reg::VERSION, 1);
    f.w(0x28, 4096); // legacy GuestPageSize
    f.w(0x40, 1); // legacy QueuePFN
    f.w(0x0fe, 1);
    assert_eq!(f.r(reg::MAGIC_VALUE), 0x7472_6976);
    // Huge offsets go to the device's config space (and read zero there).
    let mut data = [0xffu8; 4];
    f.transport.read(u64::MAX - 3, &mut data);
    assert_eq!(data, [0; 4]);
    f.transport.write(u64::MAX, &[1]);
    // Unknown status bits.
    f.w(reg::STATUS, 0x10);
    assert_eq!(f.r(reg::STATUS), 0);
}

#[test]
fn notify_forwards_to_the_queue_eventfd() {
    let mut f = fixture();
    // Before DRIVER_OK: ignored.
    f.w(reg::QUEUE_NOTIFY, 0);
    assert!(f.transport.queue_notify_evts()[0].read().is_err());
    f.activate();
    f.w(reg::QUEUE_NOTIFY, 1);
    f.w(reg::QUEUE_NOTIFY, 1);
    f.w(reg::QUEUE_NOTIFY, 5); // no such queue
    let record = f.record.lock().unwrap();
    // The device's eventfd is a duplicate of the transport's.
    assert_eq!(record.notify_evts[1].read().unwrap(), 2);
    assert!(record.notify_evts[0].read().is_err());
}

#[test]
fn transport_refuses_invalid_queue_sizes() {
    let mem = GuestMemoryAtomic::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap(),
    );
    let device = MockDevice {
        record: Arc::new(Mutex::new(Record::default())),
        sizes: vec![100],
        config: vec![],
    };
    let err = MmioTransport::new(
        Box::new(device),
        mem,
        Arc::new(CountingInterrupt::default()),
    )
    .err();
    assert!(matches!(
        err,
        Some(MmioError::QueueSize {
            queue: 0,
            size: 100
        })
    ));
}

#[test]
fn kernel_command_line_fragment() {
    assert_eq!(
        kernel_cmdline_device(0xd000_0000, 5),
        "virtio_mmio.device=4K@0xd0000000:5"
    );
}
