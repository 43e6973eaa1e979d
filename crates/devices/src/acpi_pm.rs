//! The ACPI fixed-hardware power-management block at ports `0x600..0x60d`.
//!
//! Layout (the FADT built by `ironvirt-arch` points at these offsets):
//!
//! | offset | register | ACPI 6.5 |
//! |---|---|---|
//! | 0..2 | PM1a_STS (PM1a_EVT_BLK), write 1 to clear | §4.8.4.1.1, Table 4.11 |
//! | 2..4 | PM1a_EN | §4.8.4.1.2, Table 4.12 |
//! | 4..6 | PM1a_CNT (PM1a_CNT_BLK) | §4.8.4.2.1, Table 4.13 |
//! | 8..12 | PM_TMR (PM_TMR_BLK), 24-bit, read-only | §4.8.4.3 |
//! | 12 | RESET_REG (FADT RESET_REG / RESET_VALUE) | §4.8.4.6 |
//!
//! Offsets 6 and 7 are a gap (PM1_CNT_LEN is 2): they read as zero and ignore writes. Any
//! access size at any offset works byte by byte on the registers it covers, so a 4-byte read
//! at offset 0 returns `PM1_STS | PM1_EN << 16`; side effects (SCI level, sleep, reset) are
//! evaluated once the whole access has been applied.
//!
//! Model decisions:
//! - `SMI_CMD` is 0 in the FADT, so the hardware is always in ACPI mode and SCI_EN reads 1.
//! - SLP_EN with SLP_TYP = [`S5_SLP_TYP`] powers off. Any other sleep type is not supported
//!   (the DSDT declares only `\_S5_`); it is logged and the machine "wakes" at once by setting
//!   WAK_STS, so an OSPM that waits for WAK_STS after writing SLP_EN does not spin forever.
//! - Only the power button (PWRBTN_STS) is ever raised as an event. TMR_STS (timer carry) is
//!   never set: that would need a host timer; guests use the PM timer as a clock only.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ironvirt_vm_bus::{
    guest_debug, guest_warn, BusDevice, GuestEvent, GuestEventSink, LevelInterrupt,
};

/// Base port of the block (PM1a_EVT_BLK).
pub const PORT_BASE: u64 = 0x600;
/// Ports spanned by the block, through the reset register.
pub const PORT_LEN: u64 = 13;
/// Offset of PM1a_STS (u16) at the start of PM1a_EVT_BLK.
pub const PM1_STS_OFFSET: u64 = 0;
/// Offset of PM1a_EN (u16) in the second half of PM1a_EVT_BLK.
pub const PM1_EN_OFFSET: u64 = 2;
/// Offset of PM1a_CNT (u16), PM1a_CNT_BLK.
pub const PM1_CNT_OFFSET: u64 = 4;
/// Offset of the PM timer (u32), PM_TMR_BLK.
pub const PM_TMR_OFFSET: u64 = 8;
/// Offset of the reset register (u8).
pub const RESET_REG_OFFSET: u64 = 12;
/// The value that, written to the reset register, resets the machine (FADT RESET_VALUE).
pub const RESET_VALUE: u8 = 0x01;
/// The SLP_TYP value of `\_S5_` in the DSDT: soft off.
pub const S5_SLP_TYP: u16 = 5;
/// PM timer frequency (ACPI 6.5 §4.8.4.3).
pub const PM_TIMER_FREQUENCY_HZ: u64 = 3_579_545;

// PM1 status bits (ACPI 6.5 Table 4.11).
const TMR_STS: u16 = 1 << 0;
const BM_STS: u16 = 1 << 4;
const GBL_STS: u16 = 1 << 5;
const PWRBTN_STS: u16 = 1 << 8;
const SLPBTN_STS: u16 = 1 << 9;
const RTC_STS: u16 = 1 << 10;
const PCIEXP_WAKE_STS: u16 = 1 << 14;
const WAK_STS: u16 = 1 << 15;
/// Every defined status bit; all are write-1-to-clear.
const STS_DEFINED: u16 =
    TMR_STS | BM_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS | PCIEXP_WAKE_STS | WAK_STS;

