/* ironvirt guest test kit: CMOS / RTC access (Motorola MC146818A data sheet; index port 0x70,
 * data port 0x71). Bit 7 of the index byte is the PC's NMI-disable bit: these helpers write the
 * index exactly as the caller passes it, and every caller in the kit keeps it clear. */
#include "rt.h"

#define CMOS_INDEX 0x70
#define CMOS_DATA 0x71
#define RTC_SECONDS 0x00
#define RTC_REG_A 0x0a
#define RTC_UIP 0x80 /* register A bit 7: update in progress */

u8 cmos_read(u8 index)
{
    outb(CMOS_INDEX, index);
    return inb(CMOS_DATA);
}

void cmos_write(u8 index, u8 value)
{
    outb(CMOS_INDEX, index);
    outb(CMOS_DATA, value);
}

/* Wall-clock delay without a calibrated timer: count changes of the seconds register, so the
 * wait is n-1..n seconds. Each poll is two port exits, which also lets the host schedule other
 * vCPU threads. Bounded by a poll count so a missing RTC (reads 0xff) cannot hang us. */
void rtc_wait_seconds(u32 n)
{
    u8 last = cmos_read(RTC_SECONDS);
    u32 changes = 0;
    for (u32 polls = 0; changes < n && polls < 400000u * n; polls++) {
        u8 s = cmos_read(RTC_SECONDS);
        if (s != last) {
            last = s;
            changes++;
        }
    }
}
