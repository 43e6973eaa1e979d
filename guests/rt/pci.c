/* ironvirt guest test kit: PCI configuration access, bus 0 enumeration, BAR sizing and
 * assignment, capability lists. See rt/pci.h for the references.
 *
 * BAR addresses. Under SeaBIOS (QEMU q35) firmware has assigned every BAR; the kit keeps those.
 * With direct kernel boot (PVH / Linux 64-bit protocol: QEMU microvm, ironvirt-vmm) nothing
 * assigns them, so memory BARs left at zero get addresses from a bump allocator, naturally
 * aligned, starting at 0xe0000000 and ending below the I/O APIC (0xfec00000). When the MCFG's
 * ECAM window covers 0xe0000000 (QEMU microvm: ECAM 0xe0000000-0xefffffff) the allocator starts
 * at 0xc0000000 instead (microvm's 32-bit PCIe window 0xc0000000-0xdfffffff, as its DSDT _CRS
 * says) and ends at the ECAM base. `pci_mmio=0xADDR` on the command line overrides the start.
 * 64-bit BARs are placed below 4 GiB too. I/O BARs are sized and reported, never assigned, and
 * I/O decoding is never turned on by the kit (the virtio driver uses memory BARs only).
 */
#include "pci.h"

#define CF8_ADDR 0xcf8
#define CF8_DATA 0xcfc
#define CF8_ENABLE 0x80000000u /* PCI 3.0 3.2.2.3.2: bit 31 enable, 23:16 bus, 15:11 device,
                                  10:8 function, 7:2 register */

#define MMIO_DEFAULT_BASE 0xe0000000ull
#define MMIO_MICROVM_BASE 0xc0000000ull
#define MMIO_LIMIT 0xfec00000ull /* I/O APIC, then LAPIC and firmware above */

u64 pci_ecam_base;
static u32 ecam_bus_start, ecam_bus_end;
struct pci_dev pci_devs[PCI_MAX_DEVS];
int pci_ndevs;
static u64 mmio_next, mmio_limit;

/* ACPI MCFG (PCI Firmware 3.2 table 4-2): standard 36-byte header, 8 reserved bytes, then
 * 16-byte allocation entries: base address u64, PCI segment u16, start bus u8, end bus u8,
 * 4 reserved bytes. */
static void parse_mcfg(void)
{
    u64 t = acpi_find_table("MCFG");
    if (!t)
        return;
    u32 len;
    memcpy(&len, (const u8 *)t + 4, 4);
    for (u32 off = 44; off + 16 <= len; off += 16) {
        const u8 *e = (const u8 *)t + off;
        u64 base;
        u16 seg;
        memcpy(&base, e, 8);
        memcpy(&seg, e + 8, 2);
        if (seg == 0 && e[10] == 0) {
            pci_ecam_base = base;
            ecam_bus_start = e[10];
            ecam_bus_end = e[11];
            return;
        }
    }
}

static u64 parse_hex(const char *v, size_t n, u64 fallback)
{
    if (n < 3 || v[0] != '0' || (v[1] != 'x' && v[1] != 'X'))
        return fallback;
    u64 r = 0;
    for (size_t i = 2; i < n; i++) {
        char c = v[i];
        u32 d;
        if (c >= '0' && c <= '9')
            d = (u32)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (u32)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = (u32)(c - 'A' + 10);
        else
            return fallback;
        r = r << 4 | d;
    }
    return r;
}

void pci_init(void)
{
    parse_mcfg();
    /* `pci_ecam=0xADDR`: ECAM base for platforms that describe it only in the DSDT (QEMU 7.2
     * microvm,pcie=on: _CBA 0xe0000000, no MCFG); buses 0..255 assumed. */
    size_t n;
    const char *v = cmdline_value("pci_ecam", &n);
    if (v) {
        pci_ecam_base = parse_hex(v, n, pci_ecam_base);
        ecam_bus_start = 0;
        ecam_bus_end = 255;
    }
    u64 ecam_found = pci_ecam_base;
    if (cmdline_is("pci", "cf8"))
        pci_ecam_base = 0;
    if (pci_ecam_base)
        kprintf("pci-access: ecam 0x%lx\n", pci_ecam_base);
    else
        kprintf("pci-access: cf8\n");

    mmio_next = MMIO_DEFAULT_BASE;
    mmio_limit = MMIO_LIMIT;
    if (ecam_found && ecam_found <= MMIO_DEFAULT_BASE &&
        ecam_found + ((u64)(ecam_bus_end + 1) << 20) > MMIO_DEFAULT_BASE) {
        mmio_next = MMIO_MICROVM_BASE;
        mmio_limit = ecam_found;
    }
    v = cmdline_value("pci_mmio", &n);
    if (v) {
        mmio_next = parse_hex(v, n, mmio_next);
        mmio_limit = MMIO_LIMIT;
        if (ecam_found > mmio_next && ecam_found < mmio_limit)
            mmio_limit = ecam_found;
    }
}

