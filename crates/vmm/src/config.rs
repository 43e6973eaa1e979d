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
    fn serial_backends_parse() {
        assert_eq!("stdio".parse(), Ok(SerialConfig::Stdio));
        assert_eq!("file=/tmp/x".parse(), Ok(SerialConfig::File("/tmp/x".into())));
        assert_eq!("socket=/run/s".parse(), Ok(SerialConfig::Socket("/run/s".into())));
        assert!("file=".parse::<SerialConfig>().is_err());
        assert!("tcp=1".parse::<SerialConfig>().is_err());
    }
}
