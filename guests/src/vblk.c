/* vblk: writes, reads back and flushes sectors of a virtio-blk disk over the modern virtio PCI
 * transport (virtio 1.2 section 5.2: one request queue; a request is a 16-byte device-readable
 * header {type u32, reserved u32, sector u64}, the data, and a device-writable status byte;
 * capacity in 512-byte sectors at device configuration offset 0, 5.2.4).
 *
 * Sector N is written with a pattern the host can check: bytes 0..31 are the ASCII text
 * "IRONVIRT vblk sector NNNNNNNNNN\n" (N in decimal, 10 digits, zero-padded), byte i for
 * 32 <= i < 512 is (i + N) & 0xff.
 *
 * Command line: write_sector=N[,N...] (up to 8, default 1), irq=msix|poll, event_idx=off,
 * queue_size=N, pci=cf8, pci_ecam=0xADDR, pci_mmio=0xADDR, virtio_timeout=S.
 *
 * Benchmark mode (bench/blk): bench=seqread|seqwrite|randread runs instead of the checks above:
 * bench_mib=N MiB (default 64) in req_kib=K KiB requests (default 64, at most 128) from
 * sector 0, or bench_ops=N (default 2000) random 4 KiB reads, one request in flight. It prints
 * `bench-start: MODE` and `bench-end: MODE ops=N bytes=B errors=E`; the host times the two
 * lines (the guest has no calibrated clock of its own on every VMM). */
#include "virtio.h"

/* Request types and status values (5.2.6). */
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2
/* Feature bits (5.2.3). */
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_BLK_CFG_CAPACITY 0 /* u64, 5.2.4 */
#define SECTOR 512
#define MAX_SECTORS 8

struct blk_req_hdr {
    u32 type;
    u32 reserved;
    u64 sector;
};

static struct blk_req_hdr hdr __attribute__((aligned(16)));
static u8 data[SECTOR] __attribute__((aligned(512)));
static u8 expect[SECTOR];
static volatile u8 status;

static struct virtio_dev vd;
#define BENCH_MAX_REQ (128 * 1024)
static u8 bench_buf[BENCH_MAX_REQ] __attribute__((aligned(4096)));

/* One request: header, optional data (device-writable for reads), status. Returns the status
 * byte, or -1 when the device did not complete it. */
static int blk_request(u32 type, u64 sector, void *buf, u32 len, int device_writes)
{
    hdr.type = type;
    hdr.reserved = 0;
    hdr.sector = sector;
    status = 0xff;
    struct virtq_buf b[3];
    u16 n = 0;
    b[n++] = (struct virtq_buf){&hdr, sizeof(hdr), 0};
    if (len)
        b[n++] = (struct virtq_buf){buf, len, device_writes};
    b[n++] = (struct virtq_buf){(void *)&status, 1, 1};
    if (virtq_transfer(&vd.vq[0], b, n) < 0)
        return -1;
    return status;
}

static const char *status_name(int s)
{
    switch (s) {
    case VIRTIO_BLK_S_OK: return "ok";
    case VIRTIO_BLK_S_IOERR: return "ioerr";
    case VIRTIO_BLK_S_UNSUPP: return "unsupp";
    case -1: return "no-completion"; /* rejected by virtq_submit or timed out */
    default: return "bad-status";
    }
}

static void pattern(u64 sector, u8 *p)
{
    char head[40];
    ksnprintf(head, sizeof(head), "IRONVIRT vblk sector %010lu\n", sector);
    memcpy(p, head, 32);
    for (u32 i = 32; i < SECTOR; i++)
        p[i] = (u8)(i + sector);
}

/* write_sector=N[,N...]: decimal sector numbers. */
static u32 parse_sectors(u64 *out)
{
    size_t len;
    const char *v = cmdline_value("write_sector", &len);
    if (!v) {
        out[0] = 1;
        return 1;
    }
    u32 n = 0;
    size_t i = 0;
    while (i < len && n < MAX_SECTORS) {
        u64 s = 0;
        size_t start = i;
        while (i < len && v[i] >= '0' && v[i] <= '9')
            s = s * 10 + (u64)(v[i++] - '0');
        if (i > start)
            out[n++] = s;
        while (i < len && (v[i] < '0' || v[i] > '9'))
            i++;
    }
    return n;
}

