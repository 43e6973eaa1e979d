/* vhostile: a virtio driver that breaks the rules on purpose, against virtio-rng and
 * virtio-blk (modern PCI transport). Each case builds one malformed request or does one
 * malformed access, reports what the device did, then resets and re-initialises the device for
 * the next case. At the end one valid request shows whether the device still works.
 *
 * Rules broken (virtio 1.2): 2.7.5.1 descriptor chains (no loops, at most Queue Size long, next
 * within the table), 2.7.5.3.1 indirect descriptors (VIRTQ_DESC_F_INDIRECT only when
 * negotiated, never nested, table length a multiple of 16, table 16-byte aligned per 2.7 table
 * "Descriptor Table 16"), 2.7.13.3 avail ring (idx at most Queue Size ahead of the used ring,
 * ring entries < Queue Size), buffer addresses in guest RAM and lengths that fit, 4.1.4.4 /
 * 4.1.5.2 notification data (a valid queue index), 4.1.4.3.1 queue_select (< num_queues),
 * 4.1.4.6 device configuration (only the device's fields, read-only ones not written), PCI 3.0
 * 6.8.2 MSI-X table (only table_size entries; the PBA read-only).
 * What a device should do is in 2.1.2: on an error it may set DEVICE_NEEDS_RESET (0x40); the
 * spec leaves the rest to the device, so each case just prints what happened:
 *   hostile-case: NAME -> used id I len L [status S] | timeout | skipped (...), then
 *   [device-needs-reset] [status 0x..] [after: ...]
 *
 * Command line: dev=rng|blk|all (default all: each present, rng first), case=NAME|all,
 * skip=NAME[,NAME...],
 * case_timeout=S (default 2), irq=msix|poll and the other virtio options (guests/README.md).
 */
#include "virtio.h"

#define VIRTIO_BLK_T_IN 0
#define BLK_F_FLUSH 9
/* struct virtio_pci_common_cfg offsets (4.1.4.3). */
#define COMMON_Q_SELECT 0x16
#define COMMON_Q_SIZE 0x18
#define COMMON_Q_ENABLE 0x1c
#define COMMON_Q_DESCLO 0x20
#define COMMON_Q_DESCHI 0x24
#define OUTSIDE_RAM 0x10000000000ull /* 1 TiB: above any --memory the tests use */
#define MMIO_HOLE 0xd0000000ull       /* 3 GiB..4 GiB hole, nothing mapped here (PLATFORM.md) */

struct blk_hdr {
    u32 type;
    u32 reserved;
    u64 sector;
};

static struct virtio_dev vd;
static int is_blk;
static u64 want_features;
static u32 case_timeout;
static u8 data[4096] __attribute__((aligned(4096)));
static u8 itab[4096] __attribute__((aligned(4096))); /* indirect tables */
static struct blk_hdr hdr __attribute__((aligned(16)));
static volatile u8 bstatus;

static struct virtq *q0(void) { return &vd.vq[0]; }

static int reinit(void)
{
    virtio_quiet = 1;
    virtio_reset(&vd);
    return virtio_init(&vd, want_features, 1);
}

/* The device's normal request at descriptors first..: rng one writable buffer; blk header,
 * data, status. Data address/length/extra flags as given. Returns the head. */
static u16 build(u16 first, u64 addr, u32 len, u16 last_next_flags, u16 last_next)
{
    struct virtq *q = q0();
    if (!is_blk) {
        virtq_desc_set(q, first, addr, len, VIRTQ_DESC_F_WRITE | last_next_flags, last_next);
        return first;
    }
    hdr.type = VIRTIO_BLK_T_IN;
    hdr.reserved = 0;
    hdr.sector = 0;
    bstatus = 0xee;
    virtq_desc_set(q, first, (u64)&hdr, sizeof(hdr), VIRTQ_DESC_F_NEXT, first + 1);
    virtq_desc_set(q, first + 1, addr, len, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, first + 2);
    virtq_desc_set(q, first + 2, (u64)&bstatus, 1, VIRTQ_DESC_F_WRITE | last_next_flags, last_next);
    return first;
}

