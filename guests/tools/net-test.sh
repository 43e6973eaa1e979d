#!/bin/sh
# Runs the vnet guest against a TAP inside a network namespace this script creates (and
# deletes): ARP + ICMP echo from the host (ping), BYTES of UDP host->guest (udp_sink, counted
# by the guest) and guest->host (udp_blast, checked here), then a `quit` datagram.
# usage: tools/net-test.sh qemu|ironvirt [BYTES] [EXTRA-GUEST-CMDLINE]   (from guests/, as root)
# Host side: 10.0.2.2/24 on TAP ivtap0 in namespace ivkit-PID; guest 10.0.2.15.
set -eu
vmm=${1:-qemu}
bytes=${2:-10485760}
extra=${3:-}
here=$(cd "$(dirname "$0")/.." && pwd)
ns=ivkit-$$
log=/tmp/ivkit-net-$$.log
mac=52:54:00:12:34:56
ip netns add "$ns"
cleanup() { ip netns del "$ns" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
ip -n "$ns" link set lo up
ip -n "$ns" tuntap add dev ivtap0 mode tap
ip -n "$ns" addr add 10.0.2.2/24 dev ivtap0
ip -n "$ns" link set ivtap0 up
cmd="ip=10.0.2.15 peer=10.0.2.2 udp_sink=5000 udp_blast=$bytes udp_port=5001 exit_after_s=300 $extra"
ip netns exec "$ns" python3 "$here/tools/udp-peer.py" recv 5001 "$bytes" --timeout 120 > "$log.recv" 2>&1 &
recv=$!
sleep 0.3
case $vmm in
qemu)
    ip netns exec "$ns" "$here/tools/run-qemu.sh" -M microvm-pci -t 400 "$here/build/vnet.elf" \
        "pci_ecam=0xe0000000 $cmd" -device virtio-net-pci,netdev=n0,mac=$mac \
        -netdev tap,id=n0,ifname=ivtap0,script=no,downscript=no > "$log" 2>&1 &
    ;;
ironvirt)
    ip netns exec "$ns" "$here/../target/debug/ironvirt-vmm" --kernel "$here/build/vnet.elf" \
        --memory 256M --cmdline "$cmd" --net tap=ivtap0,mac=$mac > "$log" 2>&1 &
    ;;
*) echo "usage: $0 qemu|ironvirt [BYTES] [CMDLINE]" >&2; exit 2 ;;
esac
vm=$!
for i in $(seq 100); do grep -q net-ready "$log" 2>/dev/null && break; sleep 0.1; done
ip -n "$ns" neigh flush dev ivtap0
ip netns exec "$ns" python3 "$here/tools/udp-peer.py" ping 10.0.2.15 3 || true
wait $recv || true
cat "$log.recv"
ip netns exec "$ns" python3 "$here/tools/udp-peer.py" send 10.0.2.15 5000 "$bytes" || true
ip netns exec "$ns" python3 "$here/tools/udp-peer.py" quit 10.0.2.15 5000
wait $vm && rc=0 || rc=$?
cat "$log"
echo "vmm exit: $rc"
rm -f "$log" "$log.recv"
