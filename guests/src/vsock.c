/* vsock: a minimal virtio-vsock stream endpoint (virtio 1.2 section 5.10) over the modern PCI
 * transport. Queues (5.10.2): rx 0, tx 1, event 2. Guest CID in the device configuration
 * (u64 at offset 0, 5.10.4). Every packet starts with the 44-byte struct virtio_vsock_hdr
 * (5.10.6), type VIRTIO_VSOCK_TYPE_STREAM; connection set-up OP_REQUEST -> OP_RESPONSE (or
 * OP_RST), data OP_RW, close OP_SHUTDOWN / OP_RST, and credit (5.10.6.3): each side advertises
 * buf_alloc and fwd_cnt (bytes it has consumed); a sender keeps
 * tx_cnt - peer_fwd_cnt <= peer_buf_alloc, and OP_CREDIT_UPDATE / OP_CREDIT_REQUEST carry them.
 *
 * Receive buffers: two descriptors each, the header (44 bytes) and 4096 bytes of data; transmit:
 * header, then the data when there is any (both layouts are what 5.10.6 allows).
 *
 * Command line: vsock_listen=PORT (accept one connection from the host, echo every byte back:
 * our buf_alloc is the echo buffer and fwd_cnt counts bytes echoed, so the peer can never
 * overrun it), vsock_connect=PORT (connect to the host, CID 2, send "hello from guest\n", print
 * what comes back), exit_after_s=N (default 60), virtio options.
 */
#include "virtio.h"

#define HOST_CID 2
#define TYPE_STREAM 1
#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define RXN 64
#define RXDATA 4096
#define ECHO_BUF 65536
#define LOCAL_PORT 49152

struct __attribute__((packed)) vhdr {
    u64 src_cid, dst_cid;
    u32 src_port, dst_port;
    u32 len;
    u16 type, op;
    u32 flags, buf_alloc, fwd_cnt;
};

static struct virtio_dev vd;
static struct vhdr rxhdr[RXN] __attribute__((aligned(64)));
static u8 rxdata[RXN][RXDATA] __attribute__((aligned(4096)));
static struct vhdr txhdr[VIRTQ_MAX_SIZE / 2] __attribute__((aligned(64)));
static u8 txdata[VIRTQ_MAX_SIZE / 2][RXDATA] __attribute__((aligned(4096)));
static u8 echo[ECHO_BUF]; /* ring of received, not yet echoed bytes */
static u32 echo_head, echo_len;
static u64 my_cid;
static u32 my_port, peer_port, connected, closed;
static u32 fwd_cnt, tx_cnt, peer_buf_alloc, peer_fwd_cnt;
static u64 echoed;
static u16 tx_head, tx_done;
static u32 evbuf[8][2];
static int listen_mode;

static inline void mb(void) { __asm__ volatile("lock addl $0, (%%rsp)" ::: "memory", "cc"); }

static void rx_post(u16 i)
{
    struct virtq *q = &vd.vq[0];
    virtq_desc_set(q, 2 * i, (u64)&rxhdr[i], sizeof(struct vhdr), VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
                   (u16)(2 * i + 1));
    virtq_desc_set(q, (u16)(2 * i + 1), (u64)rxdata[i], RXDATA, VIRTQ_DESC_F_WRITE, 0);
    virtq_avail_put(q, q->avail_idx, (u16)(2 * i));
    q->avail_idx++;
}

static void tx_reap(void)
{
    u32 id, len;
    while (virtq_poll_used(&vd.vq[1], &id, &len))
        tx_done++;
}

/* Sends one packet (header + optional data); slots of two descriptors, waits for a free one. */
static void send_pkt(u16 op, const void *data, u32 len)
{
    struct virtq *q = &vd.vq[1];
    u16 slots = q->size / 2;
    tx_reap();
    while ((u16)(tx_head - tx_done) >= slots) {
        virtq_want_interrupt(q);
        mb();
        tx_reap();
        if ((u16)(tx_head - tx_done) < slots)
            break;
        virtio_wait_event(&vd);
    }
    u16 s = tx_head % slots;
    struct vhdr *h = &txhdr[s];
    h->src_cid = my_cid;
    h->dst_cid = HOST_CID;
    h->src_port = my_port;
    h->dst_port = peer_port;
    h->len = len;
    h->type = TYPE_STREAM;
    h->op = op;
    h->flags = op == OP_SHUTDOWN ? 3 : 0; /* VIRTIO_VSOCK_SHUTDOWN_RCV | _SEND */
    h->buf_alloc = ECHO_BUF;
    h->fwd_cnt = fwd_cnt;
    if (len)
        memcpy(txdata[s], data, len);
    virtq_desc_set(q, 2 * s, (u64)h, sizeof(*h), len ? VIRTQ_DESC_F_NEXT : 0, (u16)(2 * s + 1));
    virtq_desc_set(q, (u16)(2 * s + 1), (u64)txdata[s], len, 0, 0);
    u16 old = q->avail_idx;
    virtq_avail_put(q, old, (u16)(2 * s));
    virtq_avail_publish(q, (u16)(old + 1));
    virtq_kick(q, old);
    tx_head++;
    if (op == OP_RW)
        tx_cnt += len;
}

