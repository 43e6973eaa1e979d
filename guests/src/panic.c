/* panic: reports a guest panic through pvpanic (port 0x505) and halts. */
#include "rt.h"

void kmain(const struct bootinfo *bi)
{
    (void)bi;
    kit_start("panic");
    kprintf("panic: raising pvpanic\n");
    outb(0x505, 1); /* QEMU docs/specs/pvpanic.rst: bit 0 = guest panicked */
    halt_forever();
}