/* ECAM (PCIe 7.2.2): base + bus << 20 | device << 15 | function << 12 | register. */
static u64 ecam_addr(const struct pci_dev *d, u16 off)
{
    return pci_ecam_base + ((u64)(d->bus - ecam_bus_start) << 20) + ((u64)d->dev << 15) +
           ((u64)d->fn << 12) + (off & 0xfff);
}

static void cf8_select(const struct pci_dev *d, u16 off)
{
    outl(CF8_ADDR, CF8_ENABLE | (u32)d->bus << 16 | (u32)d->dev << 11 | (u32)d->fn << 8 |
                       (off & 0xfc));
}

u32 pci_read32(const struct pci_dev *d, u16 off)
{
    if (pci_ecam_base)
        return mmio_read32(ecam_addr(d, off));
    cf8_select(d, off);
    return inl(CF8_DATA);
}

u16 pci_read16(const struct pci_dev *d, u16 off)
{
    if (pci_ecam_base)
        return mmio_read16(ecam_addr(d, off));
    cf8_select(d, off);
    return inw(CF8_DATA + (off & 2));
}

u8 pci_read8(const struct pci_dev *d, u16 off)
{
    if (pci_ecam_base)
        return mmio_read8(ecam_addr(d, off));
    cf8_select(d, off);
    return inb(CF8_DATA + (off & 3));
}

void pci_write32(const struct pci_dev *d, u16 off, u32 v)
{
    if (pci_ecam_base) {
        mmio_write32(ecam_addr(d, off), v);
        return;
    }
    cf8_select(d, off);
    outl(CF8_DATA, v);
}

void pci_write16(const struct pci_dev *d, u16 off, u16 v)
{
    if (pci_ecam_base) {
        mmio_write16(ecam_addr(d, off), v);
        return;
    }
    cf8_select(d, off);
    outw(CF8_DATA + (off & 2), v);
}

void pci_write8(const struct pci_dev *d, u16 off, u8 v)
{
    if (pci_ecam_base) {
        mmio_write8(ecam_addr(d, off), v);
        return;
    }
    cf8_select(d, off);
    outb(CF8_DATA + (off & 3), v);
}

static int probe(u8 dev, u8 fn)
{
    if (pci_ndevs >= PCI_MAX_DEVS)
        return 0;
    struct pci_dev *d = &pci_devs[pci_ndevs];
    memset(d, 0, sizeof(*d));
    d->bus = 0;
    d->dev = dev;
    d->fn = fn;
    u32 id = pci_read32(d, PCI_VENDOR_ID);
    if ((id & 0xffff) == 0xffff || (id & 0xffff) == 0) /* no function there (6.2.1) */
        return 0;
    d->vendor = (u16)id;
    d->device = (u16)(id >> 16);
    d->class_code = pci_read32(d, PCI_CLASS_REV) >> 8;
    d->header_type = pci_read8(d, PCI_HEADER_TYPE);
    kprintf("pci: %02x:%02x.%x %04x:%04x class 0x%06x\n", d->bus, d->dev, d->fn, d->vendor,
            d->device, d->class_code);
    pci_ndevs++;
    return 1;
}

int pci_scan(void)
{
    pci_ndevs = 0;
    for (u8 dev = 0; dev < 32; dev++) {
        if (!probe(dev, 0))
            continue;
        if (pci_devs[pci_ndevs - 1].header_type & PCI_HEADER_MULTIFUNCTION)
            for (u8 fn = 1; fn < 8; fn++)
                probe(dev, fn);
    }
    return pci_ndevs;
}

struct pci_dev *pci_find(u16 vendor, const u16 *devices)
{
    for (int i = 0; i < pci_ndevs; i++) {
        if (pci_devs[i].vendor != vendor)
            continue;
        for (const u16 *id = devices; *id != 0xffff; id++)
            if (pci_devs[i].device == *id)
                return &pci_devs[i];
    }
    return NULL;
}

static u64 bump(u64 size)
{
    u64 a = (mmio_next + size - 1) & ~(size - 1);
    if (a + size > mmio_limit || a + size < a)
        return 0;
    mmio_next = a + size;
    return a;
}

