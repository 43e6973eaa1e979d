/* reset: counts boots in CMOS NVRAM byte 0x40 (kept by the VMM across guest resets) and
 * resets until the count exceeds resets=K (default 1). reset=kbd uses the i8042 instead of
 * the ACPI reset register. */
#include "rt.h"

#define NVRAM_BOOT_COUNT 0x40

void kmain(const struct bootinfo *bi)
{
    (void)bi;
    kit_start("reset");
    u8 n = cmos_read(NVRAM_BOOT_COUNT);
    u8 count = (u8)(n + 1);
    kprintf("boot-count: %u\n", count);
    cmos_write(NVRAM_BOOT_COUNT, count);
    u64 k = cmdline_u64("resets", 1);
    if (count <= k) {
        kprintf("resetting\n");
        acpi_reset(cmdline_is("reset", "kbd"));
    }
    kit_done("reset");
}
