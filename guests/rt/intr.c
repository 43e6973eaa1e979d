/* ironvirt guest test kit: interrupt plumbing for guests that take interrupts.
 *
 * Local APIC: Intel SDM vol. 3A chapter 11 ("Advanced Programmable Interrupt Controller"),
 * xAPIC MMIO register offsets in table 11-1. I/O APIC: Intel 82093AA I/O APIC data sheet
 * (order no. 290566), section 3 ("Register Description"). 8259A: Intel 8259A data sheet,
 * "Programming the 8259A" (ICW1-ICW4, OCW1). Each access here is a VM exit, handled in the
 * host kernel (KVM's in-kernel irqchip), so none of them reaches the VMM.
 */
#include "rt.h"

/* Local APIC registers (SDM vol. 3A table 11-1). */
#define LAPIC_TPR 0x080 /* task priority, 11.8.3.1 */
#define LAPIC_EOI 0x0b0 /* end of interrupt, 11.8.5 */
#define LAPIC_SVR 0x0f0 /* spurious interrupt vector, 11.9 (figure 11-23) */
#define SVR_APIC_ENABLE 0x100 /* bit 8: APIC software enable */

/* I/O APIC (82093AA 3.0, 3.1): indirect access through IOREGSEL (+0x00) and IOWIN (+0x10). */
#define IOAPIC_IOREGSEL 0x00
#define IOAPIC_IOWIN 0x10
#define IOAPIC_VER 0x01       /* 3.2.2 IOAPICVER: bits 23:16 = maximum redirection entry */
#define IOAPIC_REDTBL 0x10    /* 3.2.4 IOREDTBL[n]: low dword at 0x10 + 2n, high at 0x11 + 2n */
#define REDTBL_POLARITY_LOW (1u << 13) /* bit 13 INTPOL: 0 high active, 1 low active */
#define REDTBL_LEVEL (1u << 15)        /* bit 15 trigger mode: 0 edge, 1 level */
#define REDTBL_MASKED (1u << 16)       /* bit 16 interrupt mask */
/* Bits 10:8 delivery mode 000 = fixed and bit 11 destination mode 0 = physical: both zero.
 * Bits 63:56 (bits 31:24 of the high dword): destination APIC id. */
#define REDTBL_DEST_SHIFT 24

/* 8259A master and slave (PC/AT wiring: slave on master IR2). */
#define PIC1_CMD 0x20
#define PIC1_DATA 0x21
#define PIC2_CMD 0xa0
#define PIC2_DATA 0xa1

extern const char irq_stubs[]; /* rt/irq.S: 16 bytes per vector from 32 on */

static irq_handler_t handlers[256];
static u64 lapic;
static u32 unexpected;

u64 lapic_base(void)
{
    if (!lapic)
        lapic = acpi.lapic_addr ? acpi.lapic_addr : LAPIC_DEFAULT_BASE;
    return lapic;
}

u32 lapic_read(u32 reg) { return mmio_read32(lapic_base() + reg); }
void lapic_write(u32 reg, u32 value) { mmio_write32(lapic_base() + reg, value); }

void lapic_enable(void)
{
    lapic_write(LAPIC_TPR, 0); /* accept every priority class */
    lapic_write(LAPIC_SVR, SVR_APIC_ENABLE | SPURIOUS_VECTOR);
}

/* Any value; for level-triggered interrupts KVM's LAPIC then broadcasts the EOI to the I/O
 * APIC, which clears the pin's Remote IRR (82093AA 3.2.4 bit 14) and re-raises a still
 * asserted line. */
void lapic_eoi(void) { lapic_write(LAPIC_EOI, 0); }

void irq_init(void)
{
    for (u32 v = 32; v < 256; v++)
        idt_set_gate(v, (u64)(irq_stubs + 16 * (v - 32)));
}

void irq_set_handler(u32 vector, irq_handler_t h)
{
    if (vector < 256)
        handlers[vector] = h;
}

/* Called from irq_common (rt/irq.S) with interrupts off. */
void rt_irq(u32 vector)
{
    irq_handler_t h = handlers[vector];
    if (h) {
        h(vector);
        return;
    }
    /* The LAPIC spurious vector sets no ISR bit and takes no EOI (SDM vol. 3A 11.9). Anything
     * else unexpected is acknowledged; with an empty ISR the EOI is a no-op (8259 interrupts
     * delivered as ExtINT bypass the ISR too). */
    if (vector == SPURIOUS_VECTOR)
        return;
    if (unexpected++ < 8)
        kprintf(KIT " unexpected interrupt: vector %u\n", vector);
    lapic_eoi();
}

