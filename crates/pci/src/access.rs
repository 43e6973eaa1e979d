//! The two ways a guest reaches configuration space: configuration mechanism #1 through ports
//! 0xcf8/0xcfc (PCI Local Bus 3.0 §3.2.2.3.2) and the PCIe enhanced configuration access
//! mechanism, ECAM (PCIe 4.0 §7.2.2).

use std::sync::{Arc, Mutex};

use ironvirt_vm_bus::{guest_debug, BusDevice};

use crate::lock;
use crate::root::{PciAddress, PciRoot};

/// First port of the configuration mechanism: CONFIG_ADDRESS at 0xcf8, CONFIG_DATA at 0xcfc.
pub const CONFIG_IO_PORT_BASE: u64 = 0xcf8;
/// Ports covered by [`PciConfigIo`]: 0xcf8..0xd00.
pub const CONFIG_IO_PORT_LEN: u64 = 8;
/// ECAM bytes per bus: 32 devices x 8 functions x 4 KiB.
pub const ECAM_BUS_SIZE: u64 = 1 << 20;

/// CONFIG_ADDRESS bit 31: the next CONFIG_DATA access is a configuration cycle.
const CONFIG_ENABLE: u32 = 1 << 31;
/// Bits 30:24 are reserved and bits 1:0 fixed at 0 for mechanism #1; they read as zero.
const CONFIG_ADDRESS_WRITABLE: u32 = 0x80ff_fffc;
const CONFIG_DATA: u64 = 4;

/// Configuration mechanism #1: a [`BusDevice`] for ports 0xcf8..0xd00.
///
/// Only dword writes to 0xcf8 latch CONFIG_ADDRESS (PCI 3.0 §3.2.2.3.2: byte and word
/// accesses there are ordinary I/O, ignored here); any read inside 0xcf8..0xcfc returns its
/// bytes. 0xcfc..0xd00 accesses of 1, 2 or 4 bytes that do not cross 0xd00 reach byte
/// `(CONFIG_ADDRESS & 0xfc) + (port - 0xcfc)` of the addressed function; the 256-byte legacy
/// space only (ECAM reaches the rest).
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
}

impl PciConfigIo {
    /// The port adapter for `root`, with CONFIG_ADDRESS cleared.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        Self { root, address: 0 }
    }

    /// The target of a CONFIG_DATA access at `offset` (4..8) when the enable bit is set.
    fn target(&self, offset: u64) -> Option<(PciAddress, u16)> {
        if self.address & CONFIG_ENABLE == 0 {
            return None;
        }
        let a = self.address;
        let addr = PciAddress {
            bus: (a >> 16) as u8,
            device: ((a >> 11) & 0x1f) as u8,
            function: ((a >> 8) & 0x7) as u8,
        };
        Some((addr, (a & 0xfc) as u16 + (offset - CONFIG_DATA) as u16))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(end) = offset.checked_add(data.len() as u64) else { return };
        if end <= CONFIG_DATA {
            let bytes = self.address.to_le_bytes();
            data.copy_from_slice(&bytes[offset as usize..end as usize]);
        } else if offset >= CONFIG_DATA && end <= CONFIG_IO_PORT_LEN {
            if let Some((addr, reg)) = self.target(offset) {
                lock(&self.root).config_read(addr, reg, data);
            }
        } else {
            guest_debug!("pci: ignored {}-byte read at port 0xcf8+{offset}", data.len());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => {
                let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.address = value & CONFIG_ADDRESS_WRITABLE;
            }
            (CONFIG_DATA..CONFIG_IO_PORT_LEN, len) if offset + len as u64 <= CONFIG_IO_PORT_LEN => {
                if let Some((addr, reg)) = self.target(offset) {
                    lock(&self.root).config_write(addr, reg, data);
                }
            }
            _ => guest_debug!("pci: ignored {}-byte write at port 0xcf8+{offset}", data.len()),
        }
    }
}

/// ECAM: a [`BusDevice`] for a window of `buses` x 1 MiB where offset
/// `bus << 20 | device << 15 | function << 12 | register` reaches a configuration register.
/// Accesses of 1, 2 or 4 bytes inside one dword are served; others read all ones.
pub struct PciConfigMmio {
    root: Arc<Mutex<PciRoot>>,
    buses: u16,
}

impl PciConfigMmio {
    /// An ECAM window for buses `0..buses` (clamped to 1..=256): 1 MiB for bus 0 only,
    /// 256 MiB for the full range. Only bus 0 is populated; the others read all ones.
    pub fn new(root: Arc<Mutex<PciRoot>>, buses: u16) -> Self {
        Self { root, buses: buses.clamp(1, 256) }
    }

    /// Bytes of guest address space the window covers.
    pub fn size(&self) -> u64 {
        u64::from(self.buses) * ECAM_BUS_SIZE
    }

    fn decode(&self, offset: u64, len: usize) -> Option<(PciAddress, u16)> {
        let end = offset.checked_add(len as u64)?;
        if end > self.size() {
            return None;
        }
        let addr = PciAddress {
            bus: (offset >> 20) as u8,
            device: ((offset >> 15) & 0x1f) as u8,
            function: ((offset >> 12) & 0x7) as u8,
        };
        Some((addr, (offset & 0xfff) as u16))
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        match self.decode(offset, data.len()) {
            Some((addr, reg)) => lock(&self.root).config_read(addr, reg, data),
            None => guest_debug!("pci: ignored ECAM read of {} bytes at {offset:#x}", data.len()),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match self.decode(offset, data.len()) {
            Some((addr, reg)) => lock(&self.root).config_write(addr, reg, data),
            None => guest_debug!("pci: ignored ECAM write of {} bytes at {offset:#x}", data.len()),
        }
    }
}

#[cfg(test)]
#[path = "access_tests.rs"]
mod tests;
