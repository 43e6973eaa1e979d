#!/bin/sh
# /init (PID 1) of the ironvirt Linux test guests, installed by guests/linux/build.sh into both
# initramfs images (patched test kernel and --stock). See guests/linux/README.md.
#
# Under software-nested KVM every fork+exec costs about 0.7 s of guest time, so this script
# uses shell builtins wherever it can (echo, read, case, test, .) and starts as few processes
# as possible: one `mount -a` for proc, sysfs and devtmpfs, then the test or the shell, then
# `poweroff -f`.
#
# Kernel command line switch (read from /proc/cmdline with a builtin):
#   ironvirt.init=poweroff   when done, power off (default)
#   ironvirt.init=reboot     when done, reboot instead
#
# Serial markers for harnesses (each on its own line):
#   IRONVIRT-LINUX init          first thing PID 1 does
#   IRONVIRT-LINUX test start    /test.sh found, about to run it
#   IRONVIRT-LINUX shell         no /test.sh, starting the interactive shell
#   IRONVIRT-LINUX done rc=N     the test or shell finished with status N; powering off

echo "IRONVIRT-LINUX init"

export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/root
set -f # /proc/cmdline words are not globs

mount -a # /etc/fstab: proc, sysfs, devtmpfs

# --stock only: load the virtio modules the image carries, in dependency order.
if [ -r /lib/modules/load.order ]; then
    while read -r module args; do
        insmod "/lib/modules/$module" $args || echo "IRONVIRT-LINUX insmod $module failed"
    done </lib/modules/load.order
fi

end=poweroff
read -r cmdline </proc/cmdline
for word in $cmdline; do
    case $word in
    ironvirt.init=reboot) end=reboot ;;
    ironvirt.init=poweroff) end=poweroff ;;
    ironvirt.init=*) echo "IRONVIRT-LINUX ignoring unknown $word" ;;
    esac
done
unset word cmdline module args
set +f

finish() {
    echo "IRONVIRT-LINUX done rc=$1"
    if [ "$end" = reboot ]; then
        reboot -f
    else
        poweroff -f
    fi
    # Only reached if that failed; PID 1 exiting panics the kernel, which (panic=-1) resets.
    echo "IRONVIRT-LINUX $end failed"
}

if [ -e /test.sh ]; then
    # Sourced, not executed: no extra process. `exit N` in the test ends it with status N.
    echo "IRONVIRT-LINUX test start"
    trap 'finish $?' EXIT
    . /test.sh
    exit
fi

echo "IRONVIRT-LINUX shell"
# setsid + cttyhack give the shell a controlling terminal, so job control and ^C work.
setsid cttyhack sh
finish $?
