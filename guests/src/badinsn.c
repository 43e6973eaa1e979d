/* badinsn: makes KVM emulate an instruction its emulator does not implement. popcnt with a
 * memory operand in the unbacked MMIO hole forces an MMIO exit through the emulator, which has
 * no popcnt: KVM reports an emulation failure (KVM_EXIT_INTERNAL_ERROR) to the VMM. */
#include "rt.h"

void kmain(const struct bootinfo *bi)
{
    (void)bi;
    kit_start("badinsn");
    kprintf("badinsn: executing popcnt on mmio\n");
    u64 addr = 0xd0000000, r;
    /* f3 48 0f b8 /r = popcnt r64, r/m64 (SDM vol. 2B). Spelled as bytes so the assembler and
     * the kit's instruction check (tools/check-insns.sh) see exactly what we mean:
     * f3 48 0f b8 01 = popcnt (%rcx), %rax. */
    __asm__ volatile(".byte 0xf3, 0x48, 0x0f, 0xb8, 0x01" : "=a"(r) : "c"(addr) : "memory", "cc");
    kprintf("badinsn: survived (result 0x%lx)\n", r);
    kit_done("badinsn");
}
