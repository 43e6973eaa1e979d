/* vnet: a minimal IPv4 host on a virtio-net device over the modern virtio PCI transport.
 *
 * virtio 1.2 section 5.1: receiveq1 = queue 0, transmitq1 = queue 1 (5.1.2); the MAC in the
 * device configuration at offset 0 with VIRTIO_NET_F_MAC (5.1.4); every buffer starts with
 * struct virtio_net_hdr, 12 bytes with VIRTIO_F_VERSION_1 (5.1.6: num_buffers always present);
 * no offloads negotiated, so flags = 0 and gso_type = VIRTIO_NET_HDR_GSO_NONE on transmit
 * (5.1.6.2) and received frames come whole. Receive buffers are 2048 bytes, above the 1526 that
 * 5.1.6.3.1 requires without MRG_RXBUF and GUEST_TSO*; with VIRTIO_NET_F_MRG_RXBUF (taken when
 * offered) a frame still fits one buffer, and a frame with num_buffers > 1 is dropped whole.
 *
 * Protocols: Ethernet II, ARP (RFC 826), IPv4 (RFC 791; header checksum RFC 1071), ICMP echo
 * (RFC 792), UDP (RFC 768; checksum 0 = none on transmit, not checked on receive).
 *
 * Command line: ip=A.B.C.D (default 10.0.2.15), peer=A.B.C.D (default 10.0.2.2),
 * udp_sink=PORT, udp_blast=BYTES, udp_port=PORT (blast destination, default 5001),
 * exit_after_s=N (0 = until a `quit` datagram), plus the virtio options (guests/README.md).
 * Ring-0 work per frame is kept small: word copies and word checksums, no byte loops on the
 * data path (every ring-0 instruction is emulated on our software-nested KVM).
 */
#include "virtio.h"

#define VIRTIO_NET_F_MAC 5
#define VIRTIO_NET_F_MRG_RXBUF 15
#define NET_HDR 12 /* struct virtio_net_hdr with num_buffers (5.1.6) */
#define BUF 2048
#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define IP_HLEN 20
#define UDP_HLEN 8
#define BLAST_CHUNK 1400

#define NOOPT __attribute__((optimize("no-tree-loop-distribute-patterns")))

static struct virtio_dev vd;
static u8 rxbuf[VIRTQ_MAX_SIZE][BUF] __attribute__((aligned(4096)));
static u8 txbuf[VIRTQ_MAX_SIZE][BUF] __attribute__((aligned(4096)));
/* pat[k] = k & 0xff: a datagram's payload is a window of it (payload[i] = (start + i) & 0xff). */
static u8 pat[BUF + 256] __attribute__((aligned(8)));

static u8 mymac[6], peermac[6];
static int have_peermac;
static u32 myip, peerip; /* network byte order as stored in frames */
static u16 tx_head, tx_done, tx_kicked, ip_id;
static u64 rx_frames, tx_frames, rx_dropped;
static u32 arp_replies, icmp_replies;
static u64 sink_bytes, sink_dgrams, sink_bad;
static int quit;

static inline void mb(void) { __asm__ volatile("lock addl $0, (%%rsp)" ::: "memory", "cc"); }
static inline u16 bswap16(u16 x) { return (u16)(x << 8 | x >> 8); }
static inline u16 ld16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); } /* big endian */
static inline void st16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static inline u32 ld32n(const u8 *p) { u32 v; memcpy(&v, p, 4); return v; } /* as stored */

/* Word copy (8 bytes at a time, then the tail). */
static NOOPT void copy(void *d, const void *s, u32 n)
{
    u64 *dq = d;
    const u64 *sq = s;
    u32 w = n >> 3;
    for (u32 i = 0; i < w; i++)
        dq[i] = sq[i];
    u8 *db = (u8 *)(dq + w);
    const u8 *sb = (const u8 *)(sq + w);
    for (u32 i = 0; i < (n & 7); i++)
        db[i] = sb[i];
}

static NOOPT int same(const void *a, const void *b, u32 n)
{
    const u64 *aq = a, *bq = b;
    u32 w = n >> 3;
    for (u32 i = 0; i < w; i++)
        if (aq[i] != bq[i])
            return 0;
    const u8 *ab = (const u8 *)(aq + w), *bb = (const u8 *)(bq + w);
    for (u32 i = 0; i < (n & 7); i++)
        if (ab[i] != bb[i])
            return 0;
    return 1;
}

