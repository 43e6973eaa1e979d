/* idle: keeps running until told to stop. Interrupt driven: a periodic local APIC timer prints
 * heartbeats, the ACPI SCI (fixed-feature power button) powers off, COM1 receive interrupts echo
 * input. Between interrupts the BSP halts with interrupts on; APs stay in wait-for-SIPI.
 *
 * References: Intel SDM vol. 3A chapter 11 (local APIC; timer in 11.5.4), Intel 82093AA I/O
 * APIC data sheet section 3.2.4 (redirection entries, in rt/intr.c), ACPI 6.5 sections 4.8.3.1
 * (PM1 event registers), 4.8.3.3 (PM timer) and 4.8.4.1 tables 4.11/4.12 (PM1 status and
 * enable bits), PC16550D data sheet (UART registers).
 *
 * Command line: heartbeat_ms=N (default 1000, at least 10), exit_after=N heartbeats then
 * power off (default 0: never). */
#include "rt.h"

#define VEC_COM1 0x34  /* ISA IRQ 4 */
#define VEC_SCI 0x39   /* ISA IRQ 9 */
#define VEC_TIMER 0xec /* local APIC timer */

/* Local APIC timer registers, SDM vol. 3A table 11-1 and 11.5.4. */
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_ICR 0x380 /* initial count */
#define LAPIC_TIMER_CCR 0x390 /* current count */
#define LAPIC_TIMER_DCR 0x3e0 /* divide configuration, figure 11-10 */
#define LVT_MASKED (1u << 16)
#define LVT_TIMER_PERIODIC (1u << 17) /* timer mode bits 18:17: 00 one-shot, 01 periodic */
#define DCR_DIVIDE_16 0x3             /* bits 3,1,0 = 0,1,1: divide by 16 */

/* ACPI PM1 status/enable bits, ACPI 6.5 tables 4.11 and 4.12. */
#define PM1_PWRBTN (1u << 8) /* PWRBTN_STS / PWRBTN_EN */
#define PM_TIMER_HZ 3579545u /* 4.8.3.3 */
#define PM_TIMER_MASK 0xffffffu /* 24 bits are always there (TMR_VAL_EXT may give 32) */
#define CALIBRATION_PM_TICKS (PM_TIMER_HZ / 100) /* a 10 ms window */

/* COM1 (PC16550D data sheet, register summary). */
#define COM1 0x3f8
#define UART_RBR 0
#define UART_IER 1
#define UART_MCR 4
#define UART_LSR 5
#define IER_RX_AVAILABLE 0x01 /* ERBFI: received data available interrupt */
#define MCR_DTR_RTS_OUT2 0x0b /* OUT2 gates the UART's IRQ line on PC hardware */
#define LSR_DR 0x01

static u32 ticks_per_heartbeat = 1;
static u32 tick;
static u64 heartbeats, exit_after;
static u16 pm1_sts_port, pm1_en_port;

static u32 pm_timer(void) { return inl((u16)acpi.pm_tmr) & PM_TIMER_MASK; }

/* Local APIC timer input frequency after divide-by-16, in Hz: counts it down in one-shot mode
 * (masked) across 10 ms of the ACPI PM timer, else across one second edge to edge of the RTC.
 * Returns 0 when neither works. `how` and `us` say what was used and how long it took. */
static u64 calibrate(const char **how, u64 *us)
{
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VEC_TIMER);
    lapic_write(LAPIC_TIMER_DCR, DCR_DIVIDE_16);
    lapic_write(LAPIC_TIMER_ICR, 0xffffffff);
    if (acpi.pm_tmr) {
        u32 t0 = pm_timer(), c0 = lapic_read(LAPIC_TIMER_CCR), t1 = t0, c1 = c0, dt = 0;
        /* Each PM timer read exits to the VMM; bounded in case the timer does not run. */
        for (u32 i = 0; i < 1000000 && dt < CALIBRATION_PM_TICKS; i++) {
            t1 = pm_timer();
            c1 = lapic_read(LAPIC_TIMER_CCR);
            dt = (t1 - t0) & PM_TIMER_MASK;
        }
        if (dt >= CALIBRATION_PM_TICKS && c0 > c1) {
            *how = "pm-timer";
            *us = (u64)dt * 1000000 / PM_TIMER_HZ;
            return (u64)(c0 - c1) * PM_TIMER_HZ / dt;
        }
    }
    /* RTC seconds register (MC146818A register 0): edge, then the next edge. */
    u8 s = cmos_read(0);
    u32 c0 = 0, c1 = 0, edges = 0;
    for (u32 polls = 0; edges < 2 && polls < 1000000; polls++) {
        u8 n = cmos_read(0);
        if (n == s)
            continue;
        s = n;
        if (edges++ == 0)
            c0 = lapic_read(LAPIC_TIMER_CCR);
        else
            c1 = lapic_read(LAPIC_TIMER_CCR);
    }
    if (edges == 2 && c0 > c1) {
        *how = "rtc";
        *us = 1000000;
        return c0 - c1;
    }
    *how = "none";
    *us = 0;
    return 0;
}

