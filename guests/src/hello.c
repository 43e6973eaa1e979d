/* hello: reports what the guest was told at boot (protocol, command line, memory map, ACPI). */
#include "rt.h"

void kmain(const struct bootinfo *bi)
{
    kit_start("hello");
    kprintf("boot: %s\n", bi->protocol);
    /* Printed in pieces: the command line may be longer than kprintf's line buffer. */
    serial_write("cmdline: ", 9);
    serial_write(bi->cmdline, strlen(bi->cmdline));
    serial_write("\n", 1);
    u64 ram = 0;
    for (u32 i = 0; i < bi->memmap_entries; i++) {
        const struct memmap_entry *m = &bi->memmap[i];
        kprintf("e820: 0x%lx 0x%lx %u\n", m->start, m->start + m->size, m->type);
        if (m->type == 1)
            ram += m->size;
    }
    kprintf("mem-total-mib: %lu\n", ram >> 20);
    kprintf("rsdp: 0x%lx\n", bi->rsdp);
    kprintf("cpus: %u\n", acpi.cpus_enabled);
    kit_done("hello");
}
