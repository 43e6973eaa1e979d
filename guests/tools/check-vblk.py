#!/usr/bin/env python3
"""Checks the sectors the vblk guest wrote into a raw disk image.

usage: tools/check-vblk.py DISK.raw SECTOR [SECTOR...]
Sector N holds "IRONVIRT vblk sector NNNNNNNNNN\\n" (32 bytes, N zero-padded to 10 digits)
followed by byte (i + N) & 0xff at each offset 32 <= i < 512 (src/vblk.c). Exit status 0 when
every sector matches, 1 otherwise (the first differing offset is printed).
"""
import sys


def expected(n):
    head = b"IRONVIRT vblk sector %010d\n" % n
    return head + bytes((i + n) & 0xFF for i in range(32, 512))


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    bad = 0
    with open(sys.argv[1], "rb") as f:
        for arg in sys.argv[2:]:
            n = int(arg)
            f.seek(n * 512)
            got = f.read(512)
            want = expected(n)
            if got == want:
                print("sector %d: ok" % n)
            else:
                off = next((i for i in range(min(len(got), 512)) if got[i] != want[i]), len(got))
                print("sector %d: differs at byte %d" % (n, off))
                bad = 1
    return bad


if __name__ == "__main__":
    sys.exit(main())