/* Echo as much of the pending bytes as the peer's credit allows. */
static void echo_flush(void)
{
    while (echo_len && connected && !closed) {
        u32 credit = peer_buf_alloc - (tx_cnt - peer_fwd_cnt);
        if (credit == 0 || credit > 0x80000000u) {
            send_pkt(OP_CREDIT_REQUEST, NULL, 0);
            return;
        }
        u32 n = echo_len;
        if (n > credit)
            n = credit;
        if (n > RXDATA)
            n = RXDATA;
        if (n > ECHO_BUF - echo_head)
            n = ECHO_BUF - echo_head;
        send_pkt(OP_RW, echo + echo_head, n);
        echo_head = (echo_head + n) % ECHO_BUF;
        echo_len -= n;
        echoed += n;
        fwd_cnt += n; /* consumed: that much of our buffer is free again */
    }
}

static void print_data(const u8 *d, u32 len)
{
    char line[128];
    u32 n = 0;
    for (u32 i = 0; i < len; i++) {
        char c = (char)d[i];
        if (c == '\n' || n == sizeof(line) - 1) {
            line[n] = 0;
            kprintf("vsock-received: %s\n", line);
            n = 0;
            if (c == '\n')
                continue;
        }
        line[n++] = (c >= 32 && c < 127) ? c : '.';
    }
    if (n) {
        line[n] = 0;
        kprintf("vsock-received: %s\n", line);
    }
}

static void on_packet(const struct vhdr *h, const u8 *d, u32 dlen)
{
    if (h->type != TYPE_STREAM || h->dst_port != my_port) {
        return;
    }
    if (connected && h->src_port == peer_port) {
        peer_buf_alloc = h->buf_alloc;
        peer_fwd_cnt = h->fwd_cnt;
    }
    switch (h->op) {
    case OP_REQUEST:
        if (!listen_mode || connected) {
            u32 save = peer_port;
            peer_port = h->src_port;
            send_pkt(OP_RST, NULL, 0);
            peer_port = save;
            return;
        }
        peer_port = h->src_port;
        peer_buf_alloc = h->buf_alloc;
        peer_fwd_cnt = h->fwd_cnt;
        connected = 1;
        send_pkt(OP_RESPONSE, NULL, 0);
        kprintf("vsock-accepted: cid %lu port %u\n", h->src_cid, h->src_port);
        return;
    case OP_RESPONSE:
        if (!listen_mode && !connected && h->src_port == peer_port) {
            connected = 1;
            kprintf("vsock-connected: port %u\n", peer_port);
            static const char hello[] = "hello from guest\n";
            send_pkt(OP_RW, hello, sizeof(hello) - 1);
        }
        return;
    case OP_RW:
        if (!connected || h->src_port != peer_port)
            return;
        if (dlen > h->len)
            dlen = h->len;
        if (listen_mode) {
            if (dlen > ECHO_BUF - echo_len) /* the peer broke our credit: drop the excess */
                dlen = ECHO_BUF - echo_len;
            for (u32 i = 0; i < dlen;) {
                u32 at = (echo_head + echo_len) % ECHO_BUF;
                u32 n = dlen - i < ECHO_BUF - at ? dlen - i : ECHO_BUF - at;
                memcpy(echo + at, d + i, n);
                echo_len += n;
                i += n;
            }
        } else {
            print_data(d, dlen);
            fwd_cnt += dlen;
            send_pkt(OP_CREDIT_UPDATE, NULL, 0);
        }
        return;
    case OP_CREDIT_REQUEST:
        if (connected)
            send_pkt(OP_CREDIT_UPDATE, NULL, 0);
        return;
    case OP_CREDIT_UPDATE:
        return;
    case OP_SHUTDOWN:
    case OP_RST:
        if (connected && h->src_port == peer_port) {
            echo_flush();
            if (h->op == OP_SHUTDOWN)
                send_pkt(OP_RST, NULL, 0);
            closed = 1;
            kprintf("vsock-closed: by peer (%s)\n", h->op == OP_RST ? "rst" : "shutdown");
        } else if (!connected && !listen_mode && h->op == OP_RST) {
            kprintf("vsock-refused: port %u\n", peer_port);
            closed = 1;
        }
        return;
    }
}

