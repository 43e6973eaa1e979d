#!/usr/bin/env bash
# Builds ironvirt, prepares the default guest (the Linux test guest: a minimal Linux 6.12 with a
# busybox initramfs, built from Debian packages and cached in ~/.cache/ironvirt) and boots it
# with an interactive busybox shell on the serial console. `poweroff -f` in the guest ends it.
# The first run builds the kernel (~15 minutes on 2 cores); later runs start at once.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --bin ironvirt-vmm
guest=$(bash guests/linux/build.sh | tail -n 1)
echo "demo: booting $guest/vmlinux (on software-nested KVM the shell appears after ~25 s)" >&2
exec target/release/ironvirt-vmm --kernel "$guest/vmlinux" --initramfs "$guest/initramfs.cpio" \
    --cmdline "$(cat "$guest/cmdline")" --cpus 2 --memory 512M --cpu-template portable "$@"
