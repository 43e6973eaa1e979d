//! What a VM is made of, as given on the command line (or later by the API).

use std::path::PathBuf;
use std::str::FromStr;

use ironvirt_arch::{BootProtocol, CpuTemplate};

/// Where the serial console (COM1) goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SerialConfig {
    /// This process's stdin/stdout (raw mode when stdin is a terminal).
    #[default]
    Stdio,
    /// Appended to a file; no input.
    File(PathBuf),
    /// A Unix socket the VMM listens on; several clients may connect, output is kept in a
    /// bounded buffer while none is.
    Socket(PathBuf),
    /// Discarded.
    None,
}

impl FromStr for SerialConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let path = |p: &str| {
            if p.is_empty() {
                Err(format!("'{s}' needs a path"))
            } else {
                Ok(PathBuf::from(p))
            }
        };
        match s.split_once('=') {
            None if s == "stdio" => Ok(Self::Stdio),
            None if s == "none" || s == "off" => Ok(Self::None),
            Some(("file", p)) => Ok(Self::File(path(p)?)),
            Some(("socket", p)) => Ok(Self::Socket(path(p)?)),
            _ => Err(format!(
                "unknown serial backend '{s}' (expected stdio, none, file=PATH or socket=PATH)"
            )),
        }
    }
}

/// Splits `key=value,key=value` device options, rejecting unknown keys and repeats.
fn options<'a>(s: &'a str, allowed: &[&str]) -> Result<Vec<(&'a str, &'a str)>, String> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| format!("'{part}' is not key=value"))?;
        if !allowed.contains(&k) {
            return Err(format!("unknown option '{k}' (expected one of: {})", allowed.join(", ")));
        }
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(format!("option '{k}' given twice"));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{key}={v}: expected on or off")),
    }
}

/// Image formats a disk may have; always given, never probed from the image's content.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiskFormat {
    /// A raw file or block device.
    #[default]
    Raw,
    /// qcow2 v3.
    Qcow2,
}

/// `--disk path=P[,format=raw|qcow2][,readonly=on][,direct=on][,serial=S][,backing=on]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Image path.
    pub path: PathBuf,
    /// Image format.
    pub format: DiskFormat,
    /// Attach read-only.
    pub readonly: bool,
    /// O_DIRECT.
    pub direct: bool,
    /// Serial number reported to the guest (at most 20 bytes).
    pub serial: Option<String>,
    /// Allow a qcow2 image to open its backing file.
    pub backing: bool,
}

impl FromStr for DiskConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut d = DiskConfig {
            path: PathBuf::new(),
            format: DiskFormat::Raw,
            readonly: false,
            direct: false,
            serial: None,
            backing: false,
        };
        for (k, v) in options(s, &["path", "format", "readonly", "direct", "serial", "backing"])? {
            match k {
                "path" => d.path = PathBuf::from(v),
                "format" => {
                    d.format = match v {
                        "raw" => DiskFormat::Raw,
                        "qcow2" => DiskFormat::Qcow2,
                        _ => return Err(format!("format={v}: expected raw or qcow2")),
                    }
                }
                "readonly" => d.readonly = on_off(k, v)?,
                "direct" => d.direct = on_off(k, v)?,
                "backing" => d.backing = on_off(k, v)?,
                _ => {
                    if v.len() > 20 {
                        return Err(format!("serial '{v}' is longer than 20 bytes"));
                    }
                    d.serial = Some(v.to_string());
                }
            }
        }
        if d.path.as_os_str().is_empty() {
            return Err("a disk needs path=...".into());
        }
        Ok(d)
    }
}

/// `--net tap=NAME[,mac=MAC]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// TAP device name.
    pub tap: String,
    /// MAC address; generated from the TAP name when absent.
    pub mac: [u8; 6],
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad = || format!("'{s}' is not a MAC address (like 52:54:00:12:34:56)");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("'{s}' is a multicast address"));
    }
    Ok(mac)
}

impl FromStr for NetConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut tap = None;
        let mut mac = None;
        for (k, v) in options(s, &["tap", "mac"])? {
            match k {
                "tap" if !v.is_empty() && v.len() < 16 => tap = Some(v.to_string()),
                "tap" => return Err(format!("tap name '{v}' must be 1-15 bytes")),
                _ => mac = Some(parse_mac(v)?),
            }
        }
        let tap = tap.ok_or("a NIC needs tap=NAME")?;
        // Locally administered, derived from the name so it is stable across runs.
        let mac = mac.unwrap_or_else(|| {
            let h = tap.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
            let [a, b, c, _] = h.to_le_bytes();
            [0x52, 0x54, 0x00, a, b, c]
        });
        Ok(NetConfig { tap, mac })
    }
}

