/* rtc: reads the CMOS real-time clock (MC146818A data sheet) and prints it. */
#include "rt.h"

#define RTC_SEC 0x00
#define RTC_MIN 0x02
#define RTC_HOUR 0x04
#define RTC_DAY 0x07
#define RTC_MONTH 0x08
#define RTC_YEAR 0x09
#define RTC_REG_A 0x0a
#define RTC_REG_B 0x0b
#define RTC_CENTURY 0x32  /* ACPI FADT CENTURY default on PCs */
#define REG_A_UIP 0x80    /* update in progress */
#define REG_B_BINARY 0x04 /* DM: 1 = binary, 0 = BCD */
#define REG_B_24H 0x02    /* 1 = 24-hour mode */
#define HOUR_PM 0x80      /* 12-hour mode: bit 7 of the hour = PM */

struct rtc_time {
    u8 sec, min, hour, day, month, year, century;
};

static void read_raw(struct rtc_time *t)
{
    /* Bounded: an RTC whose UIP never clears must not hang the guest. */
    for (u32 i = 0; i < 100000 && (cmos_read(RTC_REG_A) & REG_A_UIP); i++)
        ;
    t->sec = cmos_read(RTC_SEC);
    t->min = cmos_read(RTC_MIN);
    t->hour = cmos_read(RTC_HOUR);
    t->day = cmos_read(RTC_DAY);
    t->month = cmos_read(RTC_MONTH);
    t->year = cmos_read(RTC_YEAR);
    t->century = cmos_read(RTC_CENTURY);
}

static u8 bcd(u8 v) { return (u8)((v >> 4) * 10 + (v & 0x0f)); }

/* Days since 1970-01-01 of a proleptic Gregorian date (civil-from-days inverse). */
static i64 days_from_civil(i64 y, u32 m, u32 d)
{
    y -= m <= 2;
    i64 era = (y >= 0 ? y : y - 399) / 400;
    u32 yoe = (u32)(y - era * 400);
    u32 doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    u32 doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (i64)doe - 719468;
}

void kmain(const struct bootinfo *bi)
{
    (void)bi;
    kit_start("rtc");
    struct rtc_time a, b;
    read_raw(&b);
    for (int tries = 0; tries < 10; tries++) { /* read until two reads agree */
        a = b;
        read_raw(&b);
        if (memcmp(&a, &b, sizeof(a)) == 0)
            break;
    }
    u8 regb = cmos_read(RTC_REG_B);
    int pm = 0;
    if (!(regb & REG_B_24H)) {
        pm = !!(b.hour & HOUR_PM);
        b.hour &= (u8)~HOUR_PM;
    }
    if (!(regb & REG_B_BINARY)) {
        b.sec = bcd(b.sec);
        b.min = bcd(b.min);
        b.hour = bcd(b.hour);
        b.day = bcd(b.day);
        b.month = bcd(b.month);
        b.year = bcd(b.year);
        b.century = bcd(b.century);
    }
    if (!(regb & REG_B_24H)) { /* 12 AM = 0 h, 12 PM = 12 h */
        if (b.hour == 12)
            b.hour = 0;
        if (pm)
            b.hour += 12;
    }
    u32 century = (b.century >= 19 && b.century <= 30) ? b.century : 20;
    u32 year = century * 100 + b.year;
    kprintf("rtc: %04u-%02u-%02u %02u:%02u:%02u\n", year, b.month, b.day, b.hour, b.min, b.sec);
    i64 days = days_from_civil(year, b.month, b.day);
    i64 epoch = days * 86400 + b.hour * 3600 + b.min * 60 + b.sec;
    kprintf("rtc-epoch: %ld\n", epoch);
    kit_done("rtc");
}
