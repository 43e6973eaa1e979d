//! Unit tests for the CMOS RTC, driven through bus accesses.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::test_util::{hostile_accesses, read_u8};

/// 2024-02-29 13:45:30 UTC, a Thursday.
const LEAP_DAY_AFTERNOON: u64 = 1_709_214_330;

/// A clock the test moves by hand.
#[derive(Clone)]
struct FakeClock(Arc<Mutex<SystemTime>>);

impl FakeClock {
    fn at_unix(secs: u64) -> Self {
        Self(Arc::new(Mutex::new(UNIX_EPOCH + Duration::from_secs(secs))))
    }

    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }
}

impl WallClock for FakeClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

fn rtc_at(secs: u64) -> (Rtc, FakeClock) {
    let clock = FakeClock::at_unix(secs);
    (Rtc::new(Box::new(clock.clone())), clock)
}

fn cmos_read(rtc: &mut Rtc, index: u8) -> u8 {
    rtc.write(INDEX_OFFSET, &[index]);
    read_u8(rtc, DATA_OFFSET)
}

fn cmos_write(rtc: &mut Rtc, index: u8, value: u8) {
    rtc.write(INDEX_OFFSET, &[index]);
    rtc.write(DATA_OFFSET, &[value]);
}

/// (sec, min, hour, weekday, day, month, year, century) as the guest reads them.
fn read_clock(rtc: &mut Rtc) -> [u8; 8] {
    [REG_SECONDS, REG_MINUTES, REG_HOURS, REG_WEEKDAY, REG_DAY, REG_MONTH, REG_YEAR, REG_CENTURY]
        .map(|index| cmos_read(rtc, index))
}

#[test]
fn reads_the_clock_in_bcd_24_hour_by_default() {
    let (mut rtc, _clock) = rtc_at(LEAP_DAY_AFTERNOON);

    let time = read_clock(&mut rtc);

    assert_eq!(time, [0x30, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]);
    assert_eq!(cmos_read(&mut rtc, REG_B), REG_B_DEFAULT);
}

#[test]
fn reads_the_clock_in_binary_when_dm_is_set() {
    let (mut rtc, _clock) = rtc_at(LEAP_DAY_AFTERNOON);

    cmos_write(&mut rtc, REG_B, REG_B_24_HOUR | REG_B_DM_BINARY);

    assert_eq!(read_clock(&mut rtc), [30, 45, 13, 5, 29, 2, 24, 20]);
}

#[test]
fn reads_hours_with_a_pm_flag_in_12_hour_mode() {
    let (mut rtc, clock) = rtc_at(LEAP_DAY_AFTERNOON);
    cmos_write(&mut rtc, REG_B, 0);

    let afternoon = cmos_read(&mut rtc, REG_HOURS);
    clock.advance(Duration::from_secs(10 * 3600 + 15 * 60)); // 00:00:30 next day
    let midnight = cmos_read(&mut rtc, REG_HOURS);
    clock.advance(Duration::from_secs(12 * 3600)); // 12:00:30
    let noon = cmos_read(&mut rtc, REG_HOURS);

    assert_eq!(afternoon, HOUR_PM | 0x01);
    assert_eq!(midnight, 0x12);
    assert_eq!(noon, HOUR_PM | 0x12);
}

#[test]
fn writes_hours_in_12_hour_binary_mode() {
    let (mut rtc, _clock) = rtc_at(LEAP_DAY_AFTERNOON);
    cmos_write(&mut rtc, REG_B, REG_B_SET | REG_B_DM_BINARY);

    cmos_write(&mut rtc, REG_HOURS, HOUR_PM | 11);
    cmos_write(&mut rtc, REG_B, REG_B_24_HOUR | REG_B_DM_BINARY);

    assert_eq!(cmos_read(&mut rtc, REG_HOURS), 23);
}

