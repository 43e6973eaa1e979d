/* ironvirt guest test kit: virtio 1.x modern PCI transport and split virtqueues.
 * Section numbers are those of the virtio 1.2 specification (see rt/virtio.h).
 *
 * One virtio device per guest: queue memory is static (VIRTIO_MAX_QUEUES queues of at most
 * VIRTQ_MAX_SIZE entries, each in three page-aligned pages) and the MSI-X handlers find the
 * device through a static pointer. Ring-0 work is kept small: each MMIO access is a VM exit.
 *
 * Interrupt mode (irq=msix, the default): MSI-X table entry 0 is the configuration-change
 * vector (CPU vector 0x40), entry 1 + q the vector of queue q (0x41 + q); messages go to the
 * boot CPU's APIC id, fixed delivery, edge. The wait is `sti; hlt` with a periodic local APIC
 * timer (vector 0xec, about one second, uncalibrated: KVM's 1 GHz APIC bus / 16) as a watchdog
 * that bounds it. irq=intx: MSI-X stays off; the device's INTA# (GSI from the interrupt line
 * register) goes through the I/O APIC, level-triggered, to vector 0x50, whose handler reads
 * the ISR. irq=poll: the driver spins on used->idx and sets VIRTQ_AVAIL_F_NO_INTERRUPT.
 */
#include "virtio.h"

/* PCI capability for virtio (4.1.4): cap_vndr 0, cap_next 1, cap_len 2, cfg_type 3, bar 4,
 * id 5, padding 6-7, offset 8 (u32), length 12 (u32); the notification capability adds
 * notify_off_multiplier at 16 (4.1.4.4). */
#define VCAP_CFG_TYPE 3
#define VCAP_BAR 4
#define VCAP_OFFSET 8
#define VCAP_LENGTH 12
#define VCAP_NOTIFY_MULT 16
/* cfg_type values (4.1.4). */
#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG 3
#define VIRTIO_PCI_CAP_DEVICE_CFG 4
#define VIRTIO_PCI_CAP_PCI_CFG 5

/* struct virtio_pci_common_cfg (4.1.4.3). */
#define COMMON_DFSELECT 0x00  /* device_feature_select, u32 */
#define COMMON_DF 0x04        /* device_feature, u32, RO */
#define COMMON_GFSELECT 0x08  /* driver_feature_select, u32 */
#define COMMON_GF 0x0c        /* driver_feature, u32 */
#define COMMON_MSIX 0x10      /* config_msix_vector, u16 */
#define COMMON_NUMQ 0x12      /* num_queues, u16, RO */
#define COMMON_STATUS 0x14    /* device_status, u8 */
#define COMMON_CFGGEN 0x15    /* config_generation, u8, RO */
#define COMMON_Q_SELECT 0x16  /* queue_select, u16 */
#define COMMON_Q_SIZE 0x18    /* queue_size, u16 */
#define COMMON_Q_MSIX 0x1a    /* queue_msix_vector, u16 */
#define COMMON_Q_ENABLE 0x1c  /* queue_enable, u16 */
#define COMMON_Q_NOFF 0x1e    /* queue_notify_off, u16, RO */
#define COMMON_Q_DESCLO 0x20  /* queue_desc, u64 (two 32-bit halves, 4.1.3.1) */
#define COMMON_Q_DESCHI 0x24
#define COMMON_Q_AVAILLO 0x28 /* queue_driver */
#define COMMON_Q_AVAILHI 0x2c
#define COMMON_Q_USEDLO 0x30  /* queue_device */
#define COMMON_Q_USEDHI 0x34

#define VEC_CONFIG 0x40
#define VEC_QUEUE0 0x41
#define VEC_WATCHDOG 0xec
#define VEC_INTX 0x50
/* Local APIC timer (Intel SDM vol. 3A 11.5.4, table 11-1). */
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_ICR 0x380
#define LAPIC_TIMER_DCR 0x3e0
#define LVT_MASKED (1u << 16)
#define LVT_TIMER_PERIODIC (1u << 17)
#define DCR_DIVIDE_16 0x3
#define WATCHDOG_COUNT 62500000u /* ~1 s at KVM's 1 GHz APIC bus / 16 */

