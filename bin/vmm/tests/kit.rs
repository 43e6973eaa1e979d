//! Boots the guest test kit on real KVM and checks what each guest saw and did.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ironvirt_test_support::{kit_guest, require_kvm, RunOutcome, VmmRun};

const VMM: &str = env!("CARGO_BIN_EXE_ironvirt-vmm");
const TIMEOUT: Duration = Duration::from_secs(60);

fn boot(guest: &str, extra: &[&str]) -> RunOutcome {
    require_kvm();
    let kernel = kit_guest(guest);
    let mut args = vec!["--kernel", kernel.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = VmmRun::run(Path::new(VMM), &args, TIMEOUT);
    assert!(!out.timed_out, "{out}");
    out
}

fn assert_exit(out: &RunOutcome, code: i32) {
    assert_eq!(out.code, Some(code), "{out}");
}

fn assert_completed(out: &RunOutcome, guest: &str) {
    assert!(out.stdout.contains(&format!("IRONVIRT-KIT {guest} start")), "{out}");
    assert!(out.stdout.contains(&format!("IRONVIRT-KIT {guest} done")), "{out}");
    assert_exit(out, 0);
}

fn check_hello(image: &str, extra: &[&str], protocol: &str) {
    let mut args = vec!["--cmdline", "hello from the host", "--cpus", "2", "--memory", "256M"];
    args.extend_from_slice(extra);
    let out = boot(image, &args);
    assert_completed(&out, "hello");
    assert_eq!(out.value("boot"), protocol, "{out}");
    assert_eq!(out.value("cmdline"), "hello from the host");
    assert_eq!(out.value("cpus"), "2");
    assert_eq!(out.value("rsdp"), "0xe0000");
    // 256 MiB minus the reserved EBDA/BIOS area below 1 MiB.
    assert_eq!(out.value("mem-total-mib"), "255");
    let e820 = out.values("e820");
    assert!(e820.contains(&"0x100000 0x10000000 1".to_string()), "{out}");
    assert!(e820.contains(&"0xe0000 0x100000 2".to_string()), "{out}");
}

#[test]
fn hello_elf_with_pvh_note_boots_through_pvh() {
    check_hello("hello.elf", &[], "pvh");
}

#[test]
fn hello_elf_boots_through_the_linux_64bit_protocol() {
    check_hello("hello.elf", &["--boot-protocol", "linux"], "linux");
}

#[test]
fn hello_bzimage_boots_through_the_linux_64bit_protocol() {
    check_hello("hello.bzimage", &[], "linux");
}

#[test]
fn bzimage_refuses_pvh() {
    let out = boot("hello.bzimage", &["--boot-protocol", "pvh"]);
    assert_exit(&out, 1);
    assert!(out.stderr.contains("cannot be booted with PVH"), "{out}");
}

fn check_smp(cpus: &str) {
    let out = boot("smp.elf", &["--cpus", cpus, "--memory", "128M"]);
    assert_completed(&out, "smp");
    assert_eq!(out.value("cpus-expected"), cpus, "{out}");
    assert_eq!(out.value("cpus-online"), cpus, "{out}");
    let n: usize = cpus.parse().unwrap();
    let mut ups: Vec<u32> = out.values("cpu-up").iter().map(|v| v.parse().unwrap()).collect();
    ups.sort();
    assert_eq!(ups, (1..n as u32).collect::<Vec<_>>(), "every AP reports its APIC id once: {out}");
}

#[test]
fn smp_one_vcpu() {
    check_smp("1");
}

#[test]
fn smp_two_vcpus_all_report_in() {
    check_smp("2");
}

#[test]
fn smp_eight_vcpus_all_report_in() {
    check_smp("8");
}

#[test]
fn rtc_matches_the_host_clock() {
    let out = boot("rtc.elf", &[]);
    assert_completed(&out, "rtc");
    let guest: i64 = out.value("rtc-epoch").parse().unwrap();
    let host = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((host - guest).abs() <= 5, "guest RTC {guest} vs host {host}: {out}");
    assert!(out.value("rtc").starts_with("20"), "{out}");
}

#[test]
fn memory_256m_pattern_at_the_top() {
    let out = boot("mem.elf", &["--memory", "256M"]);
    assert_completed(&out, "mem");
    assert_eq!(out.value("mem-top"), "0x10000000");
    assert_eq!(out.value("mem-check"), "ok");
}

#[test]
fn memory_6g_pattern_above_4g() {
    let out = boot("mem.elf", &["--memory", "6G"]);
    assert_completed(&out, "mem");
    // 3 GiB below the hole, 3 GiB from 4 GiB up: RAM ends at 7 GiB.
    assert_eq!(out.value("mem-top"), "0x1c0000000");
    assert_eq!(out.value("mem-check"), "ok");
}

#[test]
fn acpi_poweroff_exits_zero() {
    let out = boot("poweroff.elf", &[]);
    assert_completed(&out, "poweroff");
    assert_eq!(out.value("pm1a-cnt"), "0x604");
    assert_eq!(out.value("slp-typ-s5"), "5");
}

#[test]
fn reset_reboots_in_the_same_process_with_nvram_kept() {
    let out = boot("reset.elf", &["--cmdline", "resets=2"]);
    assert_completed(&out, "reset");
    assert_eq!(out.values("boot-count"), vec!["1", "2", "3"], "{out}");
}

#[test]
fn keyboard_controller_reset_reboots_too() {
    let out = boot("reset.elf", &["--cmdline", "resets=1 reset=kbd"]);
    assert_completed(&out, "reset");
    assert_eq!(out.values("boot-count"), vec!["1", "2"], "{out}");
}

#[test]
fn reset_with_no_reboot_exits_three() {
    let out = boot("reset.elf", &["--cmdline", "resets=1", "--no-reboot"]);
    assert_exit(&out, 3);
    assert_eq!(out.values("boot-count"), vec!["1"], "{out}");
}

#[test]
fn pvpanic_exits_four() {
    let out = boot("panic.elf", &[]);
    assert_exit(&out, 4);
    assert!(out.stderr.contains("guest panicked"), "{out}");
}

#[test]
fn unemulatable_instruction_is_reported_with_bytes_and_exit_five() {
    let out = boot("badinsn.elf", &[]);
    assert_exit(&out, 5);
    assert!(!out.stdout.contains("survived"), "{out}");
    let err = out.stderr.trim();
    assert_eq!(err.lines().count(), 1, "one line: {out}");
    assert!(err.contains("f3 48 0f b8"), "{out}");
    assert!(err.contains("popcnt") && err.contains("RIP 0x"), "{out}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{out}");
}

#[test]
fn hostile_port_and_mmio_accesses_leave_the_vmm_running() {
    let out = boot("hostile.elf", &[]);
    assert_completed(&out, "hostile");
    assert!(out.stdout.contains("hostile: survived"));
    for v in out.values("port-read").iter().chain(out.values("mmio-read").iter()) {
        assert!(
            v.trim_start_matches("0x").chars().all(|c| c == 'f'),
            "unclaimed reads are all ones: {out}"
        );
    }
    assert_eq!(out.value("pvpanic-read"), "0x3");
}

fn cpuid_word(out: &RunOutcome, leaf: &str, reg: &str) -> u32 {
    let line = out.value(leaf);
    let field = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{reg}=0x")))
        .unwrap_or_else(|| panic!("no {reg} in {leaf}: {out}"));
    u32::from_str_radix(field, 16).unwrap()
}

#[test]
fn portable_template_hides_cx16_and_announces_the_hypervisor() {
    let out = boot("cpuid.elf", &["--cpu-template", "portable"]);
    assert_completed(&out, "cpuid");
    let ecx = cpuid_word(&out, "leaf-1", "ecx");
    assert_eq!(ecx & (1 << 13), 0, "CMPXCHG16B must be hidden: {out}");
    assert_ne!(ecx & (1 << 31), 0, "the hypervisor bit must be set: {out}");
    // KVM's signature leaf, "KVMKVMKVM".
    assert_eq!(cpuid_word(&out, "leaf-40000000", "ebx"), 0x4b4d564b, "{out}");
    // The whole template (XSAVE, POPCNT, SMAP...) is checked by tests/hardware.rs where the
    // guest's CPUID is KVM's; on software-nested KVM most CPUID bits come from the host CPU.
}

#[test]
fn each_vcpu_sees_its_apic_id_and_count_in_cpuid() {
    let out = boot("cpuid.elf", &["--cpus", "4"]);
    assert_completed(&out, "cpuid");
    let ebx = cpuid_word(&out, "leaf-1", "ebx");
    assert_eq!(ebx >> 24, 0, "the BSP has APIC id 0: {out}");
    assert_eq!((ebx >> 16) & 0xff, 4, "logical processor count: {out}");
}

#[test]
fn sixty_four_gib_of_memory_is_reported_without_being_touched() {
    let out = boot("hello.elf", &["--memory", "64G"]);
    assert_completed(&out, "hello");
    // 3 GiB below the hole + 61 GiB above 4 GiB, minus the reserved area below 1 MiB.
    assert_eq!(out.value("mem-total-mib"), "65535", "{out}");
    assert!(out.values("e820").contains(&"0x100000000 0x1040000000 1".to_string()), "{out}");
}

#[test]
fn serial_output_can_go_to_a_file() {
    let path = std::env::temp_dir().join(format!("ironvirt-serial-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let arg = format!("file={}", path.display());
    let out = boot("hello.elf", &["--serial", &arg, "--cmdline", "to a file"]);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_exit(&out, 0);
    assert!(out.stdout.is_empty(), "nothing on stdout: {out}");
    assert!(
        text.contains("IRONVIRT-KIT hello start") && text.contains("cmdline: to a file"),
        "{text}"
    );
    assert!(text.contains("IRONVIRT-KIT hello done"), "{text}");
}

fn check_vrng(irq: &str) -> RunOutcome {
    let out = boot("vrng.elf", &["--rng", "--cpus", "2", "--cmdline", irq]);
    assert_completed(&out, "vrng");
    assert!(out.stdout.contains("pci: 00:01.0 1af4:1044"), "virtio-rng on the PCI bus: {out}");
    assert_eq!(out.value("rng-bytes"), "256", "{out}");
    let distinct: u32 = out.value("rng-distinct").parse().unwrap();
    assert!(distinct > 100, "256 random bytes take many distinct values: {out}");
    out
}

#[test]
fn virtio_rng_over_pci_with_msix() {
    check_vrng("irq=msix");
}

#[test]
fn virtio_rng_over_pci_with_intx_routed_as_the_dsdt_says() {
    let out = check_vrng("irq=intx");
    // Slot 1, INTA#: GSI 16 + (1 + 0) % 8, as the DSDT's _PRT says (crates/arch tests).
    assert_eq!(out.value("virtio-intx"), "pin 1 gsi 17", "{out}");
    assert_eq!(out.value("virtio-irq"), "intx", "{out}");
    let interrupts: u32 = out.value("virtio-interrupts").parse().unwrap();
    assert!(interrupts >= 4, "one interrupt per completed request at least: {out}");
    // Reading the ISR lowers the line: a line left high would interrupt again after every
    // EOI with the ISR empty (measured: 8 for 4 requests when the line is never lowered). An
    // occasional one is legitimate on a level-triggered line (KVM injects resampled lines from
    // a work queue, so an assertion can land after the ISR was read): 0-1 here, 2 seen under
    // heavy load.
    let empty: u32 = out.value("virtio-intx-empty-isr").parse().unwrap();
    assert!(empty < interrupts, "{empty} interrupts with an empty ISR: {out}");
    assert!(!out.stdout.contains("virtio-irq-missing"), "{out}");
}

#[test]
fn virtio_rng_over_pci_polling() {
    check_vrng("irq=poll");
}

#[test]
fn no_pci_devices_means_no_rng_for_the_guest() {
    let out = boot("vrng.elf", &[]);
    assert!(out.stdout.contains("virtio: no device 1af4:1044"), "{out}");
}

#[test]
fn hostile_virtio_driver_cannot_break_the_vmm_and_the_device_recovers_after_reset() {
    let out = boot("vhostile.elf", &["--rng", "--cmdline", "dev=rng"]);
    assert_completed(&out, "vhostile");
    let cases = out.values("hostile-case");
    assert!(cases.len() >= 10, "{out}");
    assert!(
        cases.iter().any(|c| c.starts_with("avail-ahead") && c.contains("device-needs-reset")),
        "an avail index running ahead marks the device broken: {out}"
    );
    for c in cases.iter().filter(|c| c.starts_with("addr-") || c.starts_with("len-")) {
        assert!(c.ends_with("len 0"), "bad buffers complete with 0 bytes: {c}\n{out}");
    }
    assert_eq!(out.value("hostile-virtio"), "device-ok", "{out}");
    assert!(out.stderr.lines().count() < 40, "guest mistakes are logged rate-limited: {out}");
}