#[test]
fn set_then_time_writes_move_the_guest_clock_and_keep_it_running() {
    let (mut rtc, clock) = rtc_at(LEAP_DAY_AFTERNOON);

    // 2030-06-15 08:09:10, as Linux's mc146818_set_time does it.
    cmos_write(&mut rtc, REG_B, REG_B_SET | REG_B_24_HOUR);
    for (index, value) in [
        (REG_SECONDS, 0x10),
        (REG_MINUTES, 0x09),
        (REG_HOURS, 0x08),
        (REG_DAY, 0x15),
        (REG_MONTH, 0x06),
        (REG_YEAR, 0x30),
        (REG_CENTURY, 0x20),
    ] {
        cmos_write(&mut rtc, index, value);
    }
    cmos_write(&mut rtc, REG_B, REG_B_24_HOUR);
    clock.advance(Duration::from_secs(2));

    assert_eq!(read_clock(&mut rtc), [0x12, 0x09, 0x08, 0x07, 0x15, 0x06, 0x30, 0x20]);
    assert_eq!(rtc.guest_offset_secs(), 1_907_741_350 - LEAP_DAY_AFTERNOON as i64);
    assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_secs(LEAP_DAY_AFTERNOON + 2));
}

#[test]
fn time_stands_still_while_set_is_set() {
    let (mut rtc, clock) = rtc_at(LEAP_DAY_AFTERNOON);
    cmos_write(&mut rtc, REG_B, REG_B_SET | REG_B_24_HOUR);

    clock.advance(Duration::from_secs(5));

    assert_eq!(cmos_read(&mut rtc, REG_SECONDS), 0x30);
}

#[test]
fn a_time_write_without_set_applies_at_once() {
    let (mut rtc, _clock) = rtc_at(LEAP_DAY_AFTERNOON);

    cmos_write(&mut rtc, REG_MINUTES, 0x50);

    assert_eq!(cmos_read(&mut rtc, REG_MINUTES), 0x50);
    assert_eq!(rtc.guest_offset_secs(), 5 * 60);
}

#[test]
fn nvram_and_offset_survive_reset_while_registers_return_to_defaults() {
    let (mut rtc, _clock) = rtc_at(LEAP_DAY_AFTERNOON);
    cmos_write(&mut rtc, 0x0e, 0xa5);
    cmos_write(&mut rtc, 0x7f, 0x5a);
    cmos_write(&mut rtc, REG_MINUTES_ALARM, 0x33);
    cmos_write(&mut rtc, REG_YEAR, 0x25);
    cmos_write(&mut rtc, REG_A, 0x2f);
    cmos_write(&mut rtc, REG_B, REG_B_SET | REG_B_DM_BINARY);

    rtc.reset();

    assert_eq!(cmos_read(&mut rtc, 0x0e), 0xa5);
    assert_eq!(cmos_read(&mut rtc, 0x7f), 0x5a);
    assert_eq!(cmos_read(&mut rtc, REG_YEAR), 0x25);
    assert_eq!(cmos_read(&mut rtc, REG_A) & !REG_A_UIP, REG_A_DEFAULT);
    assert_eq!(cmos_read(&mut rtc, REG_B), REG_B_DEFAULT);
    assert_eq!(cmos_read(&mut rtc, REG_MINUTES_ALARM), 0x33, "alarm bytes are CMOS RAM too");
}

#[test]
fn nmi_mask_bit_does_not_change_the_selected_byte() {
    let (mut rtc, _clock) = rtc_at(LEAP_DAY_AFTERNOON);
    cmos_write(&mut rtc, 0x40, 0x77);

    let through_masked_index = cmos_read(&mut rtc, 0x80 | 0x40);

    assert_eq!(through_masked_index, 0x77);
    assert_eq!(read_u8(&mut rtc, INDEX_OFFSET), 0xff, "the index port is write-only");
}

#[test]
fn register_c_reports_an_update_once_then_reads_clear() {
    let (mut rtc, clock) = rtc_at(LEAP_DAY_AFTERNOON);
    assert_eq!(cmos_read(&mut rtc, REG_C), 0);

    clock.advance(Duration::from_secs(1));
    let after_a_second = cmos_read(&mut rtc, REG_C);
    let again = cmos_read(&mut rtc, REG_C);

    assert_eq!(after_a_second, REG_C_UF);
    assert_eq!(again, 0);
}

