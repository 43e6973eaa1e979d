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
cargo test --workspace "$@"
