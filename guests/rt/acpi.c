/* ironvirt guest test kit: ACPI table walk, power-off and reset.
 * Section numbers refer to the ACPI Specification 6.5. */
#include "rt.h"

struct acpi_info acpi;

/* System description table header, 5.2.6. */
struct sdt_header {
    char signature[4];
    u32 length;
    u8 revision;
    u8 checksum;
    char oem_id[6];
    char oem_table_id[8];
    u32 oem_revision;
    u32 creator_id;
    u32 creator_revision;
} __attribute__((packed));

/* FADT field offsets, 5.2.9 table 5.9. */
#define FADT_DSDT 40
#define FADT_SCI_INT 46 /* u16: ISA IRQ (8259 mode) the SCI is wired to */
#define FADT_PM1A_EVT_BLK 56
#define FADT_PM1A_CNT_BLK 64
#define FADT_PM1B_CNT_BLK 68
#define FADT_PM_TMR_BLK 76
#define FADT_PM1_EVT_LEN 88
#define FADT_FLAGS 112
#define FADT_RESET_REG 116
#define FADT_RESET_VALUE 128
#define FADT_X_DSDT 140
#define FADT_X_PM1A_EVT_BLK 148
#define FADT_X_PM1A_CNT_BLK 172
#define FADT_X_PM1B_CNT_BLK 184
#define FADT_X_PM_TMR_BLK 208
#define FADT_SLEEP_CONTROL_REG 244
#define FADT_FLAG_RESET_REG_SUP (1u << 10)
#define FADT_FLAG_HW_REDUCED_ACPI (1u << 20)

/* PM1 control register bits, 4.8.3.2.1: SLP_TYP is bits 12:10, SLP_EN bit 13. */
#define PM1_SLP_TYP_SHIFT 10
#define PM1_SLP_EN (1u << 13)
/* Sleep control register (hardware-reduced), 4.8.3.7: SLP_TYP bits 4:2, SLP_EN bit 5. */
#define SLEEP_CTL_SLP_TYP_SHIFT 2
#define SLEEP_CTL_SLP_EN (1u << 5)

static u8 checksum(const void *p, size_t n)
{
    const u8 *b = p;
    u8 s = 0;
    for (size_t i = 0; i < n; i++)
        s += b[i];
    return s;
}

u64 acpi_find_rsdp(void)
{
    /* 5.2.5.1: on IA-PC systems the RSDP is on a 16-byte boundary in 0xe0000..0xfffff. */
    for (u64 a = 0xe0000; a < 0x100000; a += 16) {
        const char *p = (const char *)a;
        if (memcmp(p, "RSD PTR ", 8) == 0 && checksum(p, 20) == 0)
            return a;
    }
    return 0;
}

static void read_gas(u64 addr, struct gas *g)
{
    const u8 *p = (const u8 *)addr;
    g->space = p[0];
    g->bit_width = p[1];
    g->bit_offset = p[2];
    g->access_size = p[3];
    memcpy(&g->address, p + 4, 8);
}

static void parse_madt(u64 madt)
{
    const struct sdt_header *h = (const struct sdt_header *)madt;
    acpi.lapic_addr = *(const u32 *)(madt + 36); /* 5.2.12 table 5.19 */
    u64 p = madt + 44, end = madt + h->length;
    while (p + 2 <= end) {
        u8 type = *(const u8 *)p, len = *(const u8 *)(p + 1);
        if (len < 2 || p + len > end)
            break;
        u32 id = 0, flags = 0;
        int cpu = 0;
        if (type == 0 && len >= 8) { /* Processor Local APIC, 5.2.12.2 */
            id = *(const u8 *)(p + 3);
            flags = *(const u32 *)(p + 4);
            cpu = 1;
        } else if (type == 9 && len >= 16) { /* Processor Local x2APIC, 5.2.12.12 */
            id = *(const u32 *)(p + 4);
            flags = *(const u32 *)(p + 8);
            cpu = 1;
        } else if (type == 5 && len >= 12) { /* Local APIC address override, 5.2.12.8 */
            acpi.lapic_addr = *(const u64 *)(p + 4);
        } else if (type == 1 && len >= 12 && !acpi.ioapic_addr) { /* I/O APIC, 5.2.12.3 */
            acpi.ioapic_addr = *(const u32 *)(p + 4);
            acpi.ioapic_gsi_base = *(const u32 *)(p + 8);
        } else if (type == 2 && len >= 10) { /* Interrupt Source Override, 5.2.12.5 */
            u8 src = *(const u8 *)(p + 3);
            if (*(const u8 *)(p + 2) == 0 && src < 16) { /* bus 0: ISA */
                acpi.isa_gsi[src] = *(const u32 *)(p + 4);
                acpi.isa_flags[src] = *(const u16 *)(p + 8);
            }
        }
        if (cpu && (flags & 1)) { /* bit 0: Enabled */
            if (acpi.cpus_enabled < MAX_CPUS)
                acpi.apic_ids[acpi.cpus_enabled] = id;
            acpi.cpus_enabled++;
        }
        p += len;
    }
}