/* Internet checksum (RFC 1071) of an even-aligned buffer: 32-bit adds into 64 bits, folded.
 * Byte-order independent: the result is stored as loaded. */
static NOOPT u16 csum(const void *p, u32 len)
{
    u64 sum = 0;
    const u8 *b = p;
    u32 i = 0;
    for (; i + 4 <= len; i += 4) {
        u32 w;
        memcpy(&w, b + i, 4);
        sum += w;
    }
    if (i + 2 <= len) {
        u16 w;
        memcpy(&w, b + i, 2);
        sum += w;
        i += 2;
    }
    if (i < len)
        sum += b[i]; /* last odd byte, padded with zero (little-endian load) */
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (u16)~sum;
}

static int parse_ip(const char *key, u32 fallback, u32 *out)
{
    size_t n;
    const char *v = cmdline_value(key, &n);
    if (!v) {
        *out = fallback;
        return 0;
    }
    u8 b[4] = {0};
    u32 part = 0, k = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || v[i] == '.') {
            if (k > 3 || part > 255)
                return -1;
            b[k++] = (u8)part;
            part = 0;
        } else if (v[i] >= '0' && v[i] <= '9') {
            part = part * 10 + (u32)(v[i] - '0');
        } else {
            return -1;
        }
    }
    if (k != 4)
        return -1;
    memcpy(out, b, 4);
    return 0;
}

static const char *ipstr(u32 ip, char *s)
{
    const u8 *b = (const u8 *)&ip;
    ksnprintf(s, 16, "%u.%u.%u.%u", b[0], b[1], b[2], b[3]);
    return s;
}

/* ---- queues ---- */
static void rx_post(u16 id) { virtq_avail_put(&vd.vq[0], vd.vq[0].avail_idx, id); vd.vq[0].avail_idx++; }

static void rx_publish(u16 old)
{
    struct virtq *q = &vd.vq[0];
    if (q->avail_idx == old)
        return;
    virtq_avail_publish(q, q->avail_idx);
    virtq_kick(q, old);
}

static void tx_reap(void)
{
    u32 id, len;
    while (virtq_poll_used(&vd.vq[1], &id, &len))
        tx_done++;
}

/* A free transmit buffer (waits for completions when all are in flight), frame at +NET_HDR. */
static u8 *tx_alloc(void)
{
    struct virtq *q = &vd.vq[1];
    tx_reap();
    while ((u16)(tx_head - tx_done) >= q->size) {
        if (tx_kicked != tx_head) {
            u16 old = q->avail_idx;
            virtq_avail_publish(q, tx_head);
            virtq_kick(q, old);
            tx_kicked = tx_head;
        }
        virtq_want_interrupt(q);
        mb();
        tx_reap();
        if ((u16)(tx_head - tx_done) < q->size)
            break;
        virtio_wait_event(&vd);
        tx_reap();
    }
    u8 *b = txbuf[tx_head & (q->size - 1)];
    memset(b, 0, NET_HDR); /* flags 0, GSO_NONE (5.1.6.2) */
    return b + NET_HDR;
}

/* Queues the buffer tx_alloc returned; `kick` publishes and notifies (else batched). */
static void tx_send(u32 frame_len, int kick)
{
    struct virtq *q = &vd.vq[1];
    u16 slot = tx_head & (q->size - 1);
    virtq_desc_set(q, slot, (u64)txbuf[slot], NET_HDR + frame_len, 0, 0);
    virtq_avail_put(q, tx_head, slot);
    tx_head++;
    tx_frames++;
    if (kick || (u16)(tx_head - tx_kicked) >= 16) {
        u16 old = tx_kicked;
        virtq_avail_publish(q, tx_head);
        virtq_kick(q, old);
        tx_kicked = tx_head;
    }
}

/* ---- protocols ---- */
static void eth_hdr(u8 *f, const u8 *dst, u16 type)
{
    copy(f, dst, 6);
    copy(f + 6, mymac, 6);
    st16(f + 12, type);
}