void kmain(const struct bootinfo *bi)
{
    (void)bi;
    kit_start("vsock");
    u32 lport = (u32)cmdline_u64("vsock_listen", 0), cport = (u32)cmdline_u64("vsock_connect", 0);
    u32 exit_after = (u32)cmdline_u64("exit_after_s", 60);
    if (!lport == !cport)
        guest_panic("give one of vsock_listen=PORT or vsock_connect=PORT");
    listen_mode = lport != 0;
    pci_init();
    pci_scan();
    if (virtio_probe(&vd, VIRTIO_ID_VSOCK, 0) != 0 || virtio_init(&vd, 0, 3) != 0 || vd.nqueues < 3)
        guest_panic("virtio-vsock setup failed");
    my_cid = virtio_cfg_read64(&vd, 0);
    kprintf("vsock-cid: %lu\n", my_cid);
    struct virtq *rq = &vd.vq[0], *eq = &vd.vq[2];
    u16 nrx = rq->size / 2 < RXN ? rq->size / 2 : RXN;
    for (u16 i = 0; i < nrx; i++)
        rx_post(i);
    if (vd.irqs)
        virtq_want_interrupt(rq);
    virtq_avail_publish(rq, rq->avail_idx);
    virtq_kick(rq, 0);
    /* Event queue (5.10.6.5): device-writable struct virtio_vsock_event {le32 id}. */
    u16 nev = eq->size < 8 ? eq->size : 8;
    for (u16 i = 0; i < nev; i++) {
        virtq_desc_set(eq, i, (u64)evbuf[i], 8, VIRTQ_DESC_F_WRITE, 0);
        virtq_avail_put(eq, i, i);
    }
    virtq_avail_publish(eq, nev);
    virtq_kick(eq, 0);
    rtc_seconds_elapsed();
    if (listen_mode) {
        my_port = lport;
        kprintf("vsock-listening: %u\n", lport);
    } else {
        my_port = LOCAL_PORT;
        peer_port = cport;
        send_pkt(OP_REQUEST, NULL, 0);
    }
    const char *why = "timeout";
    for (;;) {
        u32 id, len, work = 0;
        u16 old = rq->avail_idx;
        while (virtq_poll_used(rq, &id, &len)) {
            u16 i = (u16)(id / 2);
            work++;
            if (id % 2 || i >= nrx)
                continue;
            if (len >= sizeof(struct vhdr))
                on_packet(&rxhdr[i], rxdata[i], len - (u32)sizeof(struct vhdr));
            rx_post(i);
        }
        if (rq->avail_idx != old) {
            virtq_avail_publish(rq, rq->avail_idx);
            virtq_kick(rq, old);
        }
        u16 eold = eq->avail_idx;
        while (virtq_poll_used(eq, &id, &len)) {
            kprintf("vsock-event: %u\n", evbuf[id % nev][0]); /* 0 = TRANSPORT_RESET */
            virtq_avail_put(eq, eq->avail_idx, (u16)(id % nev));
            eq->avail_idx++;
        }
        if (eq->avail_idx != eold) {
            virtq_avail_publish(eq, eq->avail_idx);
            virtq_kick(eq, eold);
        }
        echo_flush();
        tx_reap();
        if (closed) {
            why = "closed";
            break;
        }
        if (work)
            continue;
        if (exit_after && rtc_seconds_elapsed() >= exit_after)
            break;
        if (vd.irqs) {
            virtq_want_interrupt(rq);
            virtq_want_interrupt(eq);
            mb();
            if (rq->used->idx != rq->last_used)
                continue;
        }
        virtio_wait_event(&vd);
    }
    if (listen_mode)
        kprintf("vsock-echoed: %lu\n", echoed);
    kprintf("vsock-exit: %s\n", why);
    virtio_report_irqs(&vd);
    virtio_reset(&vd);
    kit_done("vsock");
}
