//! The CMOS real-time clock (Motorola MC146818 model) at ports `0x70..0x72`, with 114 bytes of
//! NVRAM.
//!
//! Port `0x70` (offset 0) selects a CMOS byte (bit 7 is the legacy NMI mask and is ignored for
//! indexing); port `0x71` (offset 1) reads or writes it. The clock follows an injected
//! [`WallClock`] (the host's UTC time in production) plus a guest offset in whole seconds, so
//! a guest can set its own date without touching the host.
//!
//! Model decisions (MC146818A datasheet, "Register A" to "Register D"):
//! - UIP (register A bit 7) reads as set during the last 244 µs before each second boundary,
//!   as on real parts, and never while SET (register B bit 7) is set. Guests that spin until
//!   UIP rises and falls therefore find the boundary quickly.
//! - Setting SET freezes the time registers: reads return the time at that moment and writes
//!   edit it; clearing SET makes the edited time the guest's clock from then on. Writes to time
//!   registers without SET take effect at once. Register A's divider bits are stored only.
//! - Interrupt enables (PIE, AIE, UIE in register B) are stored, but no IRQ 8 is ever raised.
//!   Register C's UF and AF flags are computed when it is read (UF: a second boundary passed
//!   since the last read; AF: the current time matches the alarm), IRQF follows the datasheet
//!   formula, and PF is never set. Reading register C clears it.
//! - The day of week (register 6) is derived from the date; writes to it are ignored.
//! - Register D always reports valid RAM and time (VRT).
//! - [`Rtc::reset`] (a guest reset) restores registers A to D to their power-on defaults and
//!   keeps the NVRAM and the guest's time offset.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use ironvirt_vm_bus::{guest_debug, BusDevice};

/// The CMOS index port.
pub const PORT_BASE: u64 = 0x70;
/// Number of ports: index and data.
pub const PORT_LEN: u64 = 2;

/// Source of wall-clock time for the [`Rtc`].
pub trait WallClock: Send + Sync {
    /// The current time; the RTC presents it in UTC.
    fn now(&self) -> SystemTime;
}

/// The host's real-time clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

const INDEX_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;
const CMOS_SIZE: usize = 128;
const INDEX_MASK: u8 = 0x7f;

// CMOS register indexes (MC146818A datasheet, "Address map").
const REG_SECONDS: u8 = 0x00;
const REG_SECONDS_ALARM: u8 = 0x01;
const REG_MINUTES: u8 = 0x02;
const REG_MINUTES_ALARM: u8 = 0x03;
const REG_HOURS: u8 = 0x04;
const REG_HOURS_ALARM: u8 = 0x05;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
/// The IBM PC century byte (named by the FADT's CENTURY field).
const REG_CENTURY: u8 = 0x32;

const REG_A_UIP: u8 = 0x80;
/// 32.768 kHz time base, 1024 Hz periodic rate: what firmware leaves behind.
const REG_A_DEFAULT: u8 = 0x26;
const REG_B_SET: u8 = 0x80;
const REG_B_PIE: u8 = 0x40;
const REG_B_AIE: u8 = 0x20;
const REG_B_UIE: u8 = 0x10;
const REG_B_DM_BINARY: u8 = 0x04;
const REG_B_24_HOUR: u8 = 0x02;
/// 24-hour mode, BCD data, no interrupts.
const REG_B_DEFAULT: u8 = REG_B_24_HOUR;
const REG_C_IRQF: u8 = 0x80;
const REG_C_PF: u8 = 0x40;
const REG_C_AF: u8 = 0x20;
const REG_C_UF: u8 = 0x10;
const REG_D_VRT: u8 = 0x80;
/// Bit 7 of the hours register in 12-hour mode.
const HOUR_PM: u8 = 0x80;
/// Alarm bytes with both top bits set match any value ("don't care").
const ALARM_DONT_CARE: u8 = 0xc0;

