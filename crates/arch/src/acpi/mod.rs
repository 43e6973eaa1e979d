//! ACPI tables for the x86_64 platform described in `docs/PLATFORM.md`.
//!
//! [`create_acpi_tables`] writes, into the reserved region `[0xe0000, 0x100000)` of guest
//! memory:
//!
//! | table | placement |
//! |---|---|
//! | RSDP (revision 2) | exactly [`RSDP_ADDR`], where the legacy 16-byte-step scan finds it |
//! | XSDT | next 16-byte boundary; lists FACP, APIC and any [`AcpiConfig::extra_tables`] |
//! | FACP (FADT 6.5, not hardware-reduced) | next 16-byte boundary |
//! | FACS | next 64-byte boundary (ACPI 6.5 §5.2.10) |
//! | APIC (MADT) | next 16-byte boundary |
//! | extra tables | next 16-byte boundaries, in order |
//! | DSDT | last (it is the one that grows), 16-byte aligned |
//!
//! Everything is built in host buffers first and written only once the whole layout is known
//! to fit, so a failed call leaves guest memory untouched unless the write itself fails.
//! Table bodies come from the `acpi_tables` crate where it has them (RSDP, XSDT, FADT, FACS,
//! generic SDT, AML objects); the MADT sub-structures it lacks (interrupt source override,
//! local APIC NMI) and the small IRQ resource descriptor are encoded here.

mod dsdt;
mod fadt;
mod madt;
pub mod pci;
#[cfg(test)]
mod tests;

use std::fmt;

use acpi_tables::facs::FACS;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use log::debug;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

pub use dsdt::IrqNoFlags;

/// Guest physical address of the RSDP (`docs/PLATFORM.md`; inside the BIOS read-only area
/// `0xe0000..0xfffff` that ACPI 6.5 §5.2.5.1 tells OSPM to scan on 16-byte boundaries).
pub const RSDP_ADDR: u64 = 0xe_0000;
/// End (exclusive) of the guest region reserved for ACPI tables.
pub const ACPI_REGION_END: u64 = 0x10_0000;
/// Most vCPUs the tables can describe: xAPIC ids are 8 bits and 0xff is the broadcast id, so
/// ids 0..=254. More would need x2APIC entries (MADT type 9), which are not emitted.
pub const MAX_CPUS: u32 = 255;
/// Guest physical address of the local APIC (`docs/PLATFORM.md`).
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Guest physical address of the (single) IOAPIC (`docs/PLATFORM.md`).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;

/// OEM ID placed in every table header (6 bytes, ACPI 6.5 §5.2.6 Table 5.4).
const OEM_ID: [u8; 6] = *b"IRNVRT";
/// OEM table ID placed in every table header (8 bytes).
const OEM_TABLE_ID: [u8; 8] = *b"IRONVIRT";
/// OEM revision placed in every table header.
const OEM_REVISION: u32 = 1;

/// Length of the common system description table header (ACPI 6.5 §5.2.6).
const SDT_HEADER_LEN: usize = 36;
/// Offset of the Length field in a table header (ACPI 6.5 §5.2.6 Table 5.4).
const SDT_LENGTH_OFFSET: usize = 4;
/// Alignment used between tables (the RSDP scan and most OSes want 16 bytes).
const TABLE_ALIGN: u64 = 16;
/// The FACS must be 64-byte aligned (ACPI 6.5 §5.2.10).
const FACS_ALIGN: u64 = 64;
/// FACS version for ACPI 6.x (ACPI 6.5 §5.2.10 Table 5.14).
const FACS_VERSION: u8 = 2;

/// Errors from building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The vCPU count is outside what the MADT can describe.
    #[error("ACPI tables describe 1 to {max} vCPUs, not {num_cpus}")]
    CpuCount {
        /// The requested count.
        num_cpus: u32,
        /// [`MAX_CPUS`].
        max: u32,
    },
    /// The SCI is not an ISA IRQ that can be overridden to level-triggered.
    #[error("SCI IRQ {irq} must be an ISA IRQ in 1..=15 other than 2 (cascade)")]
    SciIrq {
        /// The requested IRQ.
        irq: u8,
    },
    /// `SLP_TYP` for S5 does not fit the 3-bit PM1_CNT field.
    #[error("S5 SLP_TYP {value} does not fit the 3-bit PM1 control field")]
    SleepType {
        /// The requested value.
        value: u8,
    },
    /// An extra `\_SB` child or a resource descriptor cannot be encoded.
    #[error("Cannot encode ACPI object {what}: {reason}")]
    Encode {
        /// The object.
        what: String,
        /// Why.
        reason: &'static str,
    },
    /// An extra table passed in [`AcpiConfig::extra_tables`] is malformed.
    #[error("Extra ACPI table #{index} is malformed: {reason}")]
    ExtraTable {
        /// Position in [`AcpiConfig::extra_tables`].
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A table does not fit in `[RSDP_ADDR, ACPI_REGION_END)`.
    #[error("ACPI table {table} ({len} bytes at {addr:#x}) does not fit below {limit:#x}")]
    DoesNotFit {
        /// Signature of the table.
        table: String,
        /// Where it would start.
        addr: u64,
        /// Its length in bytes.
        len: usize,
        /// [`ACPI_REGION_END`].
        limit: u64,
    },
    /// Writing a table into guest memory failed.
    #[error("Cannot write ACPI table {table} at {addr:#x}")]
    WriteTable {
        /// Signature of the table.
        table: String,
        /// Guest physical address of the table.
        addr: u64,
        /// The guest memory error.
        #[source]
        cause: GuestMemoryError,
    },
}