static void bench(u64 capacity)
{
    int seq_read = cmdline_is("bench", "seqread"), seq_write = cmdline_is("bench", "seqwrite");
    int rand_read = cmdline_is("bench", "randread");
    const char *mode = seq_read ? "seqread" : seq_write ? "seqwrite" : "randread";
    if (!seq_read && !seq_write && !rand_read)
        guest_panic("bench= must be seqread, seqwrite or randread");
    u64 req = rand_read ? 4096 : cmdline_u64("req_kib", 64) * 1024;
    if (req == 0 || req > BENCH_MAX_REQ)
        req = BENCH_MAX_REQ;
    u64 ops = rand_read ? cmdline_u64("bench_ops", 2000) : (cmdline_u64("bench_mib", 64) << 20) / req;
    u64 span = capacity > req / SECTOR ? capacity - req / SECTOR : 0;
    for (u64 i = 0; i < req; i++)
        bench_buf[i] = (u8)i;
    u64 x = 0x2545f4914f6cdd1dull, errors = 0, bytes = 0, sector = 0;
    kprintf("bench-start: %s\n", mode);
    for (u64 i = 0; i < ops; i++) {
        if (rand_read) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            sector = span ? (x % span) & ~7ull : 0;
        } else if (sector + req / SECTOR > capacity) {
            sector = 0;
        }
        int s = blk_request(seq_write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, sector, bench_buf, (u32)req,
                            !seq_write);
        if (s != VIRTIO_BLK_S_OK)
            errors++;
        else
            bytes += req;
        if (!rand_read)
            sector += req / SECTOR;
    }
    kprintf("bench-end: %s ops=%lu bytes=%lu errors=%lu\n", mode, ops, bytes, errors);
}

void kmain(const struct bootinfo *bi)
{
    (void)bi;
    kit_start("vblk");
    pci_init();
    pci_scan();
    if (virtio_probe(&vd, VIRTIO_ID_BLOCK, 0x1001) != 0 ||
        virtio_init(&vd, 1ull << VIRTIO_BLK_F_FLUSH | 1ull << VIRTIO_BLK_F_RO, 1) != 0)
        guest_panic("virtio-blk setup failed");
    u64 capacity = virtio_cfg_read64(&vd, VIRTIO_BLK_CFG_CAPACITY);
    kprintf("blk-capacity: %lu\n", capacity);
    kprintf("blk-readonly: %u\n", virtio_has(&vd, VIRTIO_BLK_F_RO));
    if (cmdline_value("bench", NULL)) {
        bench(capacity);
        virtio_reset(&vd);
        kit_done("vblk");
    }

    /* GET_ID (5.2.6): up to 20 bytes of serial, NUL-terminated only when shorter. */
    char id[21];
    memset(id, 0, sizeof(id));
    int s = blk_request(VIRTIO_BLK_T_GET_ID, 0, id, 20, 1);
    if (s == VIRTIO_BLK_S_OK)
        kprintf("blk-serial: %s\n", id[0] ? id : "none");
    else
        kprintf("blk-serial: %s\n", status_name(s));

    u64 sectors[MAX_SECTORS];
    u32 ns = parse_sectors(sectors);
    int write_ok = 1;
    for (u32 i = 0; i < ns; i++) {
        pattern(sectors[i], data);
        s = blk_request(VIRTIO_BLK_T_OUT, sectors[i], data, SECTOR, 0);
        kprintf("blk-write-sector: %lu %s\n", sectors[i], status_name(s));
        if (s != VIRTIO_BLK_S_OK)
            write_ok = 0;
    }
    kprintf("blk-write: %s\n", write_ok ? "ok" : "failed");

    int read_ok = 1, mismatch = 0;
    for (u32 i = 0; i < ns; i++) {
        memset(data, 0, SECTOR);
        s = blk_request(VIRTIO_BLK_T_IN, sectors[i], data, SECTOR, 1);
        pattern(sectors[i], expect);
        if (s != VIRTIO_BLK_S_OK) {
            kprintf("blk-read-sector: %lu %s\n", sectors[i], status_name(s));
            read_ok = 0;
        } else if (memcmp(data, expect, SECTOR) != 0) {
            kprintf("blk-read-sector: %lu mismatch\n", sectors[i]);
            mismatch = 1;
        }
    }
    kprintf("blk-read: %s\n", !read_ok ? "failed" : mismatch ? "mismatch" : "ok");

    if (virtio_has(&vd, VIRTIO_BLK_F_FLUSH))
        kprintf("blk-flush: %s\n", status_name(blk_request(VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0)));
    else
        kprintf("blk-flush: not offered\n");
    virtio_report_irqs(&vd);
    virtio_reset(&vd);
    kit_done("vblk");
}
