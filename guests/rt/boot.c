/* ironvirt guest test kit: boot information, IDT, panic, small libc. */
#include "rt.h"

#define BOOT_PVH 1
#define BOOT_LINUX 2

/* PVH: struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h). */
#define HVM_START_MAGIC 0x336ec578
struct hvm_start_info {
    u32 magic;
    u32 version;
    u32 flags;
    u32 nr_modules;
    u64 modlist_paddr;
    u64 cmdline_paddr;
    u64 rsdp_paddr;
    u64 memmap_paddr;   /* version >= 1 */
    u32 memmap_entries; /* version >= 1 */
    u32 reserved;
} __attribute__((packed));
struct hvm_memmap_table_entry {
    u64 addr;
    u64 size;
    u32 type;
    u32 reserved;
} __attribute__((packed));

/* Linux boot_params offsets (Documentation/arch/x86/zero-page.rst). */
#define BP_ACPI_RSDP_ADDR 0x070 /* u64 */
#define BP_EXT_CMD_LINE_PTR 0x0c8 /* u32, bits 63:32 of cmd_line_ptr */
#define BP_E820_ENTRIES 0x1e8 /* u8 */
#define BP_CMD_LINE_PTR 0x228 /* u32, setup header */
#define BP_E820_TABLE 0x2d0   /* struct boot_e820_entry[128], 20 bytes each, packed */

static struct bootinfo bi;
static char cmdline_buf[CMDLINE_MAX];
const struct bootinfo *boot_info = &bi;

static void copy_cmdline(u64 paddr)
{
    if (paddr == 0)
        return;
    const volatile char *src = (const volatile char *)paddr;
    size_t i;
    for (i = 0; i + 1 < sizeof(cmdline_buf) && src[i] != 0; i++)
        cmdline_buf[i] = src[i];
    cmdline_buf[i] = 0;
}

static void parse_pvh(u64 raw)
{
    const struct hvm_start_info *si = (const struct hvm_start_info *)raw;
    bi.protocol = "pvh";
    if (raw == 0 || si->magic != HVM_START_MAGIC) {
        kprintf(KIT " warning: bad hvm_start_info at 0x%lx\n", raw);
        return;
    }
    copy_cmdline(si->cmdline_paddr);
    bi.rsdp = si->rsdp_paddr;
    if (si->version >= 1 && si->memmap_paddr != 0) {
        const struct hvm_memmap_table_entry *e =
            (const struct hvm_memmap_table_entry *)si->memmap_paddr;
        for (u32 i = 0; i < si->memmap_entries && bi.memmap_entries < MAX_MEMMAP; i++) {
            if (e[i].size == 0) /* QEMU's PVH table can end with an empty entry */
                continue;
            struct memmap_entry *m = &bi.memmap[bi.memmap_entries++];
            m->start = e[i].addr;
            m->size = e[i].size;
            m->type = e[i].type;
        }
    }
}

static void parse_linux(u64 raw)
{
    const u8 *bp = (const u8 *)raw;
    bi.protocol = "linux";
    if (raw == 0)
        return;
    u64 cmd = *(const u32 *)(bp + BP_CMD_LINE_PTR) |
              ((u64)*(const u32 *)(bp + BP_EXT_CMD_LINE_PTR) << 32);
    copy_cmdline(cmd);
    bi.rsdp = *(const u64 *)(bp + BP_ACPI_RSDP_ADDR);
    u32 n = bp[BP_E820_ENTRIES];
    for (u32 i = 0; i < n && i < MAX_MEMMAP; i++) {
        const u8 *e = bp + BP_E820_TABLE + 20 * i;
        struct memmap_entry *m = &bi.memmap[bi.memmap_entries];
        memcpy(&m->start, e, 8);
        memcpy(&m->size, e + 8, 8);
        memcpy(&m->type, e + 16, 4);
        if (m->size != 0)
            bi.memmap_entries++;
    }
}

/* ---- IDT: 256 16-byte interrupt gates (SDM vol. 3A 6.14.1); the runtime fills the 32
 * exception vectors, idt_set_gate() the others (not-present gates fault with #NP) ---- */
extern const u64 exc_stubs[32];
static u64 idt[2 * 256] __attribute__((aligned(16)));
static struct {
    u16 limit;
    u64 base;
} __attribute__((packed)) idt_desc;

