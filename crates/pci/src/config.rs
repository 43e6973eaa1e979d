//! Configuration space of one type-0 function (PCI Local Bus 3.0 §6.1-6.2, §6.7; PCIe 4.0
//! §7.5.1): identification, command/status, BARs with sizing and relocation, interrupt
//! line/pin and a capability list in 0x40..0x100. The extended space (0x100..0x1000) exists
//! and reads as zero (no extended capabilities, PCIe 4.0 §7.6.3).
//!
//! Every register has a write mask: bits outside it keep their value whatever the guest
//! writes, so read-only fields, reserved bits and BAR type bits survive any write.

use crate::PciError;

/// Size of a PCIe function's configuration space in bytes (PCIe 4.0 §7.2.2).
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Number of BAR registers in a type-0 header (PCI 3.0 §6.2.5.1).
pub const NUM_BARS: usize = 6;
/// Capability id of a vendor-specific capability (PCI 3.0 appendix H), used by virtio-pci.
pub const CAP_ID_VENDOR: u8 = 0x09;
/// Capability id of MSI-X (PCI 3.0 §6.8.2).
pub const CAP_ID_MSIX: u8 = 0x11;

const NUM_REGS: usize = CONFIG_SPACE_SIZE / 4;

// Type-0 header byte offsets (PCI 3.0 §6.1, figure 6-1).
const VENDOR_ID: usize = 0x00;
const DEVICE_ID: usize = 0x02;
const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const REVISION_ID: usize = 0x08;
const CLASS_CODE: usize = 0x09;
const CACHE_LINE_SIZE: usize = 0x0c;
const HEADER_TYPE: usize = 0x0e;
const BAR0: usize = 0x10;
const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
const SUBSYSTEM_ID: usize = 0x2e;
const CAPABILITIES_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
const INTERRUPT_PIN: usize = 0x3d;

/// Command register bits software may set (PCI 3.0 §6.2.2): I/O space (0), memory space (1),
/// bus master (2), parity error response (6), SERR# enable (8), interrupt disable (10).
const COMMAND_WRITABLE: u16 = 0x0547;
/// Command register bit 1: memory space decode.
const COMMAND_MEMORY: u16 = 1 << 1;
/// Status register bit 4: capabilities list present (PCI 3.0 §6.2.3).
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Capabilities live between the end of the header and the extended space (PCI 3.0 §6.7).
const CAP_START: usize = 0x40;
const CAP_END: usize = 0x100;

// BAR low bits (PCI 3.0 §6.2.5.1).
const BAR_IO: u32 = 0x1;
const BAR_MEM_64: u32 = 0x4;
const BAR_MEM_PREFETCH: u32 = 0x8;
const BAR_MEM_ADDR_MASK: u32 = !0xf;
const BAR_IO_ADDR_MASK: u32 = !0x3;
/// Smallest memory BAR (PCI 3.0 §6.2.5.1: 16 bytes) and I/O BAR range (4..=256 bytes).
const MIN_MEM_BAR: u64 = 16;
const MIN_IO_BAR: u64 = 4;
const MAX_IO_BAR: u64 = 256;
/// A 32-bit memory BAR's size mask must leave bit 31 writable.
const MAX_MEM32_BAR: u64 = 1 << 31;

// MSI-X capability layout (PCI 3.0 §6.8.2): message control at +2, table offset/BIR at +4,
// PBA offset/BIR at +8.
const MSIX_CAP_LEN: usize = 12;
const MSIX_CONTROL_WRITABLE: u16 = 0xc000;

/// Identification registers of a function (PCI 3.0 §6.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor id (offset 0x00).
    pub vendor_id: u16,
    /// Device id (offset 0x02).
    pub device_id: u16,
    /// Revision id (offset 0x08).
    pub revision_id: u8,
    /// Class code, 24 bits: base class << 16 | sub-class << 8 | programming interface.
    pub class_code: u32,
    /// Subsystem vendor id (offset 0x2c).
    pub subsystem_vendor_id: u16,
    /// Subsystem id (offset 0x2e).
    pub subsystem_id: u16,
}

