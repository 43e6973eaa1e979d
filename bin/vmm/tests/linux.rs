//! The Linux test guest (a minimal 6.12 kernel built by guests/linux/build.sh, booted as ELF
//! vmlinux through PVH) on this machine's KVM: it must see the configured CPUs, memory and
//! date, power off with exit 0 and reboot in the same process; then the device scenarios of
//! `common` (virtio-rng, virtio-blk raw and qcow2, virtio-net over a TAP, virtio-vsock), which
//! `hardware.rs` also runs on the stock kernel. Each boot costs ~50 s on software-nested KVM,
//! so these are few. The first run builds the guest (~15 minutes).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{strs, Kernel, VMM};
use ironvirt_test_support::{require_kvm, RunOutcome, VmmRun};

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The guest's initramfs with `/test.sh` appended as a second cpio archive.
fn initramfs_with(script: &str, tag: &str) -> PathBuf {
    Kernel::Test.initramfs(script, &[], tag)
}

fn args(initramfs: &Path, cpus: &str) -> Vec<String> {
    Kernel::Test.args(initramfs, cpus)
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The value after `key=` on the guest's `IRONVIRT-TEST` lines.
fn reported(out: &RunOutcome, key: &str) -> String {
    out.stdout
        .lines()
        .filter(|l| l.starts_with("IRONVIRT-TEST"))
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the guest did not report {key}: {out}"))
        .trim()
        .to_string()
}

/// Shell builtins only: no fork. Each fork+exec costs seconds of emulated kernel work here,
/// and with 2 vCPUs about 1 in 16 new processes crashes at start-up on software-nested KVM
/// (seen under QEMU too: a stale mapping on the other vCPU; guests/linux/README.md). The CPU
/// count is what `nproc` reports (the online set), the date the kernel's clock (boot time plus
/// uptime).
const REPORT: &str = "read online < /sys/devices/system/cpu/online\n\
read l < /proc/meminfo\n\
set -- $l\n\
mem=$2\n\
while read k v; do [ \"$k\" = btime ] && btime=$v; done < /proc/stat\n\
read up rest < /proc/uptime\n\
echo \"IRONVIRT-TEST online=$online memtotal_kb=$mem date=$(( btime + ${up%.*} ))\"\n";

/// CPUs in a sysfs CPU list like `0-1` or `0`.
fn cpus_in(list: &str) -> u32 {
    list.split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<u32>().unwrap() - a.parse::<u32>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

fn check_configuration(cpus: &str) {
    require_kvm();
    let initramfs = initramfs_with(REPORT, &format!("cfg{cpus}"));
    let started = now();
    let out = VmmRun::run(Path::new(VMM), &strs(&args(&initramfs, cpus)), BOOT_TIMEOUT);
    let ended = now();
    let _ = std::fs::remove_file(&initramfs);
    assert!(!out.timed_out, "{out}");
    assert!(out.stdout.contains("IRONVIRT-LINUX init"), "{out}");
    assert_eq!(cpus_in(&reported(&out, "online")).to_string(), cpus, "{out}");
    let mem_kb: u64 = reported(&out, "memtotal_kb").parse().unwrap();
    // 256 MiB minus what the kernel reserves for itself.
    assert!((200 * 1024..=256 * 1024).contains(&mem_kb), "MemTotal {mem_kb} kB: {out}");
    let date: i64 = reported(&out, "date").parse().unwrap();
    assert!(
        (started - 5..=ended + 5).contains(&date),
        "guest date {date} outside {started}..{ended}: {out}"
    );
    assert_eq!(out.code, Some(0), "poweroff in the guest must exit 0: {out}");
}

#[test]
fn linux_one_vcpu_sees_its_configuration_and_powers_off() {
    check_configuration("1");
}

#[test]
fn linux_two_vcpus_see_their_configuration_and_power_off() {
    check_configuration("2");
}

#[test]
fn linux_reboot_brings_the_guest_up_again_in_the_same_process() {
    require_kvm();
    let initramfs = initramfs_with("#!/bin/sh\necho IRONVIRT-TEST booted\nreboot -f\n", "reboot");
    let mut run = VmmRun::spawn(Path::new(VMM), &strs(&args(&initramfs, "1")));
    let second = run.wait_for("IRONVIRT-TEST booted", 2, BOOT_TIMEOUT * 2);
    run.signal(15);
    let out = run.wait(Duration::from_secs(10));
    let _ = std::fs::remove_file(&initramfs);
    assert!(second, "the guest did not come up a second time: {out}");
    assert_eq!(out.stdout.matches("IRONVIRT-LINUX init").count(), 2, "{out}");
    assert_eq!(out.code, Some(128 + 15), "SIGTERM ends the VMM with 143: {out}");
}

#[test]
fn linux_virtio_rng_driver_reads_bytes_from_dev_hwrng_over_intx() {
    common::virtio_rng_over_intx_feeds_dev_hwrng(Kernel::Test);
}

#[test]
fn linux_makes_a_filesystem_on_a_virtio_disk_and_the_host_reads_the_file() {
    common::mkfs_on_a_virtio_disk(Kernel::Test);
}

#[test]
fn linux_uses_a_qcow2_root_filesystem_whose_backing_file_stays_unchanged() {
    common::qcow2_root_over_an_unchanged_backing_file(Kernel::Test);
}

#[test]
fn linux_echoes_over_vsock_both_ways() {
    common::vsock_echo_both_ways(Kernel::Test);
}

#[test]
fn linux_pings_the_host_and_moves_10_mib_each_way_over_tcp_through_a_tap() {
    common::ping_and_10_mib_each_way_over_a_tap(Kernel::Test);
}