static void arp_send(u16 oper, const u8 *tha, u32 tpa)
{
    static const u8 bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    u8 *f = tx_alloc();
    eth_hdr(f, oper == 1 ? bcast : tha, ETH_P_ARP);
    u8 *a = f + ETH_HLEN;
    st16(a, 1);            /* htype Ethernet */
    st16(a + 2, ETH_P_IP); /* ptype */
    a[4] = 6;
    a[5] = 4;
    st16(a + 6, oper);
    copy(a + 8, mymac, 6);
    copy(a + 14, &myip, 4);
    if (oper == 1)
        memset(a + 18, 0, 6);
    else
        copy(a + 18, tha, 6);
    copy(a + 24, &tpa, 4);
    memset(a + 28, 0, 60 - ETH_HLEN - 28); /* pad to the 60-byte minimum frame */
    tx_send(60, 1);
}

static void ip_hdr(u8 *ip, u32 payload_len, u8 proto, u32 dst)
{
    ip[0] = 0x45;
    ip[1] = 0;
    st16(ip + 2, (u16)(IP_HLEN + payload_len));
    st16(ip + 4, ip_id++);
    st16(ip + 6, 0x4000); /* DF */
    ip[8] = 64;
    ip[9] = proto;
    ip[10] = ip[11] = 0;
    copy(ip + 12, &myip, 4);
    copy(ip + 16, &dst, 4);
    u16 c = csum(ip, IP_HLEN);
    copy(ip + 10, &c, 2);
}

static u8 *udp_begin(const u8 *dstmac, u32 dst)
{
    u8 *f = tx_alloc();
    eth_hdr(f, dstmac, ETH_P_IP);
    (void)dst;
    return f;
}

static void udp_finish(u8 *f, u32 dst, u16 sport, u16 dport, u32 payload_len, int kick)
{
    u8 *ip = f + ETH_HLEN, *u = ip + IP_HLEN;
    ip_hdr(ip, UDP_HLEN + payload_len, 17, dst);
    st16(u, sport);
    st16(u + 2, dport);
    st16(u + 4, (u16)(UDP_HLEN + payload_len));
    st16(u + 6, 0); /* no checksum (RFC 768) */
    u32 len = ETH_HLEN + IP_HLEN + UDP_HLEN + payload_len;
    if (len < 60) {
        memset(f + len, 0, 60 - len);
        len = 60;
    }
    tx_send(len, kick);
}

static u16 sink_port;

static void on_udp(const u8 *f, const u8 *ip, u32 ihl, const u8 *u, u32 ulen)
{
    if (ulen < UDP_HLEN)
        return;
    u32 plen = ulen - UDP_HLEN;
    const u8 *p = u + UDP_HLEN;
    u16 sport = ld16(u), dport = ld16(u + 2);
    (void)ihl;
    if (plen == 4 && p[0] == 'q' && p[1] == 'u' && p[2] == 'i' && p[3] == 't') {
        quit = 1;
        return;
    }
    if (!sink_port || dport != sink_port)
        return;
    if (plen == 3 && p[0] == 'E' && p[1] == 'N' && p[2] == 'D') {
        kprintf("udp-sink: bytes %lu datagrams %lu bad %lu\n", sink_bytes, sink_dgrams, sink_bad);
        u32 src = ld32n(ip + 12);
        u8 *r = udp_begin(f + 6, src);
        int n = ksnprintf((char *)r + ETH_HLEN + IP_HLEN + UDP_HLEN, 32, "%lu", sink_bytes);
        udp_finish(r, src, sink_port, sport, (u32)n, 1);
        sink_bytes = sink_dgrams = sink_bad = 0;
        return;
    }
    sink_bytes += plen;
    sink_dgrams++;
    if (plen && !same(p, pat + p[0], plen))
        sink_bad++;
}

static void on_icmp(const u8 *f, const u8 *ip, u32 ihl, u32 tot)
{
    const u8 *ic = ip + ihl;
    u32 ilen = tot - ihl;
    if (ilen < 8 || ic[0] != 8 || ilen > BUF - NET_HDR - ETH_HLEN - IP_HLEN)
        return;
    if (csum(ic, ilen) != 0) /* the checksum over the whole message verifies to zero */
        return;
    u32 src = ld32n(ip + 12);
    u8 *r = tx_alloc();
    eth_hdr(r, f + 6, ETH_P_IP);
    u8 *rip = r + ETH_HLEN, *ric = rip + IP_HLEN;
    copy(ric, ic, ilen);
    ric[0] = 0; /* echo reply */
    ric[2] = ric[3] = 0;
    u16 c = csum(ric, ilen);
    copy(ric + 2, &c, 2);
    ip_hdr(rip, ilen, 1, src);
    tx_send(ETH_HLEN + IP_HLEN + ilen, 1);
    icmp_replies++;
    char s[16];
    kprintf("icmp-echo: from %s id %u seq %u len %u\n", ipstr(src, s), ld16(ic + 4), ld16(ic + 6),
            ilen);
}