void idt_set_gate(u32 v, u64 h)
{
    idt[2 * v] = (h & 0xffff) | ((u64)0x08 << 16) | ((u64)0x8e << 40) /* P, DPL0, int gate */
                 | ((h >> 16) & 0xffff) << 48;
    idt[2 * v + 1] = h >> 32;
}

static void idt_init(void)
{
    for (u32 v = 0; v < 32; v++)
        idt_set_gate(v, exc_stubs[v]);
    idt_desc.limit = sizeof(idt) - 1;
    idt_desc.base = (u64)idt;
}

static void idt_load(void) { __asm__ volatile("lidt %0" : : "m"(idt_desc)); }

void rt_exception(u64 vec, u64 err, u64 rip, u64 cr2)
{
    kprintf(KIT " exception: vector %lu error 0x%lx rip 0x%lx cr2 0x%lx cpu %u\n", vec, err, rip,
            cr2, cpu_apic_id());
    guest_panic("unexpected exception");
}

void rt_main(u32 proto, u64 raw)
{
    bi.cmdline = cmdline_buf;
    idt_init();
    idt_load();
    serial_init();
    if (proto == BOOT_PVH)
        parse_pvh(raw);
    else
        parse_linux(raw);
    if (bi.rsdp == 0)
        bi.rsdp = acpi_find_rsdp();
    acpi_init(bi.rsdp);
    kmain(&bi);
    kprintf(KIT " kmain returned\n");
    acpi_poweroff();
}

/* Called on each AP's own stack by ap_entry64 (rt/ap.S). */
void rt_ap_entry(void)
{
    idt_load();
    ap_main();
    halt_forever();
}

__attribute__((weak)) void ap_main(void) {}

/* pvpanic (QEMU docs/specs/pvpanic.rst): writing bit 0 to port 0x505 reports a guest panic. */
void guest_panic(const char *why)
{
    kprintf(KIT " panic: %s\n", why);
    outb(0x505, 1);
    halt_forever();
}

void kit_start(const char *name) { kprintf(KIT " %s start\n", name); }

void kit_done(const char *name)
{
    kprintf(KIT " %s done\n", name);
    if (cmdline_u64("hold", 0)) { /* hold=1: stay up (halted) so the host can inspect the VMM */
        kprintf(KIT " %s holding\n", name);
        for (;;)
            __asm__ volatile("cli; hlt");
    }
    acpi_poweroff();
}

/* ---- libc subset ---- */
void *memcpy(void *d, const void *s, size_t n)
{
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
    return d;
}

void *memmove(void *d, const void *s, size_t n)
{
    u8 *dp = d;
    const u8 *sp = s;
    if (dp <= sp || dp >= sp + n)
        return memcpy(d, s, n);
    while (n--)
        dp[n] = sp[n];
    return d;
}

void *memset(void *d, int c, size_t n)
{
    void *r = d;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return r;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *x = a, *y = b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i])
            return x[i] - y[i];
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (a[i] != b[i])
            return (u8)a[i] - (u8)b[i];
        if (a[i] == 0)
            return 0;
    }
    return 0;
}

/* ---- command line: space-separated words, "key=value" ---- */
const char *cmdline_value(const char *key, size_t *len)
{
    const char *p = bi.cmdline;
    size_t kl = strlen(key);
    while (p && *p) {
        while (*p == ' ')
            p++;
        const char *w = p;
        while (*p && *p != ' ')
            p++;
        if ((size_t)(p - w) > kl && strncmp(w, key, kl) == 0 && w[kl] == '=') {
            if (len)
                *len = (size_t)(p - w) - kl - 1;
            return w + kl + 1;
        }
    }
    return NULL;
}

u64 cmdline_u64(const char *key, u64 fallback)
{
    size_t n;
    const char *v = cmdline_value(key, &n);
    if (!v || n == 0)
        return fallback;
    u64 r = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return fallback;
        r = r * 10 + (u64)(v[i] - '0');
    }
    return r;
}

int cmdline_is(const char *key, const char *value)
{
    size_t n;
    const char *v = cmdline_value(key, &n);
    return v && n == strlen(value) && strncmp(v, value, n) == 0;
}
