/* mem: writes and verifies an address-derived pattern at the top of RAM and, when there is
 * RAM above 4 GiB, at its start (reachable only through the kit's own 64 GiB identity map). */
#include "rt.h"

#define MIB (1ull << 20)
#define FOUR_GIB (4ull << 30)
#define MAPPED_LIMIT (64ull << 30) /* rt/entry.S identity-maps this much */

static u64 pattern(u64 a) { return a * 0x9e3779b97f4a7c15ull ^ 0x5a5a5a5a00000000ull ^ ~a; }

/* Returns 0 when all went well, else the first failing address. */
static u64 check(u64 start, u64 len)
{
    volatile u64 *p = (volatile u64 *)start;
    for (u64 i = 0; i < len / 8; i++)
        p[i] = pattern(start + 8 * i);
    for (u64 i = 0; i < len / 8; i++)
        if (p[i] != pattern(start + 8 * i))
            return start + 8 * i;
    return 0;
}

void kmain(const struct bootinfo *bi)
{
    kit_start("mem");
    u64 top = 0, high_start = 0;
    for (u32 i = 0; i < bi->memmap_entries; i++) {
        const struct memmap_entry *m = &bi->memmap[i];
        if (m->type != 1 || m->size < MIB)
            continue;
        u64 end = m->start + m->size;
        if (end > top)
            top = end;
        if (m->start >= FOUR_GIB && (high_start == 0 || m->start < high_start))
            high_start = m->start;
    }
    kprintf("mem-top: 0x%lx\n", top);
    u64 bad = 0;
    if (top == 0 || top > MAPPED_LIMIT) {
        kprintf("mem-check: FAIL at 0x%lx (no usable RAM within the 64 GiB map)\n", top);
        kit_done("mem");
    }
    top &= ~7ull;
    bad = check(top - MIB, MIB);
    if (!bad && high_start && high_start + MIB <= MAPPED_LIMIT) {
        kprintf("mem-high: 0x%lx\n", high_start);
        bad = check(high_start, MIB);
    }
    if (bad)
        kprintf("mem-check: FAIL at 0x%lx\n", bad);
    else
        kprintf("mem-check: ok\n");
    kit_done("mem");
}
