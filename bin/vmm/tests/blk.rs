//! virtio-blk on the guest test kit: what the guest writes lands in the host image, byte for
//! byte; qcow2 overlays leave their backing file alone; read-only disks refuse writes; a
//! writable image cannot be opened by two VMMs; guest flushes reach the host as fsyncs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ironvirt_test_support::{kit_guest, require_kvm, RunOutcome, VmmRun};

const VMM: &str = env!("CARGO_BIN_EXE_ironvirt-vmm");
const TIMEOUT: Duration = Duration::from_secs(60);

fn temp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ironvirt-blk-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn raw_image(path: &Path, mib: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
}

/// What the kit's vblk guest writes into sector `n` (guests/src/vblk.c).
fn pattern(n: u64) -> Vec<u8> {
    let mut v = format!("IRONVIRT vblk sector {n:010}\n").into_bytes();
    v.extend((32..512u64).map(|i| ((i + n) & 0xff) as u8));
    v
}

fn sector(image: &[u8], n: u64) -> &[u8] {
    &image[(n * 512) as usize..(n * 512 + 512) as usize]
}

fn vblk(disk: &str, cmdline: &str) -> RunOutcome {
    require_kvm();
    let kernel = kit_guest("vblk.elf");
    let out = VmmRun::run(
        Path::new(VMM),
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "128M",
            "--cmdline",
            cmdline,
            "--disk",
            disk,
        ],
        TIMEOUT,
    );
    assert!(!out.timed_out, "{out}");
    out
}

#[test]
fn guest_writes_land_in_the_raw_image_at_the_right_sectors() {
    let dir = temp("raw");
    let img = dir.join("disk.raw");
    raw_image(&img, 8);
    let out = vblk(
        &format!("path={},format=raw,serial=ivtest01", img.display()),
        "write_sector=0,5,16383",
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(out.value("blk-capacity"), "16384");
    assert_eq!(out.value("blk-serial"), "ivtest01");
    assert_eq!(out.value("blk-write"), "ok");
    assert_eq!(out.value("blk-read"), "ok");
    assert_eq!(out.value("blk-flush"), "ok");
    let image = std::fs::read(&img).unwrap();
    for n in [0, 5, 16383] {
        assert_eq!(sector(&image, n), &pattern(n)[..], "sector {n} on the host");
    }
    assert!(sector(&image, 1).iter().all(|&b| b == 0), "untouched sectors stay zero");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn read_only_disk_rejects_writes_and_is_opened_read_only() {
    let dir = temp("ro");
    let img = dir.join("disk.raw");
    raw_image(&img, 1);
    let before = std::fs::read(&img).unwrap();
    let out = vblk(&format!("path={},readonly=on", img.display()), "write_sector=3");
    assert_eq!(out.value("blk-readonly"), "1", "{out}");
    assert_eq!(out.value("blk-write-sector"), "3 ioerr", "{out}");
    assert_eq!(std::fs::read(&img).unwrap(), before, "the image is unchanged");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_vmm_cannot_open_the_same_writable_image() {
    require_kvm();
    let dir = temp("lock");
    let img = dir.join("disk.raw");
    raw_image(&img, 1);
    let disk = format!("path={},format=raw", img.display());
    let idle = kit_guest("idle.elf");
    let mut first =
        VmmRun::spawn(Path::new(VMM), &["--kernel", idle.to_str().unwrap(), "--disk", &disk]);
    assert!(first.wait_for("idle: ready", 1, TIMEOUT), "{}", first.output());
    let second = VmmRun::run(
        Path::new(VMM),
        &["--kernel", idle.to_str().unwrap(), "--disk", &disk],
        TIMEOUT,
    );
    first.signal(15);
    let _ = first.wait(Duration::from_secs(10));
    assert_eq!(second.code, Some(1), "{second}");
    assert!(
        second.stderr.contains(&img.display().to_string()),
        "the error names the image: {second}"
    );
    assert!(second.stderr.contains("in use"), "{second}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn guest_flushes_reach_the_host_as_fsync() {
    require_kvm();
    let dir = temp("flush");
    let img = dir.join("disk.raw");
    raw_image(&img, 1);
    let trace = dir.join("strace.out");
    let kernel = kit_guest("vblk.elf");
    let out = VmmRun::run(
        Path::new("strace"),
        &[
            "-f",
            "-qq",
            "-e",
            "trace=fsync,fdatasync",
            "-o",
            trace.to_str().unwrap(),
            VMM,
            "--kernel",
            kernel.to_str().unwrap(),
            "--cmdline",
            "write_sector=1",
            "--disk",
            &format!("path={}", img.display()),
        ],
        TIMEOUT,
    );
    assert_eq!(out.value("blk-flush"), "ok", "{out}");
    let syscalls = std::fs::read_to_string(&trace).unwrap();
    let syncs =
        syscalls.lines().filter(|l| l.contains("fsync(") || l.contains("fdatasync(")).count();
    assert!(syncs >= 1, "one guest flush, {syncs} host fsyncs:\n{syscalls}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn qcow2_overlay_takes_the_writes_and_its_backing_file_stays_identical() {
    let dir = temp("qcow2");
    let base = dir.join("base.raw");
    raw_image(&base, 8);
    let base_before = std::fs::read(&base).unwrap();
    let overlay = dir.join("overlay.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(&overlay)
        .status()
        .expect("qemu-img (qemu-utils) is installed by scripts/install-deps.sh");
    assert!(made.success());
    let out =
        vblk(&format!("path={},format=qcow2,backing=on", overlay.display()), "write_sector=0,7");
    assert_eq!(out.value("blk-write"), "ok", "{out}");
    assert_eq!(out.value("blk-read"), "ok", "{out}");
    assert_eq!(std::fs::read(&base).unwrap(), base_before, "backing file untouched");
    let flat = dir.join("flat.raw");
    let conv = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&overlay)
        .arg(&flat)
        .status()
        .unwrap();
    assert!(conv.success());
    let image = std::fs::read(&flat).unwrap();
    assert_eq!(sector(&image, 7), &pattern(7)[..]);
    // Without backing=on the overlay must not open its backing file.
    let refused = VmmRun::run(
        Path::new(VMM),
        &[
            "--kernel",
            kit_guest("vblk.elf").to_str().unwrap(),
            "--disk",
            &format!("path={},format=qcow2", overlay.display()),
        ],
        TIMEOUT,
    );
    assert_eq!(refused.code, Some(1), "{refused}");
    assert!(refused.stderr.contains("backing"), "{refused}");
    std::fs::remove_dir_all(&dir).unwrap();
}
