//! Bad input gets one clear line and a non-zero exit, never a panic.

use std::path::Path;
use std::time::Duration;

use ironvirt_test_support::{kit_guest, RunOutcome, VmmRun};

const VMM: &str = env!("CARGO_BIN_EXE_ironvirt-vmm");

fn run(args: &[&str]) -> RunOutcome {
    let out = VmmRun::run(Path::new(VMM), args, Duration::from_secs(30));
    assert!(!out.timed_out, "{out}");
    out
}

fn assert_one_line_error(out: &RunOutcome, code: i32, needle: &str) {
    assert_eq!(out.code, Some(code), "{out}");
    let err = out.stderr.trim();
    assert_eq!(err.lines().count(), 1, "expected one line: {out}");
    assert!(err.starts_with("ironvirt-vmm: error: "), "{out}");
    assert!(err.contains(needle), "expected '{needle}' in: {out}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
}

fn hello() -> String {
    kit_guest("hello.elf").to_str().unwrap().to_string()
}

#[test]
fn missing_kernel_file() {
    let out = run(&["--kernel", "/nonexistent/vmlinux"]);
    assert_one_line_error(&out, 1, "Cannot open kernel /nonexistent/vmlinux");
}

#[test]
fn file_that_is_no_kernel() {
    let dir = std::env::temp_dir().join(format!("ironvirt-nokernel-{}", std::process::id()));
    std::fs::write(&dir, b"this is just text, not a kernel\n").unwrap();
    let out = run(&["--kernel", dir.to_str().unwrap()]);
    std::fs::remove_file(&dir).unwrap();
    assert_one_line_error(&out, 1, "neither an ELF file nor a Linux bzImage");
}

#[test]
fn truncated_elf_is_rejected() {
    let path = std::env::temp_dir().join(format!("ironvirt-truncated-{}", std::process::id()));
    let bytes = std::fs::read(kit_guest("hello.elf")).unwrap();
    std::fs::write(&path, &bytes[..100]).unwrap();
    let out = run(&["--kernel", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert_one_line_error(&out, 1, "Cannot load");
}

#[test]
fn initramfs_that_does_not_fit() {
    let path = std::env::temp_dir().join(format!("ironvirt-bigrd-{}", std::process::id()));
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(40 << 20).unwrap(); // sparse: 40 MiB into a 32 MiB guest
    let out =
        run(&["--kernel", &hello(), "--initramfs", path.to_str().unwrap(), "--memory", "32M"]);
    std::fs::remove_file(&path).unwrap();
    assert_one_line_error(&out, 1, "does not fit in guest memory");
}

#[test]
fn missing_initramfs() {
    let out = run(&["--kernel", &hello(), "--initramfs", "/nonexistent/initrd"]);
    assert_one_line_error(&out, 1, "Cannot open initramfs");
}

#[test]
fn zero_memory() {
    let out = run(&["--kernel", &hello(), "--memory", "0"]);
    assert_one_line_error(&out, 2, "at least 16 MiB");
}

#[test]
fn memory_with_unknown_unit() {
    let out = run(&["--kernel", &hello(), "--memory", "12Q"]);
    assert_one_line_error(&out, 2, "unknown unit");
}

#[test]
fn zero_cpus() {
    let out = run(&["--kernel", &hello(), "--cpus", "0"]);
    assert_one_line_error(&out, 2, "--cpus");
}

#[test]
fn too_many_cpus() {
    let out = run(&["--kernel", &hello(), "--cpus", "65"]);
    assert_one_line_error(&out, 2, "65 is not in 1..=64");
}

#[test]
fn unknown_option() {
    let out = run(&["--kernel", &hello(), "--frobnicate"]);
    assert_one_line_error(&out, 2, "--frobnicate");
}

#[test]
fn missing_required_kernel() {
    let out = run(&["--cpus", "1"]);
    assert_one_line_error(&out, 2, "--kernel");
}

#[test]
fn unknown_cpu_template() {
    let out = run(&["--kernel", &hello(), "--cpu-template", "fast"]);
    assert_one_line_error(&out, 2, "unknown CPU template 'fast'");
}

#[test]
fn overlong_cmdline() {
    let long = "x".repeat(70_000);
    let out = run(&["--kernel", &hello(), "--cmdline", &long]);
    assert_one_line_error(&out, 1, "command line is 70000 bytes");
}

#[test]
fn unusable_serial_file() {
    let out = run(&["--kernel", &hello(), "--serial", "file=/nonexistent/dir/log"]);
    assert_one_line_error(&out, 1, "/nonexistent/dir/log");
}

/// Runs the VMM through a wrapper command (namespaces, another user).
fn run_wrapped(wrapper: &[&str], args: &[&str]) -> RunOutcome {
    let mut all: Vec<&str> = wrapper[1..].to_vec();
    all.push(VMM);
    all.extend_from_slice(args);
    let out = VmmRun::run(Path::new(wrapper[0]), &all, Duration::from_secs(30));
    assert!(!out.timed_out, "{out}");
    out
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn missing_dev_kvm() {
    assert!(is_root(), "this test hides /dev/kvm in a mount namespace and needs root");
    // A private mount namespace with an empty /dev: /dev/kvm is gone for the VMM only.
    let out = run_wrapped(
        &["unshare", "--mount", "sh", "-c", "mount -t tmpfs none /dev && exec \"$@\"", "sh"],
        &["--kernel", &hello()],
    );
    assert_one_line_error(&out, 1, "/dev/kvm does not exist");
}

#[test]
fn unreadable_dev_kvm() {
    assert!(is_root(), "this test drops to user nobody and needs root");
    let out = run_wrapped(
        &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
        &["--kernel", &hello()],
    );
    assert_one_line_error(&out, 1, "Cannot open /dev/kvm");
}
