/* vrng: reads entropy from a virtio-rng device over the modern virtio PCI transport (virtio 1.2
 * section 5.4: one queue, requestq; each buffer is device-writable and comes back with up to
 * its length of random bytes).
 *
 * Command line: irq=msix (default) or irq=poll, event_idx=off, queue_size=N, pci=cf8,
 * pci_ecam=0xADDR, pci_mmio=0xADDR, virtio_timeout=S (see guests/README.md). */
#include "virtio.h"

#define CHUNKS 4
#define CHUNK 64

static u8 buf[CHUNKS * CHUNK] __attribute__((aligned(64)));

void kmain(const struct bootinfo *bi)
{
    (void)bi;
    kit_start("vrng");
    pci_init();
    pci_scan();
    static struct virtio_dev vd;
    if (virtio_probe(&vd, VIRTIO_ID_RNG, 0x1005) != 0 || virtio_init(&vd, 0, 1) != 0)
        guest_panic("virtio-rng setup failed");
    struct virtq *q = &vd.vq[0];
    u32 total = 0;
    for (u32 c = 0; c < CHUNKS; c++) {
        /* The device may return fewer bytes than asked for: ask again for the rest (bounded). */
        u32 got = 0;
        for (u32 tries = 0; got < CHUNK && tries < 16; tries++) {
            struct virtq_buf b = {buf + c * CHUNK + got, CHUNK - got, 1};
            i64 n = virtq_transfer(q, &b, 1);
            if (n < 0)
                guest_panic("virtio-rng request failed");
            if ((u64)n > CHUNK - got) {
                kprintf("rng: device reported %ld bytes for a %u-byte buffer\n", n, CHUNK - got);
                n = CHUNK - got;
            }
            got += (u32)n;
        }
        total += got;
    }
    u8 seen[256];
    memset(seen, 0, sizeof(seen));
    u32 distinct = 0;
    for (u32 i = 0; i < total; i++)
        if (!seen[buf[i]]++)
            distinct++;
    kprintf("rng-bytes: %u\n", total);
    kprintf("rng-distinct: %u\n", distinct);
    char hex[33];
    for (u32 i = 0; i < 16; i++) {
        hex[2 * i] = "0123456789abcdef"[buf[i] >> 4];
        hex[2 * i + 1] = "0123456789abcdef"[buf[i] & 15];
    }
    hex[32] = 0;
    kprintf("rng-sample: %s\n", hex);
    virtio_report_irqs(&vd);
    virtio_reset(&vd);
    kit_done("vrng");
}