/* Fills a descriptor table in memory (for indirect tables) with the normal request. */
static u32 build_table(u8 *at, u64 addr, u32 len)
{
    struct virtq_desc d[3];
    u32 n;
    if (!is_blk) {
        d[0] = (struct virtq_desc){addr, len, VIRTQ_DESC_F_WRITE, 0};
        n = 1;
    } else {
        hdr = (struct blk_hdr){VIRTIO_BLK_T_IN, 0, 0};
        bstatus = 0xee;
        d[0] = (struct virtq_desc){(u64)&hdr, sizeof(hdr), VIRTQ_DESC_F_NEXT, 1};
        d[1] = (struct virtq_desc){addr, len, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2};
        d[2] = (struct virtq_desc){(u64)&bstatus, 1, VIRTQ_DESC_F_WRITE, 0};
        n = 3;
    }
    memcpy(at, d, n * sizeof(d[0]));
    return n;
}

static void publish(u16 head, u16 count)
{
    struct virtq *q = q0();
    u16 old = q->avail_idx;
    virtq_avail_put(q, old, head);
    if (vd.irqs)
        virtq_want_interrupt(q);
    virtq_avail_publish(q, (u16)(old + count));
    virtq_notify(q);
}

/* Waits for the outcome and formats it into out. */
static int outcome(char *out, u32 size)
{
    struct virtq *q = q0();
    u32 id, len;
    virtio_set_timeout(case_timeout);
    int n;
    if (virtq_wait(q, &id, &len) == 0) {
        u32 more = 0, i2, l2;
        while (more < 4096 && virtq_poll_used(q, &i2, &l2))
            more++;
        n = ksnprintf(out, size, "used id %u len %u", id, len);
        if (is_blk)
            n += ksnprintf(out + n, size - (u32)n, " status 0x%x", bstatus);
        if (more)
            n += ksnprintf(out + n, size - (u32)n, " (+%u more used)", more);
    } else {
        n = ksnprintf(out, size, "timeout");
    }
    u8 st = virtio_status(&vd);
    if (st & VIRTIO_STATUS_NEEDS_RESET)
        n += ksnprintf(out + n, size - (u32)n, " device-needs-reset");
    if (st != (VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |
               VIRTIO_STATUS_DRIVER_OK))
        n += ksnprintf(out + n, size - (u32)n, " status 0x%x", st);
    return n;
}

/* A normal request on the current queue state; "ok" or what went wrong. */
static const char *valid_request(void)
{
    struct virtq *q = q0();
    u16 head = (u16)((q->avail_idx * 4u) & (q->size - 1) & ~3u); /* fresh descriptors */
    memset(data, 0, 512);
    build(head, (u64)data, is_blk ? 512 : 64, 0, 0);
    publish(head, 1);
    u32 id, len;
    virtio_set_timeout(case_timeout);
    if (virtq_wait(q, &id, &len) != 0)
        return "timeout";
    if (id != head)
        return "wrong id";
    if (is_blk)
        return bstatus == 0 ? "ok" : "bad status";
    return len > 0 && len <= 64 ? "ok" : "bad length";
}

static void report(const char *name, const char *what)
{
    kprintf("hostile-case: %s -> %s\n", name, what);
}

static void simple_case(const char *name, u64 addr, u32 len)
{
    char out[200];
    publish(build(0, addr, len, 0, 0), 1);
    outcome(out, sizeof(out));
    report(name, out);
}