#[test]
fn register_c_reports_alarm_and_irqf_when_enabled() {
    let (mut rtc, clock) = rtc_at(LEAP_DAY_AFTERNOON);
    cmos_write(&mut rtc, REG_SECONDS_ALARM, 0x31);
    cmos_write(&mut rtc, REG_MINUTES_ALARM, ALARM_DONT_CARE);
    cmos_write(&mut rtc, REG_HOURS_ALARM, 0x13);
    cmos_write(&mut rtc, REG_B, REG_B_24_HOUR | REG_B_AIE);

    clock.advance(Duration::from_secs(1));

    assert_eq!(cmos_read(&mut rtc, REG_C), REG_C_IRQF | REG_C_AF | REG_C_UF);
}

#[test]
fn register_d_always_reports_valid_time() {
    let (mut rtc, _clock) = rtc_at(LEAP_DAY_AFTERNOON);

    cmos_write(&mut rtc, REG_D, 0);

    assert_eq!(cmos_read(&mut rtc, REG_D), REG_D_VRT);
}

#[test]
fn uip_is_set_only_just_before_a_second_boundary() {
    let (mut rtc, clock) = rtc_at(LEAP_DAY_AFTERNOON);
    cmos_write(&mut rtc, REG_A, 0xff);
    let mid_second = cmos_read(&mut rtc, REG_A);

    clock.advance(Duration::from_nanos(u64::from(NANOS_PER_SEC - UIP_WINDOW_NS / 2)));
    let near_boundary = cmos_read(&mut rtc, REG_A);
    cmos_write(&mut rtc, REG_B, REG_B_SET | REG_B_24_HOUR);
    let while_set = cmos_read(&mut rtc, REG_A);

    assert_eq!(mid_second, 0x7f, "rate bits stored, UIP clear");
    assert_eq!(near_boundary, 0xff);
    assert_eq!(while_set, 0x7f);
}

#[test]
fn garbage_time_writes_are_clamped_not_fatal() {
    let (mut rtc, _clock) = rtc_at(LEAP_DAY_AFTERNOON);
    cmos_write(&mut rtc, REG_B, REG_B_SET | REG_B_24_HOUR);
    for index in [REG_SECONDS, REG_MINUTES, REG_HOURS, REG_DAY, REG_MONTH, REG_YEAR, REG_CENTURY] {
        cmos_write(&mut rtc, index, 0xff);
    }

    cmos_write(&mut rtc, REG_B, REG_B_24_HOUR);

    // Every field clamps to its maximum: 9999-12-31 23:59:59.
    assert_eq!(cmos_read(&mut rtc, REG_CENTURY), 0x99);
}

#[test]
fn civil_conversion_matches_known_dates() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
    assert_eq!(civil_from_days(1_709_164_800 / SECS_PER_DAY), (2024, 2, 29));
    assert_eq!(civil_from_days(951_868_800 / SECS_PER_DAY), (2000, 3, 1));
    assert_eq!(days_from_civil(2000, 2, 29) + 1, 951_868_800 / SECS_PER_DAY);
    assert_eq!(CivilTime::from_unix(-1).second, 59);
}

#[test]
fn civil_conversion_round_trips_over_centuries() {
    for days in (-800_000..800_000).step_by(17) {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
    }
}

#[test]
fn system_clock_reports_a_plausible_date() {
    let mut rtc = Rtc::new(Box::new(SystemClock));

    let century = cmos_read(&mut rtc, REG_CENTURY);

    assert_eq!(century, 0x20);
}

#[test]
fn hostile_accesses_never_panic() {
    let (mut rtc, _clock) = rtc_at(LEAP_DAY_AFTERNOON);
    hostile_accesses(&mut rtc, PORT_LEN);
    for index in 0..=255u8 {
        cmos_write(&mut rtc, index, index.wrapping_mul(31));
        cmos_read(&mut rtc, index);
    }
    rtc.reset();
}