/* BAR sizing (PCI 3.0 6.2.5.1): write all ones, the read-back has the size's alignment bits
 * clear; restore the original value. The caller has turned decoding off. */
static int size_bar(struct pci_dev *d, int i)
{
    u16 off = (u16)(PCI_BAR0 + 4 * i);
    struct pci_bar *b = &d->bar[i];
    u32 orig = pci_read32(d, off);
    pci_write32(d, off, 0xffffffff);
    u32 mask = pci_read32(d, off);
    pci_write32(d, off, orig);
    if (mask == 0)
        return 1;
    if (orig & PCI_BAR_IO) {
        b->io = 1;
        b->addr = orig & ~3u;
        u32 m = mask & ~3u;
        m |= 0xffff0000u; /* devices may hardwire the upper 16 bits of an I/O BAR to 0 */
        b->size = (u32)(~m + 1);
        return 1;
    }
    b->prefetch = (orig & PCI_BAR_PREFETCH) != 0;
    u64 m = mask & ~0xfu;
    b->addr = orig & ~0xfu;
    if ((orig & PCI_BAR_MEM_TYPE_MASK) == PCI_BAR_MEM_TYPE_64 && i < 5) {
        b->is64 = 1;
        u32 orig_hi = pci_read32(d, off + 4);
        pci_write32(d, off + 4, 0xffffffff);
        u32 mask_hi = pci_read32(d, off + 4);
        pci_write32(d, off + 4, orig_hi);
        m |= (u64)mask_hi << 32;
        b->addr |= (u64)orig_hi << 32;
    } else {
        m |= 0xffffffff00000000ull;
    }
    b->size = ~m + 1;
    if (b->addr == 0 && b->size) {
        u64 a = bump(b->size);
        if (a) {
            pci_write32(d, off, (u32)a | (orig & 0xf));
            if (b->is64)
                pci_write32(d, off + 4, (u32)(a >> 32));
            b->addr = a;
            b->assigned = 1;
        }
    }
    return b->is64 ? 2 : 1;
}

u8 pci_find_cap(const struct pci_dev *d, u8 id, u8 after)
{
    if (!(pci_read16(d, PCI_STATUS) & PCI_STATUS_CAP_LIST))
        return 0;
    u8 p = after ? pci_read8(d, after + 1) : pci_read8(d, PCI_CAP_PTR);
    /* 48 entries at most fit in the 192 bytes above the header: bounds a looping list. */
    for (int n = 0; n < 48 && p >= 0x40; n++) {
        p &= 0xfc; /* 6.7: the bottom two bits are reserved */
        if (pci_read8(d, p) == id)
            return p;
        p = pci_read8(d, p + 1);
    }
    return 0;
}

void pci_enable(struct pci_dev *d)
{
    if ((d->header_type & 0x7f) != 0) {
        kprintf("pci-enable: %02x:%02x.%x not a type 0 header\n", d->bus, d->dev, d->fn);
        return;
    }
    u16 cmd = pci_read16(d, PCI_COMMAND);
    pci_write16(d, PCI_COMMAND, cmd & ~(PCI_COMMAND_IO | PCI_COMMAND_MEMORY));
    for (int i = 0; i < 6;)
        i += size_bar(d, i);
    pci_write16(d, PCI_COMMAND, cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    for (int i = 0; i < 6; i++) {
        const struct pci_bar *b = &d->bar[i];
        if (!b->size)
            continue;
        kprintf("pci-bar: %02x:%02x.%x bar%d %s 0x%lx size 0x%lx%s\n", d->bus, d->dev, d->fn, i,
                b->io ? "io" : b->is64 ? "mem64" : "mem32", b->addr, b->size,
                b->assigned ? " assigned" : (!b->io && !b->addr) ? " unassigned" : "");
    }
    /* Capability list (6.7), printed as id@offset. */
    char line[160];
    int n = ksnprintf(line, sizeof(line), "pci-caps: %02x:%02x.%x", d->bus, d->dev, d->fn);
    if (pci_read16(d, PCI_STATUS) & PCI_STATUS_CAP_LIST) {
        u8 p = pci_read8(d, PCI_CAP_PTR);
        for (int k = 0; k < 48 && p >= 0x40 && n < (int)sizeof(line) - 16; k++) {
            p &= 0xfc;
            n += ksnprintf(line + n, sizeof(line) - (size_t)n, " 0x%02x@0x%02x", pci_read8(d, p),
                           p);
            p = pci_read8(d, p + 1);
        }
    }
    kprintf("%s\n", line);
}
