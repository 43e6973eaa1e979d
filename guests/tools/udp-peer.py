#!/usr/bin/env python3
"""Host side of the vnet guest's UDP modes (guests/README.md, vnet).

  udp-peer.py send GUEST_IP PORT BYTES [--burst N] [--gap-ms MS]
      sends BYTES of payload in 1400-byte datagrams, payload[i] = (seq*1400 + i) & 0xff, paced
      in bursts (the guest's receive ring is finite and its ring-0 code slow), then "END"; waits
      for the guest's decimal byte count and exits 0 when it equals BYTES.
  udp-peer.py recv PORT BYTES [--timeout S]
      receives datagrams on PORT until BYTES arrived (or S seconds of silence), checks each
      payload against the pattern by sequence number; exits 0 when every byte arrived intact.
  udp-peer.py quit GUEST_IP PORT
      sends "quit".
  udp-peer.py ping GUEST_IP [COUNT]
      ICMP echo requests over a raw socket (root; no ping binary needed), 56 bytes of data each;
      checks each reply's identifier, sequence number and data; exits 0 when all came back.
"""
import argparse, socket, sys, time

CHUNK = 1400
PAT = bytes(i & 0xff for i in range(CHUNK + 256))


def payload(seq, n):
    o = (seq * CHUNK) & 0xff
    return PAT[o:o + n]


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff


def ping(ip, count):
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.settimeout(5)
    ident, ok = 0x1234, 0
    for seq in range(1, count + 1):
        data = bytes((seq + i) & 0xff for i in range(56))
        hdr = bytes([8, 0, 0, 0]) + ident.to_bytes(2, "big") + seq.to_bytes(2, "big")
        c = csum(hdr + data)
        pkt = hdr[:2] + c.to_bytes(2, "big") + hdr[4:] + data
        t0 = time.monotonic()
        sock.sendto(pkt, (ip, 0))
        while True:
            try:
                r, addr = sock.recvfrom(2048)
            except socket.timeout:
                print(f"ping: seq {seq} timed out")
                break
            ihl = (r[0] & 15) * 4
            icmp = r[ihl:]
            if addr[0] != ip or icmp[0] != 0:
                continue
            good = (csum(icmp) == 0 and icmp[4:6] == ident.to_bytes(2, "big")
                    and icmp[6:8] == seq.to_bytes(2, "big") and icmp[8:] == data)
            print(f"ping: reply from {ip} seq {seq} {'ok' if good else 'BAD'} {1000 * (time.monotonic() - t0):.1f} ms")
            ok += good
            break
    print(f"ping: {ok}/{count} replies")
    return 0 if ok == count else 1


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send"); s.add_argument("ip"); s.add_argument("port", type=int)
    s.add_argument("bytes", type=int); s.add_argument("--burst", type=int, default=16)
    s.add_argument("--gap-ms", type=float, default=25.0); s.add_argument("--timeout", type=float, default=3)
    r = sub.add_parser("recv"); r.add_argument("port", type=int); r.add_argument("bytes", type=int)
    r.add_argument("--timeout", type=float, default=60)
    q = sub.add_parser("quit"); q.add_argument("ip"); q.add_argument("port", type=int)
    p = sub.add_parser("ping"); p.add_argument("ip"); p.add_argument("count", type=int, nargs="?", default=3)
    a = ap.parse_args()
    if a.cmd == "ping":
        return ping(a.ip, a.count)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if a.cmd == "quit":
        sock.sendto(b"quit", (a.ip, a.port))
        return 0
    if a.cmd == "send":
        t0 = time.monotonic()
        sent, seq = 0, 0
        while sent < a.bytes:
            for _ in range(a.burst):
                if sent >= a.bytes:
                    break
                n = min(CHUNK, a.bytes - sent)
                sock.sendto(payload(seq, n), (a.ip, a.port))
                sent += n
                seq += 1
            time.sleep(a.gap_ms / 1000)
        dt = time.monotonic() - t0
        sock.settimeout(a.timeout)
        for _ in range(10):
            sock.sendto(b"END", (a.ip, a.port))
            try:
                data, _ = sock.recvfrom(64)
                break
            except socket.timeout:
                continue
        else:
            print("udp-peer: no reply to END")
            return 1
        got = int(data.decode())
        print(f"udp-peer: sent {sent} bytes in {seq} datagrams, {dt:.2f} s ({sent / dt / 1048576:.2f} MiB/s); guest counted {got}")
        return 0 if got == sent else 1
    sock.bind(("0.0.0.0", a.port))
    sock.settimeout(a.timeout)
    got, seq, bad, t0 = 0, 0, 0, None
    while got < a.bytes:
        try:
            data, _ = sock.recvfrom(65536)
        except socket.timeout:
            break
        if t0 is None:
            t0 = time.monotonic()
        if data != payload(seq, len(data)):
            bad += 1
        got += len(data)
        seq += 1
    dt = (time.monotonic() - t0) if t0 else 0
    rate = got / dt / 1048576 if dt else 0
    print(f"udp-peer: received {got} bytes in {seq} datagrams, {bad} bad, {dt:.2f} s ({rate:.2f} MiB/s)")
    return 0 if got == a.bytes and bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