/// The legacy interrupt pin a function uses (PCI 3.0 §6.2.4, offset 0x3d).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InterruptPin {
    /// No INTx pin (MSI-X only).
    #[default]
    None = 0,
    /// INTA#.
    IntA = 1,
    /// INTB#.
    IntB = 2,
    /// INTC#.
    IntC = 3,
    /// INTD#.
    IntD = 4,
}

/// What a BAR decodes (PCI 3.0 §6.2.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BarKind {
    /// A memory BAR below 4 GiB.
    Memory32 {
        /// Reads have no side effects (bit 3).
        prefetchable: bool,
    },
    /// A memory BAR anywhere in the 64-bit space; takes this register and the next.
    Memory64 {
        /// Reads have no side effects (bit 3).
        prefetchable: bool,
    },
    /// An I/O port BAR.
    Io,
}

impl BarKind {
    /// Whether the BAR decodes I/O ports rather than memory.
    pub fn is_io(self) -> bool {
        self == BarKind::Io
    }

    /// Whether the BAR takes two registers.
    pub fn is_64bit(self) -> bool {
        matches!(self, BarKind::Memory64 { .. })
    }

    fn type_bits(self) -> u32 {
        match self {
            BarKind::Memory32 { prefetchable } => prefetch_bit(prefetchable),
            BarKind::Memory64 { prefetchable } => BAR_MEM_64 | prefetch_bit(prefetchable),
            BarKind::Io => BAR_IO,
        }
    }
}

fn prefetch_bit(prefetchable: bool) -> u32 {
    if prefetchable {
        BAR_MEM_PREFETCH
    } else {
        0
    }
}

/// A defined BAR and where it currently points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciBar {
    /// BAR index (0..6); a 64-bit BAR also occupies `index + 1`.
    pub index: u8,
    /// What it decodes.
    pub kind: BarKind,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// Current base address as programmed (by the root or the guest).
    pub address: u64,
}

/// A BAR the guest moved: the owner must move its MMIO mapping and ioeventfds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarReprogram {
    /// BAR index (the lower register of a 64-bit BAR).
    pub index: u8,
    /// What it decodes.
    pub kind: BarKind,
    /// Size in bytes.
    pub size: u64,
    /// Base address before the write.
    pub old: u64,
    /// Base address after the write.
    pub new: u64,
}

/// What a configuration write changed that the function's owner must act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigWriteEffect {
    /// Nothing beyond the register itself.
    None,
    /// A BAR now points somewhere else.
    BarMoved(BarReprogram),
    /// The MSI-X message control register was written; the new value (enable bit 15,
    /// function mask bit 14) must be passed to [`crate::MsixConfig::set_message_control`].
    MsixControl(u16),
    /// The command register was written; its new value (e.g. Interrupt Disable, bit 10).
    Command(u16),
}

/// Where a function's MSI-X table and PBA live (PCI 3.0 §6.8.2.4-6.8.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCapability {
    /// Number of table entries (1..=2048).
    pub vectors: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table in that BAR (8-byte aligned).
    pub table_offset: u32,
    /// BAR holding the pending bit array.
    pub pba_bar: u8,
    /// Offset of the PBA in that BAR (8-byte aligned).
    pub pba_offset: u32,
}

#[derive(Clone, Copy, Debug)]
struct BarDef {
    kind: BarKind,
    size: u64,
    /// The address last reported through [`ConfigWriteEffect::BarMoved`] or set by the owner.
    reported: u64,
}

/// The configuration space of one type-0 function. See the module docs.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    regs: Vec<u32>,
    /// Bits the guest may change, per dword.
    wmask: Vec<u32>,
    /// Values restored by [`ConfigSpace::reset`].
    defaults: Vec<u32>,
    bars: [Option<BarDef>; NUM_BARS],
    /// Register index `i` holds the upper half of the 64-bit BAR `i - 1`.
    upper_half: [bool; NUM_BARS],
    last_cap: Option<usize>,
    next_cap: usize,
    msix_cap: Option<usize>,
}

