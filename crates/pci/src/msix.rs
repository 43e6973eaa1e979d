//! MSI-X (PCI Local Bus 3.0 §6.8.2): the vector table and pending bit array a function maps
//! into its BARs, plus the enable and function-mask bits of the capability's message control.
//!
//! Delivery goes through an injected [`MsiSink`] (the VMM: KVM GSI routes and irqfds). A route
//! update is sent only when a vector's deliverable message changes: the guest rewriting
//! address and data of a masked vector costs nothing until it unmasks it.

use std::io;
use std::sync::Arc;

use ironvirt_vm_bus::{guest_debug, guest_warn};

use crate::PciError;

/// Bytes per MSI-X table entry (PCI 3.0 §6.8.2.6).
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// The table size field is 11 bits: at most 2048 vectors (PCI 3.0 §6.8.2.3).
pub const MAX_MSIX_VECTORS: u16 = 2048;

// Table entry dwords (PCI 3.0 §6.8.2.6-6.8.2.9).
const ENTRY_ADDR_LO: u64 = 0;
const ENTRY_ADDR_HI: u64 = 4;
const ENTRY_DATA: u64 = 8;
const ENTRY_CONTROL: u64 = 12;
/// Vector control bit 0: the vector is masked. Other bits are reserved.
const VECTOR_MASKED: u32 = 1;
/// Message address bits 1:0 are reserved: messages are dword aligned (§6.8.2.7).
const ADDR_LO_MASK: u32 = !0x3;
/// Message control (§6.8.2.3): bit 15 MSI-X enable, bit 14 function mask.
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;

/// One MSI message as the VMM routes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (lower dword bits 1:0 always zero).
    pub addr: u64,
    /// Message data.
    pub data: u32,
    /// Delivery is blocked: the vector's mask bit, the function mask, or MSI-X disabled.
    pub masked: bool,
}

/// Receives MSI-X routing changes and interrupts; implemented by the VMM.
pub trait MsiSink: Send + Sync {
    /// Vector `vector` now delivers `message` (or, when `message.masked`, must not deliver).
    fn update_route(&self, vector: u16, message: MsiMessage) -> io::Result<()>;
    /// Sends vector `vector` with the message last passed to `update_route`.
    fn trigger(&self, vector: u16) -> io::Result<()>;
}

/// What [`MsixConfig::trigger`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixDelivery {
    /// The message went to the sink.
    Sent,
    /// The vector or function is masked: the pending bit is set, delivery follows the unmask.
    Pending,
    /// MSI-X is disabled; the function would use INTx instead (§6.8.2.3).
    Disabled,
    /// No such vector (the guest asked for one past the table); nothing happened.
    NoSuchVector,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl Entry {
    /// Entries come out of reset masked (§6.8.2.9).
    const RESET: Entry = Entry { addr_lo: 0, addr_hi: 0, data: 0, control: VECTOR_MASKED };

    fn dword(&self, index: u64) -> u32 {
        match index {
            ENTRY_ADDR_LO => self.addr_lo,
            ENTRY_ADDR_HI => self.addr_hi,
            ENTRY_DATA => self.data,
            ENTRY_CONTROL => self.control,
            _ => 0, // unreachable: accesses are dword aligned
        }
    }

    fn set_dword(&mut self, index: u64, value: u32) {
        match index {
            ENTRY_ADDR_LO => self.addr_lo = value & ADDR_LO_MASK,
            ENTRY_ADDR_HI => self.addr_hi = value,
            ENTRY_DATA => self.data = value,
            ENTRY_CONTROL => self.control = value & VECTOR_MASKED,
            _ => {} // unreachable: accesses are dword aligned
        }
    }
}

/// MSI-X state of one function: table, PBA and the capability's control bits.
pub struct MsixConfig {
    entries: Vec<Entry>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    /// The message last sent to the sink per vector (all start masked).
    routed: Vec<MsiMessage>,
    sink: Arc<dyn MsiSink>,
}

impl std::fmt::Debug for MsixConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsixConfig")
            .field("vectors", &self.entries.len())
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .finish_non_exhaustive()
    }
}