/* Finds SLP_TYP for S5 in the DSDT: Name(_S5_, Package(){ SLP_TYPa, ... }) (7.4.2.5). AML
 * (20.2.5.4): PackageOp 0x12, PkgLength (bits 7:6 of its first byte = count of following
 * bytes), NumElements, then the elements: BytePrefix 0x0a + byte, ZeroOp 0x00, OneOp 0x01. */
static void find_s5(u64 dsdt)
{
    const struct sdt_header *h = (const struct sdt_header *)dsdt;
    const u8 *p = (const u8 *)dsdt;
    u32 len = h->length;
    for (u32 i = sizeof(*h); i + 8 < len; i++) {
        if (memcmp(p + i, "_S5_", 4) != 0 || p[i + 4] != 0x12)
            continue;
        u32 j = i + 5;
        j += 1 + (p[j] >> 6); /* PkgLength */
        j += 1;               /* NumElements */
        if (j + 1 >= len)
            break;
        if (p[j] == 0x0a) {
            acpi.slp_typ_s5 = p[j + 1];
            acpi.s5_found = 1;
        } else if (p[j] == 0x00 || p[j] == 0x01) {
            acpi.slp_typ_s5 = p[j];
            acpi.s5_found = 1;
        }
        break;
    }
}

static void parse_fadt(u64 fadt)
{
    const struct sdt_header *h = (const struct sdt_header *)fadt;
    u32 len = h->length;
    const u8 *f = (const u8 *)fadt;
    u32 flags = len >= FADT_FLAGS + 4 ? *(const u32 *)(f + FADT_FLAGS) : 0;
    acpi.hw_reduced = !!(flags & FADT_FLAG_HW_REDUCED_ACPI);

    u64 x_dsdt = 0;
    if (len >= FADT_X_DSDT + 8)
        memcpy(&x_dsdt, f + FADT_X_DSDT, 8);
    acpi.dsdt = x_dsdt ? x_dsdt : *(const u32 *)(f + FADT_DSDT);

    acpi.sci_irq = len >= FADT_SCI_INT + 2 ? *(const u16 *)(f + FADT_SCI_INT) : 0;
    acpi.pm1a_evt = len >= FADT_PM1A_EVT_BLK + 4 ? *(const u32 *)(f + FADT_PM1A_EVT_BLK) : 0;
    acpi.pm1a_cnt = len >= FADT_PM1A_CNT_BLK + 4 ? *(const u32 *)(f + FADT_PM1A_CNT_BLK) : 0;
    acpi.pm1b_cnt = len >= FADT_PM1B_CNT_BLK + 4 ? *(const u32 *)(f + FADT_PM1B_CNT_BLK) : 0;
    acpi.pm_tmr = len >= FADT_PM_TMR_BLK + 4 ? *(const u32 *)(f + FADT_PM_TMR_BLK) : 0;
    acpi.pm1_evt_len = len > FADT_PM1_EVT_LEN ? f[FADT_PM1_EVT_LEN] : 0;
    /* 5.2.9: the X_ field wins when it is set; we only use it when it is in I/O space. */
    if (len >= FADT_X_PM1B_CNT_BLK + 12) {
        struct gas g;
        read_gas(fadt + FADT_X_PM1A_EVT_BLK, &g);
        if (g.address && g.space == GAS_SPACE_IO)
            acpi.pm1a_evt = (u32)g.address;
        read_gas(fadt + FADT_X_PM1A_CNT_BLK, &g);
        if (g.address && g.space == GAS_SPACE_IO)
            acpi.pm1a_cnt = (u32)g.address;
        read_gas(fadt + FADT_X_PM1B_CNT_BLK, &g);
        if (g.address && g.space == GAS_SPACE_IO)
            acpi.pm1b_cnt = (u32)g.address;
    }
    if (len >= FADT_X_PM_TMR_BLK + 12) {
        struct gas g;
        read_gas(fadt + FADT_X_PM_TMR_BLK, &g);
        if (g.address && g.space == GAS_SPACE_IO)
            acpi.pm_tmr = (u32)g.address;
    }
    if (acpi.hw_reduced) { /* 4.1: no fixed hardware; the legacy fields must be ignored */
        acpi.pm1a_evt = acpi.pm_tmr = 0;
        acpi.pm1_evt_len = 0;
    }
    if (len >= FADT_RESET_VALUE + 1) {
        acpi.reset_supported = !!(flags & FADT_FLAG_RESET_REG_SUP);
        read_gas(fadt + FADT_RESET_REG, &acpi.reset_reg);
        acpi.reset_value = f[FADT_RESET_VALUE];
    }
    if (len >= FADT_SLEEP_CONTROL_REG + 12)
        read_gas(fadt + FADT_SLEEP_CONTROL_REG, &acpi.sleep_ctl);
}

