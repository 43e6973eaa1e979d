//! Tests that need hardware virtualization (VT-x/AMD-V): the unmodified Debian cloud kernel
//! (built into a guest by `guests/linux/build.sh --stock`): configuration, reboot and the
//! device scenarios shared with `linux.rs` (`common`: virtio-rng, virtio-blk raw and qcow2,
//! ping and TCP over a TAP, vsock echo), and the full portable CPU template.
//! On software-nested KVM (kvm_pvm) the stock kernel dies in KVM's instruction emulator and
//! most CPUID bits come from the host CPU, so there every test prints
//! `skipped: needs hardware virtualization` and counts as ignored, never as passed.

mod common;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{strs, Kernel, VMM};
use ironvirt_test_support::{kit_guest, kvm_backing, KvmBacking, VmmRun};

const TIMEOUT: Duration = Duration::from_secs(120);

type Test = (&'static str, fn() -> Result<(), String>);

fn main() {
    let tests: [Test; 9] = [
        ("stock_kernel_one_vcpu_sees_its_configuration", || stock_configuration("1")),
        ("stock_kernel_two_vcpus_see_their_configuration", || stock_configuration("2")),
        ("stock_kernel_reboots_in_the_same_process", stock_reboot),
        ("portable_template_hides_xsave_popcnt_smap_in_the_guest", portable_template),
        ("stock_kernel_reads_bytes_from_dev_hwrng_over_intx", || {
            stock(common::virtio_rng_over_intx_feeds_dev_hwrng)
        }),
        ("stock_kernel_makes_a_filesystem_on_a_virtio_disk", || {
            stock(common::mkfs_on_a_virtio_disk)
        }),
        ("stock_kernel_uses_a_qcow2_root_over_an_unchanged_backing_file", || {
            stock(common::qcow2_root_over_an_unchanged_backing_file)
        }),
        ("stock_kernel_pings_and_moves_10_mib_each_way_over_a_tap", || {
            stock(common::ping_and_10_mib_each_way_over_a_tap)
        }),
        ("stock_kernel_echoes_over_vsock_both_ways", || stock(common::vsock_echo_both_ways)),
    ];
    let (filter, skip) = test_args(std::env::args().skip(1));
    let selected: Vec<&Test> = tests
        .iter()
        .filter(|(n, _)| filter.is_empty() || filter.iter().any(|f| n.contains(f.as_str())))
        .filter(|(n, _)| !skip.iter().any(|s| n.contains(s.as_str())))
        .collect();
    println!("\nrunning {} tests", selected.len());
    let backing = kvm_backing();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (name, test) in &selected {
        if backing != KvmBacking::Hardware {
            println!(
                "test {name} ... skipped: needs hardware virtualization (/dev/kvm is {backing:?})"
            );
            skipped += 1;
            continue;
        }
        match test() {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(e) => {
                println!("test {name} ... FAILED\n{e}");
                failed += 1;
            }
        }
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {passed} passed; {failed} failed; {skipped} ignored; 0 measured; 0 filtered out\n"
    );
    std::process::exit(i32::from(failed > 0));
}

/// Runs one of the device scenarios shared with `linux.rs` on the stock kernel; they report
/// failures by panicking, with the VMM's output in the message.
fn stock(scenario: fn(Kernel)) -> Result<(), String> {
    std::panic::catch_unwind(AssertUnwindSafe(|| scenario(Kernel::Stock))).map_err(|e| {
        let msg = e.downcast_ref::<String>().cloned();
        msg.or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the scenario panicked".to_string())
    })
}

/// libtest's arguments as far as this harness needs them: name filters, and `--skip NAME`
/// (also `--skip=NAME`); other options and the values of those that take one are ignored.
fn test_args(args: impl Iterator<Item = String>) -> (Vec<String>, Vec<String>) {
    const WITH_VALUE: [&str; 6] =
        ["--skip", "--test-threads", "--format", "--color", "--logfile", "-Z"];
    let (mut filter, mut skip) = (Vec::new(), Vec::new());
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        if let Some(name) = arg.strip_prefix("--skip=") {
            skip.push(name.to_string());
        } else if WITH_VALUE.contains(&arg.as_str()) {
            if let Some(value) = args.next() {
                if arg == "--skip" {
                    skip.push(value);
                }
            }
        } else if !arg.starts_with('-') {
            filter.push(arg);
        }
    }
    (filter, skip)
}

