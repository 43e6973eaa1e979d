//! The Multiple APIC Description Table (MADT, signature "APIC"), ACPI 6.5 §5.2.12.

use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::{
    AcpiConfig, AcpiError, IOAPIC_ADDR, LAPIC_ADDR, MAX_CPUS, OEM_ID, OEM_REVISION, OEM_TABLE_ID,
    SDT_HEADER_LEN,
};

/// MADT revision 5 (ACPI 6.3+): the Local APIC flags' Online Capable bit is defined, so
/// OSPMs trust Enabled = 0 to mean "never coming" (none of ours are disabled).
const MADT_REVISION: u8 = 5;
/// Offset of the Local Interrupt Controller Address field (ACPI 6.5 §5.2.12 Table 5.19).
const LAPIC_ADDR_OFFSET: usize = SDT_HEADER_LEN;
/// Offset of the MADT Flags field.
const FLAGS_OFFSET: usize = SDT_HEADER_LEN + 4;
/// Length of the fixed MADT part before the interrupt controller structures.
const MADT_FIXED_LEN: u32 = SDT_HEADER_LEN as u32 + 8;
/// MADT flag PCAT_COMPAT: the system also has dual 8259 PICs (ACPI 6.5 Table 5.20).
const PCAT_COMPAT: u32 = 1 << 0;

/// IOAPIC id (`docs/PLATFORM.md`).
const IOAPIC_ID: u8 = 0;
/// The IOAPIC's first GSI.
const IOAPIC_GSI_BASE: u32 = 0;

/// Interrupt Source Override structure type (ACPI 6.5 §5.2.12.5 Table 5.25).
const TYPE_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
/// Length of an Interrupt Source Override structure.
const INTERRUPT_SOURCE_OVERRIDE_LEN: u8 = 10;
/// Local APIC NMI structure type (ACPI 6.5 §5.2.12.7 Table 5.28).
const TYPE_LOCAL_APIC_NMI: u8 = 4;
/// Length of a Local APIC NMI structure.
const LOCAL_APIC_NMI_LEN: u8 = 6;
/// "All processors" as an ACPI processor UID in a Local APIC NMI structure.
const ALL_PROCESSORS_UID: u8 = 0xff;
/// The NMI comes in on LINT1, as on PC-compatible systems.
const NMI_LINT: u8 = 1;
/// The ISA bus in an Interrupt Source Override.
const ISA_BUS: u8 = 0;

/// MPS INTI flags (ACPI 6.5 §5.2.12.5 Table 5.26): polarity bits 1:0, trigger mode bits 3:2.
const MPS_INTI_POLARITY_ACTIVE_HIGH: u16 = 0b01;
/// Trigger mode "level" in MPS INTI flags.
const MPS_INTI_TRIGGER_LEVEL: u16 = 0b11 << 2;
/// MPS INTI flags "conforms to the bus" for both polarity and trigger.
const MPS_INTI_CONFORMS: u16 = 0;

/// Appends an Interrupt Source Override: ISA `source` IRQ is GSI `gsi` with `flags`.
fn interrupt_source_override(out: &mut Vec<u8>, source: u8, gsi: u32, flags: u16) {
    out.extend_from_slice(&[
        TYPE_INTERRUPT_SOURCE_OVERRIDE,
        INTERRUPT_SOURCE_OVERRIDE_LEN,
        ISA_BUS,
        source,
    ]);
    out.extend_from_slice(&gsi.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
}

/// Appends a Local APIC NMI structure.
fn local_apic_nmi(out: &mut Vec<u8>, processor_uid: u8, flags: u16, lint: u8) {
    out.extend_from_slice(&[TYPE_LOCAL_APIC_NMI, LOCAL_APIC_NMI_LEN, processor_uid]);
    out.extend_from_slice(&flags.to_le_bytes());
    out.push(lint);
}

/// Builds the MADT: one enabled Local APIC per vCPU (APIC id = UID = index), the IOAPIC, the
/// SCI override and a LINT1 NMI for all processors.
///
/// ISA IRQs other than the SCI are identity-mapped to GSIs, which is the MADT default, so they
/// need no override: in particular IRQ 0 stays on GSI 0, where KVM's in-kernel PIT raises it
/// (KVM's default routing), unlike the usual firmware IRQ 0 -> GSI 2 override.
pub(super) fn build_madt(cfg: &AcpiConfig) -> Result<Vec<u8>, AcpiError> {
    let num_cpus = u8::try_from(cfg.num_cpus)
        .ok()
        .filter(|&n| n > 0 && u32::from(n) <= MAX_CPUS)
        .ok_or(AcpiError::CpuCount { num_cpus: cfg.num_cpus, max: MAX_CPUS })?;

    let mut madt =
        Sdt::new(*b"APIC", MADT_FIXED_LEN, MADT_REVISION, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    madt.write_u32(LAPIC_ADDR_OFFSET, LAPIC_ADDR);
    madt.write_u32(FLAGS_OFFSET, PCAT_COMPAT);

    let mut entries = Vec::new();
    for id in 0..num_cpus {
        // Processor Local APIC (ACPI 6.5 §5.2.12.2): UID and APIC id are both the index.
        ProcessorLocalApic::new(id, id, EnabledStatus::Enabled).to_aml_bytes(&mut entries);
    }
    // I/O APIC (ACPI 6.5 §5.2.12.3).
    IoApic::new(IOAPIC_ID, IOAPIC_ADDR, IOAPIC_GSI_BASE).to_aml_bytes(&mut entries);
    // The SCI is level-triggered, active high. ISA IRQs default to edge-triggered, active
    // high, so it needs an Interrupt Source Override (ACPI 6.5 §5.2.12.5) even though it keeps
    // its number as GSI.
    interrupt_source_override(
        &mut entries,
        cfg.sci_irq,
        u32::from(cfg.sci_irq),
        MPS_INTI_POLARITY_ACTIVE_HIGH | MPS_INTI_TRIGGER_LEVEL,
    );
    local_apic_nmi(&mut entries, ALL_PROCESSORS_UID, MPS_INTI_CONFORMS, NMI_LINT);
    madt.append_slice(&entries);
    Ok(madt.as_slice().to_vec())
}