/// `--vsock cid=N,socket=PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// Guest context id (>= 3).
    pub cid: u64,
    /// Host-side Unix socket.
    pub socket: PathBuf,
}

impl FromStr for VsockConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut cid = None;
        let mut socket = None;
        for (k, v) in options(s, &["cid", "socket"])? {
            match k {
                "cid" => {
                    let n: u64 = v.parse().map_err(|_| format!("cid={v} is not a number"))?;
                    if !(3..=u64::from(u32::MAX - 1)).contains(&n) {
                        return Err(format!("cid={v}: guest CIDs are 3..4294967294"));
                    }
                    cid = Some(n);
                }
                _ => socket = Some(PathBuf::from(v)),
            }
        }
        Ok(VsockConfig {
            cid: cid.ok_or("vsock needs cid=N")?,
            socket: socket.ok_or("vsock needs socket=PATH")?,
        })
    }
}

/// Everything needed to boot a VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Kernel image (ELF vmlinux, PVH ELF, or bzImage).
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// CPUID template.
    pub cpu_template: CpuTemplate,
    /// Boot protocol for ELF kernels.
    pub boot_protocol: BootProtocol,
    /// Serial console backend.
    pub serial: SerialConfig,
    /// Exit instead of rebooting when the guest resets.
    pub no_reboot: bool,
    /// Attach a virtio-rng device (PCI).
    pub rng: bool,
    /// virtio-blk disks, in order.
    pub disks: Vec<DiskConfig>,
    /// virtio-net NICs.
    pub nets: Vec<NetConfig>,
    /// virtio-vsock.
    pub vsock: Option<VsockConfig>,
    /// Attach a virtio-balloon.
    pub balloon: bool,
    /// Where to serve the control API (docs/API.md), if anywhere.
    pub api_socket: Option<PathBuf>,
    /// Where to write `{"code": N, "reason": "..."}` when the VMM exits.
    pub exit_file: Option<PathBuf>,
}

/// Most vCPUs a VM may have (bounded further by KVM on the host).
pub const MAX_CPUS: u32 = 64;

/// Parses a memory size: a number with an optional binary suffix K, M, G or T (optionally
/// followed by `iB` or `B`); a bare number means MiB, as with QEMU's `-m`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!("'{s}' is not a size (examples: 512M, 2G, 1024)"));
    }
    let n: u64 = digits.parse().map_err(|_| format!("'{s}' is too large"))?;
    let shift = match suffix.trim_end_matches("iB").trim_end_matches('B') {
        "" | "M" | "m" => 20,
        "K" | "k" => 10,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(format!("'{s}' has an unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_and_mib_default() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("6G"), Ok(6 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("256"), Ok(256 << 20));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("abc").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999999T").is_err());
    }

    #[test]
    fn device_options_parse_and_reject_mistakes() {
        let d: DiskConfig = "path=/a.qcow2,format=qcow2,readonly=on,serial=abc".parse().unwrap();
        assert_eq!(
            (d.format, d.readonly, d.serial.as_deref()),
            (DiskFormat::Qcow2, true, Some("abc"))
        );
        assert!("format=raw".parse::<DiskConfig>().unwrap_err().contains("path"));
        assert!("path=/a,format=vmdk".parse::<DiskConfig>().is_err());
        assert!("path=/a,colour=red".parse::<DiskConfig>().unwrap_err().contains("unknown option"));
        assert!("path=/a,path=/b".parse::<DiskConfig>().unwrap_err().contains("twice"));
        let n: NetConfig = "tap=ivtap0,mac=52:54:00:12:34:56".parse().unwrap();
        assert_eq!(n.mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert!("tap=x,mac=01:00:00:00:00:00".parse::<NetConfig>().is_err(), "multicast");
        assert!("tap=x,mac=zz".parse::<NetConfig>().is_err());
        let auto: NetConfig = "tap=ivtap0".parse().unwrap();
        assert_eq!(auto.mac[..3], [0x52, 0x54, 0x00]);
        let v: VsockConfig = "cid=3,socket=/run/v.sock".parse().unwrap();
        assert_eq!(v.cid, 3);
        assert!("cid=2,socket=/x".parse::<VsockConfig>().is_err(), "CID 2 is the host");
        assert!("cid=3".parse::<VsockConfig>().is_err());
    }

    #[test]
    fn serial_backends_parse() {
        assert_eq!("stdio".parse(), Ok(SerialConfig::Stdio));
        assert_eq!("file=/tmp/x".parse(), Ok(SerialConfig::File("/tmp/x".into())));
        assert_eq!("socket=/run/s".parse(), Ok(SerialConfig::Socket("/run/s".into())));
        assert!("file=".parse::<SerialConfig>().is_err());
        assert!("tcp=1".parse::<SerialConfig>().is_err());
    }
}