fn stock_initramfs(script: &str, tag: &str) -> PathBuf {
    Kernel::Stock.initramfs(script, &[], tag)
}

fn stock_args(initramfs: &Path, cpus: &str) -> Vec<String> {
    Kernel::Stock.args(initramfs, cpus)
}

fn ensure(cond: bool, what: &str, out: &impl std::fmt::Display) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(format!("{what}\n{out}"))
    }
}

fn stock_configuration(cpus: &str) -> Result<(), String> {
    let script = "#!/bin/sh\nread l < /proc/meminfo\nset -- $l\necho \"IRONVIRT-TEST nproc=$(nproc) memtotal_kb=$2 date=$(date +%s)\"\n";
    let initramfs = stock_initramfs(script, &format!("cfg{cpus}"));
    let start = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let out = VmmRun::run(Path::new(VMM), &strs(&stock_args(&initramfs, cpus)), TIMEOUT);
    let end = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let _ = std::fs::remove_file(&initramfs);
    let value = |key: &str| -> Option<String> {
        out.stdout
            .lines()
            .filter(|l| l.starts_with("IRONVIRT-TEST"))
            .flat_map(|l| l.split_whitespace())
            .find_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_string))
    };
    ensure(value("nproc").as_deref() == Some(cpus), "nproc differs", &out)?;
    let mem: u64 = value("memtotal_kb").and_then(|v| v.parse().ok()).unwrap_or(0);
    ensure((400 * 1024..=512 * 1024).contains(&mem), "MemTotal out of range", &out)?;
    let date: i64 = value("date").and_then(|v| v.parse().ok()).unwrap_or(0);
    ensure((start - 5..=end + 5).contains(&date), "guest date differs from the host's", &out)?;
    ensure(out.code == Some(0), "poweroff must exit 0", &out)
}

fn stock_reboot() -> Result<(), String> {
    let initramfs = stock_initramfs("#!/bin/sh\necho IRONVIRT-TEST booted\nreboot -f\n", "reboot");
    let mut run = VmmRun::spawn(Path::new(VMM), &strs(&stock_args(&initramfs, "1")));
    let twice = run.wait_for("IRONVIRT-TEST booted", 2, TIMEOUT);
    run.signal(15);
    let out = run.wait(Duration::from_secs(10));
    let _ = std::fs::remove_file(&initramfs);
    ensure(twice, "the guest did not boot a second time", &out)
}

fn portable_template() -> Result<(), String> {
    let kernel = kit_guest("cpuid.elf");
    let out = VmmRun::run(
        Path::new(VMM),
        &["--kernel", kernel.to_str().unwrap(), "--cpu-template", "portable"],
        TIMEOUT,
    );
    let word = |leaf: &str, reg: &str| -> u32 {
        out.values(leaf)
            .first()
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|f| f.strip_prefix(&format!("{reg}=0x")).map(str::to_string))
            })
            .and_then(|v| u32::from_str_radix(&v, 16).ok())
            .unwrap_or(u32::MAX)
    };
    let ecx1 = word("leaf-1", "ecx");
    for (bit, name) in [(13, "cx16"), (23, "popcnt"), (26, "xsave"), (28, "avx")] {
        ensure(ecx1 & (1 << bit) == 0, &format!("{name} visible"), &out)?;
    }
    ensure(word("leaf-7", "ebx") & (1 << 20) == 0, "smap visible", &out)?;
    ensure(word("leaf-d", "eax") == 0, "XSAVE leaf not empty", &out)
}