static void run_case(const char *name)
{
    struct virtq *q = q0();
    char out[240];
    int n;
    if (!strncmp(name, "desc-loop", 10)) {
        /* Last descriptor of the chain points back at the head (a one-descriptor loop on rng). */
        publish(build(0, (u64)data, 64, VIRTQ_DESC_F_NEXT, 0), 1);
    } else if (!strncmp(name, "chain-too-long", 15)) {
        /* Every descriptor of the table in one chain, the last linked back to the first:
         * longer than Queue Size (2.7.5.1 forbids more than Queue Size). */
        u16 first = is_blk ? 1 : 0;
        if (is_blk)
            virtq_desc_set(q, 0, (u64)&hdr, sizeof(hdr), VIRTQ_DESC_F_NEXT, 1);
        for (u16 i = first; i < q->size; i++)
            virtq_desc_set(q, i, (u64)data + (i & 63) * 64u, 64,
                           VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, (u16)((i + 1) % q->size));
        hdr = (struct blk_hdr){VIRTIO_BLK_T_IN, 0, 0};
        publish(0, 1);
    } else if (!strncmp(name, "next-out-of-range", 18)) {
        publish(build(0, (u64)data, 64, VIRTQ_DESC_F_NEXT, (u16)(q->size + 5)), 1);
    } else if (!strncmp(name, "head-out-of-range", 18)) {
        build(0, (u64)data, 64, 0, 0);
        publish((u16)(q->size + 3), 1);
    } else if (!strncmp(name, "addr-outside-ram", 17)) {
        simple_case(name, OUTSIDE_RAM, 512);
        return;
    } else if (!strncmp(name, "addr-mmio-hole", 15)) {
        simple_case(name, MMIO_HOLE, 512);
        return;
    } else if (!strncmp(name, "len-zero", 9)) {
        simple_case(name, (u64)data, 0);
        return;
    } else if (!strncmp(name, "len-max", 8)) {
        simple_case(name, (u64)data, 0xffffffffu);
        return;
    } else if (!strncmp(name, "indirect-nested", 16) || !strncmp(name, "indirect-misaligned", 20) ||
               !strncmp(name, "indirect-badlen", 16)) {
        if (!virtio_has(&vd, VIRTIO_F_INDIRECT_DESC)) {
            report(name, "skipped (VIRTIO_F_INDIRECT_DESC not offered)");
            return;
        }
        memset(itab, 0, sizeof(itab));
        if (name[9] == 'n') {
            /* Table A holds one descriptor with INDIRECT set, pointing at table B. */
            u32 cnt = build_table(itab + 256, (u64)data, 64);
            struct virtq_desc d = {(u64)itab + 256, cnt * 16, VIRTQ_DESC_F_INDIRECT, 0};
            memcpy(itab, &d, sizeof(d));
            virtq_desc_set(q, 0, (u64)itab, 16, VIRTQ_DESC_F_INDIRECT, 0);
        } else if (name[9] == 'm') {
            u32 cnt = build_table(itab + 1, (u64)data, 64); /* table at an odd address */
            virtq_desc_set(q, 0, (u64)itab + 1, cnt * 16, VIRTQ_DESC_F_INDIRECT, 0);
        } else {
            u32 cnt = build_table(itab, (u64)data, 64); /* length not a multiple of 16 */
            virtq_desc_set(q, 0, (u64)itab, cnt * 16 + 7, VIRTQ_DESC_F_INDIRECT, 0);
        }
        publish(0, 1);
    } else if (!strncmp(name, "avail-ahead", 12)) {
        /* One real chain, but avail->idx published 1000 ahead (every slot names head 0). */
        u16 head = build(0, (u64)data, 64, 0, 0);
        for (u16 s = 0; s < q->size; s++)
            virtq_avail_put(q, s, head);
        publish(head, 1000);
    } else if (!strncmp(name, "notify-bad-queue", 17)) {
        /* Notification data naming queues that do not exist (4.1.5.2), and a write past the
         * last queue's notify address; then a normal request on queue 0. */
        mmio_write16(q->notify_addr, 0xffff);
        mmio_write16(q->notify_addr, (u16)vd.nqueues + 7);
        mmio_write16(vd.notify + (u64)vd.notify_mult * 64 + 2, 0);
        mmio_write32(vd.notify + 0x7fc, 0xffffffff);
        n = ksnprintf(out, sizeof(out), "status 0x%x", virtio_status(&vd));
        ksnprintf(out + n, sizeof(out) - (u32)n, ", after: %s", valid_request());
        report(name, out);
        return;
    } else if (!strncmp(name, "devcfg-write-oob", 17)) {
        /* Writes to read-only or non-existent device configuration fields and past the end of
         * the device's structure (inside the capability window). */
        u64 cap0 = is_blk ? virtio_cfg_read64(&vd, 0) : 0;
        u32 offs[] = {0, 4, 0x40, 0x100, vd.device_cfg_len - 4};
        for (u32 i = 0; i < sizeof(offs) / sizeof(offs[0]); i++)
            if (offs[i] + 4 <= vd.device_cfg_len)
                mmio_write32(vd.device_cfg + offs[i], 0xdeadbeef);
        if (vd.device_cfg_len >= 8)
            mmio_write64(vd.device_cfg + vd.device_cfg_len - 8, ~0ull);
        if (vd.device_cfg_len >= 3)
            mmio_write16(vd.device_cfg + vd.device_cfg_len - 3, 0xabcd); /* unaligned */
        n = ksnprintf(out, sizeof(out), "cfg-len 0x%x", vd.device_cfg_len);
        if (is_blk)
            n += ksnprintf(out + n, sizeof(out) - (u32)n, " capacity %s",
                           virtio_cfg_read64(&vd, 0) == cap0 ? "unchanged" : "CHANGED");
        n += ksnprintf(out + n, sizeof(out) - (u32)n, " status 0x%x", virtio_status(&vd));
        ksnprintf(out + n, sizeof(out) - (u32)n, ", after: %s", valid_request());
        report(name, out);
        return;
    } else if (!strncmp(name, "common-bogus-select", 20)) {
        /* queue_select beyond num_queues, then queue_size/desc/enable writes for it (4.1.4.3:
         * queue_size reads 0 for a queue that does not exist). */
        u64 c = vd.common;
        mmio_write16(c + COMMON_Q_SELECT, 0x1234);
        u16 sel = mmio_read16(c + COMMON_Q_SELECT);
        u16 qs = mmio_read16(c + COMMON_Q_SIZE);
        mmio_write16(c + COMMON_Q_SIZE, 8);
        mmio_write32(c + COMMON_Q_DESCLO, 0xdead0000);
        mmio_write32(c + COMMON_Q_DESCHI, 0);
        mmio_write16(c + COMMON_Q_ENABLE, 1);
        u16 qe = mmio_read16(c + COMMON_Q_ENABLE);
        mmio_write16(c + COMMON_Q_SELECT, vd.nqueues); /* first index past the end */
        mmio_write16(c + COMMON_Q_ENABLE, 1);
        mmio_write16(c + COMMON_Q_SELECT, 0);
        u16 q0size = mmio_read16(c + COMMON_Q_SIZE);
        n = ksnprintf(out, sizeof(out), "select reads 0x%x, queue_size %u enable %u, queue 0 size %u status 0x%x",
                      sel, qs, qe, q0size, virtio_status(&vd));
        ksnprintf(out + n, sizeof(out) - (u32)n, ", after: %s", valid_request());
        report(name, out);
        return;
    } else if (!strncmp(name, "msix-oob", 9)) {
        struct pci_dev *d = vd.pci;
        u8 cap = vd.msix_cap;
        if (!cap) {
            report(name, "skipped (no MSI-X capability)");
            return;
        }
        u16 entries = (u16)((pci_read16(d, cap + MSIX_CTRL) & MSIX_CTRL_TABLE_SIZE) + 1);
        u32 t = pci_read32(d, cap + MSIX_TABLE), p = pci_read32(d, cap + MSIX_PBA);
        const struct pci_bar *tb = &d->bar[t & MSIX_BIR_MASK], *pb = &d->bar[p & MSIX_BIR_MASK];
        if ((t & MSIX_BIR_MASK) > 5 || !tb->addr || tb->io) {
            report(name, "skipped (MSI-X table BAR unusable)");
            return;
        }
        u64 tab = tb->addr + (t & ~7u), end = tab + 16ull * entries;
        /* Entry table_size (one past the end): read, write, read again; a qword straddling the
         * last entry's end; the PBA (read-only) written; the BAR's last dword. */
        u32 r1 = mmio_read32(end), r2;
        mmio_write32(end + MSIX_ENTRY_ADDR_LO, 0xfee00000);
        mmio_write32(end + MSIX_ENTRY_DATA, 0x41);
        mmio_write32(end + MSIX_ENTRY_CTRL, 0);
        r2 = mmio_read32(end);
        mmio_write64(end - 4, ~0ull);
        u64 rq = mmio_read64(end - 4);
        if ((p & MSIX_BIR_MASK) <= 5 && pb->addr && !pb->io) {
            u64 pba = pb->addr + (p & ~7u);
            mmio_write64(pba, ~0ull);
            mmio_write32(pba + 8 * ((entries + 63) / 64), 0xffffffff); /* past the PBA */
        }
        mmio_write32(tb->addr + tb->size - 4, 0x12345678);
        n = ksnprintf(out, sizeof(out),
                      "entries %u, past-end read 0x%x then 0x%x, straddling qword 0x%lx, status 0x%x",
                      entries, r1, r2, rq, virtio_status(&vd));
        ksnprintf(out + n, sizeof(out) - (u32)n, ", after: %s", valid_request());
        report(name, out);
        return;
    } else {
        report(name, "unknown case");
        return;
    }
    outcome(out, sizeof(out));
    report(name, out);
}

