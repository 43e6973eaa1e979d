//! Definition checks on define and edit: each field on its own ([`validate`], 422) and against
//! the other VMs ([`check_conflicts`], 409). Messages name the offending field.

use std::path::{Path, PathBuf};

use ironvirt_api_types::VmDefinition;

use crate::size;

/// Most vCPUs a VM may have.
pub const MAX_CPUS: u32 = 64;
/// Longest kernel command line the VMM accepts (docs/PLATFORM.md: 64 KiB - 1 with the NUL).
pub const MAX_CMDLINE: usize = 64 * 1024 - 2;

/// A field of a definition with an invalid value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid {field}: {problem}")]
pub struct ValidationError {
    /// The field, as a path into the definition (`boot.kernel`, `disks[1].path`).
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

/// A value another VM already uses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value} is already used by VM '{other}'")]
pub struct ConflictError {
    /// The field (`name`, `uuid`, `disks[0].path`, `nics[0].mac`, `vsock.cid`).
    pub field: String,
    /// The clashing value.
    pub value: String,
    /// The VM that has it.
    pub other: String,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ValidationError {
    ValidationError { field: field.into(), problem: problem.into() }
}

/// Checks a VM name: 1-64 characters of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn check_name(name: &str) -> Result<(), ValidationError> {
    if name.is_empty() || name.len() > 64 {
        return Err(invalid("name", format!("'{name}' must be 1-64 characters long")));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(invalid("name", format!("'{name}' must not start with '.' or '-'")));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c))) {
        return Err(invalid(
            "name",
            format!("'{name}' contains {c:?}; allowed: A-Z a-z 0-9 . _ -"),
        ));
    }
    Ok(())
}

fn check_file(field: &str, path: &str) -> Result<(), ValidationError> {
    if path.is_empty() {
        return Err(invalid(field, "the path is empty"));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() || m.file_type_is_block() => Ok(()),
        Ok(_) => Err(invalid(field, format!("{path} is not a regular file"))),
        Err(e) => Err(invalid(field, format!("{path}: {e}"))),
    }
}

trait BlockCheck {
    fn file_type_is_block(&self) -> bool;
}

impl BlockCheck for std::fs::Metadata {
    fn file_type_is_block(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.file_type().is_block_device()
    }
}

/// Parses a MAC address ("52:54:00:12:34:56") and checks it is unicast.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    (parts.next().is_none() && out[0] & 1 == 0).then_some(out)
}

/// Checks every field of `def` on its own; returns the memory size in bytes.
pub fn validate(def: &VmDefinition) -> Result<u64, ValidationError> {
    check_name(&def.name)?;
    if def.cpus == 0 || def.cpus > MAX_CPUS {
        return Err(invalid("cpus", format!("{} is outside 1-{MAX_CPUS}", def.cpus)));
    }
    let memory = size::parse_memory(&def.memory).map_err(|e| invalid("memory", e.to_string()))?;
    check_file("boot.kernel", &def.boot.kernel)?;
    if let Some(initrd) = &def.boot.initramfs {
        check_file("boot.initramfs", initrd)?;
    }
    if let Some(cmdline) = &def.boot.cmdline {
        if cmdline.len() > MAX_CMDLINE || cmdline.contains('\0') {
            return Err(invalid("boot.cmdline", "longer than 65534 bytes or contains NUL"));
        }
    }
    if let Some(t) = &def.cpu_template {
        if t != "host" && t != "portable" {
            return Err(invalid("cpu_template", format!("'{t}' is not 'host' or 'portable'")));
        }
    }
    let mut seen_disks: Vec<PathBuf> = Vec::new();
    for (i, d) in def.disks.iter().enumerate() {
        let field = format!("disks[{i}].path");
        check_file(&field, &d.path)?;
        if let Some(f) = &d.format {
            if f != "raw" && f != "qcow2" {
                return Err(invalid(
                    format!("disks[{i}].format"),
                    format!("'{f}' is not raw or qcow2"),
                ));
            }
        }
        let canon = canonical(&d.path);
        if seen_disks.contains(&canon) {
            return Err(invalid(field, format!("{} is attached twice", d.path)));
        }
        seen_disks.push(canon);
    }
    let mut seen_macs = Vec::new();
    for (i, n) in def.nics.iter().enumerate() {
        if n.tap.is_empty() || n.tap.len() > 15 || n.tap.contains('/') || n.tap.contains('\0') {
            return Err(invalid(
                format!("nics[{i}].tap"),
                format!("'{}' is not a TAP device name", n.tap),
            ));
        }
        if let Some(mac) = &n.mac {
            let field = format!("nics[{i}].mac");
            let parsed = parse_mac(mac)
                .ok_or_else(|| invalid(&field, format!("'{mac}' is not a unicast MAC address")))?;
            if seen_macs.contains(&parsed) {
                return Err(invalid(field, format!("{mac} is used twice")));
            }
            seen_macs.push(parsed);
        }
    }
    if let Some(v) = &def.vsock {
        if v.cid < 3 || v.cid == u32::MAX {
            return Err(invalid("vsock.cid", format!("{} is reserved; use 3 or more", v.cid)));
        }
    }
    Ok(memory)
}

