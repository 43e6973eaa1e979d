//! Host networking for ironvirt: opening and configuring TAP devices ([`Tap`]: `/dev/net/tun`
//! with a virtio-net header, offloads, link up) and MAC addresses ([`parse_mac`]).
//!
//! This crate knows nothing about virtio queues or guest memory; the virtio-net device in
//! `ironvirt-virtio` sits on top of it. A [`Tap`] is used from the device's worker thread (reads
//! and writes) and from the thread that activates the device (offload settings); all methods
//! take `&self` and are plain syscalls on one file descriptor.
//!
//! Unsafe code is limited to the ioctls of [`tap`] (and the test helpers of `testing`), each with
//! a `SAFETY` note.

mod mac;
pub mod tap;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use mac::{format_mac, parse_mac, DEFAULT_MAC};
pub use tap::{offload, Tap, TapError, VNET_HDR_LEN};
