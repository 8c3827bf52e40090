//! Transports exposing virtio devices to the guest. Only virtio-mmio for now.

pub mod mmio;
