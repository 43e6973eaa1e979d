/* ironvirt guest test kit: a small virtio 1.x modern PCI driver core (rt/virtio.c).
 *
 * References (Virtual I/O Device (VIRTIO) Version 1.2, OASIS, 2022): device status 2.1, feature
 * bits 2.2 and 6, config generation 2.5.1, split virtqueues 2.7 (descriptor table 2.7.5, avail
 * ring 2.7.6, used ring 2.7.8, event suppression 2.7.7/2.7.10), initialization 3.1, the PCI
 * transport 4.1 (capabilities 4.1.4, common configuration 4.1.4.3, notifications 4.1.4.4, ISR
 * 4.1.4.5, device configuration 4.1.4.6, MSI-X vectors 4.1.5.1.2, queue setup 4.1.5.1.3).
 *
 * The queue is exposed raw on purpose: a test may write any descriptor (addresses, lengths,
 * flags, next links: loops included) with virtq_desc_set() and publish any head and any avail
 * index with virtq_avail_put()/virtq_avail_publish(). virtq_submit() is the well-behaved path.
 * Requests are synchronous: one chain in flight, descriptors taken round-robin.
 */
#ifndef IRONVIRT_KIT_VIRTIO_H
#define IRONVIRT_KIT_VIRTIO_H

#include "pci.h"

#define VIRTIO_VENDOR 0x1af4
/* PCI device ids (4.1.2): modern 0x1040 + device id; transitional ids 0x1000..0x103f. */
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_NET 1
#define VIRTIO_ID_RNG 4
#define VIRTIO_ID_BALLOON 5
#define VIRTIO_ID_VSOCK 19

/* Device status (2.1). */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80

/* Reserved feature bits (6). */
#define VIRTIO_F_INDIRECT_DESC 28
#define VIRTIO_F_EVENT_IDX 29
#define VIRTIO_F_VERSION_1 32
#define VIRTIO_F_ACCESS_PLATFORM 33
#define VIRTIO_F_RING_PACKED 34

/* Split virtqueue layout (2.7.5, 2.7.6, 2.7.8). */
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_DESC_F_INDIRECT 4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY 1

struct virtq_desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};
struct virtq_avail {
    u16 flags;
    u16 idx;
    u16 ring[]; /* [size], then u16 used_event (with VIRTIO_F_EVENT_IDX) */
};
struct virtq_used_elem {
    u32 id;
    u32 len;
};
struct virtq_used {
    u16 flags;
    u16 idx;
    struct virtq_used_elem ring[]; /* [size], then u16 avail_event */
};

#define VIRTQ_MAX_SIZE 256 /* the kit's per-queue memory is sized for this */
#define VIRTIO_MAX_QUEUES 4
#define VIRTIO_NO_VECTOR 0xffff /* 4.1.4.3 */

struct virtio_dev;

struct virtq {
    struct virtio_dev *vdev;
    u16 index;
    u16 size;                /* what the driver set (power of two) */
    volatile struct virtq_desc *desc;
    volatile struct virtq_avail *avail;
    volatile struct virtq_used *used;
    u16 avail_idx;           /* driver's shadow of avail->idx */
    u16 last_used;           /* next used->idx position the driver has not consumed */
    u16 next_desc;           /* round-robin descriptor allocation of virtq_submit */
    u16 msix_vector;         /* MSI-X table entry, or VIRTIO_NO_VECTOR */
    u64 notify_addr;
    volatile u32 interrupts; /* interrupts taken for this queue (INTx: every queue-bit ISR) */
};

struct virtio_dev {
    struct pci_dev *pci;
    u64 common, notify, isr, device_cfg; /* MMIO addresses of the capability windows */
    u32 notify_mult, device_cfg_len;
    u64 features;      /* negotiated */
    u64 device_features;
    int irqs;          /* 1 when interrupt-driven (irq=msix or irq=intx) */
    int intx;          /* 1 when INTx is in use (irq=intx) rather than MSI-X */
    u8 msix_cap;
    u64 msix_table;
    u16 msix_entries;
    volatile u32 config_interrupts;
    u16 nqueues;
    struct virtq vq[VIRTIO_MAX_QUEUES];
};