u64 acpi_find_table(const char sig[4])
{
    if (acpi.xsdt) {
        const struct sdt_header *h = (const struct sdt_header *)acpi.xsdt;
        u32 n = (h->length - sizeof(*h)) / 8;
        for (u32 i = 0; i < n; i++) {
            u64 t;
            memcpy(&t, (const u8 *)acpi.xsdt + sizeof(*h) + 8 * i, 8);
            if (t && memcmp((const char *)t, sig, 4) == 0)
                return t;
        }
    } else if (acpi.rsdt) {
        const struct sdt_header *h = (const struct sdt_header *)acpi.rsdt;
        u32 n = (h->length - sizeof(*h)) / 4;
        for (u32 i = 0; i < n; i++) {
            u64 t = *(const u32 *)((const u8 *)acpi.rsdt + sizeof(*h) + 4 * i);
            if (t && memcmp((const char *)t, sig, 4) == 0)
                return t;
        }
    }
    return 0;
}

void acpi_init(u64 rsdp)
{
    acpi.rsdp = rsdp;
    for (u32 i = 0; i < 16; i++) /* without an override ISA IRQ i is GSI i (5.2.12.5) */
        acpi.isa_gsi[i] = i;
    if (!rsdp || memcmp((const char *)rsdp, "RSD PTR ", 8) != 0)
        return;
    /* RSDP, 5.2.5.3: RsdtAddress at 16 (u32); revision >= 2 adds XsdtAddress at 24 (u64). */
    const u8 *r = (const u8 *)rsdp;
    acpi.rsdt = *(const u32 *)(r + 16);
    if (r[15] >= 2)
        memcpy(&acpi.xsdt, r + 24, 8);
    acpi.fadt = acpi_find_table("FACP");
    acpi.madt = acpi_find_table("APIC");
    if (acpi.fadt)
        parse_fadt(acpi.fadt);
    if (acpi.madt)
        parse_madt(acpi.madt);
    if (acpi.dsdt && memcmp((const char *)acpi.dsdt, "DSDT", 4) == 0)
        find_s5(acpi.dsdt);
    if (!acpi.s5_found)
        acpi.slp_typ_s5 = 5; /* what ironvirt and QEMU use; a guess when the DSDT says nothing */
}

static void gas_write8(const struct gas *g, u8 v)
{
    if (g->space == GAS_SPACE_IO)
        outb((u16)g->address, v);
    else if (g->space == GAS_SPACE_MEMORY)
        mmio_write8(g->address, v);
}

void acpi_poweroff(void)
{
    u32 typ = acpi.slp_typ_s5 & 7;
    if (acpi.pm1a_cnt) {
        /* 7.4.2 / 16.1.7: write SLP_TYPa with SLP_EN to PM1a_CNT (and SLP_TYPb to PM1b). */
        outw((u16)acpi.pm1a_cnt, (u16)((typ << PM1_SLP_TYP_SHIFT) | PM1_SLP_EN));
        if (acpi.pm1b_cnt)
            outw((u16)acpi.pm1b_cnt, (u16)((typ << PM1_SLP_TYP_SHIFT) | PM1_SLP_EN));
    } else if (acpi.sleep_ctl.address) {
        /* Hardware-reduced ACPI (4.1): the sleep control register replaces PM1_CNT. */
        gas_write8(&acpi.sleep_ctl, (u8)((typ << SLEEP_CTL_SLP_TYP_SHIFT) | SLEEP_CTL_SLP_EN));
    }
    /* The VMM may act on the write asynchronously (QEMU does): give it a moment. */
    rtc_wait_seconds(2);
    outb(0xf4, 0x31); /* QEMU isa-debug-exit, if present: exit status (0x31 << 1) | 1 */
    rtc_wait_seconds(1);
    kprintf(KIT " poweroff failed\n");
    halt_forever();
}

void acpi_reset(int use_kbd)
{
    if (!use_kbd && acpi.reset_supported && acpi.reset_reg.address) {
        /* 4.8.3.6: write RESET_VALUE to RESET_REG. */
        gas_write8(&acpi.reset_reg, acpi.reset_value);
        rtc_wait_seconds(2);
    }
    outb(0x64, 0xfe); /* i8042 command 0xfe: pulse the CPU reset line */
    rtc_wait_seconds(2);
    kprintf(KIT " reset failed\n");
    halt_forever();
}
