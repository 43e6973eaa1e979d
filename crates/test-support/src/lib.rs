//! Test fixtures: builds and locates the guest test kit (`guests/`) and the Linux test guest
//! (`guests/linux/build.sh`), runs `ironvirt-vmm` with a deadline while capturing its serial
//! output, and writes small cpio archives for the Linux guest's test scripts.
//!
//! Used only by tests and benches. When something a test needs is missing it panics with a
//! message naming the missing piece and the command that provides it: tests never pass
//! silently without their guest.
#![forbid(unsafe_code)]

mod cpio;
mod runner;

pub use cpio::newc_archive;
pub use ironvirt_hypervisor::{kvm_backing, KvmBacking};
pub use runner::{RunOutcome, VmmRun};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root exists")
}

/// Builds the guest test kit once per test process and returns the path of guest `name`
/// (e.g. `hello.elf`, `smp.bzimage`).
pub fn kit_guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let dir = repo_root().join("guests");
    let built = BUILT.get_or_init(|| {
        let out = Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run make (install build-essential): {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "building the guest test kit failed (run `make -C guests`):\n{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    let path = dir.join("build").join(name);
    assert!(
        path.exists(),
        "guest {name} missing after building the kit: is it in guests/Makefile?"
    );
    path
}

/// A static user-space program for the Linux test guests (`guests/linux/tools/NAME.c`, built
/// by the kit's Makefile), to add to an initramfs with [`LinuxGuest::initramfs_with_files`].
pub fn linux_tool(name: &str) -> PathBuf {
    kit_guest(&format!("linux/{name}"))
}

/// A Linux guest prepared by `guests/linux/build.sh`.
#[derive(Clone, Debug)]
pub struct LinuxGuest {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Uncompressed initramfs.
    pub initramfs: PathBuf,
    /// Recommended command line.
    pub cmdline: String,
}

impl LinuxGuest {
    /// A copy of the guest's initramfs with `script` appended as `/test.sh` in a second cpio
    /// archive (the guest's /init runs it, then powers off). `tag` names the temporary file.
    pub fn initramfs_with_script(&self, script: &str, tag: &str) -> PathBuf {
        self.initramfs_with_files(script, &[], tag)
    }

    /// Like [`LinuxGuest::initramfs_with_script`], also adding each host file of `files` as an
    /// executable at the given guest path (relative to `/`, in an existing directory), e.g.
    /// `("vsock-echo", &linux_tool("vsock-echo"))`.
    pub fn initramfs_with_files(
        &self,
        script: &str,
        files: &[(&str, &Path)],
        tag: &str,
    ) -> PathBuf {
        let mut image = std::fs::read(&self.initramfs).expect("initramfs readable");
        let contents: Vec<Vec<u8>> = files
            .iter()
            .map(|(_, host)| {
                std::fs::read(host)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", host.display()))
            })
            .collect();
        let mut entries = vec![("test.sh", 0o100755, script.as_bytes())];
        entries.extend(
            files.iter().zip(&contents).map(|((guest, _), data)| (*guest, 0o100755, &data[..])),
        );
        image.extend(newc_archive(&entries));
        let path = std::env::temp_dir().join(format!("ironvirt-{tag}-{}.cpio", std::process::id()));
        std::fs::write(&path, image).expect("temp dir writable");
        path
    }
}

impl LinuxGuest {
    /// `ironvirt-vmm` arguments booting this guest with `initramfs` (usually from
    /// [`LinuxGuest::initramfs_with_script`]), its recommended command line, `cpus` vCPUs and
    /// `memory`.
    pub fn vmm_args(&self, initramfs: &Path, cpus: &str, memory: &str) -> Vec<String> {
        let kernel = self.kernel.to_str().expect("UTF-8 cache path");
        let initramfs = initramfs.to_str().expect("UTF-8 temp path");
        ["--kernel", kernel, "--initramfs", initramfs, "--cmdline", &self.cmdline]
            .into_iter()
            .chain(["--cpus", cpus, "--memory", memory])
            .map(str::to_string)
            .collect()
    }
}

/// Builds (or finds in the cache) the Linux test guest, or the stock-kernel guest with
/// `stock`. The first build takes ~15 minutes; later calls return at once.
pub fn linux_guest(stock: bool) -> LinuxGuest {
    static TEST: OnceLock<Result<LinuxGuest, String>> = OnceLock::new();
    static STOCK: OnceLock<Result<LinuxGuest, String>> = OnceLock::new();
    let cell = if stock { &STOCK } else { &TEST };
    match cell.get_or_init(|| build_linux_guest(stock)) {
        Ok(g) => g.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn build_linux_guest(stock: bool) -> Result<LinuxGuest, String> {
    let script = repo_root().join("guests/linux/build.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script);
    if stock {
        cmd.arg("--stock");
    }
    let how = format!("bash guests/linux/build.sh{}", if stock { " --stock" } else { "" });
    let out = cmd.output().map_err(|e| format!("cannot run `{how}`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{how}` failed; run it by hand to see why:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    let kernel = ["vmlinux", "vmlinuz"].iter().map(|k| dir.join(k)).find(|p| p.exists());
    let kernel = kernel
        .ok_or_else(|| format!("`{how}` printed {} but no kernel is there", dir.display()))?;
    let cmdline = std::fs::read_to_string(dir.join("cmdline"))
        .map_err(|e| format!("cannot read {}/cmdline: {e}", dir.display()))?;
    Ok(LinuxGuest {
        kernel,
        initramfs: dir.join("initramfs.cpio"),
        cmdline: cmdline.trim().to_string(),
    })
}

/// Where the `ironvirt-vmm` binary under test is (set by cargo for the bin crate's tests, or
/// by `IRONVIRT_VMM`).
pub fn vmm_binary() -> PathBuf {
    if let Ok(p) = std::env::var("IRONVIRT_VMM") {
        return PathBuf::from(p);
    }
    let root = repo_root();
    for profile in ["release", "debug"] {
        let p = root.join("target").join(profile).join("ironvirt-vmm");
        if p.exists() {
            return p;
        }
    }
    panic!("ironvirt-vmm not built: run `cargo build --release` or set IRONVIRT_VMM");
}

/// Panics unless `/dev/kvm` is usable, naming what to do.
pub fn require_kvm() {
    assert!(
        kvm_backing() != KvmBacking::Absent,
        "/dev/kvm is missing: these tests boot real guests on KVM (load kvm_intel/kvm_amd or run on a host with KVM)"
    );
}