/// How long before each second boundary UIP reads as set (datasheet t_BUC).
const UIP_WINDOW_NS: u32 = 244_000;
const NANOS_PER_SEC: u32 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// A broken-down UTC time. Fields may hold out-of-range values written by a guest while SET
/// is set; [`CivilTime::to_unix`] clamps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CivilTime {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl CivilTime {
    fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(SECS_PER_DAY);
        let rem = secs.rem_euclid(SECS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        Self {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    fn to_unix(self) -> i64 {
        let days = days_from_civil(
            self.year.clamp(0, 9999),
            self.month.clamp(1, 12),
            self.day.clamp(1, 31),
        );
        days * SECS_PER_DAY
            + i64::from(self.hour.min(23)) * 3600
            + i64::from(self.minute.min(59)) * 60
            + i64::from(self.second.min(59))
    }

    /// Day of the week, 1 = Sunday.
    fn weekday(self) -> u8 {
        // 1970-01-01 was a Thursday (index 4 when Sunday is 0).
        let days = self.to_unix().div_euclid(SECS_PER_DAY);
        (days + 4).rem_euclid(7) as u8 + 1
    }
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day).
///
/// Works on 400-year eras of 146,097 days, with years starting on March 1st so that the leap
/// day is the last day of the (shifted) year.
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u8, day as u8)
}

/// Converts a proleptic Gregorian date to days since 1970-01-01 (inverse of
/// [`civil_from_days`]; a day past the end of its month rolls into the next one).
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let month_from_march = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn to_bcd(value: u8) -> u8 {
    ((value / 10 % 10) << 4) | (value % 10)
}

/// Decodes BCD without validation: invalid nibbles give values above 99 that later clamp.
fn from_bcd(value: u8) -> u8 {
    (value >> 4) * 10 + (value & 0x0f)
}

/// The MC146818 CMOS RTC and NVRAM.
pub struct Rtc {
    clock: Box<dyn WallClock>,
    /// Selected CMOS byte, NMI bit masked off.
    index: u8,
    /// Backing store for registers A and B, the alarm bytes and the NVRAM. The time bytes
    /// (0x00, 0x02, 0x04, 0x06..0x09, 0x32) and registers C and D are computed instead.
    cmos: [u8; CMOS_SIZE],
    /// Guest time minus host time, in seconds.
    offset_secs: i64,
    /// The time registers while SET is set.
    frozen: Option<CivilTime>,
    /// Pending register C flags.
    reg_c: u8,
    /// Guest second at the last register C evaluation, to detect update cycles.
    flags_second: i64,
}

impl fmt::Debug for Rtc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rtc")
            .field("index", &self.index)
            .field("offset_secs", &self.offset_secs)
            .field("frozen", &self.frozen)
            .finish_non_exhaustive()
    }
}

impl Rtc {
    /// An RTC showing `clock`'s time, with zeroed NVRAM and default registers.
    pub fn new(clock: Box<dyn WallClock>) -> Self {
        let mut rtc = Self {
            clock,
            index: 0,
            cmos: [0; CMOS_SIZE],
            offset_secs: 0,
            frozen: None,
            reg_c: 0,
            flags_second: 0,
        };
        rtc.reset();
        rtc.flags_second = rtc.guest_secs();
        rtc
    }

    /// A guest reset: registers A to D return to their defaults and an unfinished SET cycle
    /// is abandoned; the NVRAM and the guest's clock offset are kept.
    pub fn reset(&mut self) {
        self.index = 0;
        self.cmos[usize::from(REG_A)] = REG_A_DEFAULT;
        self.cmos[usize::from(REG_B)] = REG_B_DEFAULT;
        self.reg_c = 0;
        self.frozen = None;
    }

    /// The guest's clock minus the host's, in seconds (0 until the guest sets its time).
    pub fn guest_offset_secs(&self) -> i64 {
        self.offset_secs
    }

