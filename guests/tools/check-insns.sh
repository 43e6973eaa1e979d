#!/bin/sh
# Fails when a guest image contains instructions that KVM's instruction emulator cannot run
# (/work/shared/KVM-ON-OUR-MACHINES.md): SSE/AVX/x87, popcnt, cmpxchg16b, xsave/xrstor, int3,
# fwait, ud2, and rep-prefixed string instructions other than movsb and stosb/l/q.
# usage: check-insns.sh IMAGE.elf [EXTRA-ALLOWED-MNEMONIC-REGEX]
# Only executable sections are disassembled (the AP trampoline and setup code are data here).
# 32-bit entry code is decoded as 64-bit; the few "(bad)" lines that gives are ignored.
set -eu
elf=$1
allow=${2:-'^$'}
bad=$(objdump -d -M suffix --no-show-raw-insn "$elf" |
    awk -F'\t' '/^ *[0-9a-f]+:\t/ { print $2 }' |
    grep -E '(%[xyz]mm|^f[a-z0-9]+|popcnt|cmpxchg16b|xsave|xrstor|^int3|^ud2|^rep[a-z]* +(movs[wlq]|stosw|lods|scas|cmps|ins|outs))' |
    grep -Ev "$allow" || true)
if [ -n "$bad" ]; then
    echo "$elf: instructions KVM's emulator cannot run:" >&2
    echo "$bad" | sort | uniq -c >&2
    exit 1
fi
