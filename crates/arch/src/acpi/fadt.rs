//! The Fixed ACPI Description Table (FADT, signature "FACP"), ACPI 6.5 §5.2.9.

use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};

use super::{addr32, to_bytes, AcpiConfig, OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// PM1_EVT_LEN: status and enable registers, 2 bytes each (ACPI 6.5 §4.8.3.1).
const PM1_EVT_LEN: u8 = 4;
/// PM1_CNT_LEN: one 16-bit control register (ACPI 6.5 §4.8.3.2).
const PM1_CNT_LEN: u8 = 2;
/// PM_TMR_LEN: the timer is a 32-bit register (ACPI 6.5 §4.8.3.3).
const PM_TMR_LEN: u8 = 4;
/// IA-PC boot architecture flags (ACPI 6.5 §5.2.9.3 Table 5.11): LEGACY_DEVICES (bit 0,
/// there are ISA devices such as the UART and RTC) and 8042 (bit 1).
const IAPC_BOOT_ARCH: u16 = (1 << 0) | (1 << 1);
/// P_LVL2_LAT above 100 means "C2 not supported" (ACPI 6.5 §5.2.9 Table 5.9).
const P_LVL2_LAT_NONE: u16 = 101;
/// P_LVL3_LAT above 1000 means "C3 not supported" (ACPI 6.5 §5.2.9 Table 5.9).
const P_LVL3_LAT_NONE: u16 = 1001;

/// A system I/O generic address (ACPI 6.5 §5.2.3.2) for a `len`-byte register block.
fn io_gas(port: u16, len: u8, access: AccessSize) -> GAS {
    GAS::new(AddressSpace::SystemIo, len * 8, 0, access, port.into())
}

/// Builds the FADT (revision 6.5, not hardware-reduced) pointing at the DSDT and FACS.
pub(super) fn build_fadt(cfg: &AcpiConfig, dsdt_addr: u64, facs_addr: u64) -> Vec<u8> {
    let pm = &cfg.pm;
    // Fixed feature flags (ACPI 6.5 §5.2.9 Table 5.10). Left clear on purpose: PWR_BUTTON
    // (clear = the fixed-feature power button exists, PM1 status/enable bit 8), TMR_VAL_EXT
    // (clear = 24-bit PM timer) and HW_REDUCED_ACPI (we have the fixed hardware).
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .preferred_pm_profile(PmProfile::Unspecified)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);

    // DSDT (offset 40) / X_DSDT (140) and FIRMWARE_CTRL (36) / X_FIRMWARE_CTRL (132) carry the
    // same address, so OSPMs reading either width agree (ACPICA warns on a mismatch only).
    fadt.dsdt = addr32(dsdt_addr).into();
    fadt.x_dsdt = dsdt_addr.into();
    fadt.firmware_ctrl = addr32(facs_addr).into();
    fadt.x_firmware_ctrl = facs_addr.into();

    // SCI_INT (46); SMI_CMD (48) = 0 with ACPI_ENABLE/ACPI_DISABLE (52/53) = 0 means the
    // platform runs in ACPI mode from power-on (ACPI 6.5 §5.2.9 Table 5.9).
    fadt.sci_int = u16::from(cfg.sci_irq).into();
    fadt.smi_cmd = 0.into();
    fadt.acpi_enable = 0;
    fadt.acpi_disable = 0;

    // Fixed hardware register blocks: 32-bit port numbers (56, 64, 76) with their lengths
    // (88, 89, 91), and the matching X_ generic addresses (148, 172, 208). ACPICA checks that
    // each X_ bit width is 8 * the legacy length.
    fadt.pm1a_evt_blk = u32::from(pm.evt_blk).into();
    fadt.pm1_evt_len = PM1_EVT_LEN;
    fadt.x_pm1a_evt_blk = io_gas(pm.evt_blk, PM1_EVT_LEN, AccessSize::WordAccess);
    fadt.pm1a_cnt_blk = u32::from(pm.cnt_blk).into();
    fadt.pm1_cnt_len = PM1_CNT_LEN;
    fadt.x_pm1a_cnt_blk = io_gas(pm.cnt_blk, PM1_CNT_LEN, AccessSize::WordAccess);
    fadt.pm_tmr_blk = u32::from(pm.tmr_blk).into();
    fadt.pm_tmr_len = PM_TMR_LEN;
    fadt.x_pm_tmr_blk = io_gas(pm.tmr_blk, PM_TMR_LEN, AccessSize::DwordAccess);

    // No C2/C3 (96, 98), IA-PC boot flags (109).
    fadt.p_lvl2_lat = P_LVL2_LAT_NONE.into();
    fadt.p_lvl3_lat = P_LVL3_LAT_NONE.into();
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();

    // RESET_REG (116): one byte in system I/O space; RESET_VALUE (128).
    fadt.reset_reg = io_gas(pm.reset_port, 1, AccessSize::ByteAccess);
    fadt.reset_value = pm.reset_value;

    to_bytes(&fadt.finalize())
}