struct vq_mem {
    u8 desc[4096];  /* 16 * 256: descriptor table, 16-byte aligned (2.7) */
    u8 avail[4096]; /* 6 + 2 * 256: driver area, 2-byte aligned */
    u8 used[4096];  /* 6 + 8 * 256: device area, 4-byte aligned */
};
static struct vq_mem qmem[VIRTIO_MAX_QUEUES] __attribute__((aligned(4096)));

static struct virtio_dev *irq_dev;
static volatile u32 watchdog_ticks;
static u32 timeout_s;
int virtio_quiet; /* 1: virtio_init/virtq_wait print nothing (hostile tests re-initialise often) */

/* Full barrier: a locked read-modify-write (KVM's emulator has it; mfence not needed). */
static inline void mb(void) { __asm__ volatile("lock addl $0, (%%rsp)" ::: "memory", "cc"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

static u8 c_r8(struct virtio_dev *vd, u32 o) { return mmio_read8(vd->common + o); }
static u16 c_r16(struct virtio_dev *vd, u32 o) { return mmio_read16(vd->common + o); }
static u32 c_r32(struct virtio_dev *vd, u32 o) { return mmio_read32(vd->common + o); }
static void c_w8(struct virtio_dev *vd, u32 o, u8 v) { mmio_write8(vd->common + o, v); }
static void c_w16(struct virtio_dev *vd, u32 o, u16 v) { mmio_write16(vd->common + o, v); }
static void c_w32(struct virtio_dev *vd, u32 o, u32 v) { mmio_write32(vd->common + o, v); }
static void c_w64(struct virtio_dev *vd, u32 o, u64 v)
{
    c_w32(vd, o, (u32)v);
    c_w32(vd, o + 4, (u32)(v >> 32));
}

static const char *cap_name(u8 t)
{
    static const char *const names[] = {"?", "common", "notify", "isr", "device", "pci-cfg",
                                        "?", "?", "shm", "vendor"};
    return t < sizeof(names) / sizeof(names[0]) ? names[t] : "?";
}

int virtio_probe(struct virtio_dev *vd, u16 device_id, u16 transitional)
{
    memset(vd, 0, sizeof(*vd));
    u16 ids[3] = {(u16)(0x1040 + device_id), transitional ? transitional : 0xffff, 0xffff};
    struct pci_dev *d = pci_find(VIRTIO_VENDOR, ids);
    if (!d) {
        kprintf("virtio: no device 1af4:%04x\n", 0x1040 + device_id);
        return -1;
    }
    vd->pci = d;
    kprintf("virtio: %02x:%02x.%x %04x:%04x\n", d->bus, d->dev, d->fn, d->vendor, d->device);
    pci_enable(d);
    for (u8 c = pci_find_cap(d, PCI_CAP_VENDOR, 0); c; c = pci_find_cap(d, PCI_CAP_VENDOR, c)) {
        u8 type = pci_read8(d, c + VCAP_CFG_TYPE);
        u8 bar = pci_read8(d, c + VCAP_BAR);
        u32 off = pci_read32(d, c + VCAP_OFFSET);
        u32 len = pci_read32(d, c + VCAP_LENGTH);
        kprintf("virtio-cap: %s bar %u off 0x%x len 0x%x\n", cap_name(type), bar, off, len);
        /* 4.1.4: bar values 0..5 are BARs; use the first capability of each type; the window
         * must lie inside a memory BAR the kit could map. */
        if (bar > 5 || d->bar[bar].io || !d->bar[bar].addr ||
            (u64)off + len > d->bar[bar].size)
            continue;
        u64 a = d->bar[bar].addr + off;
        switch (type) {
        case VIRTIO_PCI_CAP_COMMON_CFG:
            if (!vd->common && len >= 0x38)
                vd->common = a;
            break;
        case VIRTIO_PCI_CAP_NOTIFY_CFG:
            if (!vd->notify) {
                vd->notify = a;
                vd->notify_mult = pci_read32(d, c + VCAP_NOTIFY_MULT);
            }
            break;
        case VIRTIO_PCI_CAP_ISR_CFG:
            if (!vd->isr)
                vd->isr = a;
            break;
        case VIRTIO_PCI_CAP_DEVICE_CFG:
            if (!vd->device_cfg) {
                vd->device_cfg = a;
                vd->device_cfg_len = len;
            }
            break;
        }
    }
    vd->msix_cap = pci_find_cap(d, PCI_CAP_MSIX, 0);
    if (!vd->common || !vd->notify) {
        kprintf("virtio: missing common or notify capability\n");
        return -1;
    }
    return 0;
}

void virtio_reset(struct virtio_dev *vd)
{
    c_w8(vd, COMMON_STATUS, 0);
    /* 4.1.4.3.2: after writing 0 the driver waits until device_status reads 0. */
    for (u32 i = 0; i < 100000 && c_r8(vd, COMMON_STATUS) != 0; i++)
        cpu_relax();
}

static void status_or(struct virtio_dev *vd, u8 bits)
{
    c_w8(vd, COMMON_STATUS, (u8)(c_r8(vd, COMMON_STATUS) | bits));
}

/* ---- interrupts ---- */
static void on_config(u32 vector)
{
    (void)vector;
    if (irq_dev)
        irq_dev->config_interrupts++;
    lapic_eoi();
}

static void on_queue(u32 vector)
{
    if (irq_dev && vector - VEC_QUEUE0 < irq_dev->nqueues)
        irq_dev->vq[vector - VEC_QUEUE0].interrupts++;
    lapic_eoi();
}

/* INTx (4.1.4.5): the ISR says what happened; reading it clears it and deasserts the line,
 * so the level-triggered I/O APIC input is low again before the EOI. An interrupt with an
 * empty ISR would mean the line stayed asserted after the last read. */
static volatile u32 intx_empty;
static void on_intx(u32 vector)
{
    (void)vector;
    if (irq_dev && irq_dev->isr) {
        u8 isr = mmio_read8(irq_dev->isr);
        if (isr & 1)
            for (u16 q = 0; q < irq_dev->nqueues; q++)
                irq_dev->vq[q].interrupts++;
        if (isr & 2)
            irq_dev->config_interrupts++;
        if (!isr)
            intx_empty++;
    }
    lapic_eoi();
}

/* INTx through the I/O APIC: the GSI is what firmware left in the interrupt line register
 * (the VMM's _PRT routing; the kit does not run AML), level-triggered, active high (KVM
 * models the line as asserted/deasserted). MSI-X stays disabled. */
static int intx_setup(struct virtio_dev *vd)
{
    struct pci_dev *d = vd->pci;
    u8 pin = pci_read8(d, PCI_INTERRUPT_PIN), line = pci_read8(d, PCI_INTERRUPT_LINE);
    kprintf("virtio-intx: pin %u gsi %u\n", pin, line);
    if (!pin || !vd->isr || line == 0xff)
        return -1;
    irq_set_handler(VEC_INTX, on_intx);
    pci_write16(d, PCI_COMMAND, pci_read16(d, PCI_COMMAND) & ~PCI_COMMAND_INTX_DISABLE);
    return ioapic_route(line, VEC_INTX, IRQ_LEVEL, (u8)cpu_apic_id());
}

static void on_watchdog(u32 vector)
{
    (void)vector;
    watchdog_ticks++;
    lapic_eoi();
}

/* MSI-X (PCI 3.0 6.8.2): function-masked while the table is written, entries unmasked,
 * then enabled; INTx disabled. Returns the number of table entries, 0 when unusable. */
static u16 msix_setup(struct virtio_dev *vd, u16 nqueues)
{
    struct pci_dev *d = vd->pci;
    u8 c = vd->msix_cap;
    if (!c)
        return 0;
    u16 ctrl = pci_read16(d, c + MSIX_CTRL);
    u16 entries = (u16)((ctrl & MSIX_CTRL_TABLE_SIZE) + 1);
    u32 tbl = pci_read32(d, c + MSIX_TABLE);
    const struct pci_bar *b = &d->bar[tbl & MSIX_BIR_MASK];
    if ((tbl & MSIX_BIR_MASK) > 5 || b->io || !b->addr || (tbl & ~7u) + 16ull * entries > b->size)
        return 0;
    vd->msix_table = b->addr + (tbl & ~7u);
    vd->msix_entries = entries;
    pci_write16(d, c + MSIX_CTRL, (u16)(ctrl | MSIX_CTRL_ENABLE | MSIX_CTRL_FUNC_MASK));
    u32 apic = cpu_apic_id();
    for (u16 e = 0; e < entries && e <= nqueues; e++) {
        u64 ent = vd->msix_table + 16ull * e;
        /* Message address: 0xfee00000 | destination APIC id << 12 (physical, no redirection);
         * data: fixed delivery, edge, the vector (Intel SDM vol. 3A 11.11.1, 11.11.2). */
        mmio_write32(ent + MSIX_ENTRY_ADDR_LO, 0xfee00000u | (apic & 0xff) << 12);
        mmio_write32(ent + MSIX_ENTRY_ADDR_HI, 0);
        mmio_write32(ent + MSIX_ENTRY_DATA, e == 0 ? VEC_CONFIG : VEC_QUEUE0 + e - 1u);
        mmio_write32(ent + MSIX_ENTRY_CTRL, 0);
    }
    pci_write16(d, c + MSIX_CTRL, (u16)((ctrl | MSIX_CTRL_ENABLE) & ~MSIX_CTRL_FUNC_MASK));
    pci_write16(d, PCI_COMMAND, pci_read16(d, PCI_COMMAND) | PCI_COMMAND_INTX_DISABLE);
    return entries;
}

static void watchdog_start(void)
{
    irq_set_handler(VEC_WATCHDOG, on_watchdog);
    lapic_write(LAPIC_TIMER_DCR, DCR_DIVIDE_16);
    lapic_write(LAPIC_LVT_TIMER, LVT_TIMER_PERIODIC | VEC_WATCHDOG);
    lapic_write(LAPIC_TIMER_ICR, WATCHDOG_COUNT);
}

/* ---- queues ---- */
static int setup_queue(struct virtio_dev *vd, u16 qi, u16 max_size)
{
    struct virtq *q = &vd->vq[qi];
    memset(q, 0, sizeof(*q));
    q->vdev = vd;
    q->index = qi;
    c_w16(vd, COMMON_Q_SELECT, qi);
    u16 dev_size = c_r16(vd, COMMON_Q_SIZE);
    if (dev_size == 0) /* 4.1.5.1.3: 0 means the queue is unavailable */
        return -1;
    u16 size = dev_size < max_size ? dev_size : max_size;
    while (size & (size - 1)) /* split rings: a power of two (2.7) */
        size &= (u16)(size - 1);
    q->size = size;
    memset(&qmem[qi], 0, sizeof(qmem[qi]));
    q->desc = (volatile struct virtq_desc *)qmem[qi].desc;
    q->avail = (volatile struct virtq_avail *)qmem[qi].avail;
    q->used = (volatile struct virtq_used *)qmem[qi].used;
    c_w16(vd, COMMON_Q_SIZE, size);
    q->msix_vector = VIRTIO_NO_VECTOR;
    if (vd->irqs && !vd->intx) {
        u16 e = (u16)(1 + qi < vd->msix_entries ? 1 + qi : vd->msix_entries - 1);
        c_w16(vd, COMMON_Q_MSIX, e);
        q->msix_vector = c_r16(vd, COMMON_Q_MSIX); /* 4.1.5.1.2: read back, NO_VECTOR = fail */
    } else {
        q->avail->flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
    }
    c_w64(vd, COMMON_Q_DESCLO, (u64)q->desc);
    c_w64(vd, COMMON_Q_AVAILLO, (u64)q->avail);
    c_w64(vd, COMMON_Q_USEDLO, (u64)q->used);
    /* 4.1.4.4: queue_notify_off * notify_off_multiplier past the notification window. */
    q->notify_addr = vd->notify + (u64)c_r16(vd, COMMON_Q_NOFF) * vd->notify_mult;
    c_w16(vd, COMMON_Q_ENABLE, 1);
    if (!virtio_quiet)
        kprintf("virtio-queue: %u size %u max %u msix %s\n", qi, size, dev_size,
            q->msix_vector == VIRTIO_NO_VECTOR ? "none" : (q->msix_vector == 1 + qi ? "own" : "shared"));
    return 0;
}

static u64 read_features(struct virtio_dev *vd)
{
    c_w32(vd, COMMON_DFSELECT, 0);
    u64 lo = c_r32(vd, COMMON_DF);
    c_w32(vd, COMMON_DFSELECT, 1);
    u64 hi = c_r32(vd, COMMON_DF);
    return lo | hi << 32;
}

int virtio_init(struct virtio_dev *vd, u64 wanted, u16 nqueues)
{
    if (!timeout_s)
        timeout_s = (u32)cmdline_u64("virtio_timeout", 10);
    if (nqueues > VIRTIO_MAX_QUEUES)
        nqueues = VIRTIO_MAX_QUEUES;
    /* 3.1.1: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, re-read, queues, DRIVER_OK. */
    virtio_reset(vd);
    status_or(vd, VIRTIO_STATUS_ACKNOWLEDGE);
    status_or(vd, VIRTIO_STATUS_DRIVER);
    vd->device_features = read_features(vd);
    u64 want = wanted | 1ull << VIRTIO_F_VERSION_1;
    if (!cmdline_is("event_idx", "off"))
        want |= 1ull << VIRTIO_F_EVENT_IDX;
    vd->features = vd->device_features & want;
    if (!virtio_quiet)
        kprintf("virtio-features: device 0x%lx driver 0x%lx\n", vd->device_features, vd->features);
    if (!virtio_has(vd, VIRTIO_F_VERSION_1)) {
        kprintf("virtio: device does not offer VIRTIO_F_VERSION_1\n");
        status_or(vd, VIRTIO_STATUS_FAILED);
        return -1;
    }
    c_w32(vd, COMMON_GFSELECT, 0);
    c_w32(vd, COMMON_GF, (u32)vd->features);
    c_w32(vd, COMMON_GFSELECT, 1);
    c_w32(vd, COMMON_GF, (u32)(vd->features >> 32));
    status_or(vd, VIRTIO_STATUS_FEATURES_OK);
    if (!(c_r8(vd, COMMON_STATUS) & VIRTIO_STATUS_FEATURES_OK)) {
        kprintf("virtio: FEATURES_OK not accepted\n");
        status_or(vd, VIRTIO_STATUS_FAILED);
        return -1;
    }

    u16 devq = c_r16(vd, COMMON_NUMQ);
    if (nqueues > devq)
        nqueues = devq;
    vd->nqueues = nqueues;
    vd->irqs = !cmdline_is("irq", "poll");
    vd->intx = cmdline_is("irq", "intx");
    if (vd->irqs) {
        irq_dev = vd;
        irq_init();
        pic_disable();
        lapic_enable();
    }
    if (vd->intx) {
        if (intx_setup(vd) != 0) {
            kprintf("virtio: no usable INTx, polling\n");
            vd->irqs = vd->intx = 0;
        }
    } else if (vd->irqs) {
        irq_set_handler(VEC_CONFIG, on_config);
        for (u16 q = 0; q < nqueues; q++)
            irq_set_handler(VEC_QUEUE0 + q, on_queue);
        if (msix_setup(vd, nqueues) < 2) {
            kprintf("virtio: no usable MSI-X, polling\n");
            vd->irqs = 0;
        }
    }
    if (vd->irqs && !vd->intx) {
        c_w16(vd, COMMON_MSIX, 0);
        if (c_r16(vd, COMMON_MSIX) == VIRTIO_NO_VECTOR)
            kprintf("virtio: config vector not accepted\n");
    }
    if (!virtio_quiet)
        kprintf("virtio-irq: %s\n", vd->intx ? "intx" : vd->irqs ? "msix" : "poll");
    u16 max = (u16)cmdline_u64("queue_size", VIRTQ_MAX_SIZE);
    if (max == 0 || max > VIRTQ_MAX_SIZE)
        max = VIRTQ_MAX_SIZE;
    for (u16 q = 0; q < nqueues; q++) {
        if (setup_queue(vd, q, max) != 0) {
            kprintf("virtio: queue %u unavailable\n", q);
            status_or(vd, VIRTIO_STATUS_FAILED);
            return -1;
        }
        if (vd->irqs && !vd->intx && vd->vq[q].msix_vector == VIRTIO_NO_VECTOR) {
            kprintf("virtio: queue %u vector not accepted\n", q);
            status_or(vd, VIRTIO_STATUS_FAILED);
            return -1;
        }
    }
    if (vd->irqs)
        watchdog_start();
    status_or(vd, VIRTIO_STATUS_DRIVER_OK);
    u8 st = c_r8(vd, COMMON_STATUS);
    if (st & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED)) {
        kprintf("virtio: device status 0x%x after DRIVER_OK\n", st);
        return -1;
    }
    return 0;
}

/* ---- device configuration (4.1.4.6) with the generation check of 2.5.1 ---- */
u8 virtio_cfg_read8(struct virtio_dev *vd, u32 off)
{
    return off < vd->device_cfg_len ? mmio_read8(vd->device_cfg + off) : 0xff;
}

u32 virtio_cfg_read32(struct virtio_dev *vd, u32 off)
{
    if (off + 4 > vd->device_cfg_len)
        return 0xffffffff;
    return mmio_read32(vd->device_cfg + off);
}

u64 virtio_cfg_read64(struct virtio_dev *vd, u32 off)
{
    if (off + 8 > vd->device_cfg_len)
        return ~0ull;
    u64 v = 0;
    for (int tries = 0; tries < 16; tries++) {
        u8 g = c_r8(vd, COMMON_CFGGEN);
        v = mmio_read32(vd->device_cfg + off) | (u64)mmio_read32(vd->device_cfg + off + 4) << 32;
        if (c_r8(vd, COMMON_CFGGEN) == g)
            break;
    }
    return v;
}

/* ---- raw queue access ---- */
void virtq_desc_set(struct virtq *q, u16 i, u64 addr, u32 len, u16 flags, u16 next)
{
    volatile struct virtq_desc *d = &q->desc[i % q->size];
    d->addr = addr;
    d->len = len;
    d->flags = flags;
    d->next = next;
}

void virtq_avail_put(struct virtq *q, u16 slot, u16 head)
{
    q->avail->ring[slot & (q->size - 1)] = head;
}

void virtq_avail_publish(struct virtq *q, u16 new_idx)
{
    barrier(); /* x86 keeps stores in order: descriptors and ring entry before the index */
    q->avail->idx = new_idx;
    q->avail_idx = new_idx;
}

void virtq_want_interrupt(struct virtq *q)
{
    /* 2.7.10: used_event (the u16 after the avail ring): interrupt once the device has
     * written used entry `last_used`. Written before the avail index is published, so the
     * device sees it when it completes the chain. */
    if (virtio_has(q->vdev, VIRTIO_F_EVENT_IDX))
        *(volatile u16 *)&q->avail->ring[q->size] = q->last_used;
}

void virtq_notify(struct virtq *q)
{
    /* 4.1.4.4 / 4.1.5.2: without VIRTIO_F_NOTIFICATION_DATA the 16-bit queue index. */
    mmio_write16(q->notify_addr, q->index);
}

void virtq_kick(struct virtq *q, u16 old_idx)
{
    mb(); /* the index store must be visible before the device's suppression state is read */
    int need;
    if (virtio_has(q->vdev, VIRTIO_F_EVENT_IDX)) {
        /* 2.7.10: avail_event is the u16 after the used ring; vring_need_event(). */
        u16 event = *(volatile u16 *)((volatile u8 *)q->used + 4 + 8u * q->size);
        need = (u16)(q->avail_idx - event - 1) < (u16)(q->avail_idx - old_idx);
    } else {
        need = !(q->used->flags & VIRTQ_USED_F_NO_NOTIFY);
    }
    if (need)
        virtq_notify(q);
}

int virtq_submit(struct virtq *q, const struct virtq_buf *bufs, u16 n)
{
    if (n == 0 || n > q->size) {
        kprintf("virtio: chain of %u descriptors does not fit queue %u of size %u\n", n,
                q->index, q->size);
        return -1;
    }
    u16 head = q->next_desc;
    for (u16 i = 0; i < n; i++) {
        u16 cur = (u16)((head + i) & (q->size - 1));
        u16 nxt = (u16)((cur + 1) & (q->size - 1));
        u16 flags = (u16)((bufs[i].device_writes ? VIRTQ_DESC_F_WRITE : 0) |
                          (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
        virtq_desc_set(q, cur, (u64)bufs[i].addr, bufs[i].len, flags, i + 1 < n ? nxt : 0);
    }
    q->next_desc = (u16)((head + n) & (q->size - 1));
    u16 old = q->avail_idx;
    virtq_avail_put(q, old, head);
    if (q->vdev->irqs)
        virtq_want_interrupt(q);
    virtq_avail_publish(q, (u16)(old + 1));
    virtq_kick(q, old);
    return head;
}

static u32 irq_missing;

int virtq_wait(struct virtq *q, u32 *id, u32 *len)
{
    struct virtio_dev *vd = q->vdev;
    int done = 0;
    if (vd->irqs) {
        u32 irqs = q->interrupts;
        u32 start = watchdog_ticks, seen_at = 0;
        for (;;) {
            irq_disable();
            done = q->used->idx != q->last_used;
            if (done && q->interrupts != irqs)
                break;
            if (done && !seen_at)
                seen_at = watchdog_ticks;
            /* Completion without its interrupt: give it two watchdog ticks, then count it. */
            if (done && watchdog_ticks - seen_at >= 2) {
                irq_missing++;
                break;
            }
            if (watchdog_ticks - start >= timeout_s)
                break;
            __asm__ volatile("sti; hlt" ::: "memory"); /* sti's shadow covers the hlt */
        }
        irq_disable();
    } else {
        u8 sec = cmos_read(0);
        u32 elapsed = 0;
        for (u32 spin = 0;; spin++) {
            done = q->used->idx != q->last_used;
            if (done)
                break;
            cpu_relax();
            if ((spin & 0xfff) == 0) { /* an RTC read is a VM exit: not on every spin */
                u8 s = cmos_read(0);
                if (s != sec) {
                    sec = s;
                    if (++elapsed >= timeout_s)
                        break;
                }
            }
        }
        if (done && vd->isr)
            (void)mmio_read8(vd->isr); /* 4.1.4.5: reading clears it and deasserts INTx */
    }
    if (!done) {
        if (!virtio_quiet)
            kprintf("virtio: queue %u timed out after %u s (used idx %u, expected > %u)\n", q->index,
                timeout_s, q->used->idx, q->last_used);
        return -1;
    }
    barrier(); /* x86 loads are ordered: the element is read after the index */
    volatile struct virtq_used_elem *e = &q->used->ring[q->last_used & (q->size - 1)];
    *id = e->id;
    *len = e->len;
    q->last_used++;
    return 0;
}

i64 virtq_transfer(struct virtq *q, const struct virtq_buf *bufs, u16 n)
{
    int head = virtq_submit(q, bufs, n);
    if (head < 0)
        return -1;
    u32 id, len;
    if (virtq_wait(q, &id, &len) != 0)
        return -1;
    if (id != (u32)head)
        kprintf("virtio: used id %u, expected head %d\n", id, head);
    return len;
}

void virtio_report_irqs(struct virtio_dev *vd)
{
    if (!vd->irqs)
        return;
    u32 n = vd->config_interrupts;
    for (u16 q = 0; q < vd->nqueues; q++)
        n += vd->vq[q].interrupts;
    kprintf("virtio-interrupts: %u\n", n);
    if (vd->intx)
        kprintf("virtio-intx-empty-isr: %u\n", intx_empty);
    if (irq_missing)
        kprintf("virtio-irq-missing: %u\n", irq_missing);
}

/* ---- helpers for guests with several queues and chains in flight (vnet, vsock, balloon) ---- */
void virtio_set_timeout(u32 seconds) { timeout_s = seconds ? seconds : 1; }

int virtq_poll_used(struct virtq *q, u32 *id, u32 *len)
{
    if (q->used->idx == q->last_used)
        return 0;
    barrier(); /* x86 loads are ordered: the element is read after the index */
    volatile struct virtq_used_elem *e = &q->used->ring[q->last_used & (q->size - 1)];
    *id = e->id;
    *len = e->len;
    q->last_used++;
    return 1;
}

void virtio_wait_event(struct virtio_dev *vd)
{
    if (vd->irqs) {
        /* Any interrupt ends the hlt: a queue or config vector, or the ~1 s watchdog tick. */
        __asm__ volatile("sti; hlt; cli" ::: "memory");
    } else {
        for (int i = 0; i < 64; i++)
            cpu_relax();
    }
}

u8 virtio_status(struct virtio_dev *vd) { return c_r8(vd, COMMON_STATUS); }

void virtio_cfg_write32(struct virtio_dev *vd, u32 off, u32 v)
{
    if (off + 4 <= vd->device_cfg_len)
        mmio_write32(vd->device_cfg + off, v);
}

/* Counts changes of the RTC seconds register (MC146818 register 0): a wall-clock second
 * counter good to +-1 s that costs two port exits per call. */
static u8 clock_last = 0xff;
static u32 clock_secs;
u32 rtc_seconds_elapsed(void)
{
    u8 s = cmos_read(0);
    if (clock_last == 0xff)
        clock_last = s;
    else if (s != clock_last) {
        clock_last = s;
        clock_secs++;
    }
    return clock_secs;
}