impl MsixConfig {
    /// `vectors` entries (1..=2048), all masked, MSI-X disabled.
    pub fn new(vectors: u16, sink: Arc<dyn MsiSink>) -> Result<Self, PciError> {
        if !(1..=MAX_MSIX_VECTORS).contains(&vectors) {
            return Err(PciError::MsixVectors { count: vectors });
        }
        let n = usize::from(vectors);
        Ok(Self {
            entries: vec![Entry::RESET; n],
            pending: vec![0; n.div_ceil(64)],
            enabled: false,
            function_masked: false,
            routed: vec![MsiMessage { masked: true, ..MsiMessage::default() }; n],
            sink,
        })
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Size of the table in bytes.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Size of the PBA in bytes: one bit per vector in whole qwords (§6.8.2.10).
    pub fn pba_size(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// The capability describing this table at the given BAR locations.
    pub fn capability(
        &self,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> crate::MsixCapability {
        crate::MsixCapability {
            vectors: self.vectors(),
            table_bar,
            table_offset,
            pba_bar,
            pba_offset,
        }
    }

    /// Whether MSI-X is enabled (message control bit 15).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether all vectors are masked by the function mask (message control bit 14).
    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    /// Applies a guest write of the message control register (only bits 15 and 14 count);
    /// unmasking delivers pending vectors.
    pub fn set_message_control(&mut self, control: u16) {
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        for vector in 0..self.vectors() {
            self.refresh(vector);
        }
    }

    /// Vector `n`'s current message, `None` past the table.
    pub fn vector(&self, n: u16) -> Option<MsiMessage> {
        let e = self.entries.get(usize::from(n))?;
        let masked = e.control & VECTOR_MASKED != 0 || self.function_masked || !self.enabled;
        Some(MsiMessage {
            addr: u64::from(e.addr_hi) << 32 | u64::from(e.addr_lo),
            data: e.data,
            masked,
        })
    }

    /// Whether vector `n` has its pending bit set.
    pub fn is_pending(&self, n: u16) -> bool {
        let n = usize::from(n);
        self.pending.get(n / 64).is_some_and(|q| q & (1 << (n % 64)) != 0)
    }

    /// The device signals vector `n`: sent now, or marked pending while masked.
    pub fn trigger(&mut self, n: u16) -> io::Result<MsixDelivery> {
        let Some(msg) = self.vector(n) else {
            return Ok(MsixDelivery::NoSuchVector);
        };
        if !self.enabled {
            return Ok(MsixDelivery::Disabled);
        }
        if msg.masked {
            self.set_pending(n, true);
            return Ok(MsixDelivery::Pending);
        }
        self.sink.trigger(n)?;
        Ok(MsixDelivery::Sent)
    }

    /// Guest read of the table at `offset` (from the table start). Only aligned dword and
    /// qword reads inside the table are answered; others read all ones (§6.8.2: other
    /// accesses are undefined).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(first) = self.check_table_access(offset, data.len()) else { return };
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            let at = first + i as u64 * 4;
            let entry = &self.entries[(at / MSIX_ENTRY_SIZE) as usize];
            chunk.copy_from_slice(&entry.dword(at % MSIX_ENTRY_SIZE).to_le_bytes());
        }
    }

    /// Guest write of the table at `offset`; the same access rules as reads (others are
    /// ignored). A changed entry is re-routed once per access; an unmask delivers a pending
    /// vector.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let Some(first) = self.check_table_access(offset, data.len()) else { return };
        let vector = (first / MSIX_ENTRY_SIZE) as u16;
        for (i, chunk) in data.chunks(4).enumerate() {
            let at = first + i as u64 * 4;
            let value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            self.entries[usize::from(vector)].set_dword(at % MSIX_ENTRY_SIZE, value);
        }
        self.refresh(vector);
    }

    /// Guest read of the PBA at `offset` (from the PBA start): aligned dwords and qwords.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if !aligned_access(offset, data.len(), self.pba_size()) {
            guest_debug!("msix: ignored PBA read of {} bytes at {offset:#x}", data.len());
            return;
        }
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            let at = offset + i as u64 * 4;
            let qword = self.pending[(at / 8) as usize];
            let dword = (qword >> ((at % 8) * 8)) as u32;
            chunk.copy_from_slice(&dword.to_le_bytes());
        }
    }

    /// Guest write of the PBA: read-only, ignored (§6.8.2.10).
    pub fn write_pba(&mut self, offset: u64, data: &[u8]) {
        guest_debug!("msix: ignored PBA write of {} bytes at {offset:#x}", data.len());
    }

    /// Back to the power-on state: every vector masked with a zero message, nothing pending,
    /// MSI-X disabled and the function unmasked.
    pub fn reset(&mut self) {
        self.entries.fill(Entry::RESET);
        self.pending.fill(0);
        self.enabled = false;
        self.function_masked = false;
        for vector in 0..self.vectors() {
            self.refresh(vector);
        }
    }

    fn check_table_access(&self, offset: u64, len: usize) -> Option<u64> {
        if aligned_access(offset, len, self.table_size()) {
            Some(offset)
        } else {
            guest_debug!("msix: ignored table access of {len} bytes at {offset:#x}");
            None
        }
    }

    fn set_pending(&mut self, n: u16, on: bool) {
        let n = usize::from(n);
        if let Some(q) = self.pending.get_mut(n / 64) {
            if on {
                *q |= 1 << (n % 64);
            } else {
                *q &= !(1 << (n % 64));
            }
        }
    }

    /// Tells the sink about vector `n` if its deliverable message changed, then delivers a
    /// pending interrupt if the vector just became deliverable (§6.8.2.9).
    fn refresh(&mut self, n: u16) {
        let Some(msg) = self.vector(n) else { return };
        let old = self.routed[usize::from(n)];
        let changed = msg.masked != old.masked || (!msg.masked && msg != old);
        if changed {
            self.routed[usize::from(n)] = msg;
            if let Err(e) = self.sink.update_route(n, msg) {
                guest_warn!("msix: cannot update the route of vector {n}: {e}");
            }
        }
        if !msg.masked && self.is_pending(n) {
            self.set_pending(n, false);
            if let Err(e) = self.sink.trigger(n) {
                guest_warn!("msix: cannot deliver pending vector {n}: {e}");
            }
        }
    }
}

/// A dword or qword access aligned to its size and inside `[0, limit)`.
fn aligned_access(offset: u64, len: usize, limit: u64) -> bool {
    matches!(len, 4 | 8)
        && offset.is_multiple_of(len as u64)
        && offset.checked_add(len as u64).is_some_and(|end| end <= limit)
}

#[cfg(test)]
#[path = "msix_tests.rs"]
mod tests;
