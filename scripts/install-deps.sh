#!/usr/bin/env bash
# Installs the Debian packages ironvirt's build, tests and benchmarks need, if missing.
# The Rust toolchain (cargo, rustfmt, clippy) must already be installed (rustup).
set -euo pipefail
need=(build-essential python3 cpio busybox-static e2fsprogs curl util-linux time qemu-system-x86 qemu-utils acpica-tools strace iproute2 iputils-ping)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found: install Rust with rustup (https://rustup.rs), 1.85 or newer" >&2
    exit 1
fi
