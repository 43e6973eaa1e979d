/* smp: starts every other enabled CPU of the MADT with INIT-SIPI-SIPI (SDM vol. 3A 9.4.4) and
 * waits for each to report from 64-bit C code on its own stack. */
#include "rt.h"
#include "ap.h"

/* Local APIC registers, SDM vol. 3A table 11-1 (xAPIC MMIO offsets). */
#define LAPIC_SVR 0x0f0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define SVR_ENABLE 0x100          /* APIC software enable */
#define ICR_DELIVERY_PENDING 0x1000 /* delivery status, bit 12 */
#define ICR_INIT 0x4500           /* delivery mode INIT (101b), level assert */
#define ICR_STARTUP 0x4600        /* delivery mode Start-up (110b), level assert; | vector */
#define ICR_DEST_SHIFT 24         /* ICR high: destination APIC id, bits 63:56 */

static volatile u32 ap_online;
static u64 lapic;

void ap_main(void)
{
    kprintf("cpu-up: %u\n", cpu_apic_id());
    atomic_fetch_add32(&ap_online, 1);
}

static void send_ipi(u32 apic_id, u32 cmd)
{
    mmio_write32(lapic + LAPIC_ICR_HI, apic_id << ICR_DEST_SHIFT);
    mmio_write32(lapic + LAPIC_ICR_LO, cmd);
    for (u32 i = 0; i < 100000 && (mmio_read32(lapic + LAPIC_ICR_LO) & ICR_DELIVERY_PENDING); i++)
        cpu_relax();
}

/* A page for the trampoline: below 1 MiB, inside a RAM entry of the memory map, and clear of
 * docs/PLATFORM.md's boot structures (0x6000-0x8000 start info / zero page, 0x9000-0xf000 boot
 * page tables, 0x20000 command line; all copied or unused by now, but why tempt fate). */
static u64 pick_trampoline_page(const struct bootinfo *bi)
{
    static const u64 candidates[] = {0x8000, 0x10000, 0x70000, 0x3000};
    u64 size = ap_trampoline_size();
    for (u32 c = 0; c < sizeof(candidates) / sizeof(candidates[0]); c++) {
        u64 a = candidates[c];
        for (u32 i = 0; i < bi->memmap_entries; i++) {
            const struct memmap_entry *m = &bi->memmap[i];
            if (m->type == 1 && m->start <= a && a + 4096 <= m->start + m->size && size <= 4096)
                return a;
        }
    }
    return 0;
}

void kmain(const struct bootinfo *bi)
{
    kit_start("smp");
    u32 expected = acpi.cpus_enabled;
    u32 bsp = cpu_apic_id();
    lapic = acpi.lapic_addr ? acpi.lapic_addr : 0xfee00000;
    kprintf("bsp: %u\n", bsp);

    u32 to_start = 0;
    if (expected > 1) {
        u64 tramp = pick_trampoline_page(bi);
        if (!tramp) {
            kprintf("smp: no RAM page below 1 MiB for the trampoline\n");
        } else {
            kprintf("trampoline: 0x%lx\n", tramp);
            ap_trampoline_install(tramp);
            mmio_write32(lapic + LAPIC_SVR, mmio_read32(lapic + LAPIC_SVR) | SVR_ENABLE | 0xff);
            u32 n = expected < MAX_CPUS ? expected : MAX_CPUS;
            /* INIT to all first, then the SIPIs: the APs boot in parallel. The 10 ms / 200 us
             * waits of the MP spec are only needed by real hardware; KVM's in-kernel LAPIC
             * queues INIT before SIPI, and it ignores a SIPI to a running CPU. */
            for (u32 i = 0; i < n; i++) {
                u32 id = acpi.apic_ids[i];
                if (id == bsp)
                    continue;
                if (id > 0xff) {
                    kprintf("smp: apic id %u needs x2APIC, skipped\n", id);
                    continue;
                }
                send_ipi(id, ICR_INIT);
                to_start++;
            }
            for (int round = 0; round < 2; round++) {
                for (u32 i = 0; i < n; i++) {
                    u32 id = acpi.apic_ids[i];
                    if (id != bsp && id <= 0xff)
                        send_ipi(id, ICR_STARTUP | (u32)(tramp >> 12));
                }
                /* Short pause before the second SIPI (MP spec: 200 us). */
                for (u32 i = 0; i < 1000 && atomic_load32(&ap_online) < to_start; i++)
                    cpu_relax();
            }
        }
    }

    /* Wait for the APs, bounded in wall-clock time by the RTC (each poll is also two port
     * exits, which lets the host run the AP threads on our 2 host cores). */
    u32 limit_s = (u32)cmdline_u64("smp_timeout", 120);
    u8 last = cmos_read(0);
    u32 seconds = 0;
    for (u32 polls = 0; atomic_load32(&ap_online) < to_start && seconds < limit_s && polls < 50000000;
         polls++) {
        u8 s = cmos_read(0);
        if (s != last) {
            last = s;
            seconds++;
        }
    }
    u32 online = atomic_load32(&ap_online);
    if (online < to_start)
        kprintf("smp: timed out after %u s waiting for %u APs\n", seconds, to_start - online);
    kprintf("cpus-online: %u\n", online + 1);
    kprintf("cpus-expected: %u\n", expected);
    kit_done("smp");
}
