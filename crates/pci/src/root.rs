//! The root complex: a host bridge at 00.0 and up to 31 single-function devices on bus 0,
//! BAR allocation from configurable windows, and the config access path shared by the
//! 0xcf8/0xcfc ports and ECAM.

use std::sync::{Arc, Mutex, RwLock};

use ironvirt_vm_bus::guest_debug;
use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};

use crate::bars::{BarMap, BarSpace, PciBars};
use crate::config::{BarKind, BarReprogram, ConfigSpace, PciBar, PciIds, CONFIG_SPACE_SIZE};
use crate::device::{PciDevice, SharedPciDevice};
use crate::{lock, PciError};

/// Host bridge vendor id: Red Hat, Inc., whose 0x1b36 range hosts QEMU's virtual devices.
/// ironvirt has no PCI-SIG vendor id; 1b36:0008 is registered (pci.ids, QEMU
/// docs/specs/pci-ids) as a generic "PCIe host bridge" with no chipset registers, which is
/// exactly what this bridge is, and guests apply no chipset quirks to it. An Intel id would
/// claim hardware we do not emulate.
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x1b36;
/// Host bridge device id (see [`HOST_BRIDGE_VENDOR_ID`]).
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0008;
/// Devices on bus 0 besides the host bridge: slots 1..=31.
pub const MAX_DEVICES: usize = 31;

/// Class 06/00/00: bridge device, host bridge (PCI Code and ID Assignment §1.7).
const HOST_BRIDGE_CLASS: u32 = 0x06_00_00;
const SLOTS: usize = MAX_DEVICES + 1;
const FOUR_GIB: u64 = 1 << 32;
const IO_SPACE_END: u64 = 1 << 16;

/// Bus, device and function of a configuration access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciAddress {
    /// Bus number (only bus 0 is populated).
    pub bus: u8,
    /// Device number, 0..32.
    pub device: u8,
    /// Function number, 0..8 (only function 0 is populated).
    pub function: u8,
}

/// The host bridge at 00.0: identification only, no BARs, no capabilities.
#[derive(Debug)]
pub struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    /// A host bridge with [`HOST_BRIDGE_VENDOR_ID`]:[`HOST_BRIDGE_DEVICE_ID`], class 0x060000.
    pub fn new() -> Self {
        let ids = PciIds {
            vendor_id: HOST_BRIDGE_VENDOR_ID,
            device_id: HOST_BRIDGE_DEVICE_ID,
            revision_id: 0,
            class_code: HOST_BRIDGE_CLASS,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        };
        Self { config: ConfigSpace::new(&ids) }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn read_bar(&mut self, _bar: u8, _offset: u64, _data: &mut [u8]) {}
    fn write_bar(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
}

/// A range of guest addresses BARs are allocated from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressWindow {
    /// First address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl AddressWindow {
    /// One past the last address (saturating).
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

/// Where BARs go. The DSDT must describe the same windows in the root bridge's `_CRS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciWindows {
    /// 32-bit memory BARs (and 64-bit ones when `mmio64` is `None`); must end by 4 GiB.
    pub mmio32: AddressWindow,
    /// 64-bit memory BARs, above RAM.
    pub mmio64: Option<AddressWindow>,
    /// I/O BARs; `None` refuses devices with I/O BARs.
    pub io: Option<AddressWindow>,
}

impl PciWindows {
    /// Default 32-bit window: 3 GiB..3.5 GiB, the bottom of the platform's MMIO hole. The
    /// rest of the hole stays free: 0xe000_0000..0xf000_0000 fits a full 256-bus ECAM, and
    /// 0xfec0_0000.. holds the IOAPIC, the LAPIC and KVM's TSS pages.
    pub const DEFAULT_MMIO32: AddressWindow =
        AddressWindow { base: 0xc000_0000, size: 0x2000_0000 };
    /// Default size of the 64-bit window: 64 GiB.
    pub const DEFAULT_MMIO64_SIZE: u64 = 64 << 30;

    /// The default windows for a guest whose RAM ends (exclusive) at `ram_end`: the 32-bit
    /// window [`PciWindows::DEFAULT_MMIO32`], a 64 GiB 64-bit window at the first 1 GiB
    /// boundary at or above both `ram_end` and 4 GiB, no I/O window.
    pub fn above_ram(ram_end: u64) -> Self {
        const GIB: u64 = 1 << 30;
        let base = ram_end.max(FOUR_GIB).div_ceil(GIB).saturating_mul(GIB);
        Self {
            mmio32: Self::DEFAULT_MMIO32,
            mmio64: Some(AddressWindow { base, size: Self::DEFAULT_MMIO64_SIZE }),
            io: None,
        }
    }
}

/// A BAR the guest moved, as reported to [`PciRoot::set_relocation_hook`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRelocation {
    /// Device slot on bus 0.
    pub slot: u8,
    /// What moved.
    pub bar: BarReprogram,
}

type RelocationHook = Box<dyn FnMut(&BarRelocation, &SharedPciDevice) + Send>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Window {
    Mmio32,
    Mmio64,
    Io,
}