    /// Host time as (whole seconds since the epoch, nanoseconds into the second).
    fn host_now(&self) -> (i64, u32) {
        match self.clock.now().duration_since(UNIX_EPOCH) {
            Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
            Err(before) => {
                let d = before.duration();
                let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                match d.subsec_nanos() {
                    0 => (-secs, 0),
                    n => (-secs - 1, NANOS_PER_SEC - n),
                }
            }
        }
    }

    fn guest_secs(&self) -> i64 {
        self.host_now().0.saturating_add(self.offset_secs)
    }

    fn current_time(&self) -> CivilTime {
        self.frozen.unwrap_or_else(|| CivilTime::from_unix(self.guest_secs()))
    }

    fn reg_b(&self) -> u8 {
        self.cmos[usize::from(REG_B)]
    }

    /// Encodes a binary value 0..=99 in the data mode register B selects.
    fn encode(&self, value: u8) -> u8 {
        if self.reg_b() & REG_B_DM_BINARY != 0 {
            value
        } else {
            to_bcd(value)
        }
    }

    fn decode(&self, value: u8) -> u8 {
        if self.reg_b() & REG_B_DM_BINARY != 0 {
            value
        } else {
            from_bcd(value)
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.reg_b() & REG_B_24_HOUR != 0 {
            return self.encode(hour);
        }
        // 12-hour mode: 12 AM, 1..11 AM, 12 PM, 1..11 PM; bit 7 flags PM.
        let pm = if hour >= 12 { HOUR_PM } else { 0 };
        let twelve = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(twelve) | pm
    }

    fn decode_hour(&self, value: u8) -> u8 {
        if self.reg_b() & REG_B_24_HOUR != 0 {
            return self.decode(value);
        }
        let pm = value & HOUR_PM != 0;
        let twelve = self.decode(value & !HOUR_PM) % 12;
        if pm {
            twelve + 12
        } else {
            twelve
        }
    }

    fn read_register(&mut self, index: u8) -> u8 {
        let time = || self.current_time();
        match index {
            REG_SECONDS => self.encode(time().second),
            REG_MINUTES => self.encode(time().minute),
            REG_HOURS => self.encode_hour(time().hour),
            REG_WEEKDAY => self.encode(time().weekday()),
            REG_DAY => self.encode(time().day),
            REG_MONTH => self.encode(time().month),
            REG_YEAR => self.encode(time().year.rem_euclid(100) as u8),
            REG_CENTURY => self.encode(time().year.div_euclid(100).rem_euclid(100) as u8),
            REG_A => self.cmos[usize::from(REG_A)] | self.update_in_progress(),
            REG_B => self.reg_b(),
            REG_C => self.take_reg_c(),
            REG_D => REG_D_VRT,
            _ => self.cmos.get(usize::from(index)).copied().unwrap_or(0xff),
        }
    }

    fn write_register(&mut self, index: u8, value: u8) {
        match index {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY | REG_MONTH | REG_YEAR
            | REG_CENTURY => self.write_time(index, value),
            REG_WEEKDAY => guest_debug!("rtc: ignoring write {value:#x} to the derived weekday"),
            REG_A => self.cmos[usize::from(REG_A)] = value & !REG_A_UIP,
            REG_B => self.write_reg_b(value),
            REG_C | REG_D => guest_debug!("rtc: ignoring write {value:#x} to read-only {index:#x}"),
            _ => match self.cmos.get_mut(usize::from(index)) {
                Some(byte) => *byte = value,
                None => guest_debug!("rtc: ignoring write to CMOS index {index:#x}"),
            },
        }
    }

    fn write_time(&mut self, index: u8, value: u8) {
        let mut time = self.current_time();
        match index {
            REG_SECONDS => time.second = self.decode(value),
            REG_MINUTES => time.minute = self.decode(value),
            REG_HOURS => time.hour = self.decode_hour(value),
            REG_DAY => time.day = self.decode(value),
            REG_MONTH => time.month = self.decode(value),
            REG_YEAR => {
                time.year = time.year.div_euclid(100) * 100 + i64::from(self.decode(value).min(99))
            }
            REG_CENTURY => {
                time.year = i64::from(self.decode(value).min(99)) * 100 + time.year.rem_euclid(100)
            }
            _ => return,
        }
        if self.frozen.is_some() {
            self.frozen = Some(time);
        } else {
            self.commit(time);
        }
    }

    /// Makes `time` the guest's current time.
    fn commit(&mut self, time: CivilTime) {
        self.offset_secs = time.to_unix().saturating_sub(self.host_now().0);
    }

    fn write_reg_b(&mut self, mut value: u8) {
        let was_set = self.reg_b() & REG_B_SET != 0;
        let set = value & REG_B_SET != 0;
        if set {
            // Datasheet: writing SET clears UIE.
            value &= !REG_B_UIE;
        }
        if !was_set && set {
            self.frozen = Some(self.current_time());
        }
        if was_set && !set {
            if let Some(time) = self.frozen.take() {
                self.commit(time);
            }
        }
        if value & (REG_B_PIE | REG_B_AIE | REG_B_UIE) != 0 {
            guest_debug!("rtc: interrupt enables {value:#x} stored; IRQ 8 is not emulated");
        }
        self.cmos[usize::from(REG_B)] = value;
    }

    fn update_in_progress(&self) -> u8 {
        if self.frozen.is_some() {
            return 0;
        }
        if self.host_now().1 >= NANOS_PER_SEC - UIP_WINDOW_NS {
            REG_A_UIP
        } else {
            0
        }
    }

    /// Computes the update and alarm flags lazily and returns register C, clearing it.
    fn take_reg_c(&mut self) -> u8 {
        if self.frozen.is_none() {
            let now = self.guest_secs();
            if now != self.flags_second {
                self.reg_c |= REG_C_UF;
                if self.alarm_matches(CivilTime::from_unix(now)) {
                    self.reg_c |= REG_C_AF;
                }
            }
            self.flags_second = now;
        }
        let enabled = self.reg_b() & (REG_B_PIE | REG_B_AIE | REG_B_UIE);
        // PIE/AIE/UIE sit one bit to the left of PF/AF/UF.
        if self.reg_c & (enabled >> 1) & (REG_C_PF | REG_C_AF | REG_C_UF) != 0 {
            self.reg_c |= REG_C_IRQF;
        }
        std::mem::take(&mut self.reg_c)
    }

    fn alarm_matches(&self, time: CivilTime) -> bool {
        let matches = |alarm_reg: u8, current: u8| {
            let alarm = self.cmos[usize::from(alarm_reg)];
            alarm & ALARM_DONT_CARE == ALARM_DONT_CARE || alarm == current
        };
        matches(REG_SECONDS_ALARM, self.encode(time.second))
            && matches(REG_MINUTES_ALARM, self.encode(time.minute))
            && matches(REG_HOURS_ALARM, self.encode_hour(time.hour))
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            guest_debug!("rtc: {}-byte read at offset {offset:#x}, handled bytewise", data.len());
        }
        // A wide access behaves as consecutive byte accesses, as on an ISA bus.
        for (port, byte) in (offset..PORT_LEN).zip(data.iter_mut()) {
            *byte = match port {
                // The index register is write-only.
                INDEX_OFFSET => 0xff,
                DATA_OFFSET => self.read_register(self.index),
                _ => continue,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            guest_debug!("rtc: {}-byte write at offset {offset:#x}, handled bytewise", data.len());
        }
        for (port, &value) in (offset..PORT_LEN).zip(data.iter()) {
            match port {
                INDEX_OFFSET => self.index = value & INDEX_MASK,
                DATA_OFFSET => self.write_register(self.index, value),
                _ => guest_debug!("rtc: ignoring write past the data port"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
