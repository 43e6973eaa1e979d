//! A map from address ranges to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reachable through a [`Bus`].
///
/// `offset` is relative to the base the device was inserted at; `data.len()` is the access
/// size (1, 2, 4 or 8). Devices must tolerate any offset and size inside their range: odd
/// accesses are logged with [`crate::guest_debug!`] and ignored (reads leave `data` as given,
/// which the bus pre-fills with all ones).
pub trait BusDevice: Send {
    /// Handles a read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it (console input, API).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps a registered one.
    #[error("Bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The range is empty or wraps around the address space.
    #[error("Bus range {base:#x}+{len:#x} is empty or wraps")]
    BadRange {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// An address space (port I/O or MMIO) with non-overlapping device ranges.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` for `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end =
            base.checked_add(len).filter(|_| len > 0).ok_or(BusError::BadRange { base, len })?;
        if let Some((&b, e)) = self.ranges.range(..end).next_back() {
            if b + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Entry)> {
        let (&base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device's range.
        let last = offset.checked_add(size as u64)?;
        (last <= entry.len).then_some((offset, entry))
    }

    /// Dispatches a read. Returns `false` when no device covers the access; `data` is then
    /// left for the caller to fill (the VMM reads unclaimed addresses as all ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, entry)) => {
                data.fill(0xff);
                lock(&entry.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write. Returns `false` when no device covers the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, entry)) => {
                lock(&entry.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned mutex: a device that panicked has no invariant
/// worth stopping the whole VM for, and the panic was already reported.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_reads_and_writes_with_relative_offsets() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(dev.lock().unwrap().writes, vec![(7, vec![7])]);
    }

    #[test]
    fn accesses_outside_or_straddling_a_range_are_unclaimed() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x70, 2).unwrap();
        let mut w = [0u8; 4];
        assert!(!bus.read(0x71, &mut w), "a 4-byte read at the last byte straddles the end");
        assert!(!bus.read(0x72, &mut [0u8]));
        assert!(!bus.write(0x6f, &[0]));
        assert!(!bus.read(u64::MAX, &mut [0u8; 8]));
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x60, 8).unwrap();
        let other = Arc::new(Mutex::new(Recorder::default()));
        assert_eq!(
            bus.insert(other.clone(), 0x64, 1),
            Err(BusError::Overlap { base: 0x64, len: 1 })
        );
        assert_eq!(
            bus.insert(other.clone(), 0x5f, 2),
            Err(BusError::Overlap { base: 0x5f, len: 2 })
        );
        assert_eq!(
            bus.insert(other.clone(), 0x100, 0),
            Err(BusError::BadRange { base: 0x100, len: 0 })
        );
        assert!(bus.insert(other, 0x68, 1).is_ok());
    }
}
