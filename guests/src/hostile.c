/* hostile: misbehaves against the platform on purpose (garbage port writes, odd-size and
 * unaligned accesses, reads of unclaimed ports and MMIO) and checks that it is still alive.
 * The devices it must not disturb, because the kit itself or the in-kernel irqchip needs
 * them, are skipped. */
#include "rt.h"

struct range {
    u16 first, last;
    const char *why;
};

static const struct range skip[] = {
    {0x0020, 0x0021, "8259 PIC master (in-kernel irqchip)"},
    {0x0040, 0x0043, "8254 PIT (in-kernel)"},
    {0x0060, 0x0060, "i8042 data"},
    {0x0064, 0x0064, "i8042 command: 0xfe would reset"},
    {0x0070, 0x0071, "CMOS/RTC: NVRAM and clock used by other guests"},
    {0x0092, 0x0092, "PS/2 system control port A: bit 0 is a fast reset on QEMU pc/q35"},
    {0x00a0, 0x00a1, "8259 PIC slave"},
    {0x00f4, 0x00f4, "QEMU isa-debug-exit (would end the run under QEMU)"},
    {0x03f8, 0x03ff, "COM1: our console"},
    {0x04d0, 0x04d1, "PIC ELCR"},
    {0x0505, 0x0505, "pvpanic"},
    {0x0600, 0x060f, "ACPI PM block and reset register"},
    {0x0cf8, 0x0cff, "PCI config / 0xcf9 reset control"},
};

static int skipped(u32 port, u32 width)
{
    for (u32 i = 0; i < sizeof(skip) / sizeof(skip[0]); i++)
        if (port <= skip[i].last && port + width - 1 >= skip[i].first)
            return 1;
    return 0;
}

static u32 garbage(u32 port) { return (port * 0x9e3779b1u) ^ 0xa5c3e1f7u; }

void kmain(const struct bootinfo *bi)
{
    (void)bi;
    kit_start("hostile");

    /* 1. Byte writes to every port outside the skip list (~65k exits); words and dwords on
     *    every 0x100th port. */
    u32 writes = 0;
    for (u32 port = 0; port <= 0xffff; port++) {
        if (!skipped(port, 1)) {
            outb((u16)port, (u8)garbage(port));
            writes++;
        }
        if ((port & 0xff) == 0) {
            if (!skipped(port, 2)) {
                outw((u16)port, (u16)garbage(port + 1));
                writes++;
            }
            if (port + 3 <= 0xffff && !skipped(port, 4)) {
                outl((u16)port, garbage(port + 2));
                writes++;
            }
        }
    }
    kprintf("port-writes: %u\n", writes);

    /* 2. Unclaimed ports read as all ones (docs/PLATFORM.md, "Ports"). */
    kprintf("port-read: 0x%x\n", inb(0x200));
    kprintf("port-read: 0x%x\n", inw(0x200));
    kprintf("port-read: 0x%x\n", inl(0x200));
    kprintf("port-read: 0x%x\n", inb(0x5000));
    kprintf("port-read: 0x%x\n", inw(0x5000));
    kprintf("port-read: 0x%x\n", inl(0x5000));

    /* 3. The MMIO hole: unbacked addresses read as all ones and ignore writes. */
    const u64 a = 0xd0000000, b = 0xfebff000;
    mmio_write8(a, 0x5a);
    mmio_write16(a + 2, 0x5a5a);
    mmio_write32(a + 4, 0x5a5a5a5a);
    mmio_write64(a + 8, 0x5a5a5a5a5a5a5a5aull);
    mmio_write32(b + 0x7fd, 0xdeadbeef); /* unaligned */
    mmio_write64(b + 0x3, 0x0123456789abcdefull);
    kprintf("mmio-read: 0x%x\n", mmio_read8(a));
    kprintf("mmio-read: 0x%x\n", mmio_read16(a + 2));
    kprintf("mmio-read: 0x%x\n", mmio_read32(a + 4));
    kprintf("mmio-read: 0x%lx\n", mmio_read64(a + 8));
    kprintf("mmio-read: 0x%x\n", mmio_read32(b + 0x7fd));
    kprintf("mmio-read: 0x%lx\n", mmio_read64(b + 0x3));

    /* 4. Odd-size accesses to devices that expect bytes. If a VMM splits them into bytes, the
     *    values are harmless: '\n' to THR, 0 to IER and FCR, 8N1 to LCR; RTC index 0x0d
     *    (register D, read-only) and a 0 that register D ignores. */
    outw(0x3f8, 0x000a);
    outl(0x3f8, 0x0300000a);
    (void)inw(0x3f8);
    (void)inl(0x3fc);
    outw(0x70, 0x000d);
    outl(0x70, 0x0000000d);
    (void)inw(0x70);
    serial_init(); /* whatever happened, the console must work again */

    /* 5. pvpanic advertises its capabilities on read (QEMU docs/specs/pvpanic.rst). */
    kprintf("pvpanic-read: 0x%x\n", inb(0x505));

    kprintf("hostile: survived\n");
    kit_done("hostile");
}