static void on_frame(const u8 *f, u32 len)
{
    rx_frames++;
    if (len < ETH_HLEN)
        return;
    u16 type = ld16(f + 12);
    if (type == ETH_P_ARP && len >= ETH_HLEN + 28) {
        const u8 *a = f + ETH_HLEN;
        if (ld16(a) != 1 || ld16(a + 2) != ETH_P_IP || a[4] != 6 || a[5] != 4)
            return;
        u16 oper = ld16(a + 6);
        u32 spa = ld32n(a + 14), tpa = ld32n(a + 24);
        if (spa == peerip) {
            copy(peermac, a + 8, 6);
            have_peermac = 1;
        }
        if (oper == 1 && tpa == myip) {
            char s[16];
            kprintf("arp-request: from %s\n", ipstr(spa, s));
            arp_send(2, a + 8, spa);
            arp_replies++;
        }
        return;
    }
    if (type != ETH_P_IP || len < ETH_HLEN + IP_HLEN)
        return;
    const u8 *ip = f + ETH_HLEN;
    u32 ihl = (ip[0] & 0xf) * 4u, tot = ld16(ip + 2);
    if ((ip[0] >> 4) != 4 || ihl < IP_HLEN || tot < ihl || ETH_HLEN + tot > len)
        return;
    if (ld32n(ip + 16) != myip || (ld16(ip + 6) & 0x3fff) != 0) /* ours, not a fragment */
        return;
    if (csum(ip, ihl) != 0)
        return;
    if (ip[9] == 1)
        on_icmp(f, ip, ihl, tot);
    else if (ip[9] == 17)
        on_udp(f, ip, ihl, ip + ihl, tot - ihl);
}

/* Takes every completed receive buffer, handles it and hands it back. Returns the count. */
static u32 rx_poll(void)
{
    struct virtq *q = &vd.vq[0];
    u16 old = q->avail_idx;
    u32 id, len, n = 0, skip = 0;
    while (virtq_poll_used(q, &id, &len)) {
        n++;
        if (id >= q->size) {
            rx_dropped++;
            continue;
        }
        if (skip) { /* the rest of a merged frame */
            skip--;
            rx_dropped++;
        } else if (len < NET_HDR) {
            rx_dropped++;
        } else {
            u16 nb;
            memcpy(&nb, rxbuf[id] + 10, 2);
            if (virtio_has(&vd, VIRTIO_NET_F_MRG_RXBUF) && nb > 1) {
                skip = nb - 1u;
                rx_dropped++;
            } else {
                on_frame(rxbuf[id] + NET_HDR, (len > BUF ? BUF : len) - NET_HDR);
            }
        }
        rx_post((u16)id);
    }
    rx_publish(old);
    return n;
}