// PM1 enable bits (ACPI 6.5 Table 4.12); each sits at the position of its status bit.
const TMR_EN: u16 = 1 << 0;
const GBL_EN: u16 = 1 << 5;
const PWRBTN_EN: u16 = 1 << 8;
const SLPBTN_EN: u16 = 1 << 9;
const RTC_EN: u16 = 1 << 10;
const PCIEXP_WAKE_DIS: u16 = 1 << 14;
const EN_DEFINED: u16 = TMR_EN | GBL_EN | PWRBTN_EN | SLPBTN_EN | RTC_EN | PCIEXP_WAKE_DIS;
/// Status bits that raise the SCI while their enable bit is set (PCIEXP_WAKE and WAK_STS
/// are wake-only and have no SCI enable).
const SCI_EVENTS: u16 = TMR_EN | GBL_EN | PWRBTN_EN | SLPBTN_EN | RTC_EN;

// PM1 control bits (ACPI 6.5 Table 4.13).
const SCI_EN: u16 = 1 << 0;
const BM_RLD: u16 = 1 << 1;
const GBL_RLS: u16 = 1 << 2;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0b111 << SLP_TYP_SHIFT;
const SLP_EN: u16 = 1 << 13;
/// Control bits that read back as written (SLP_EN and GBL_RLS are write-only).
const CNT_STORED: u16 = BM_RLD | SLP_TYP_MASK;

/// Counts the PM timer for `elapsed` time: 24 bits at [`PM_TIMER_FREQUENCY_HZ`], wrapping.
fn timer_ticks(elapsed: Duration) -> u32 {
    let ticks = elapsed.as_nanos() * u128::from(PM_TIMER_FREQUENCY_HZ) / 1_000_000_000;
    (ticks & 0x00ff_ffff) as u32
}

/// Replaces byte `index` (0 = low) of `reg` with `value`, keeping only the bits in `mask`.
fn with_byte(reg: u16, index: usize, value: u8, mask: u16) -> u16 {
    let shift = 8 * index as u32;
    let byte_mask = 0x00ff << shift;
    (reg & !byte_mask) | ((u16::from(value) << shift) & byte_mask & mask)
}

/// What a write asked of the machine, acted upon after the whole access is applied.
#[derive(Clone, Copy, Debug, Default)]
struct Requests {
    sleep: Option<u16>,
    reset: bool,
}

/// The PM1a event and control blocks, PM timer and reset register.
pub struct AcpiPm {
    sci: Arc<dyn LevelInterrupt>,
    events: Arc<dyn GuestEventSink>,
    timer_start: Instant,
    pm1_sts: u16,
    pm1_en: u16,
    /// Stored control bits (see [`CNT_STORED`]).
    pm1_cnt: u16,
    /// The SCI level last driven successfully.
    sci_level: bool,
}

impl fmt::Debug for AcpiPm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcpiPm")
            .field("pm1_sts", &self.pm1_sts)
            .field("pm1_en", &self.pm1_en)
            .field("pm1_cnt", &self.pm1_cnt)
            .field("sci_level", &self.sci_level)
            .finish_non_exhaustive()
    }
}

impl AcpiPm {
    /// A PM block driving the SCI (IRQ 9, level, active high) through `sci` and sending power
    /// off and reset requests to `events`. The PM timer starts at zero now.
    pub fn new(sci: Arc<dyn LevelInterrupt>, events: Arc<dyn GuestEventSink>) -> Self {
        Self {
            sci,
            events,
            timer_start: Instant::now(),
            pm1_sts: 0,
            pm1_en: 0,
            pm1_cnt: 0,
            sci_level: false,
        }
    }

    /// Presses the fixed-feature power button: sets PWRBTN_STS and raises the SCI when the
    /// guest enabled PWRBTN_EN. An ACPI guest then shuts down and writes S5 to PM1a_CNT.
    pub fn press_power_button(&mut self) {
        self.pm1_sts |= PWRBTN_STS;
        self.update_sci();
    }