/// Bus 0: the host bridge and up to 31 devices, their BAR allocations and address map.
pub struct PciRoot {
    slots: Vec<Option<SharedPciDevice>>,
    windows: PciWindows,
    mmio32: AddressAllocator,
    mmio64: Option<AddressAllocator>,
    io: Option<AddressAllocator>,
    bar_map: Arc<RwLock<BarMap>>,
    relocation_hook: Option<RelocationHook>,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used: Vec<usize> = (0..SLOTS).filter(|&s| self.slots[s].is_some()).collect();
        f.debug_struct("PciRoot")
            .field("slots", &used)
            .field("windows", &self.windows)
            .finish_non_exhaustive()
    }
}

fn allocator(
    window: &AddressWindow,
    name: &'static str,
    limit: u64,
) -> Result<AddressAllocator, PciError> {
    let bad =
        |cause| PciError::Window { window: name, base: window.base, size: window.size, cause };
    match window.base.checked_add(window.size) {
        Some(end) if window.size > 0 && end <= limit => {}
        _ => return Err(bad(None)),
    }
    AddressAllocator::new(window.base, window.size).map_err(|e| bad(Some(e)))
}

impl PciRoot {
    /// A root with only the host bridge, allocating BARs from `windows`.
    pub fn new(windows: PciWindows) -> Result<Self, PciError> {
        let mmio32 = allocator(&windows.mmio32, "32-bit MMIO", FOUR_GIB)?;
        let mmio64 = windows.mmio64.map(|w| allocator(&w, "64-bit MMIO", u64::MAX)).transpose()?;
        let io = windows.io.map(|w| allocator(&w, "I/O", IO_SPACE_END)).transpose()?;
        let mut slots: Vec<Option<SharedPciDevice>> = vec![None; SLOTS];
        slots[0] = Some(Arc::new(Mutex::new(HostBridge::new())));
        Ok(Self {
            slots,
            windows,
            mmio32,
            mmio64,
            io,
            bar_map: Arc::default(),
            relocation_hook: None,
        })
    }

    /// The windows BARs are allocated from.
    pub fn windows(&self) -> &PciWindows {
        &self.windows
    }

    /// The slot [`PciRoot::add_device`] will use next, if any is free.
    pub fn next_free_slot(&self) -> Option<u8> {
        (1..SLOTS).find(|&s| self.slots[s].is_none()).map(|s| s as u8)
    }

    /// Puts `device` in the lowest free slot (1..=31), allocates each of its BARs naturally
    /// aligned (largest first) and programs them. Returns the slot.
    pub fn add_device(&mut self, device: SharedPciDevice) -> Result<u8, PciError> {
        let slot = usize::from(self.next_free_slot().ok_or(PciError::NoFreeSlot)?);
        let mut bars = lock(&device).config().bars();
        bars.sort_by(|a, b| b.size.cmp(&a.size).then(a.index.cmp(&b.index)));
        let mut placed = Vec::with_capacity(bars.len());
        for bar in &bars {
            match self.allocate(bar) {
                Ok(p) => placed.push((*bar, p)),
                Err(e) => {
                    self.release(placed.iter().map(|(_, p)| *p));
                    return Err(e);
                }
            }
        }
        let programmed: Result<(), PciError> = {
            let mut dev = lock(&device);
            placed.iter().try_for_each(|(bar, (_, r))| {
                dev.config_mut().set_bar_address(bar.index, r.start())
            })
        };
        if let Err(e) = programmed {
            self.release(placed.iter().map(|(_, p)| *p));
            return Err(e);
        }
        {
            let mut map = self.bar_map.write().unwrap_or_else(|p| p.into_inner());
            for (bar, (_, range)) in &placed {
                let key = (range.start(), slot as u8, bar.index);
                map.insert(space_of(bar.kind), key, bar.size, device.clone());
            }
        }
        self.slots[slot] = Some(device);
        Ok(slot as u8)
    }

    /// The device in `slot` (0 is the host bridge).
    pub fn device(&self, slot: u8) -> Option<SharedPciDevice> {
        self.slots.get(usize::from(slot)).cloned().flatten()
    }

    /// Calls `hook` each time the guest moves a BAR, after the BAR map follows it, with the
    /// device that owns the BAR: the VMM re-registers that device's
    /// [`PciDevice::ioeventfds`] (or moves a direct mapping) there. It runs on the vCPU
    /// thread with the root locked (it must not lock the root) and the device unlocked.
    pub fn set_relocation_hook(
        &mut self,
        hook: impl FnMut(&BarRelocation, &SharedPciDevice) + Send + 'static,
    ) {
        self.relocation_hook = Some(Box::new(hook));
    }

    /// A dispatcher for BAR accesses in `space`, to insert into the VMM's bus at `base`.
    pub fn bars(&self, space: BarSpace, base: u64) -> PciBars {
        PciBars::new(self.bar_map.clone(), space, base)
    }