fn canonical(path: &str) -> PathBuf {
    Path::new(path).canonicalize().unwrap_or_else(|_| PathBuf::from(path))
}

/// Checks `def` against the other VMs: unique name and UUID, no shared writable disk (a disk
/// writable in either VM), no shared MAC or vsock CID. `others` must not contain `def` itself.
pub fn check_conflicts<'a>(
    def: &VmDefinition,
    others: impl IntoIterator<Item = &'a VmDefinition>,
) -> Result<(), ConflictError> {
    let conflict = |field: String, value: String, other: &VmDefinition| ConflictError {
        field,
        value,
        other: other.name.clone(),
    };
    for o in others {
        if o.name == def.name {
            return Err(conflict("name".into(), def.name.clone(), o));
        }
        if def.uuid.is_some() && o.uuid == def.uuid {
            return Err(conflict("uuid".into(), format!("{}", def.uuid.unwrap_or_default()), o));
        }
        for (i, d) in def.disks.iter().enumerate() {
            let mine = canonical(&d.path);
            let clash = o
                .disks
                .iter()
                .any(|od| (!d.readonly || !od.readonly) && canonical(&od.path) == mine);
            if clash {
                return Err(conflict(format!("disks[{i}].path"), d.path.clone(), o));
            }
        }
        for (i, n) in def.nics.iter().enumerate() {
            let Some(mac) = n.mac.as_deref().and_then(parse_mac) else { continue };
            if o.nics.iter().any(|on| on.mac.as_deref().and_then(parse_mac) == Some(mac)) {
                return Err(conflict(
                    format!("nics[{i}].mac"),
                    n.mac.clone().unwrap_or_default(),
                    o,
                ));
            }
        }
        if let (Some(a), Some(b)) = (&def.vsock, &o.vsock) {
            if a.cid == b.cid {
                return Err(conflict("vsock.cid".into(), a.cid.to_string(), o));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ironvirt_api_types::{BootSpec, DiskSpec, NicSpec, VsockSpec};

    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        kernel: String,
        disk: String,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        let disk = dir.path().join("disk.raw");
        std::fs::write(&kernel, b"k").unwrap();
        std::fs::write(&disk, b"d").unwrap();
        Fixture {
            kernel: kernel.to_string_lossy().into(),
            disk: disk.to_string_lossy().into(),
            _dir: dir,
        }
    }

    fn def(f: &Fixture, name: &str) -> VmDefinition {
        VmDefinition {
            name: name.into(),
            uuid: None,
            cpus: 1,
            memory: "64M".into(),
            boot: BootSpec { kernel: f.kernel.clone(), initramfs: None, cmdline: None },
            disks: vec![],
            nics: vec![],
            vsock: None,
            cpu_template: None,
            autostart: false,
        }
    }

    fn field_of(def: &VmDefinition) -> String {
        let err = validate(def).unwrap_err();
        assert!(err.to_string().contains(&err.field), "message names the field: {err}");
        err.field
    }

    #[test]
    fn a_minimal_definition_is_valid() {
        let f = fixture();
        assert_eq!(validate(&def(&f, "web-1.a_b")), Ok(64 << 20));
    }

    #[test]
    fn names_outside_the_charset_or_length_are_rejected() {
        let f = fixture();
        let long = "a".repeat(65);
        for bad in ["", ".x", "-x", "a b", "a/b", "ü", long.as_str()] {
            assert_eq!(field_of(&def(&f, bad)), "name", "{bad:?}");
        }
        assert!(check_name(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn each_invalid_field_is_named() {
        let f = fixture();
        let mut d = def(&f, "a");
        d.cpus = 0;
        assert_eq!(field_of(&d), "cpus");
        d.cpus = 65;
        assert_eq!(field_of(&d), "cpus");
        let mut d = def(&f, "a");
        d.memory = "8M".into();
        assert_eq!(field_of(&d), "memory");
        let mut d = def(&f, "a");
        d.boot.kernel = "/nonexistent/vmlinux".into();
        assert_eq!(field_of(&d), "boot.kernel");
        let mut d = def(&f, "a");
        d.boot.initramfs = Some("/nonexistent/initrd".into());
        assert_eq!(field_of(&d), "boot.initramfs");
        let mut d = def(&f, "a");
        d.boot.kernel = "/".into();
        assert_eq!(field_of(&d), "boot.kernel", "a directory is not a kernel");
        let mut d = def(&f, "a");
        d.cpu_template = Some("fast".into());
        assert_eq!(field_of(&d), "cpu_template");
        let mut d = def(&f, "a");
        d.disks = vec![DiskSpec { path: "/nonexistent.raw".into(), format: None, readonly: false }];
        assert_eq!(field_of(&d), "disks[0].path");
        let disk = DiskSpec { path: f.disk.clone(), format: None, readonly: false };
        d.disks = vec![disk.clone(), disk.clone()];
        assert_eq!(field_of(&d), "disks[1].path");
        d.disks = vec![DiskSpec { format: Some("vmdk".into()), ..disk }];
        assert_eq!(field_of(&d), "disks[0].format");
        let mut d = def(&f, "a");
        d.nics = vec![NicSpec { tap: "tap0".into(), mac: Some("01:00:00:00:00:01".into()) }];
        assert_eq!(field_of(&d), "nics[0].mac", "multicast");
        d.nics = vec![NicSpec { tap: "tap0".into(), mac: Some("52:54:00:zz:00:01".into()) }];
        assert_eq!(field_of(&d), "nics[0].mac");
        d.nics = vec![NicSpec { tap: "a-very-long-tap-name".into(), mac: None }];
        assert_eq!(field_of(&d), "nics[0].tap");
        let mut d = def(&f, "a");
        d.vsock = Some(VsockSpec { cid: 2 });
        assert_eq!(field_of(&d), "vsock.cid");
    }

    #[test]
    fn shared_names_uuids_writable_disks_macs_and_cids_conflict() {
        let f = fixture();
        let mut a = def(&f, "a");
        a.uuid = Some(uuid::Uuid::from_u128(7));
        a.disks = vec![DiskSpec { path: f.disk.clone(), format: None, readonly: false }];
        a.nics = vec![NicSpec { tap: "t0".into(), mac: Some("52:54:00:00:00:01".into()) }];
        a.vsock = Some(VsockSpec { cid: 3 });

        let err = check_conflicts(&def(&f, "a"), [&a]).unwrap_err();
        assert_eq!((err.field.as_str(), err.other.as_str()), ("name", "a"));

        let mut b = def(&f, "b");
        b.uuid = a.uuid;
        assert_eq!(check_conflicts(&b, [&a]).unwrap_err().field, "uuid");

        // The same file through another spelling of its path.
        let dir = Path::new(&f.disk).parent().unwrap().to_string_lossy().to_string();
        let mut b = def(&f, "b");
        b.disks =
            vec![DiskSpec { path: format!("{dir}/./disk.raw"), format: None, readonly: true }];
        assert_eq!(check_conflicts(&b, [&a]).unwrap_err().field, "disks[0].path");

        let mut b = def(&f, "b");
        b.nics = vec![NicSpec { tap: "t1".into(), mac: Some("52:54:00:00:00:01".into()) }];
        assert_eq!(check_conflicts(&b, [&a]).unwrap_err().field, "nics[0].mac");

        let mut b = def(&f, "b");
        b.vsock = Some(VsockSpec { cid: 3 });
        assert_eq!(check_conflicts(&b, [&a]).unwrap_err().field, "vsock.cid");
    }

    #[test]
    fn read_only_disks_may_be_shared() {
        let f = fixture();
        let ro = DiskSpec { path: f.disk.clone(), format: None, readonly: true };
        let mut a = def(&f, "a");
        a.disks = vec![ro.clone()];
        let mut b = def(&f, "b");
        b.disks = vec![ro];
        assert_eq!(check_conflicts(&b, [&a]), Ok(()));
    }
}
