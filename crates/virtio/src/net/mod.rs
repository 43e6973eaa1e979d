//! virtio-net (virtio 1.2 §5.1) on a host TAP device: one receive and one transmit queue, no
//! control queue. Every frame carries the 12-byte `virtio_net_hdr_v1`; the TAP is opened with
//! the same header (`IFF_VNET_HDR`), so checksum and segmentation offload metadata pass through
//! untouched in both directions. Offloads the driver accepts for received frames are set on the
//! TAP (`TUNSETOFFLOAD`) at activation; headers the driver sends are checked against what it
//! negotiated. Frames read from the TAP wait (at most one) only for receive buffers: without
//! buffers the TAP is not read, so host memory stays bounded whatever the guest does.
//!
//! Threads: the device (features, config space, activation) is driven by the transport on a
//! vCPU thread; frames move on the device's own worker thread (`event_loop`).

mod event_loop;
mod fuzz;
mod handler;
pub mod header;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ironvirt_net::{Tap, TapError};

use event_loop::{NetWorker, WorkerParts};
pub use fuzz::fuzz_one;
use handler::Counters;
use header::features;

use crate::{
    device_type, ActivateError, Activation, VirtioDevice, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// `status` bit: the link is up (§5.1.4).
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Features the device offers (§5.1.3).
pub const OFFERED_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_F_RING_EVENT_IDX
    | VIRTIO_F_RING_INDIRECT_DESC
    | features::CSUM
    | features::GUEST_CSUM
    | features::MAC
    | features::GUEST_TSO4
    | features::GUEST_TSO6
    | features::GUEST_ECN
    | features::GUEST_UFO
    | features::HOST_TSO4
    | features::HOST_TSO6
    | features::HOST_ECN
    | features::HOST_UFO
    | features::MRG_RXBUF
    | features::STATUS;

/// What the user asked for (`--net tap=NAME[,mac=...]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// TAP device to attach to (or create).
    pub tap: String,
    /// The guest's MAC address (config `mac`).
    pub mac: [u8; 6],
}

/// Errors creating a virtio-net device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The MAC is multicast or all zeroes.
    #[error("MAC address {mac} cannot be a network card's address")]
    InvalidMac {
        /// The address, formatted.
        mac: String,
    },
    /// The TAP could not be opened or configured.
    #[error("Cannot set up the network device's TAP")]
    Tap(#[from] TapError),
}

/// Frame and byte counters of one device (for the stats API).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes delivered to the guest (frames, without the virtio-net header).
    pub rx_bytes: u64,
    /// Frames the guest sent to the TAP.
    pub tx_frames: u64,
    /// Bytes the guest sent to the TAP (without the header).
    pub tx_bytes: u64,
    /// Frames from the TAP not delivered: too big for the guest's buffers, malformed, or
    /// using an offload the driver did not accept.
    pub rx_dropped: u64,
    /// Transmit chains not sent: malformed, oversized, bad header, or refused by the TAP.
    pub tx_dropped: u64,
    /// Receive chains the device could not write into (completed empty).
    pub bad_rx_chains: u64,
}

/// A virtio-net device backed by a TAP.
pub struct Net {
    tap: Arc<Tap>,
    config: [u8; 10],
    worker: Option<NetWorker>,
    counters: Arc<Counters>,
}

impl Net {
    /// Opens (or creates) the TAP and builds the device.
    pub fn new(cfg: &NetConfig) -> Result<Net, NetError> {
        if cfg.mac[0] & 1 != 0 || cfg.mac == [0; 6] {
            return Err(NetError::InvalidMac { mac: ironvirt_net::format_mac(&cfg.mac) });
        }
        let tap = Tap::open(&cfg.tap)?;
        Ok(Self::with_tap(tap, cfg.mac))
    }

    /// Builds the device over an already open TAP.
    fn with_tap(tap: Tap, mac: [u8; 6]) -> Self {
        // struct virtio_net_config (§5.1.4): mac, status, max_virtqueue_pairs.
        let mut config = [0u8; 10];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        Self { tap: Arc::new(tap), config, worker: None, counters: Arc::default() }
    }

    /// The TAP's interface name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// Current counters.
    pub fn stats(&self) -> NetStats {
        self.stats_source().stats()
    }

    /// A handle that reads the counters after the device moved behind its transport.
    pub fn stats_source(&self) -> NetStatsSource {
        NetStatsSource(self.counters.clone())
    }
}

/// Reads a NIC's counters (see [`Net::stats_source`]).
#[derive(Clone)]
pub struct NetStatsSource(Arc<Counters>);

impl NetStatsSource {
    /// Current counters.
    pub fn stats(&self) -> NetStats {
        let c = &*self.0;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        NetStats {
            rx_frames: get(&c.rx_frames),
            rx_bytes: get(&c.rx_bytes),
            tx_frames: get(&c.tx_frames),
            tx_bytes: get(&c.tx_bytes),
            rx_dropped: get(&c.rx_dropped),
            tx_dropped: get(&c.tx_dropped),
            bad_rx_chains: get(&c.bad_rx_chains),
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        OFFERED_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // §5.1.4.2: `mac` is read-only for a modern driver; the rest is read-only anyway.
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        if a.queues.len() != 2 {
            return Err(ActivateError::QueueCount { expected: 2, got: a.queues.len() });
        }
        self.reset(); // A second DRIVER_OK without a reset must not leave two workers.
        let features = a.features & OFFERED_FEATURES;
        let offload = header::tap_offload(features);
        if let Err(e) = self.tap.set_offload(offload) {
            // The kernel then sends plain frames, which every driver accepts.
            log::warn!("virtio-net: {e}; receive offloads stay off");
        }
        let got = a.queues.len();
        let mut queues = a.queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        let worker = NetWorker::start(WorkerParts {
            mem: a.mem,
            rx,
            tx,
            tap: self.tap.clone(),
            features,
            counters: self.counters.clone(),
            interrupt: a.interrupt,
        })?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
            if let Err(e) = self.tap.set_offload(0) {
                log::warn!("virtio-net: {e}");
            }
        }
    }

    fn counters(&self) -> (u64, u64) {
        let s = self.stats();
        (s.rx_frames + s.tx_frames, s.rx_bytes + s.tx_bytes)
    }
}

#[cfg(test)]
mod tap_tests;
#[cfg(test)]
mod tests;