void kmain(const struct bootinfo *bi)
{
    (void)bi;
    kit_start("vnet");
    char s[16];
    if (parse_ip("ip", 0x0f02000a, &myip) || parse_ip("peer", 0x0202000a, &peerip))
        guest_panic("bad ip= or peer=");
    sink_port = (u16)cmdline_u64("udp_sink", 0);
    u64 blast = cmdline_u64("udp_blast", 0);
    u16 blast_port = (u16)cmdline_u64("udp_port", 5001);
    u32 exit_after = (u32)cmdline_u64("exit_after_s", 0);
    for (u32 i = 0; i < sizeof(pat); i++)
        pat[i] = (u8)i;

    pci_init();
    pci_scan();
    if (virtio_probe(&vd, VIRTIO_ID_NET, 0x1000) != 0 ||
        virtio_init(&vd, 1ull << VIRTIO_NET_F_MAC | 1ull << VIRTIO_NET_F_MRG_RXBUF, 2) != 0 ||
        vd.nqueues < 2)
        guest_panic("virtio-net setup failed");
    if (virtio_has(&vd, VIRTIO_NET_F_MAC)) {
        for (u32 i = 0; i < 6; i++)
            mymac[i] = virtio_cfg_read8(&vd, i);
    } else {
        static const u8 dflt[6] = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
        copy(mymac, dflt, 6);
    }
    kprintf("net-mac: %02x:%02x:%02x:%02x:%02x:%02x\n", mymac[0], mymac[1], mymac[2], mymac[3],
            mymac[4], mymac[5]);
    kprintf("net-ip: %s\n", ipstr(myip, s));
    kprintf("net-peer: %s\n", ipstr(peerip, s));
    kprintf("net-mrg-rxbuf: %u\n", virtio_has(&vd, VIRTIO_NET_F_MRG_RXBUF));

    struct virtq *rq = &vd.vq[0];
    for (u16 i = 0; i < rq->size; i++) {
        virtq_desc_set(rq, i, (u64)rxbuf[i], BUF, VIRTQ_DESC_F_WRITE, 0);
        rx_post(i);
    }
    if (vd.irqs)
        virtq_want_interrupt(rq);
    rx_publish(0);
    kprintf("net-ready\n");
    rtc_seconds_elapsed();

    u64 blast_sent = 0, blast_seq = 0;
    u32 arp_tries = 0, arp_at = 0;
    int blasting = blast != 0, blast_reported = 0;
    if (blasting) {
        arp_send(1, NULL, peerip);
        arp_tries = 1;
    }
    u32 iter = 0;
    const char *why = "quit";
    for (;;) {
        u32 work = rx_poll();
        tx_reap();
        if (quit)
            break;
        if (blasting && have_peermac) {
            /* Up to 32 datagrams per round, so receiving keeps going meanwhile. */
            for (u32 k = 0; k < 32 && blast_sent < blast; k++) {
                u32 n = blast - blast_sent > BLAST_CHUNK ? BLAST_CHUNK : (u32)(blast - blast_sent);
                u8 *f = udp_begin(peermac, peerip);
                copy(f + ETH_HLEN + IP_HLEN + UDP_HLEN, pat + ((blast_seq * BLAST_CHUNK) & 0xff), n);
                udp_finish(f, peerip, blast_port, blast_port, n, 0);
                blast_sent += n;
                blast_seq++;
                work++;
            }
            if (blast_sent >= blast) {
                if (tx_kicked != tx_head) {
                    u16 old = tx_kicked;
                    virtq_avail_publish(&vd.vq[1], tx_head);
                    virtq_kick(&vd.vq[1], old);
                    tx_kicked = tx_head;
                }
                blasting = 0;
            }
        }
        if (!blasting && blast && !blast_reported && (u16)(tx_head - tx_done) == 0) {
            kprintf("udp-sent: %lu\n", blast_sent);
            blast_reported = 1;
        }
        if (work && (++iter & 63))
            continue;
        u32 now = rtc_seconds_elapsed();
        if (exit_after && now >= exit_after) {
            why = "timeout";
            break;
        }
        if (blasting && !have_peermac && now != arp_at) {
            arp_at = now;
            if (arp_tries++ >= 10) {
                kprintf("udp-blast: no ARP reply from %s\n", ipstr(peerip, s));
                blasting = 0;
                blast_reported = 1;
            } else {
                arp_send(1, NULL, peerip);
            }
        }
        if (work)
            continue;
        if (vd.irqs) {
            virtq_want_interrupt(rq);
            if (blast && !blast_reported)
                virtq_want_interrupt(&vd.vq[1]);
            mb();
            if (rq->used->idx != rq->last_used)
                continue;
        }
        virtio_wait_event(&vd);
    }
    kprintf("net-exit: %s\n", why);
    kprintf("net-rx-frames: %lu\n", rx_frames);
    kprintf("net-tx-frames: %lu\n", tx_frames);
    if (rx_dropped)
        kprintf("net-rx-dropped: %lu\n", rx_dropped);
    kprintf("arp-replies: %u\n", arp_replies);
    kprintf("icmp-replies: %u\n", icmp_replies);
    virtio_report_irqs(&vd);
    virtio_reset(&vd);
    kit_done("vnet");
}