impl ConfigSpace {
    /// A single-function type-0 header with the given ids, no BARs and no capabilities.
    pub fn new(ids: &PciIds) -> Self {
        let mut cs = Self {
            regs: vec![0; NUM_REGS],
            wmask: vec![0; NUM_REGS],
            defaults: vec![0; NUM_REGS],
            bars: [None; NUM_BARS],
            upper_half: [false; NUM_BARS],
            last_cap: None,
            next_cap: CAP_START,
            msix_cap: None,
        };
        cs.init_bytes(VENDOR_ID, &ids.vendor_id.to_le_bytes());
        cs.init_bytes(DEVICE_ID, &ids.device_id.to_le_bytes());
        cs.init_bytes(REVISION_ID, &[ids.revision_id]);
        cs.init_bytes(CLASS_CODE, &ids.class_code.to_le_bytes()[..3]);
        cs.init_bytes(HEADER_TYPE, &[0x00]); // type 0, single function
        cs.init_bytes(SUBSYSTEM_VENDOR_ID, &ids.subsystem_vendor_id.to_le_bytes());
        cs.init_bytes(SUBSYSTEM_ID, &ids.subsystem_id.to_le_bytes());
        cs.set_wmask_bytes(COMMAND, &COMMAND_WRITABLE.to_le_bytes());
        // Cache line size is read-write for software even where it has no effect (PCIe 4.0
        // §7.5.1.1.7); the interrupt line is scratch space for the OS (PCI 3.0 §6.2.4).
        cs.set_wmask_bytes(CACHE_LINE_SIZE, &[0xff]);
        cs.set_wmask_bytes(INTERRUPT_LINE, &[0xff]);
        cs
    }

    /// Sets the INTx pin the function reports (read-only to the guest).
    pub fn set_interrupt_pin(&mut self, pin: InterruptPin) {
        self.init_bytes(INTERRUPT_PIN, &[pin as u8]);
    }

    /// Sets the interrupt line register's initial value (what firmware would have written:
    /// the GSI the pin is routed to). The guest may overwrite it.
    pub fn set_interrupt_line(&mut self, line: u8) {
        self.init_bytes(INTERRUPT_LINE, &[line]);
    }

    /// Reads dword register `reg` (byte offset `reg * 4`); all ones past the 4 KiB space.
    pub fn read_reg(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(u32::MAX)
    }

    /// Guest write of `data` (1, 2 or 4 bytes) at byte `offset` within dword register `reg`.
    ///
    /// Bits outside the register's write mask keep their value; accesses that are out of
    /// range, of another size or cross the dword are ignored.
    pub fn write(&mut self, reg: usize, offset: usize, data: &[u8]) -> ConfigWriteEffect {
        let Some((value, byte_mask)) = merge_bytes(offset, data) else {
            ironvirt_vm_bus::guest_debug!(
                "pci: ignored config write of {} bytes at {offset}",
                data.len()
            );
            return ConfigWriteEffect::None;
        };
        let Some(&wmask) = self.wmask.get(reg) else {
            return ConfigWriteEffect::None;
        };
        let mask = wmask & byte_mask;
        self.regs[reg] = (self.regs[reg] & !mask) | (value & mask);

        if (BAR0 / 4..BAR0 / 4 + NUM_BARS).contains(&reg) {
            let sizing = data.len() == 4 && value == u32::MAX;
            return self.bar_written(reg - BAR0 / 4, sizing);
        }
        if reg == COMMAND / 4 && byte_mask & 0xffff != 0 {
            return ConfigWriteEffect::Command(self.regs[reg] as u16);
        }
        if let Some(cap) = self.msix_cap {
            // Message control is bytes 2..4 of the capability's first dword.
            if reg == cap / 4 && byte_mask & 0xffff_0000 != 0 {
                return ConfigWriteEffect::MsixControl((self.regs[reg] >> 16) as u16);
            }
        }
        ConfigWriteEffect::None
    }

    /// Restores every register except the BARs to its value before any guest write
    /// (command register cleared, interrupt line back to its initial value, MSI-X disabled).
    pub fn reset(&mut self) {
        for reg in 0..NUM_REGS {
            if !(BAR0 / 4..BAR0 / 4 + NUM_BARS).contains(&reg) {
                self.regs[reg] = self.defaults[reg];
            }
        }
    }

