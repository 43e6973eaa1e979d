#!/bin/sh
# Boots one kit guest under QEMU with KVM, for trying the kit without ironvirt-vmm.
# usage: tools/run-qemu.sh [-M microvm|microvm-pci|q35] [-smp N] [-m SIZE] [-t SECONDS] IMAGE
#            [CMDLINE [QEMU-ARGS...]]
#   microvm (default) PVH-boots the ELF; its ACPI is hardware-reduced (sleep control register).
#   microvm-pci: microvm with its PCIe host (pcie=on; ECAM at 0xe0000000, described only in the
#   DSDT by QEMU 7.2, so give the guest pci_ecam=0xe0000000 on its command line).
#   q35 boots through SeaBIOS (slow on software-nested KVM) and needs the .bzimage.
#   QEMU-ARGS are appended, e.g. -device virtio-rng-pci.
# Exit status is QEMU's: 0 after an ACPI power-off, 99 when the guest fell back to
# isa-debug-exit, 124 on timeout. -cpu host minus arch-capabilities: QEMU 7.2 cannot set
# MSR 0x10a on our software-nested KVM.
set -eu
machine=microvm smp=1 mem=256M limit=120
while [ $# -gt 0 ]; do
    case $1 in
    -M) machine=$2; shift 2 ;;
    -smp) smp=$2; shift 2 ;;
    -m) mem=$2; shift 2 ;;
    -t) limit=$2; shift 2 ;;
    *) break ;;
    esac
done
image=$1
cmdline=${2:-}
shift
[ $# -gt 0 ] && shift
case $machine in
microvm) mach="microvm,acpi=on,pit=on,pic=on,rtc=on" ;;
microvm-pci) mach="microvm,acpi=on,pit=on,pic=on,rtc=on,pcie=on" ;;
*) mach=$machine ;;
esac
exec timeout "$limit" qemu-system-x86_64 -M "$mach" -enable-kvm -cpu host,-arch-capabilities \
    -m "$mem" -smp "$smp" -nographic -nodefaults -serial stdio -no-reboot \
    -device isa-debug-exit,iobase=0xf4,iosize=4 -device pvpanic -action panic=exit-failure \
    -kernel "$image" -append "$cmdline" "$@"