    /// One dispatcher per configured window: `(space, window, dispatcher)` to insert into
    /// the MMIO bus (or port bus for [`BarSpace::Io`]) at `window.base` for `window.size`.
    pub fn bar_dispatchers(&self) -> Vec<(BarSpace, AddressWindow, PciBars)> {
        let w = &self.windows;
        [(BarSpace::Memory, Some(w.mmio32)), (BarSpace::Memory, w.mmio64), (BarSpace::Io, w.io)]
            .into_iter()
            .filter_map(|(space, window)| {
                window.map(|win| (space, win, self.bars(space, win.base)))
            })
            .collect()
    }

    /// Configuration read of `data.len()` (1, 2 or 4) bytes at byte `offset` of `addr`'s
    /// configuration space. Absent functions, other buses and odd accesses read all ones.
    pub fn config_read(&self, addr: PciAddress, offset: u16, data: &mut [u8]) {
        data.fill(0xff);
        let Some((device, reg, byte)) = self.target(addr, offset, data.len()) else { return };
        let value = lock(&device).read_config(reg).to_le_bytes();
        data.copy_from_slice(&value[byte..byte + data.len()]);
    }

    /// Configuration write; ignored for absent functions and odd accesses. A BAR move is
    /// applied to the BAR map and reported to the device and the relocation hook.
    pub fn config_write(&mut self, addr: PciAddress, offset: u16, data: &[u8]) {
        let Some((device, reg, byte)) = self.target(addr, offset, data.len()) else {
            guest_debug!("pci: ignored config write to {addr:?} at {offset:#x}");
            return;
        };
        let moved = {
            let mut dev = lock(&device);
            let moved = dev.write_config(reg, byte, data);
            if let Some(r) = &moved {
                dev.bar_moved(r);
            }
            moved
        };
        if let Some(bar) = moved {
            self.relocate(addr.device, bar, device);
        }
    }

    /// Resets every device (not their BAR placement).
    pub fn reset(&mut self) {
        for device in self.slots.iter().flatten() {
            lock(device).reset();
        }
    }

    fn target(
        &self,
        addr: PciAddress,
        offset: u16,
        len: usize,
    ) -> Option<(SharedPciDevice, usize, usize)> {
        let offset = usize::from(offset);
        if addr.bus != 0 || addr.function != 0 || offset >= CONFIG_SPACE_SIZE {
            return None;
        }
        let byte = offset % 4;
        if !matches!(len, 1 | 2 | 4) || byte + len > 4 {
            return None;
        }
        let device = self.device(addr.device)?;
        Some((device, offset / 4, byte))
    }

    fn relocate(&mut self, slot: u8, bar: BarReprogram, device: SharedPciDevice) {
        let space = space_of(bar.kind);
        {
            let mut map = self.bar_map.write().unwrap_or_else(|p| p.into_inner());
            map.remove(space, (bar.old, slot, bar.index));
            map.insert(space, (bar.new, slot, bar.index), bar.size, device.clone());
        }
        guest_debug!(
            "pci: 00:{slot:02x}.0 BAR {} moved {:#x} -> {:#x}",
            bar.index,
            bar.old,
            bar.new
        );
        if let Some(hook) = self.relocation_hook.as_mut() {
            hook(&BarRelocation { slot, bar }, &device);
        }
    }

    fn allocate(&mut self, bar: &PciBar) -> Result<(Window, RangeInclusive), PciError> {
        let (window, name) = match bar.kind {
            BarKind::Memory32 { .. } => (Window::Mmio32, "32-bit MMIO"),
            BarKind::Memory64 { .. } if self.mmio64.is_some() => (Window::Mmio64, "64-bit MMIO"),
            BarKind::Memory64 { .. } => (Window::Mmio32, "32-bit MMIO"),
            BarKind::Io => (Window::Io, "I/O"),
        };
        let alloc = self.allocator_mut(window).ok_or(PciError::NoIoWindow { bar: bar.index })?;
        alloc
            .allocate(bar.size, bar.size, AllocPolicy::FirstMatch)
            .map(|range| (window, range))
            .map_err(|_| PciError::WindowExhausted { bar: bar.index, size: bar.size, window: name })
    }

    fn release(&mut self, placed: impl Iterator<Item = (Window, RangeInclusive)>) {
        for (window, range) in placed {
            if let Some(alloc) = self.allocator_mut(window) {
                // Freeing what we just allocated cannot fail; nothing to do if it did.
                let _ = alloc.free(&range);
            }
        }
    }

    fn allocator_mut(&mut self, window: Window) -> Option<&mut AddressAllocator> {
        match window {
            Window::Mmio32 => Some(&mut self.mmio32),
            Window::Mmio64 => self.mmio64.as_mut(),
            Window::Io => self.io.as_mut(),
        }
    }
}

fn space_of(kind: BarKind) -> BarSpace {
    if kind.is_io() {
        BarSpace::Io
    } else {
        BarSpace::Memory
    }
}

#[cfg(test)]
#[path = "root_tests.rs"]
mod tests;