    /// The command register (PCI 3.0 §6.2.2).
    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// Whether memory space decoding is on (command bit 1).
    pub fn memory_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY != 0
    }

    /// The interrupt line the OS wrote (offset 0x3c).
    pub fn interrupt_line(&self) -> u8 {
        self.read_u8(INTERRUPT_LINE)
    }

    /// Defines BAR `index` with a power-of-two `size`, initially at address 0.
    pub fn add_bar(&mut self, index: u8, kind: BarKind, size: u64) -> Result<(), PciError> {
        let i = usize::from(index);
        let regs_needed = if kind.is_64bit() { 2 } else { 1 };
        if i + regs_needed > NUM_BARS {
            return Err(PciError::BarIndex { index });
        }
        if (i..i + regs_needed).any(|r| self.bars[r].is_some() || self.upper_half[r]) {
            return Err(PciError::BarInUse { index });
        }
        let (min, max) = match kind {
            BarKind::Memory32 { .. } => (MIN_MEM_BAR, MAX_MEM32_BAR),
            BarKind::Memory64 { .. } => (MIN_MEM_BAR, 1 << 63),
            BarKind::Io => (MIN_IO_BAR, MAX_IO_BAR),
        };
        if !size.is_power_of_two() || !(min..=max).contains(&size) {
            return Err(PciError::BarSize { index, size });
        }
        let reg = BAR0 / 4 + i;
        let size_mask = !(size - 1);
        let low_addr_mask = if kind.is_io() { BAR_IO_ADDR_MASK } else { BAR_MEM_ADDR_MASK };
        self.regs[reg] = kind.type_bits();
        self.wmask[reg] = size_mask as u32 & low_addr_mask;
        if kind.is_64bit() {
            self.regs[reg + 1] = 0;
            self.wmask[reg + 1] = (size_mask >> 32) as u32;
            self.upper_half[i + 1] = true;
        }
        self.bars[i] = Some(BarDef { kind, size, reported: 0 });
        Ok(())
    }

    /// BAR `index` as currently programmed, if defined.
    pub fn bar(&self, index: u8) -> Option<PciBar> {
        let i = usize::from(index);
        let def = self.bars.get(i).copied().flatten()?;
        Some(PciBar { index, kind: def.kind, size: def.size, address: self.decode_bar(i, def) })
    }

    /// Every defined BAR, by index.
    pub fn bars(&self) -> Vec<PciBar> {
        (0..NUM_BARS as u8).filter_map(|i| self.bar(i)).collect()
    }

    /// Programs BAR `index` to `addr` (by the root at allocation time; no effect reported).
    pub fn set_bar_address(&mut self, index: u8, addr: u64) -> Result<(), PciError> {
        let i = usize::from(index);
        let def = self.bars.get(i).copied().flatten().ok_or(PciError::NoBar { index })?;
        let fits = match def.kind {
            BarKind::Memory64 { .. } => true,
            BarKind::Memory32 { .. } | BarKind::Io => addr <= u64::from(u32::MAX) - (def.size - 1),
        };
        if !addr.is_multiple_of(def.size) || !fits {
            return Err(PciError::BarAddress { index, addr });
        }
        let reg = BAR0 / 4 + i;
        self.regs[reg] = addr as u32 | def.kind.type_bits();
        if def.kind.is_64bit() {
            self.regs[reg + 1] = (addr >> 32) as u32;
        }
        self.bars[i] = Some(BarDef { reported: addr, ..def });
        Ok(())
    }

    /// Appends a capability with id `id` and `body` (the bytes after the id and next
    /// pointer), read-only to the guest. Returns its offset in configuration space.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<u8, PciError> {
        self.add_capability_with_mask(id, body, &vec![0; body.len()])
    }

    /// Like [`ConfigSpace::add_capability`], with a per-byte write mask over `body` (for
    /// fields the guest may write, such as virtio's `VIRTIO_PCI_CAP_PCI_CFG` window).
    pub fn add_capability_with_mask(
        &mut self,
        id: u8,
        body: &[u8],
        write_mask: &[u8],
    ) -> Result<u8, PciError> {
        if write_mask.len() != body.len() {
            return Err(PciError::CapabilityMask {
                id,
                body_len: body.len(),
                mask_len: write_mask.len(),
            });
        }
        let len = body.len() + 2;
        let offset = self.next_cap;
        if offset + len > CAP_END {
            return Err(PciError::CapabilitySpace { id, len });
        }
        self.init_bytes(offset, &[id, 0]);
        self.init_bytes(offset + 2, body);
        self.set_wmask_bytes(offset + 2, write_mask);
        // Link it: from the capabilities pointer (PCI 3.0 §6.7) or from the previous next field.
        let link = self.last_cap.map_or(CAPABILITIES_POINTER, |prev| prev + 1);
        self.init_bytes(link, &[offset as u8]);
        let status = self.read_u16(STATUS) | STATUS_CAP_LIST;
        self.init_bytes(STATUS, &status.to_le_bytes());
        self.last_cap = Some(offset);
        // Capabilities are dword aligned (PCI 3.0 §6.7: bottom two pointer bits reserved).
        self.next_cap = (offset + len + 3) & !3;
        Ok(offset as u8)
    }

    /// Appends a vendor-specific capability (id 0x09): `payload` is what follows the
    /// capability length byte, which is filled in (virtio 1.2 §4.1.4: `cfg_type`, `bar`, ...).
    pub fn add_vendor_capability(&mut self, payload: &[u8]) -> Result<u8, PciError> {
        self.add_vendor_capability_with_mask(payload, &vec![0; payload.len()])
    }

    /// Like [`ConfigSpace::add_vendor_capability`] with a write mask over `payload`.
    pub fn add_vendor_capability_with_mask(
        &mut self,
        payload: &[u8],
        write_mask: &[u8],
    ) -> Result<u8, PciError> {
        let len = payload.len() + 3;
        let cap_len =
            u8::try_from(len).map_err(|_| PciError::CapabilitySpace { id: CAP_ID_VENDOR, len })?;
        let body: Vec<u8> = std::iter::once(cap_len).chain(payload.iter().copied()).collect();
        let mask: Vec<u8> = std::iter::once(0).chain(write_mask.iter().copied()).collect();
        self.add_capability_with_mask(CAP_ID_VENDOR, &body, &mask)
    }

    /// Appends the MSI-X capability (PCI 3.0 §6.8.2): message control with the table size
    /// (enable and function mask writable), table and PBA offset/BIR registers.
    pub fn add_msix_capability(&mut self, msix: &MsixCapability) -> Result<u8, PciError> {
        if self.msix_cap.is_some() {
            return Err(PciError::MsixCapabilityExists);
        }
        if !(1..=crate::MAX_MSIX_VECTORS).contains(&msix.vectors) {
            return Err(PciError::MsixVectors { count: msix.vectors });
        }
        for (bar, offset) in [(msix.table_bar, msix.table_offset), (msix.pba_bar, msix.pba_offset)]
        {
            if usize::from(bar) >= NUM_BARS || offset % 8 != 0 {
                return Err(PciError::MsixLayout { bar, offset });
            }
        }
        let control = msix.vectors - 1; // table size is encoded as N - 1
        let mut body = [0u8; MSIX_CAP_LEN - 2];
        body[0..2].copy_from_slice(&control.to_le_bytes());
        body[2..6].copy_from_slice(&(msix.table_offset | u32::from(msix.table_bar)).to_le_bytes());
        body[6..10].copy_from_slice(&(msix.pba_offset | u32::from(msix.pba_bar)).to_le_bytes());
        let mut mask = [0u8; MSIX_CAP_LEN - 2];
        mask[0..2].copy_from_slice(&MSIX_CONTROL_WRITABLE.to_le_bytes());
        let offset = self.add_capability_with_mask(CAP_ID_MSIX, &body, &mask)?;
        self.msix_cap = Some(usize::from(offset));
        Ok(offset)
    }

    /// Offset of the MSI-X capability, if added.
    pub fn msix_capability_offset(&self) -> Option<u8> {
        self.msix_cap.map(|o| o as u8)
    }

    /// Walks the capability list from the capabilities pointer, as a guest would: `(offset,
    /// id)` pairs. Stops at a zero pointer, a pointer outside 0x40..0x100 or after 48 hops.
    pub fn capabilities(&self) -> Vec<(u8, u8)> {
        let mut caps = Vec::new();
        let mut ptr = usize::from(self.read_u8(CAPABILITIES_POINTER) & !3);
        while (CAP_START..CAP_END).contains(&ptr) && caps.len() < (CAP_END - CAP_START) / 4 {
            caps.push((ptr as u8, self.read_u8(ptr)));
            ptr = usize::from(self.read_u8(ptr + 1) & !3);
        }
        caps
    }

    /// Reads one byte of configuration space (owner use; out of range reads all ones).
    pub fn read_u8(&self, offset: usize) -> u8 {
        (self.read_reg(offset / 4) >> ((offset % 4) * 8)) as u8
    }

    /// Reads a little-endian u16 (owner use; `offset` should be even).
    pub fn read_u16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.read_u8(offset), self.read_u8(offset + 1)])
    }

    /// Overwrites bytes at `offset` regardless of write masks, e.g. for a device-specific
    /// capability field the owner updates (the value also becomes the reset default).
    /// Bytes past the end of configuration space are dropped.
    pub fn init_bytes(&mut self, offset: usize, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            let at = offset + i;
            let Some(reg) = self.regs.get_mut(at / 4) else { return };
            let shift = (at % 4) * 8;
            *reg = (*reg & !(0xff << shift)) | (u32::from(b) << shift);
            self.defaults[at / 4] = *reg;
        }
    }

    fn set_wmask_bytes(&mut self, offset: usize, mask: &[u8]) {
        for (i, &m) in mask.iter().enumerate() {
            let at = offset + i;
            let Some(reg) = self.wmask.get_mut(at / 4) else { return };
            let shift = (at % 4) * 8;
            *reg = (*reg & !(0xff << shift)) | (u32::from(m) << shift);
        }
    }

    fn decode_bar(&self, i: usize, def: BarDef) -> u64 {
        let low = self.regs[BAR0 / 4 + i];
        match def.kind {
            BarKind::Io => u64::from(low & BAR_IO_ADDR_MASK),
            BarKind::Memory32 { .. } => u64::from(low & BAR_MEM_ADDR_MASK),
            BarKind::Memory64 { .. } => {
                u64::from(low & BAR_MEM_ADDR_MASK) | u64::from(self.regs[BAR0 / 4 + i + 1]) << 32
            }
        }
    }

    /// After a write to BAR register `i`: report a move unless it was a sizing write
    /// (all ones; the guest restores the old value next) or the address did not change.
    fn bar_written(&mut self, i: usize, sizing: bool) -> ConfigWriteEffect {
        let owner = if self.upper_half[i] { i - 1 } else { i };
        let Some(def) = self.bars[owner] else {
            return ConfigWriteEffect::None;
        };
        let new = self.decode_bar(owner, def);
        if sizing || new == def.reported {
            return ConfigWriteEffect::None;
        }
        self.bars[owner] = Some(BarDef { reported: new, ..def });
        ConfigWriteEffect::BarMoved(BarReprogram {
            index: owner as u8,
            kind: def.kind,
            size: def.size,
            old: def.reported,
            new,
        })
    }
}

/// Turns a 1/2/4-byte access at byte `offset` of a dword into (value, byte mask), or `None`
/// for other sizes and accesses crossing the dword.
pub(crate) fn merge_bytes(offset: usize, data: &[u8]) -> Option<(u32, u32)> {
    if !matches!(data.len(), 1 | 2 | 4) || offset + data.len() > 4 {
        return None;
    }
    let mut value = 0u32;
    let mut mask = 0u32;
    for (i, &b) in data.iter().enumerate() {
        let shift = (offset + i) * 8;
        value |= u32::from(b) << shift;
        mask |= 0xff << shift;
    }
    Some((value, mask))
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
