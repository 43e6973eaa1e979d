/* cpuid: prints the CPUID feature words a CPU template shapes, on the BSP, so tests can check
 * what the guest really sees (on software-nested KVM most of CPUID executes natively and
 * ignores the VMM's table; see README). Leaves are printed as found, in hex. */
#include "rt.h"

static void leaf(const char *name, u32 fn, u32 sub)
{
    u32 a, b, c, d;
    cpuid(fn, sub, &a, &b, &c, &d);
    kprintf("%s: eax=0x%x ebx=0x%x ecx=0x%x edx=0x%x\n", name, a, b, c, d);
}

void kmain(const struct bootinfo *bi)
{
    (void)bi;
    kit_start("cpuid");
    leaf("leaf-1", 1, 0);
    leaf("leaf-7", 7, 0);
    leaf("leaf-d", 0xd, 0);
    leaf("leaf-40000000", 0x40000000, 0);
    kit_done("cpuid");
}
