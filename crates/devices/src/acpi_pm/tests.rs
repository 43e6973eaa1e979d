//! Unit tests for the ACPI PM block, driven through bus accesses.

use std::thread;

use super::*;
use crate::test_util::{
    hostile_accesses, read_u16, read_u32, read_u8, EventRecorder, LevelRecorder,
};

fn acpi_pm() -> (AcpiPm, Arc<LevelRecorder>, Arc<EventRecorder>) {
    let sci = Arc::new(LevelRecorder::default());
    let events = Arc::new(EventRecorder::default());
    (AcpiPm::new(sci.clone(), events.clone()), sci, events)
}

fn write_u16(dev: &mut AcpiPm, offset: u64, value: u16) {
    dev.write(offset, &value.to_le_bytes());
}

fn sleep_request(slp_typ: u16) -> u16 {
    (slp_typ << SLP_TYP_SHIFT) | SLP_EN
}

#[test]
fn slp_en_with_s5_sends_power_off() {
    let (mut pm, _sci, events) = acpi_pm();

    write_u16(&mut pm, PM1_CNT_OFFSET, sleep_request(S5_SLP_TYP));

    assert_eq!(events.events(), vec![GuestEvent::PowerOff]);
}

#[test]
fn slp_en_with_s5_works_as_a_high_byte_write() {
    let (mut pm, _sci, events) = acpi_pm();

    pm.write(PM1_CNT_OFFSET + 1, &[(sleep_request(S5_SLP_TYP) >> 8) as u8]);

    assert_eq!(events.events(), vec![GuestEvent::PowerOff]);
}

#[test]
fn slp_en_with_s3_sends_nothing_and_sets_wak_sts() {
    let (mut pm, _sci, events) = acpi_pm();

    write_u16(&mut pm, PM1_CNT_OFFSET, sleep_request(3));

    assert!(events.events().is_empty());
    assert_eq!(read_u16(&mut pm, PM1_STS_OFFSET), WAK_STS);
    write_u16(&mut pm, PM1_STS_OFFSET, WAK_STS);
    assert_eq!(read_u16(&mut pm, PM1_STS_OFFSET), 0, "WAK_STS is write-1-to-clear");
}

#[test]
fn slp_typ_without_slp_en_is_stored_and_sleeps_not() {
    let (mut pm, _sci, events) = acpi_pm();

    write_u16(&mut pm, PM1_CNT_OFFSET, S5_SLP_TYP << SLP_TYP_SHIFT);

    assert!(events.events().is_empty());
    assert_eq!(read_u16(&mut pm, PM1_CNT_OFFSET), (S5_SLP_TYP << SLP_TYP_SHIFT) | SCI_EN);
}

#[test]
fn sci_en_always_reads_set_and_slp_en_reads_clear() {
    let (mut pm, _sci, _events) = acpi_pm();

    write_u16(&mut pm, PM1_CNT_OFFSET, 0);
    let cleared = read_u16(&mut pm, PM1_CNT_OFFSET);
    write_u16(&mut pm, PM1_CNT_OFFSET, sleep_request(1));
    let after_sleep = read_u16(&mut pm, PM1_CNT_OFFSET);

    assert_eq!(cleared, SCI_EN);
    assert_eq!(after_sleep & SLP_EN, 0);
}

#[test]
fn status_bits_clear_only_when_written_with_one() {
    let (mut pm, _sci, _events) = acpi_pm();
    pm.press_power_button();

    write_u16(&mut pm, PM1_STS_OFFSET, 0);
    let after_zero = read_u16(&mut pm, PM1_STS_OFFSET);
    pm.write(PM1_STS_OFFSET + 1, &[(PWRBTN_STS >> 8) as u8]);
    let after_one = read_u16(&mut pm, PM1_STS_OFFSET);

    assert_eq!(after_zero, PWRBTN_STS);
    assert_eq!(after_one, 0);
}

