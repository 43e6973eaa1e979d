#!/usr/bin/env bash
# Runs every test: builds the guest test kit and the Linux test guest (cached after the first
# build, ~15 minutes), then the whole workspace's tests, which boot real guests on /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s -C guests
echo "test: preparing the Linux test guest (cached after the first build)" >&2
bash guests/linux/build.sh >/dev/null
# The end-to-end tests (tests/e2e) run the daemon, CLI and VMM binaries: build them first.
cargo build --workspace --bins
# The Linux guest tests (bin/vmm/tests/linux.rs, all named linux_*) run one at a time after
# the rest: each boots a kernel whose ring 0 is emulated on software-nested KVM, and two at
# once (three vCPU threads on two cores) stall a 2-vCPU guest for minutes.
# Arguments (cargo test options and filters) are passed to one plain run instead.
if [ $# -gt 0 ]; then
    exec cargo test --workspace "$@"
fi
cargo test --workspace -- --skip linux_
cargo test -p ironvirt-vmm-bin --test linux -- --test-threads=1
