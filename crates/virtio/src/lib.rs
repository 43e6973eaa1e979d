//! The virtio device model (virtio 1.2): the [`VirtioDevice`] trait every device implements,
//! the [`Worker`] that runs a device's queues on its own thread (never on a vCPU thread), and
//! the devices themselves ([`rng::Rng`] so far). Transports (PCI) sit on top and own feature
//! negotiation and queue configuration registers; they hand the configured queues to
//! [`VirtioDevice::activate`].
//!
//! Everything read from a queue is guest-controlled: chains are walked through `virtio-queue`
//! (which bounds chain length and checks every address against guest memory), lengths are
//! bounded per request, and a malformed chain completes with 0 bytes instead of stopping the
//! device. No Rust references into guest memory are held.
#![forbid(unsafe_code)]

pub mod balloon;
pub mod block;
pub mod net;
pub mod pci;
pub mod rng;
#[cfg(test)]
mod test_util;
pub mod vsock;
mod worker;

use std::io;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use worker::{QueueHandler, Worker, WorkerError};

/// VIRTIO_F_VERSION_1 (virtio 1.2 §6): the modern interface, required by our transports.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_RING_EVENT_IDX (§2.7.10).
pub const VIRTIO_F_RING_EVENT_IDX: u64 = 1 << 29;
/// VIRTIO_F_RING_INDIRECT_DESC (§2.7.5.3).
pub const VIRTIO_F_RING_INDIRECT_DESC: u64 = 1 << 28;

/// Device type ids (§5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Console.
    pub const CONSOLE: u32 = 3;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Memory balloon.
    pub const BALLOON: u32 = 5;
    /// Socket device.
    pub const VSOCK: u32 = 19;
}

/// How a device tells the driver about used buffers and config changes; implemented by the
/// transport (MSI-X through irqfd for PCI).
pub trait VirtioInterrupt: Send + Sync {
    /// Signals that queue `queue` has new used buffers.
    fn notify_queue(&self, queue: u16) -> io::Result<()>;
    /// Signals a configuration change.
    fn notify_config(&self) -> io::Result<()>;
    /// The driver broke the device (an impossible queue state): the transport sets
    /// DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2) and tells the driver. Default: nothing.
    fn device_broken(&self) {}
}

/// What a transport hands a device when the driver sets DRIVER_OK.
pub struct Activation {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Configured queues with the eventfd that guest kicks signal (ioeventfd).
    pub queues: Vec<(Queue, EventFd)>,
    /// Interrupt delivery.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// Negotiated features.
    pub features: u64,
}

/// Errors from activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver configured a different number of queues than the device has.
    #[error("Device needs {expected} queues, the driver set up {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues the driver enabled.
        got: usize,
    },
    /// The worker thread could not start.
    #[error("Cannot start the device worker")]
    Worker(#[from] WorkerError),
}

/// A virtio device, independent of its transport.
pub trait VirtioDevice: Send {
    /// Device type id ([`device_type`]).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (including [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Reads device-specific configuration space at `offset`; out-of-range bytes read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device-specific configuration space; read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts processing queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops processing (driver reset); the device may be activated again afterwards.
    fn reset(&mut self);
    /// Per-device counters, for the stats API: (requests, bytes).
    fn counters(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// Copies `src` (a little-endian config structure) into `data` at `offset`, zero beyond it.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else { return };
    if start >= src.len() {
        return;
    }
    let n = data.len().min(src.len() - start);
    data[..n].copy_from_slice(&src[start..start + n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded_and_zero_filled() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [0xffu8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