static void poll_serial(void)
{
    /* Bounded: the receive FIFO holds at most 64 bytes. */
    for (u32 i = 0; i < 64 && (inb(COM1 + UART_LSR) & LSR_DR); i++)
        kprintf("input: 0x%02x\n", inb(COM1 + UART_RBR));
}

static void on_timer(u32 vector)
{
    (void)vector;
    if (++tick >= ticks_per_heartbeat) {
        tick = 0;
        heartbeats++;
        kprintf("heartbeat: %lu\n", heartbeats);
        if (exit_after && heartbeats >= exit_after) {
            lapic_eoi();
            kit_done("idle");
        }
        /* Catches input whose edge-triggered interrupt was missed (costs one exit a beat). */
        poll_serial();
    }
    lapic_eoi();
}

static void on_serial(u32 vector)
{
    (void)vector;
    poll_serial(); /* reading RBR until LSR.DR clears acknowledges the RX interrupt */
    lapic_eoi();
}

static void on_sci(u32 vector)
{
    (void)vector;
    u16 sts = inw(pm1_sts_port);
    if (sts & PM1_PWRBTN) {
        outw(pm1_sts_port, PM1_PWRBTN); /* status bits are write-1-to-clear (4.8.4.1.1) */
        kprintf("power-button: pressed\n");
        lapic_eoi();
        kit_done("idle");
    }
    /* Anything else: acknowledge the enabled status bits so a level SCI drops, and ignore. */
    u16 other = sts & inw(pm1_en_port);
    if (other)
        outw(pm1_sts_port, other);
    lapic_eoi();
}

void kmain(const struct bootinfo *bi)
{
    (void)bi;
    kit_start("idle");
    u64 hb_ms = cmdline_u64("heartbeat_ms", 1000);
    if (hb_ms < 10)
        hb_ms = 10;
    exit_after = cmdline_u64("exit_after", 0);
    kprintf("heartbeat-ms: %lu\n", hb_ms);
    kprintf("exit-after: %lu\n", exit_after);
    u8 bsp = (u8)cpu_apic_id();

    irq_init();
    pic_disable();
    lapic_enable();
    irq_set_handler(VEC_TIMER, on_timer);
    irq_set_handler(VEC_SCI, on_sci);
    irq_set_handler(VEC_COM1, on_serial);

    /* Timer: calibrate once, then periodic mode (SDM vol. 3A 11.5.4). The initial count is
     * 32 bits; longer periods are split into several equal ticks per heartbeat. */
    const char *how;
    u64 cal_us;
    u64 hz = calibrate(&how, &cal_us);
    kprintf("calibration: %s\n", how);
    kprintf("calibration-us: %lu\n", cal_us);
    if (!hz)
        hz = 62500000; /* KVM's 1 GHz APIC bus / 16, a guess */
    kprintf("lapic-timer-hz: %lu\n", hz);
    u64 count = hz * hb_ms / 1000;
    u64 k = count / 0xffffffffull + 1;
    ticks_per_heartbeat = (u32)k;
    u32 initial = (u32)(count / k) ? (u32)(count / k) : 1;
    lapic_write(LAPIC_LVT_TIMER, LVT_TIMER_PERIODIC | VEC_TIMER);
    lapic_write(LAPIC_TIMER_ICR, initial); /* writing the initial count starts the timer */

    /* SCI: ISA IRQ SCI_INT of the FADT; ACPI's default is level, active low (5.2.9 SCI_INT),
     * the MADT override of ironvirt and QEMU makes it level, active high. */
    if (acpi.pm1a_evt && acpi.pm1_evt_len >= 4) {
        u32 flags;
        u32 gsi = isa_irq_gsi(acpi.sci_irq, IRQ_LEVEL | IRQ_ACTIVE_LOW, &flags);
        pm1_sts_port = (u16)acpi.pm1a_evt;
        pm1_en_port = (u16)(acpi.pm1a_evt + acpi.pm1_evt_len / 2); /* 4.8.3.1 */
        if (ioapic_route(gsi, VEC_SCI, flags, bsp) == 0) {
            /* PWRBTN_EN last: a press before this point is latched in PWRBTN_STS and raises
             * the SCI as soon as it is enabled. */
            outw(pm1_en_port, (u16)(inw(pm1_en_port) | PM1_PWRBTN));
            kprintf("sci-gsi: %u\n", gsi);
        } else {
            kprintf("sci-gsi: none (no I/O APIC pin for GSI %u)\n", gsi);
        }
    } else {
        kprintf("sci-gsi: none (no PM1 event block)\n");
    }

    /* COM1 receive interrupt: ISA IRQ 4, edge, active high. */
    u32 flags;
    u32 gsi = isa_irq_gsi(4, 0, &flags);
    if (ioapic_route(gsi, VEC_COM1, flags, bsp) == 0) {
        outb(COM1 + UART_MCR, MCR_DTR_RTS_OUT2);
        outb(COM1 + UART_IER, IER_RX_AVAILABLE);
    }
    kprintf("serial-gsi: %u\n", gsi);
    kprintf("idle: ready\n");

    for (;;) /* sti's one-instruction shadow: no interrupt slips in before the hlt */
        __asm__ volatile("sti; hlt" ::: "memory");
}
