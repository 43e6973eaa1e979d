//! The Linux test guest (a minimal 6.12 kernel built by guests/linux/build.sh, booted as ELF
//! vmlinux through PVH) on this machine's KVM: it must see the configured CPUs, memory and
//! date, power off with exit 0 and reboot in the same process. Each boot costs ~25 s on
//! software-nested KVM, so these are few. The first run builds the guest (~15 minutes).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ironvirt_test_support::{linux_guest, require_kvm, RunOutcome, VmmRun};

const VMM: &str = env!("CARGO_BIN_EXE_ironvirt-vmm");
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The guest's initramfs with `/test.sh` appended as a second cpio archive.
fn initramfs_with(script: &str, tag: &str) -> PathBuf {
    linux_guest(false).initramfs_with_script(script, tag)
}

fn args(initramfs: &Path, cpus: &str) -> Vec<String> {
    let mut args = linux_guest(false).vmm_args(initramfs, cpus, "256M");
    args.extend(["--cpu-template".to_string(), "portable".to_string()]);
    args
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
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

/// With `pci=nomsi` Linux cannot use MSI-X: it finds the device's INTA# routing in the DSDT's
/// `_PRT` (slot 1, GSI 17) and takes the interrupts from the IOAPIC, level-triggered. (The
/// disk and network tests below cover MSI-X.)
#[test]
fn linux_virtio_rng_driver_reads_bytes_from_dev_hwrng_over_intx() {
    require_kvm();
    let script = "echo \"IRONVIRT-TEST hwrng=$(head -c 16 /dev/hwrng | od -An -tx1)\"\n\
while read -r l; do case $l in *virtio*) echo \"IRONVIRT-TEST irq=$l\";; esac; done </proc/interrupts\n";
    let initramfs = initramfs_with(script, "hwrng");
    let mut a = args(&initramfs, "1");
    let cmdline = a.iter().position(|x| x == "--cmdline").unwrap() + 1;
    a[cmdline].push_str(" pci=nomsi");
    a.push("--rng".into());
    let out = VmmRun::run(Path::new(VMM), &strs(&a), BOOT_TIMEOUT);
    let _ = std::fs::remove_file(&initramfs);
    assert!(!out.timed_out, "{out}");
    // "17:  73  IO-APIC  17-fasteoi  virtio0"
    let irq = out.stdout.lines().find_map(|l| l.strip_prefix("IRONVIRT-TEST irq=")).unwrap_or("");
    let fields: Vec<&str> = irq.split_whitespace().collect();
    assert!(
        fields.len() == 5
            && fields[0] == "17:"
            && fields.ends_with(&["IO-APIC", "17-fasteoi", "virtio0"]),
        "virtio-rng on IOAPIC pin 17, level-triggered (fasteoi): {out}"
    );
    // Linux took both BAR windows from the root bridge's _CRS.
    for window in ["[mem 0xc0000000-0xdfffffff window]", "[mem 0x100000000-0x10ffffffff window]"] {
        assert!(out.stdout.contains(&format!("root bus resource {window}")), "{window}: {out}");
    }
    let count: u64 = fields[1].parse().unwrap_or(0);
    assert!(count > 0, "interrupts were taken: {out}");
    let line = out.stdout.lines().find(|l| l.starts_with("IRONVIRT-TEST hwrng=")).unwrap_or("");
    let bytes: Vec<&str> =
        line.trim_start_matches("IRONVIRT-TEST hwrng=").split_whitespace().collect();
    assert_eq!(bytes.len(), 16, "16 bytes from /dev/hwrng: {out}");
    assert!(bytes.iter().any(|b| *b != "00"), "random, not zeros: {out}");
    assert_eq!(out.code, Some(0), "{out}");
}

/// Boots the Linux test guest with `script` as /test.sh and extra VMM arguments.
fn boot_with(script: &str, tag: &str, extra: &[String]) -> RunOutcome {
    require_kvm();
    let initramfs = initramfs_with(script, tag);
    let mut a = args(&initramfs, "1");
    a.extend_from_slice(extra);
    let out = VmmRun::run(Path::new(VMM), &strs(&a), BOOT_TIMEOUT);
    let _ = std::fs::remove_file(&initramfs);
    assert!(!out.timed_out, "{out}");
    out
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ironvirt-linux-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn debugfs_cat(image: &Path, file: &str) -> String {
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(image)
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn linux_makes_a_filesystem_on_a_virtio_disk_and_the_host_reads_the_file() {
    let dir = temp_dir("mkfs");
    let image = dir.join("disk.raw");
    std::fs::File::create(&image).unwrap().set_len(32 << 20).unwrap();
    let script = "mke2fs -q /dev/vda\nmount -t ext4 /dev/vda /root\n\
echo 'written by the guest through virtio-blk' > /root/hello.txt\numount /root\necho IRONVIRT-TEST mkfs-done\n";
    let out = boot_with(
        script,
        "mkfs",
        &["--disk".into(), format!("path={},format=raw", image.display())],
    );
    assert!(out.stdout.contains("IRONVIRT-TEST mkfs-done"), "{out}");
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(debugfs_cat(&image, "/hello.txt"), "written by the guest through virtio-blk\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn linux_uses_a_qcow2_root_filesystem_whose_backing_file_stays_unchanged() {
    let dir = temp_dir("qcow2");
    let content = dir.join("content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("marker"), "from the backing file\n").unwrap();
    let base = dir.join("base.raw");
    let mkfs = std::process::Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-d"])
        .arg(&content)
        .arg(&base)
        .arg("32M")
        .status()
        .unwrap();
    assert!(mkfs.success());
    let base_before = std::fs::read(&base).unwrap();
    let overlay = dir.join("root.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&overlay)
        .status()
        .unwrap();
    assert!(made.success());
    let script =
        "mount -t ext4 /dev/vda /root\nread m < /root/marker\necho \"IRONVIRT-TEST marker=$m\"\n\
echo 'added in the overlay' > /root/new.txt\numount /root\n";
    let disk = format!("path={},format=qcow2,backing=on", overlay.display());
    let out = boot_with(script, "qcow2", &["--disk".into(), disk]);
    assert!(out.stdout.contains("IRONVIRT-TEST marker=from the backing file"), "{out}");
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(std::fs::read(&base).unwrap(), base_before, "the backing file is byte-identical");
    let flat = dir.join("flat.raw");
    let conv = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&overlay)
        .arg(&flat)
        .status()
        .unwrap();
    assert!(conv.success());
    assert_eq!(debugfs_cat(&flat, "/new.txt"), "added in the overlay\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A network namespace with TAP `ivtap0` at 10.0.2.2/24; removed on drop.
struct NetNs(String);

impl NetNs {
    fn new(tag: &str) -> Self {
        let name = format!("ivl-{tag}-{}", std::process::id());
        let run = |args: &[&str]| {
            let out = std::process::Command::new(args[0]).args(&args[1..]).output().unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let _ = std::process::Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "netns", "exec", &name, "ip", "tuntap", "add", "dev", "ivtap0", "mode", "tap"]);
        run(&["ip", "netns", "exec", &name, "ip", "addr", "add", "10.0.2.2/24", "dev", "ivtap0"]);
        run(&["ip", "netns", "exec", &name, "ip", "link", "set", "ivtap0", "up"]);
        Self(name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Counts the bytes of one TCP connection on 10.0.2.2:5001 inside the namespace.
const TCP_SINK: &str = r#"
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.0.2.2", 5001)); s.listen(1); s.settimeout(280)
c, _ = s.accept(); c.settimeout(60); n = 0
while True:
    d = c.recv(1 << 16)
    if not d: break
    n += len(d)
print(n)
"#;

#[test]
/// 1 MiB rather than the 10 MiB the kit's vnet guest moves each way: the Linux guest's TCP path
/// is kernel code, which software-nested KVM emulates at about 18 KiB/s (1 MiB took 57 s).
fn linux_pings_the_host_and_sends_a_mib_over_tcp_through_a_tap() {
    require_kvm();
    let ns = NetNs::new("net");
    let sink = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3", "-c", TCP_SINK])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let script = "ip addr add 10.0.2.15/24 dev eth0\nip link set eth0 up\n\
ping -c 3 -W 5 10.0.2.2 && echo IRONVIRT-TEST ping-ok\n\
dd if=/dev/zero bs=65536 count=16 2>/dev/null | nc 10.0.2.2 5001 && echo IRONVIRT-TEST nc-done\n";
    let initramfs = initramfs_with(script, "net");
    let mut a = vec!["netns".to_string(), "exec".into(), ns.0.clone(), VMM.into()];
    a.extend(args(&initramfs, "1"));
    a.extend(["--net".to_string(), "tap=ivtap0,mac=52:54:00:12:34:56".into()]);
    let out = VmmRun::run(Path::new("ip"), &strs(&a), BOOT_TIMEOUT);
    let _ = std::fs::remove_file(&initramfs);
    let received = sink.wait_with_output().unwrap();
    assert!(out.stdout.contains("IRONVIRT-TEST ping-ok"), "{out}");
    assert!(out.stdout.contains("IRONVIRT-TEST nc-done"), "{out}");
    assert_eq!(String::from_utf8_lossy(&received.stdout).trim(), (1 << 20).to_string(), "{out}");
    assert_eq!(out.code, Some(0), "{out}");
}
