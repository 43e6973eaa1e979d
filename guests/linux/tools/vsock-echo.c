// vsock-echo: the Linux test guests' vsock peer (busybox has no vsock tool). Built static by
// `make -C guests` into guests/build/linux/vsock-echo; the boot tests add it to the initramfs.
//
//   vsock-echo LISTEN_PORT HOST_PORT SEND_BYTES
//
// One process for both directions, since each fork+exec costs ~0.7 s under software-nested KVM:
//  1. listens on vsock port LISTEN_PORT (any CID), prints `IRONVIRT-TEST vsock-listening`,
//     accepts one connection and echoes what it reads until end-of-file, then prints
//     `IRONVIRT-TEST vsock-h2g-echoed=N`;
//  2. connects to the host (CID 2) on HOST_PORT, sends SEND_BYTES bytes of the pattern
//     `i % 251`, then echoes what it reads until end-of-file and prints
//     `IRONVIRT-TEST vsock-g2h-sent=M echoed=N`.
// Any failure prints `IRONVIRT-TEST vsock-error ...` and exits 1; an alarm ends a stuck run.
#include <errno.h>
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void fail(const char *what) {
    dprintf(1, "IRONVIRT-TEST vsock-error %s: %s\n", what, strerror(errno));
    exit(1);
}

static int write_all(int fd, const unsigned char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

// Echoes fd's input back to it until end-of-file; returns the byte count.
static long echo(int fd) {
    static unsigned char buf[65536];
    long total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fail("read");
        if (n == 0)
            return total;
        if (write_all(fd, buf, (size_t)n) < 0)
            fail("write");
        total += n;
    }
}

static struct sockaddr_vm vsock_addr(unsigned cid, unsigned port) {
    struct sockaddr_vm a;
    memset(&a, 0, sizeof a);
    a.svm_family = AF_VSOCK;
    a.svm_cid = cid;
    a.svm_port = port;
    return a;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        dprintf(2, "usage: vsock-echo LISTEN_PORT HOST_PORT SEND_BYTES\n");
        return 2;
    }
    unsigned listen_port = (unsigned)strtoul(argv[1], NULL, 10);
    unsigned host_port = (unsigned)strtoul(argv[2], NULL, 10);
    size_t send_bytes = (size_t)strtoul(argv[3], NULL, 10);
    alarm(240);

    int l = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (l < 0)
        fail("socket");
    struct sockaddr_vm a = vsock_addr(VMADDR_CID_ANY, listen_port);
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0)
        fail("bind");
    if (listen(l, 1) < 0)
        fail("listen");
    dprintf(1, "IRONVIRT-TEST vsock-listening\n");
    int c = accept(l, NULL, NULL);
    if (c < 0)
        fail("accept");
    long echoed = echo(c);
    close(c);
    close(l);
    dprintf(1, "IRONVIRT-TEST vsock-h2g-echoed=%ld\n", echoed);

    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0)
        fail("socket");
    a = vsock_addr(VMADDR_CID_HOST, host_port);
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0)
        fail("connect");
    unsigned char *data = malloc(send_bytes + 1);
    if (data == NULL)
        fail("malloc");
    for (size_t i = 0; i < send_bytes; i++)
        data[i] = (unsigned char)(i % 251);
    if (write_all(s, data, send_bytes) < 0)
        fail("send");
    echoed = echo(s);
    close(s);
    dprintf(1, "IRONVIRT-TEST vsock-g2h-sent=%zu echoed=%ld\n", send_bytes, echoed);
    return 0;
}
