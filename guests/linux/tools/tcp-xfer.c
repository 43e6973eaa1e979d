// tcp-xfer: bulk TCP transfers for the Linux test guests' network test, in 1 MiB reads and
// writes. Busybox nc copies 1 KiB per read and write; under software-nested KVM every system
// call is emulated kernel work, which holds nc to ~15-110 KiB/s (guests/linux/README.md,
// "Guest tools").
// Built static by `make -C guests` into guests/build/linux/tcp-xfer.
//
//   tcp-xfer send IPV4 PORT BYTES   connect, send BYTES bytes of the pattern `i % 251`, shut
//                                   down the write side, wait for the server to close; print
//                                   `IRONVIRT-TEST tcp-sent=BYTES`
//   tcp-xfer recv IPV4 PORT         connect, read until end-of-file, checking every byte
//                                   against the same pattern; print
//                                   `IRONVIRT-TEST tcp-received=N pattern-ok=0|1`
//
// Any failure prints `IRONVIRT-TEST tcp-xfer-error ...` and exits 1; an alarm ends a stuck run.
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK (1 << 20)

// The pattern repeats every 251 bytes; CHUNK + 251 bytes of it let a chunk start at any phase.
static unsigned char pattern[CHUNK + 251];
static unsigned char buf[CHUNK];

static void fail(const char *what) {
    dprintf(1, "IRONVIRT-TEST tcp-xfer-error %s: %s\n", what, strerror(errno));
    exit(1);
}

static int connect_to(const char *ip, const char *port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)strtoul(port, NULL, 10));
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
        errno = EINVAL;
        fail("address");
    }
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0)
        fail("socket");
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0)
        fail("connect");
    return s;
}

static void send_pattern(int s, size_t total) {
    size_t sent = 0;
    while (sent < total) {
        size_t want = total - sent < CHUNK ? total - sent : CHUNK;
        ssize_t n = write(s, pattern + sent % 251, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail("write");
        sent += (size_t)n;
    }
    if (shutdown(s, SHUT_WR) < 0)
        fail("shutdown");
    while (read(s, buf, sizeof buf) > 0) {
        // The server closes once it has counted everything.
    }
    dprintf(1, "IRONVIRT-TEST tcp-sent=%zu\n", sent);
}

static void receive_pattern(int s) {
    size_t received = 0;
    int ok = 1;
    for (;;) {
        ssize_t n = read(s, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fail("read");
        if (n == 0)
            break;
        ok = ok && memcmp(buf, pattern + received % 251, (size_t)n) == 0;
        received += (size_t)n;
    }
    dprintf(1, "IRONVIRT-TEST tcp-received=%zu pattern-ok=%d\n", received, ok);
}

int main(int argc, char **argv) {
    int sending = argc == 5 && strcmp(argv[1], "send") == 0;
    if (!sending && !(argc == 4 && strcmp(argv[1], "recv") == 0)) {
        dprintf(2, "usage: tcp-xfer send IPV4 PORT BYTES | tcp-xfer recv IPV4 PORT\n");
        return 2;
    }
    alarm(240);
    for (size_t i = 0; i < sizeof pattern; i++)
        pattern[i] = (unsigned char)(i % 251);
    int s = connect_to(argv[2], argv[3]);
    if (sending)
        send_pattern(s, (size_t)strtoull(argv[4], NULL, 10));
    else
        receive_pattern(s);
    close(s);
    return 0;
}