#[test]
fn power_button_raises_sci_only_once_enabled_and_clearing_lowers_it() {
    let (mut pm, sci, _events) = acpi_pm();

    pm.press_power_button();
    let while_disabled = sci.is_high();
    write_u16(&mut pm, PM1_EN_OFFSET, PWRBTN_EN);
    let once_enabled = sci.is_high();
    write_u16(&mut pm, PM1_STS_OFFSET, PWRBTN_STS);

    assert!(!while_disabled);
    assert!(once_enabled);
    assert!(!sci.is_high());
    assert_eq!(sci.levels(), vec![true, false]);
}

#[test]
fn power_button_with_enable_set_raises_sci_at_once() {
    let (mut pm, sci, _events) = acpi_pm();
    write_u16(&mut pm, PM1_EN_OFFSET, PWRBTN_EN);

    pm.press_power_button();

    assert!(sci.is_high());
    write_u16(&mut pm, PM1_EN_OFFSET, 0);
    assert!(!sci.is_high(), "disabling the event lowers the line too");
}

#[test]
fn four_byte_read_at_zero_returns_status_and_enable() {
    let (mut pm, _sci, _events) = acpi_pm();
    pm.press_power_button();
    pm.write(PM1_EN_OFFSET + 1, &[(PWRBTN_EN >> 8) as u8]);

    let both = read_u32(&mut pm, PM1_STS_OFFSET);

    assert_eq!(both, u32::from(PWRBTN_STS) | u32::from(PWRBTN_EN) << 16);
    assert_eq!(read_u8(&mut pm, PM1_EN_OFFSET), 0, "low byte untouched");
}

#[test]
fn enable_keeps_only_defined_bits() {
    let (mut pm, _sci, _events) = acpi_pm();

    write_u16(&mut pm, PM1_EN_OFFSET, 0xffff);

    assert_eq!(read_u16(&mut pm, PM1_EN_OFFSET), EN_DEFINED);
}

#[test]
fn pm_timer_advances_and_stays_within_24_bits() {
    let (mut pm, _sci, _events) = acpi_pm();
    pm.timer_start = Instant::now().checked_sub(Duration::from_secs(30)).unwrap_or(pm.timer_start);

    let first = read_u32(&mut pm, PM_TMR_OFFSET);
    thread::sleep(Duration::from_millis(2));
    let second = read_u32(&mut pm, PM_TMR_OFFSET);

    assert!(first < 1 << 24 && second < 1 << 24);
    assert_ne!(first, second);
    pm.write(PM_TMR_OFFSET, &[0, 0, 0, 0]);
    assert_ne!(read_u32(&mut pm, PM_TMR_OFFSET), 0, "the timer is read-only");
}

#[test]
fn pm_timer_counts_at_3_579545_mhz_and_wraps_at_2_pow_24() {
    assert_eq!(timer_ticks(Duration::from_secs(1)), 3_579_545);
    assert_eq!(timer_ticks(Duration::from_secs(5)), (5 * 3_579_545) % (1 << 24));
    assert_eq!(timer_ticks(Duration::ZERO), 0);
}

#[test]
fn reset_value_in_the_reset_register_sends_reset() {
    let (mut pm, _sci, events) = acpi_pm();

    pm.write(RESET_REG_OFFSET, &[0x02]);
    pm.write(RESET_REG_OFFSET, &[RESET_VALUE]);

    assert_eq!(events.events(), vec![GuestEvent::Reset]);
}

#[test]
fn device_reset_clears_registers_and_lowers_sci() {
    let (mut pm, sci, _events) = acpi_pm();
    write_u16(&mut pm, PM1_EN_OFFSET, PWRBTN_EN);
    pm.press_power_button();

    pm.reset();

    assert!(!sci.is_high());
    assert_eq!(read_u32(&mut pm, PM1_STS_OFFSET), 0);
}

#[test]
fn gap_after_the_control_register_reads_zero() {
    let (mut pm, _sci, _events) = acpi_pm();

    pm.write(6, &[0xff, 0xff]);

    assert_eq!(read_u16(&mut pm, 6), 0);
}

#[test]
fn hostile_accesses_never_panic() {
    let (mut pm, _sci, _events) = acpi_pm();
    hostile_accesses(&mut pm, PORT_LEN);
    pm.press_power_button();
    pm.reset();
}
