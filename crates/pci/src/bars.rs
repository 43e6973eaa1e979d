//! Routing of BAR accesses to the owning device by current BAR address.
//!
//! The root keeps a map from BAR address ranges to devices and updates it when it places a
//! BAR or the guest moves one. [`PciBars`] is a [`BusDevice`] the VMM inserts over each window
//! (or any range) of its MMIO or port bus; it looks the address up in the map, so relocation
//! needs no change to the VMM's buses as long as the guest keeps BARs inside the windows.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use ironvirt_vm_bus::{guest_debug, BusDevice};

use crate::device::SharedPciDevice;
use crate::lock;

/// Which address space a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BarSpace {
    /// Memory BARs (32- and 64-bit).
    Memory,
    /// I/O port BARs.
    Io,
}

#[derive(Clone)]
struct BarEntry {
    len: u64,
    device: SharedPciDevice,
}

/// Key: (base address, slot, BAR index), so that BARs a guest programs to overlap do not
/// replace each other.
type Key = (u64, u8, u8);

/// Current BAR ranges of every device, per address space.
#[derive(Clone, Default)]
pub(crate) struct BarMap {
    memory: BTreeMap<Key, BarEntry>,
    io: BTreeMap<Key, BarEntry>,
}

impl BarMap {
    fn space(&self, space: BarSpace) -> &BTreeMap<Key, BarEntry> {
        match space {
            BarSpace::Memory => &self.memory,
            BarSpace::Io => &self.io,
        }
    }

    fn space_mut(&mut self, space: BarSpace) -> &mut BTreeMap<Key, BarEntry> {
        match space {
            BarSpace::Memory => &mut self.memory,
            BarSpace::Io => &mut self.io,
        }
    }

    /// Records that BAR `bar` of `slot` decodes `[base, base + len)`.
    pub(crate) fn insert(
        &mut self,
        space: BarSpace,
        (base, slot, bar): Key,
        len: u64,
        device: SharedPciDevice,
    ) {
        self.space_mut(space).insert((base, slot, bar), BarEntry { len, device });
    }

    /// Forgets the BAR recorded at `base`.
    pub(crate) fn remove(&mut self, space: BarSpace, key: Key) {
        self.space_mut(space).remove(&key);
    }

    /// The device, BAR index and offset inside the BAR for an access of `size` bytes at
    /// `addr`; the whole access must fall inside one BAR.
    fn lookup(&self, space: BarSpace, addr: u64, size: u64) -> Option<(SharedPciDevice, u8, u64)> {
        // Usually the entry with the highest base at or below `addr`; BARs the guest made
        // overlap may need a few more steps (at most 6 per device).
        self.space(space).range(..=(addr, u8::MAX, u8::MAX)).rev().find_map(
            |(&(base, _, bar), entry)| {
                let offset = addr - base;
                let end = offset.checked_add(size)?;
                (end <= entry.len).then(|| (entry.device.clone(), bar, offset))
            },
        )
    }
}

/// A [`BusDevice`] covering `[base, base + len)` of one address space that forwards each
/// access to the BAR it falls in. Accesses outside every BAR read all ones and are ignored.
#[derive(Clone)]
pub struct PciBars {
    map: Arc<RwLock<BarMap>>,
    space: BarSpace,
    base: u64,
}

impl PciBars {
    pub(crate) fn new(map: Arc<RwLock<BarMap>>, space: BarSpace, base: u64) -> Self {
        Self { map, space, base }
    }

    fn route(&self, offset: u64, size: usize) -> Option<(SharedPciDevice, u8, u64)> {
        let addr = self.base.checked_add(offset)?;
        let map = self.map.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.lookup(self.space, addr, size as u64)
        // The map lock is dropped here, before the device lock is taken.
    }
}

impl BusDevice for PciBars {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.route(offset, data.len()) {
            Some((device, bar, bar_offset)) => lock(&device).read_bar(bar, bar_offset, data),
            None => guest_debug!(
                "pci: {:?} read of {} bytes at {:#x} hits no BAR",
                self.space,
                data.len(),
                self.base.wrapping_add(offset)
            ),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match self.route(offset, data.len()) {
            Some((device, bar, bar_offset)) => lock(&device).write_bar(bar, bar_offset, data),
            None => guest_debug!(
                "pci: {:?} write of {} bytes at {:#x} hits no BAR",
                self.space,
                data.len(),
                self.base.wrapping_add(offset)
            ),
        }
    }
}