/// I/O ports of the ACPI PM register block (`docs/PLATFORM.md`, "ACPI").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmPorts {
    /// PM1a event block: status at `evt_blk`, enable at `evt_blk + 2` (4 bytes).
    pub evt_blk: u16,
    /// PM1a control block (2 bytes).
    pub cnt_blk: u16,
    /// PM timer (4 bytes, 24-bit counter at 3.579545 MHz).
    pub tmr_blk: u16,
    /// Port of the FADT reset register (1 byte).
    pub reset_port: u16,
    /// Value to write to `reset_port` to reset the machine.
    pub reset_value: u8,
}

impl Default for PmPorts {
    fn default() -> Self {
        Self {
            evt_blk: 0x600,
            cnt_blk: 0x604,
            tmr_blk: 0x608,
            reset_port: 0x60c,
            reset_value: 0x01,
        }
    }
}

/// An AML object or table body supplied by another part of the VMM.
pub type AmlObject = Box<dyn Aml + Send + Sync>;

/// What the ACPI tables describe. [`Default`] gives the values of `docs/PLATFORM.md`.
pub struct AcpiConfig {
    /// Number of vCPUs, 1..=[`MAX_CPUS`]; APIC ids and ACPI processor UIDs are `0..num_cpus`.
    pub num_cpus: u32,
    /// Ports of the PM register block.
    pub pm: PmPorts,
    /// ISA IRQ (and GSI) of the SCI; level-triggered, active high.
    pub sci_irq: u8,
    /// `SLP_TYP` value for S5 (soft off), published in `\_S5_`.
    pub s5_slp_typ: u8,
    /// I/O port of the pvpanic device, if there is one.
    pub pvpanic_port: Option<u16>,
    /// Extra children of the `\_SB` scope (for example a PCI root bridge `Device`), appended
    /// after the built-in devices. Each must encode to valid AML.
    pub sb_devices: Vec<AmlObject>,
    /// Extra complete tables (for example an MCFG), each with a valid header and checksum;
    /// they are placed after the MADT and listed in the XSDT after FACP and APIC.
    pub extra_tables: Vec<AmlObject>,
}

impl Default for AcpiConfig {
    fn default() -> Self {
        Self {
            num_cpus: 1,
            pm: PmPorts::default(),
            sci_irq: 9,
            s5_slp_typ: 5,
            pvpanic_port: Some(0x505),
            sb_devices: Vec::new(),
            extra_tables: Vec::new(),
        }
    }
}

impl fmt::Debug for AcpiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcpiConfig")
            .field("num_cpus", &self.num_cpus)
            .field("pm", &self.pm)
            .field("sci_irq", &self.sci_irq)
            .field("s5_slp_typ", &self.s5_slp_typ)
            .field("pvpanic_port", &self.pvpanic_port)
            .field("sb_devices", &self.sb_devices.len())
            .field("extra_tables", &self.extra_tables.len())
            .finish()
    }
}

impl AcpiConfig {
    /// Checks the fields the tables cannot represent.
    fn validate(&self) -> Result<(), AcpiError> {
        if self.num_cpus == 0 || self.num_cpus > MAX_CPUS {
            return Err(AcpiError::CpuCount { num_cpus: self.num_cpus, max: MAX_CPUS });
        }
        // ISA IRQs are 0..=15; IRQ 0 (PIT) and 2 (cascade) cannot carry the SCI.
        if self.sci_irq == 0 || self.sci_irq == 2 || self.sci_irq > 15 {
            return Err(AcpiError::SciIrq { irq: self.sci_irq });
        }
        // SLP_TYPx is PM1_CNT bits 10..=12 (ACPI 6.5 §4.8.3.2.1 Table 4.13).
        if self.s5_slp_typ > 7 {
            return Err(AcpiError::SleepType { value: self.s5_slp_typ });
        }
        Ok(())
    }
}

/// A built table waiting to be written.
struct Table {
    name: String,
    addr: u64,
    bytes: Vec<u8>,
}

/// Hands out addresses in `[RSDP_ADDR, ACPI_REGION_END)`.
struct Placer {
    next: u64,
}

