/* balloon: a virtio-balloon driver (virtio 1.2 section 5.5) over the modern PCI transport.
 *
 * Queues: inflateq 0, deflateq 1 (5.5.2; no statistics queue: VIRTIO_BALLOON_F_STATS_VQ is not
 * negotiated, nor any other feature). Configuration (5.5.4): num_pages (u32, offset 0, what the
 * device wants in the balloon) and actual (u32, offset 4, written by the driver). A buffer on
 * either queue is an array of u32 page frame numbers of 4 KiB pages (5.5.6); here up to 256 per
 * chain. Pages come from the top of the largest RAM region of the memory map, downwards, never
 * below the kit's image; deflating gives back the most recently inflated (lowest) pages first.
 * The driver tells the device before reusing a page whether or not VIRTIO_BALLOON_F_MUST_TELL_HOST
 * is offered (5.5.6.1), and never touches inflated pages.
 *
 * num_pages is re-read on the configuration-change interrupt (MSI-X table entry 0, 4.1.5.1.2)
 * and at least every second (RTC), so irq=poll works too.
 * Command line: balloon_touch_mib=N (write to N MiB of the pages first, so the host's RSS rises
 * and then visibly falls when they are inflated), exit_after_s=N (default 60), virtio options.
 */
#include "virtio.h"

#define PAGE 4096ull
#define PFNS_PER_CHAIN 256
#define CFG_NUM_PAGES 0
#define CFG_ACTUAL 4

extern char _image_end[];
static struct virtio_dev vd;
static u32 pfns[PFNS_PER_CHAIN] __attribute__((aligned(64)));
static u64 top, pool_pages; /* pages top - (i + 1) * PAGE for i < pool_pages */
static u32 inflated;

static int send_pfns(u16 queue, u32 first, u32 n)
{
    for (u32 i = 0; i < n; i++)
        pfns[i] = (u32)((top - (u64)(first + i + 1) * PAGE) / PAGE);
    struct virtq_buf b = {pfns, n * 4, 0};
    return virtq_transfer(&vd.vq[queue], &b, 1) < 0 ? -1 : 0;
}

static void adjust(u32 target)
{
    if (target > pool_pages) {
        kprintf("balloon-limited: %u of %u pages\n", (u32)pool_pages, target);
        target = (u32)pool_pages;
    }
    if (target == inflated)
        return;
    if (target > inflated) {
        while (inflated < target) {
            u32 n = target - inflated < PFNS_PER_CHAIN ? target - inflated : PFNS_PER_CHAIN;
            if (send_pfns(0, inflated, n) != 0)
                guest_panic("balloon inflate request failed");
            inflated += n;
        }
        virtio_cfg_write32(&vd, CFG_ACTUAL, inflated);
        kprintf("balloon-inflated: %u\n", inflated);
    } else {
        u32 d = inflated - target;
        while (inflated > target) {
            u32 n = inflated - target < PFNS_PER_CHAIN ? inflated - target : PFNS_PER_CHAIN;
            if (send_pfns(1, inflated - n, n) != 0)
                guest_panic("balloon deflate request failed");
            inflated -= n;
        }
        virtio_cfg_write32(&vd, CFG_ACTUAL, inflated);
        kprintf("balloon-deflated: %u\n", d);
        kprintf("balloon-inflated: %u\n", inflated);
    }
}

void kmain(const struct bootinfo *bi)
{
    kit_start("balloon");
    /* The pool: the largest type-1 region, above the image. */
    u64 best_start = 0, best_end = 0;
    for (u32 i = 0; i < bi->memmap_entries; i++) {
        const struct memmap_entry *e = &bi->memmap[i];
        if (e->type == 1 && e->size > best_end - best_start) {
            best_start = e->start;
            best_end = e->start + e->size;
        }
    }
    u64 floor = ((u64)_image_end + PAGE - 1) & ~(PAGE - 1);
    if (best_start > floor)
        floor = best_start;
    top = best_end & ~(PAGE - 1);
    pool_pages = top > floor ? (top - floor) / PAGE : 0;
    kprintf("balloon-pool: 0x%lx-0x%lx pages %lu\n", floor, top, pool_pages);

    u64 touch = cmdline_u64("balloon_touch_mib", 0);
    if (touch) {
        u64 pages = touch << 8 < pool_pages ? touch << 8 : pool_pages;
        /* One qword per page is enough for the host to back the page with memory. */
        for (u64 i = 0; i < pages; i++)
            *(volatile u64 *)(top - (i + 1) * PAGE) = 0x1badc0de00000000ull | i;
        kprintf("balloon-touched: %lu\n", pages >> 8);
    }

    pci_init();
    pci_scan();
    if (virtio_probe(&vd, VIRTIO_ID_BALLOON, 0x1002) != 0 || virtio_init(&vd, 0, 2) != 0 ||
        vd.nqueues < 2)
        guest_panic("virtio-balloon setup failed");
    u32 exit_after = (u32)cmdline_u64("exit_after_s", 60);
    u32 last_cfg = vd.config_interrupts, last_sec = rtc_seconds_elapsed();
    adjust(virtio_cfg_read32(&vd, CFG_NUM_PAGES));
    kprintf("balloon-ready\n");
    for (;;) {
        u32 now = rtc_seconds_elapsed();
        if (exit_after && now >= exit_after)
            break;
        if (vd.config_interrupts != last_cfg || now != last_sec) {
            last_cfg = vd.config_interrupts;
            last_sec = now;
            adjust(virtio_cfg_read32(&vd, CFG_NUM_PAGES));
        }
        virtio_wait_event(&vd);
    }
    kprintf("balloon-config-interrupts: %u\n", vd.config_interrupts);
    virtio_report_irqs(&vd);
    virtio_reset(&vd);
    kit_done("balloon");
}