/* Finds the first function with vendor 0x1af4 and the modern (0x1040 + id) or transitional
 * device id `transitional` (0 if none), enables it (pci_enable) and fills the capability windows.
 * Prints `virtio: bb:dd.f vvvv:dddd`, then the capabilities as `virtio-cap: TYPE bar B off 0x..
 * len 0x..`. Returns 0 on success. */
int virtio_probe(struct virtio_dev *vd, u16 device_id, u16 transitional);
/* Reset, ACKNOWLEDGE, DRIVER, features (VERSION_1 | `wanted` & offered, EVENT_IDX when offered
 * unless event_idx=off), FEATURES_OK, then `nqueues` queues (up to VIRTQ_MAX_SIZE entries or
 * queue_size=N), MSI-X when irq=msix (the default; irq=poll polls the used ring), DRIVER_OK.
 * Prints `virtio-features:`, `virtio-irq:`, one `virtio-queue:` per queue. 0 on success. */
int virtio_init(struct virtio_dev *vd, u64 wanted, u16 nqueues);
void virtio_reset(struct virtio_dev *vd);
static inline int virtio_has(const struct virtio_dev *vd, u32 bit) { return (vd->features >> bit) & 1; }

/* Device configuration space (4.1.4.6), re-read until config_generation is stable (2.5.1). */
u8 virtio_cfg_read8(struct virtio_dev *vd, u32 off);
u32 virtio_cfg_read32(struct virtio_dev *vd, u32 off);
u64 virtio_cfg_read64(struct virtio_dev *vd, u32 off);

/* Raw queue access. */
void virtq_desc_set(struct virtq *q, u16 i, u64 addr, u32 len, u16 flags, u16 next);
void virtq_avail_put(struct virtq *q, u16 slot, u16 head); /* ring[slot % size] = head */
void virtq_avail_publish(struct virtq *q, u16 new_idx);    /* barrier, avail->idx = new_idx */
void virtq_notify(struct virtq *q);                         /* unconditional doorbell write */
/* With EVENT_IDX: used_event = last_used, so the next completion interrupts (virtq_submit does
 * this in MSI-X mode before publishing; raw users call it themselves before publishing). */
void virtq_want_interrupt(struct virtq *q);
void virtq_kick(struct virtq *q, u16 old_idx);              /* doorbell if the device wants it */

struct virtq_buf {
    void *addr;
    u32 len;
    int device_writes; /* VIRTQ_DESC_F_WRITE */
};
/* Builds a chain from `bufs`, puts its head in the avail ring, kicks. Returns the head or -1. */
int virtq_submit(struct virtq *q, const struct virtq_buf *bufs, u16 n);
/* Waits (used-ring polling or hlt until the queue's MSI-X interrupt, as negotiated) for the
 * next used element, bounded by virtio_timeout=S (default 10). 0 with *id and *len set, -1 on
 * timeout. */
int virtq_wait(struct virtq *q, u32 *id, u32 *len);
/* virtq_submit + virtq_wait; returns the used length or -1. */
i64 virtq_transfer(struct virtq *q, const struct virtq_buf *bufs, u16 n);
/* Prints `virtio-interrupts: N` (queue + config MSI-X interrupts taken) when irq=msix and
 * `virtio-irq-missing: N` for completions seen without their interrupt. */
void virtio_report_irqs(struct virtio_dev *vd);


/* ---- several queues, several chains in flight ---- */
extern int virtio_quiet;                 /* suppresses virtio_init's and virtq_wait's lines */
void virtio_set_timeout(u32 seconds);     /* overrides virtio_timeout= for later waits */
/* Takes the next used element if there is one (1, *id and *len set), else 0; never waits. */
int virtq_poll_used(struct virtq *q, u32 *id, u32 *len);
/* Waits a little for anything: `sti; hlt` until the next interrupt (irq=msix: a queue or
 * config vector or the ~1 s watchdog), or a short spin with irq=poll. */
void virtio_wait_event(struct virtio_dev *vd);
u8 virtio_status(struct virtio_dev *vd);  /* device_status (4.1.4.3) */
void virtio_cfg_write32(struct virtio_dev *vd, u32 off, u32 v);
/* Seconds since the first call, counted from RTC seconds-register changes (call at least
 * every half second for it to stay exact; each call is two port exits). */
u32 rtc_seconds_elapsed(void);

#endif
