//! PCI for ironvirt: bus 0 behind one host bridge, type-0 configuration space, BARs, MSI-X.
//!
//! This crate owns:
//! - [`ConfigSpace`]: the 4 KiB configuration space of one type-0 function with write masks,
//!   BAR sizing and relocation, and a capability list builder (vendor-specific and MSI-X);
//! - [`MsixConfig`]: the MSI-X table and PBA a device places in one of its BARs, delivering
//!   through an injected [`MsiSink`];
//! - the [`PciDevice`] trait every function behind the root implements;
//! - [`PciRoot`]: the host bridge at 00.0 and up to 31 devices on bus 0, with BARs allocated
//!   (vm-allocator) from configurable 32-bit, 64-bit and I/O windows ([`PciWindows`]);
//! - the bus adapters the VMM inserts into its buses: [`PciConfigIo`] (ports `0xcf8..0xd00`),
//!   [`PciConfigMmio`] (ECAM) and [`PciBars`] (BAR accesses routed by current BAR address).
//!
//! It depends only on `ironvirt-vm-bus` and never sees KVM or the VMM: GSI routing, irqfds and
//! ioeventfds are the VMM's business, reached through [`MsiSink`], [`PciRoot::set_relocation_hook`]
//! and [`PciDevice::ioeventfds`]. vCPU threads call the adapters concurrently: the root sits
//! behind a mutex, each device behind its own, and the BAR address map behind a read-write lock
//! so BAR accesses from different vCPUs do not serialise on the root. Lock order: root, then a
//! device, then the BAR map; the BAR path takes the map, drops it, then takes the device.
#![forbid(unsafe_code)]

mod access;
mod bars;
mod config;
mod device;
#[doc(hidden)]
pub mod fuzz;
mod msix;
mod root;
#[cfg(test)]
mod test_util;

pub use access::{
    PciConfigIo, PciConfigMmio, CONFIG_IO_PORT_BASE, CONFIG_IO_PORT_LEN, ECAM_BUS_SIZE,
};
pub use bars::{BarSpace, PciBars};
pub use config::{
    BarKind, BarReprogram, ConfigSpace, ConfigWriteEffect, InterruptPin, MsixCapability, PciBar,
    PciIds, CAP_ID_MSIX, CAP_ID_VENDOR, CONFIG_SPACE_SIZE, NUM_BARS,
};
pub use device::{IoEventSpec, PciDevice, SharedPciDevice};
pub use msix::{MsiMessage, MsiSink, MsixConfig, MsixDelivery, MAX_MSIX_VECTORS, MSIX_ENTRY_SIZE};
pub use root::{
    AddressWindow, BarRelocation, HostBridge, PciAddress, PciRoot, PciWindows,
    HOST_BRIDGE_DEVICE_ID, HOST_BRIDGE_VENDOR_ID, MAX_DEVICES,
};

/// Locks a mutex, recovering from poisoning: a device that panicked has no invariant worth
/// stopping the whole VM for, and the panic was already reported.
pub(crate) fn lock<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Errors from building PCI functions and the root complex. Guest accesses never fail: they
/// are ignored and logged instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// A BAR index outside 0..6, or the second half of a 64-bit BAR at index 5.
    #[error("BAR index {index} is out of range")]
    BarIndex {
        /// The rejected index.
        index: u8,
    },
    /// The BAR (or, for a 64-bit BAR, the register after it) is already defined.
    #[error("BAR {index} is already in use")]
    BarInUse {
        /// The BAR index.
        index: u8,
    },
    /// The BAR was never defined.
    #[error("BAR {index} is not defined")]
    NoBar {
        /// The BAR index.
        index: u8,
    },
    /// The size is not a power of two in the range the BAR kind allows.
    #[error("BAR {index} size {size:#x} is not a power of two the BAR kind allows")]
    BarSize {
        /// The BAR index.
        index: u8,
        /// The rejected size.
        size: u64,
    },
    /// The address is not aligned to the BAR size or not reachable through the BAR.
    #[error("BAR {index} cannot be placed at {addr:#x}")]
    BarAddress {
        /// The BAR index.
        index: u8,
        /// The rejected address.
        addr: u64,
    },
    /// The capability does not fit in the standard configuration space (0x40..0x100).
    #[error("No room for capability {id:#x} of {len} bytes")]
    CapabilitySpace {
        /// The capability id.
        id: u8,
        /// Its total length in bytes, header included.
        len: usize,
    },
    /// The write mask of a capability is not as long as its body.
    #[error("Capability {id:#x} has a {mask_len}-byte write mask for a {body_len}-byte body")]
    CapabilityMask {
        /// The capability id.
        id: u8,
        /// Length of the body.
        body_len: usize,
        /// Length of the mask.
        mask_len: usize,
    },
    /// An MSI-X capability is already present.
    #[error("The function already has an MSI-X capability")]
    MsixCapabilityExists,
    /// An MSI-X table or PBA offset is not 8-byte aligned or does not fit the BIR field.
    #[error("MSI-X structure in BAR {bar} at offset {offset:#x} is misaligned or unaddressable")]
    MsixLayout {
        /// The BAR index.
        bar: u8,
        /// The offset inside the BAR.
        offset: u32,
    },
    /// MSI-X supports 1 to 2048 vectors (PCI 3.0 §6.8.2.3).
    #[error("MSI-X vector count {count} is outside 1..=2048")]
    MsixVectors {
        /// The rejected count.
        count: u16,
    },
    /// Every device slot on bus 0 (1..=31) is taken.
    #[error("All {} device slots on bus 0 are in use", MAX_DEVICES)]
    NoFreeSlot,
    /// The window for a BAR kind has no aligned free range of the BAR's size left.
    #[error("No room for BAR {bar} ({size:#x} bytes) in the {window} window")]
    WindowExhausted {
        /// The BAR index.
        bar: u8,
        /// The BAR size.
        size: u64,
        /// Which window: "32-bit MMIO", "64-bit MMIO" or "I/O".
        window: &'static str,
    },
    /// A device has an I/O BAR but the root was built without an I/O window.
    #[error("BAR {bar} is an I/O BAR but the root has no I/O window")]
    NoIoWindow {
        /// The BAR index.
        bar: u8,
    },
    /// A window is empty, wraps, or (for the 32-bit window) crosses 4 GiB.
    #[error("Invalid {window} window {base:#x}+{size:#x}")]
    Window {
        /// Which window.
        window: &'static str,
        /// Its base.
        base: u64,
        /// Its size.
        size: u64,
        /// What the allocator reported, when it was the allocator that refused.
        #[source]
        cause: Option<vm_allocator::Error>,
    },
}