impl Placer {
    /// Reserves `len` bytes at the next multiple of `align` (a power of two).
    fn place(&mut self, name: &str, len: usize, align: u64) -> Result<u64, AcpiError> {
        let addr = self.next.next_multiple_of(align);
        let end = u64::try_from(len)
            .ok()
            .and_then(|len| addr.checked_add(len))
            .filter(|&end| end <= ACPI_REGION_END)
            .ok_or_else(|| AcpiError::DoesNotFit {
                table: name.to_string(),
                addr,
                len,
                limit: ACPI_REGION_END,
            })?;
        self.next = end;
        Ok(addr)
    }
}

/// Serialises an AML object or table into bytes.
fn to_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

/// Signature of a table as text, for error messages and logs.
fn signature(bytes: &[u8]) -> String {
    bytes
        .get(..4)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_else(|| "????".to_string())
}

/// Converts a table address to the 32-bit form some FADT/RSDP fields need.
fn addr32(addr: u64) -> u32 {
    u32::try_from(addr).expect("ACPI tables are placed below ACPI_REGION_END (1 MiB)")
}

/// Serialises the extra tables and checks their headers.
fn extra_tables(cfg: &AcpiConfig) -> Result<Vec<Vec<u8>>, AcpiError> {
    cfg.extra_tables
        .iter()
        .enumerate()
        .map(|(index, table)| {
            let bytes = to_bytes(table.as_ref());
            let err = |reason| AcpiError::ExtraTable { index, reason };
            let header: [u8; 4] = bytes
                .get(SDT_LENGTH_OFFSET..SDT_LENGTH_OFFSET + 4)
                .and_then(|b| b.try_into().ok())
                .filter(|_| bytes.len() >= SDT_HEADER_LEN)
                .ok_or_else(|| err("shorter than a table header"))?;
            if usize::try_from(u32::from_le_bytes(header)).ok() != Some(bytes.len()) {
                return Err(err("header length differs from the encoded length"));
            }
            if bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) != 0 {
                return Err(err("bad checksum"));
            }
            Ok(bytes)
        })
        .collect()
}

/// Builds the ACPI tables described by `cfg` and writes them into `mem`.
///
/// Returns the guest address of the RSDP (always [`RSDP_ADDR`]), to pass to the guest through
/// the zero page's `acpi_rsdp_addr` or PVH's `rsdp_paddr`.
///
/// # Errors
/// Fails if `cfg` asks for something the tables cannot express, if the tables do not fit below
/// [`ACPI_REGION_END`], or if `mem` does not cover the region.
pub fn create_acpi_tables<M: GuestMemory>(
    mem: &M,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    cfg.validate()?;

    // Tables whose contents do not depend on where the others go.
    let dsdt = dsdt::build_dsdt(cfg)?;
    let madt = madt::build_madt(cfg)?;
    let mut facs = FACS::new();
    facs.version = FACS_VERSION;
    let facs = to_bytes(&facs);
    let extras = extra_tables(cfg)?;

    // Layout. The FADT and XSDT lengths are fixed, so every address is known up front.
    let mut placer = Placer { next: RSDP_ADDR };
    let rsdp_addr = placer.place("RSDP", Rsdp::len(), TABLE_ALIGN)?;
    let xsdt_len = SDT_HEADER_LEN + 8 * (2 + extras.len());
    let xsdt_addr = placer.place("XSDT", xsdt_len, TABLE_ALIGN)?;
    let fadt_addr = placer.place("FACP", acpi_tables::fadt::FADT::len(), TABLE_ALIGN)?;
    let facs_addr = placer.place("FACS", facs.len(), FACS_ALIGN)?;
    let madt_addr = placer.place("APIC", madt.len(), TABLE_ALIGN)?;
    let mut tables = Vec::with_capacity(6 + extras.len());
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    for bytes in extras {
        let name = signature(&bytes);
        let addr = placer.place(&name, bytes.len(), TABLE_ALIGN)?;
        xsdt.add_entry(addr);
        tables.push(Table { name, addr, bytes });
    }
    let dsdt_addr = placer.place("DSDT", dsdt.len(), TABLE_ALIGN)?;

    // Tables that point at others.
    let fadt = fadt::build_fadt(cfg, dsdt_addr, facs_addr);
    let xsdt = to_bytes(&xsdt);
    debug_assert_eq!(xsdt.len(), xsdt_len);
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    tables.extend([
        Table { name: "RSDP".into(), addr: rsdp_addr, bytes: rsdp },
        Table { name: "XSDT".into(), addr: xsdt_addr, bytes: xsdt },
        Table { name: "FACP".into(), addr: fadt_addr, bytes: fadt },
        Table { name: "FACS".into(), addr: facs_addr, bytes: facs },
        Table { name: "APIC".into(), addr: madt_addr, bytes: madt },
        Table { name: "DSDT".into(), addr: dsdt_addr, bytes: dsdt },
    ]);
    for table in &tables {
        debug!("ACPI {} at {:#x}, {} bytes", table.name, table.addr, table.bytes.len());
        mem.write_slice(&table.bytes, GuestAddress(table.addr)).map_err(|cause| {
            AcpiError::WriteTable { table: table.name.clone(), addr: table.addr, cause }
        })?;
    }
    Ok(GuestAddress(rsdp_addr))
}