static u64 ioapic_base(void) { return acpi.ioapic_addr ? acpi.ioapic_addr : IOAPIC_DEFAULT_BASE; }

static u32 ioapic_read(u32 reg)
{
    mmio_write32(ioapic_base() + IOAPIC_IOREGSEL, reg);
    return mmio_read32(ioapic_base() + IOAPIC_IOWIN);
}

static void ioapic_write(u32 reg, u32 value)
{
    mmio_write32(ioapic_base() + IOAPIC_IOREGSEL, reg);
    mmio_write32(ioapic_base() + IOAPIC_IOWIN, value);
}

static int ioapic_pin(u32 gsi)
{
    if (gsi < acpi.ioapic_gsi_base)
        return -1;
    u32 pin = gsi - acpi.ioapic_gsi_base;
    u32 max = (ioapic_read(IOAPIC_VER) >> 16) & 0xff;
    return pin <= max ? (int)pin : -1;
}

int ioapic_route(u32 gsi, u8 vector, u32 flags, u8 apic_id)
{
    int pin = ioapic_pin(gsi);
    if (pin < 0)
        return -1;
    u32 lo = vector;
    if (flags & IRQ_LEVEL)
        lo |= REDTBL_LEVEL;
    if (flags & IRQ_ACTIVE_LOW)
        lo |= REDTBL_POLARITY_LOW;
    /* Masked while the destination is written, then unmasked with the low dword. */
    ioapic_write(IOAPIC_REDTBL + 2 * (u32)pin, REDTBL_MASKED);
    ioapic_write(IOAPIC_REDTBL + 2 * (u32)pin + 1, (u32)apic_id << REDTBL_DEST_SHIFT);
    ioapic_write(IOAPIC_REDTBL + 2 * (u32)pin, lo);
    return 0;
}

void ioapic_mask(u32 gsi)
{
    int pin = ioapic_pin(gsi);
    if (pin >= 0)
        ioapic_write(IOAPIC_REDTBL + 2 * (u32)pin, REDTBL_MASKED);
}

u32 isa_irq_gsi(u32 irq, u32 bus_default, u32 *flags)
{
    u32 gsi = irq < 16 ? acpi.isa_gsi[irq] : irq;
    u16 inti = irq < 16 ? acpi.isa_flags[irq] : 0;
    u32 f = bus_default;
    if ((inti & INTI_POLARITY_MASK) == INTI_POLARITY_HIGH)
        f &= ~(u32)IRQ_ACTIVE_LOW;
    else if ((inti & INTI_POLARITY_MASK) == INTI_POLARITY_LOW)
        f |= IRQ_ACTIVE_LOW;
    if ((inti & INTI_TRIGGER_MASK) == INTI_TRIGGER_EDGE)
        f &= ~(u32)IRQ_LEVEL;
    else if ((inti & INTI_TRIGGER_MASK) == INTI_TRIGGER_LEVEL)
        f |= IRQ_LEVEL;
    if (flags)
        *flags = f;
    return gsi;
}

/* LINT0 is wired as ExtINT (docs/PLATFORM.md, as firmware leaves it), so an unprogrammed 8259
 * could deliver IRQ 0 of the PIT as vector 0 (#DE). Initialise both chips (ICW1: edge, cascade,
 * ICW4 needed; ICW2: vector base; ICW3: cascade on IR2; ICW4: 8086 mode) onto 0x20..0x2f and
 * mask all lines (OCW1). */
void pic_disable(void)
{
    outb(PIC1_CMD, 0x11);
    outb(PIC2_CMD, 0x11);
    outb(PIC1_DATA, 0x20);
    outb(PIC2_DATA, 0x28);
    outb(PIC1_DATA, 0x04);
    outb(PIC2_DATA, 0x02);
    outb(PIC1_DATA, 0x01);
    outb(PIC2_DATA, 0x01);
    outb(PIC1_DATA, 0xff);
    outb(PIC2_DATA, 0xff);
}