static const char *const cases[] = {
    "desc-loop", "chain-too-long", "next-out-of-range", "head-out-of-range", "addr-outside-ram",
    "addr-mmio-hole", "len-zero", "len-max", "indirect-nested", "indirect-misaligned",
    "indirect-badlen", "avail-ahead", "notify-bad-queue", "devcfg-write-oob",
    "common-bogus-select", "msix-oob",
};

/* skip=NAME[,NAME...]: cases left out of case=all. */
static int skipped(const char *name)
{
    size_t n, l = strlen(name);
    const char *v = cmdline_value("skip", &n);
    for (size_t i = 0; v && i + l <= n; i++)
        if ((i == 0 || v[i - 1] == ',') && !strncmp(v + i, name, l) && (i + l == n || v[i + l] == ','))
            return 1;
    return 0;
}

static int run_device(int blk)
{
    is_blk = blk;
    want_features = 1ull << VIRTIO_F_INDIRECT_DESC;
    if (virtio_probe(&vd, blk ? VIRTIO_ID_BLOCK : VIRTIO_ID_RNG, blk ? 0x1001 : 0x1005) != 0)
        return -1;
    virtio_quiet = 0;
    if (virtio_init(&vd, want_features, 1) != 0) {
        kprintf("hostile-virtio: %s init failed\n", blk ? "blk" : "rng");
        return -1;
    }
    virtio_quiet = 1;
    kprintf("hostile-device: %s\n", blk ? "virtio-blk" : "virtio-rng");
    size_t clen;
    const char *c = cmdline_value("case", &clen);
    int all = !c || (clen == 3 && !strncmp(c, "all", 3));
    for (u32 i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (!all && (strlen(cases[i]) != clen || strncmp(cases[i], c, clen)))
            continue;
        if (skipped(cases[i]))
            continue;
        run_case(cases[i]);
        if (reinit() != 0) {
            kprintf("hostile-case: %s: re-initialisation failed (status 0x%x)\n", cases[i],
                    virtio_status(&vd));
        }
    }
    /* Final check: reset, initialise, one normal request. */
    int ok = reinit() == 0 && !strncmp(valid_request(), "ok", 3);
    kprintf("hostile-virtio: %s\n", ok ? "device-ok" : "device-broken");
    virtio_report_irqs(&vd);
    virtio_reset(&vd);
    return 0;
}

void kmain(const struct bootinfo *bi)
{
    (void)bi;
    kit_start("vhostile");
    case_timeout = (u32)cmdline_u64("case_timeout", 2);
    pci_init();
    pci_scan();
    int done = 0;
    if (!cmdline_is("dev", "blk"))
        done += run_device(0) == 0;
    if (!cmdline_is("dev", "rng"))
        done += run_device(1) == 0;
    if (!done)
        guest_panic("no virtio-rng or virtio-blk device");
    kit_done("vhostile");
}
