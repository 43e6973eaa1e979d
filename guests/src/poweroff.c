/* poweroff: shows the ACPI power-off path the runtime will take, then takes it. */
#include "rt.h"

void kmain(const struct bootinfo *bi)
{
    (void)bi;
    kit_start("poweroff");
    kprintf("fadt: 0x%lx\n", acpi.fadt);
    kprintf("pm1a-cnt: 0x%x\n", acpi.pm1a_cnt);
    kprintf("sleep-ctl: 0x%lx\n", acpi.sleep_ctl.address);
    kprintf("slp-typ-s5: %u\n", acpi.slp_typ_s5);
    kit_done("poweroff");
}