    /// A machine reset: clears status, enable and control registers and lowers the SCI. The PM
    /// timer keeps counting.
    pub fn reset(&mut self) {
        self.pm1_sts = 0;
        self.pm1_en = 0;
        self.pm1_cnt = 0;
        self.update_sci();
    }

    fn pm_timer(&self) -> u32 {
        timer_ticks(self.timer_start.elapsed())
    }

    fn update_sci(&mut self) {
        let level = self.pm1_sts & self.pm1_en & SCI_EVENTS != 0;
        if level == self.sci_level {
            return;
        }
        match self.sci.set_level(level) {
            Ok(()) => self.sci_level = level,
            // Left unchanged so the next re-evaluation retries.
            Err(e) => guest_warn!("acpi_pm: cannot set the SCI level to {level}: {e}"),
        }
    }

    fn read_byte(&self, offset: u64, timer: &mut Option<u32>) -> u8 {
        let (reg, index) = match offset {
            0 | 1 => (self.pm1_sts, offset - PM1_STS_OFFSET),
            2 | 3 => (self.pm1_en, offset - PM1_EN_OFFSET),
            4 | 5 => (self.pm1_cnt | SCI_EN, offset - PM1_CNT_OFFSET),
            8..=11 => {
                // One timer sample per access, so a 4-byte read is consistent.
                let ticks = *timer.get_or_insert_with(|| self.pm_timer());
                return ticks.to_le_bytes()[(offset - PM_TMR_OFFSET) as usize];
            }
            _ => return 0, // the gap at 6..8 and the reset register
        };
        reg.to_le_bytes()[index as usize]
    }

    fn write_byte(&mut self, offset: u64, value: u8, requests: &mut Requests) {
        match offset {
            0 | 1 => {
                let index = (offset - PM1_STS_OFFSET) as usize;
                let clear = with_byte(0, index, value, STS_DEFINED);
                self.pm1_sts &= !clear;
            }
            2 | 3 => {
                let index = (offset - PM1_EN_OFFSET) as usize;
                self.pm1_en = with_byte(self.pm1_en, index, value, EN_DEFINED);
            }
            4 | 5 => {
                let index = (offset - PM1_CNT_OFFSET) as usize;
                let written = with_byte(0, index, value, u16::MAX);
                self.pm1_cnt = with_byte(self.pm1_cnt, index, value, CNT_STORED);
                if written & GBL_RLS != 0 {
                    guest_debug!("acpi_pm: GBL_RLS written; there is no firmware to notify");
                }
                if written & SLP_EN != 0 {
                    requests.sleep = Some((self.pm1_cnt & SLP_TYP_MASK) >> SLP_TYP_SHIFT);
                }
            }
            RESET_REG_OFFSET if value == RESET_VALUE => requests.reset = true,
            _ => guest_debug!("acpi_pm: ignoring write {value:#x} at offset {offset:#x}"),
        }
    }

    fn sleep(&mut self, slp_typ: u16) {
        if slp_typ == S5_SLP_TYP {
            log::info!("acpi_pm: guest requested power off (S5)");
            self.events.send(GuestEvent::PowerOff);
        } else {
            guest_warn!("acpi_pm: sleep type {slp_typ} is not supported; waking at once");
            self.pm1_sts |= WAK_STS;
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut timer = None;
        for (port, byte) in (offset..PORT_LEN).zip(data.iter_mut()) {
            *byte = self.read_byte(port, &mut timer);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut requests = Requests::default();
        for (port, &value) in (offset..PORT_LEN).zip(data.iter()) {
            self.write_byte(port, value, &mut requests);
        }
        self.update_sci();
        if let Some(slp_typ) = requests.sleep {
            self.sleep(slp_typ);
        }
        if requests.reset {
            log::info!("acpi_pm: guest wrote the reset register");
            self.events.send(GuestEvent::Reset);
        }
    }
}

#[cfg(test)]
mod tests;
