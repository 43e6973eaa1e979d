//! Command-line syntax: clap derive types and the parsers of `--disk`, `--net`, `--vsock`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ironvirt_api_types::{DiskSpec, NicSpec, VsockSpec};

/// Exit codes, as printed by `--help` and documented in docs/CLI.md.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  other error
  2  usage error
  3  daemon unreachable
  4  not found (no such VM)
  5  conflict (wrong state for the request, name/disk/MAC already taken)
  6  invalid definition (rejected by the daemon, or a file that does not parse)";

/// Manage ironvirt VMs through the ironvirtd daemon.
#[derive(Debug, Parser)]
#[command(name = "ironvirt", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Daemon address: unix:/path/to/socket or tcp://host:port.
    #[arg(
        long,
        global = true,
        env = "IRONVIRT_CONNECT",
        default_value = "unix:/run/ironvirt/ironvirtd.sock",
        value_name = "ADDRESS"
    )]
    pub connect: String,
    /// Print machine-readable JSON (the API's types) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// File holding the bearer token for TCP connections (default: $IRONVIRT_TOKEN).
    #[arg(long, global = true, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List running VMs (all with --all).
    List {
        /// Include VMs that are not running.
        #[arg(long, short)]
        all: bool,
    },
    /// Define a new VM from flags.
    Create(Box<CreateArgs>),
    /// Define a VM from a TOML file (as written by `dump`).
    Define {
        /// The definition file.
        file: PathBuf,
        /// Replace the definition of an existing VM of the same name instead of failing.
        #[arg(long)]
        replace: bool,
    },
    /// Print a VM's definition as TOML.
    Dump {
        /// VM name.
        name: String,
    },
    /// Edit a VM's definition in $VISUAL / $EDITOR (applies at the next start).
    Edit {
        /// VM name.
        name: String,
    },
    /// Remove a VM's definition (it must be shut off or crashed).
    Undefine {
        /// VM name.
        name: String,
    },
    /// Start a VM.
    Start {
        /// VM name.
        name: String,
    },
    /// Press the ACPI power button; the daemon destroys the VM after the timeout.
    Shutdown {
        /// VM name.
        name: String,
        /// Seconds to wait for the guest before destroying it (daemon default: 60).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// Stop a VM at once (kill its VMM).
    Destroy {
        /// VM name.
        name: String,
    },
    /// Pause all vCPUs.
    Suspend {
        /// VM name.
        name: String,
    },
    /// Resume a suspended VM.
    Resume {
        /// VM name.
        name: String,
    },
    /// Reset the guest.
    Reboot {
        /// VM name.
        name: String,
    },
    /// Show a VM's state.
    Info {
        /// VM name.
        name: String,
    },
    /// Show a running VM's counters.
    Stats {
        /// VM name.
        name: String,
    },
    /// Turn starting with the daemon on or off.
    Autostart {
        /// VM name.
        name: String,
        /// on or off.
        value: OnOff,
    },
    /// Attach to a VM's serial console; Ctrl-] detaches (the VM keeps running).
    Console {
        /// VM name.
        name: String,
        /// Detach after this many seconds.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// Print lifecycle events as they happen.
    Events,
    /// Print a shell completion script.
    Completions {
        /// Target shell.
        shell: clap_complete::Shell,
    },
}

/// `on` / `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// `create` flags: everything a `VmDefinition` holds.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// VM name.
    pub name: String,
    /// Number of vCPUs.
    #[arg(long)]
    pub cpus: u32,
    /// Guest memory with a binary unit, e.g. 512M or 2G.
    #[arg(long, value_name = "SIZE")]
    pub memory: String,
    /// Kernel image.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initramfs image.
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "S", allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// A disk: path=P[,format=raw|qcow2][,readonly=on]. Repeat for more disks.
    #[arg(long, value_name = "SPEC", value_parser = parse_disk)]
    pub disk: Vec<DiskSpec>,
    /// A NIC: tap=NAME[,mac=MAC]. Repeat for more NICs.
    #[arg(long, value_name = "SPEC", value_parser = parse_nic)]
    pub net: Vec<NicSpec>,
    /// A vsock device: cid=N.
    #[arg(long, value_name = "SPEC", value_parser = parse_vsock)]
    pub vsock: Option<VsockSpec>,
    /// CPU template: host or portable.
    #[arg(long, value_name = "T")]
    pub cpu_template: Option<String>,
    /// Start the VM when the daemon starts.
    #[arg(long)]
    pub autostart: bool,
}

/// Splits `k=v,k=v`; a first item without `=` is taken as the value of `bare_key`.
fn key_values<'a>(spec: &'a str, bare_key: &'a str) -> Result<Vec<(&'a str, &'a str)>, String> {
    spec.split(',')
        .enumerate()
        .map(|(i, item)| match item.split_once('=') {
            Some((k, v)) => Ok((k.trim(), v)),
            None if i == 0 && !item.is_empty() => Ok((bare_key, item)),
            None => Err(format!("expected key=value, found {item:?}")),
        })
        .collect()
}

fn parse_flag(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "yes" | "true" | "1" => Ok(true),
        "off" | "no" | "false" | "0" => Ok(false),
        _ => Err(format!("{key} must be on or off, not {value:?}")),
    }
}

/// `path=P[,format=raw|qcow2][,readonly=on]`.
pub fn parse_disk(spec: &str) -> Result<DiskSpec, String> {
    let mut disk = DiskSpec { path: String::new(), format: None, readonly: false };
    for (key, value) in key_values(spec, "path")? {
        match key {
            "path" => disk.path = value.to_owned(),
            "format" if matches!(value, "raw" | "qcow2") => disk.format = Some(value.to_owned()),
            "format" => return Err(format!("format must be raw or qcow2, not {value:?}")),
            "readonly" | "ro" => disk.readonly = parse_flag(key, value)?,
            _ => return Err(format!("unknown disk option {key:?} (path, format, readonly)")),
        }
    }
    if disk.path.is_empty() {
        return Err("a disk needs path=P".to_owned());
    }
    Ok(disk)
}

/// `tap=NAME[,mac=MAC]`.
pub fn parse_nic(spec: &str) -> Result<NicSpec, String> {
    let mut nic = NicSpec { tap: String::new(), mac: None };
    for (key, value) in key_values(spec, "tap")? {
        match key {
            "tap" => nic.tap = value.to_owned(),
            "mac" => nic.mac = Some(value.to_owned()),
            _ => return Err(format!("unknown net option {key:?} (tap, mac)")),
        }
    }
    if nic.tap.is_empty() {
        return Err("a NIC needs tap=NAME".to_owned());
    }
    Ok(nic)
}

/// `cid=N`.
pub fn parse_vsock(spec: &str) -> Result<VsockSpec, String> {
    let mut cid = None;
    for (key, value) in key_values(spec, "cid")? {
        match key {
            "cid" => {
                cid = Some(
                    value
                        .parse::<u32>()
                        .map_err(|_| format!("cid must be a number, not {value:?}"))?,
                )
            }
            _ => return Err(format!("unknown vsock option {key:?} (cid)")),
        }
    }
    cid.map(|cid| VsockSpec { cid }).ok_or_else(|| "vsock needs cid=N".to_owned())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn disk_specs_parse_with_options_and_bare_path() {
        assert_eq!(
            parse_disk("path=/a.qcow2,format=qcow2,readonly=on").unwrap(),
            DiskSpec { path: "/a.qcow2".into(), format: Some("qcow2".into()), readonly: true }
        );
        assert_eq!(parse_disk("/b.img").unwrap().path, "/b.img");
        assert!(!parse_disk("/b.img,readonly=off").unwrap().readonly);
    }

    #[test]
    fn bad_disk_specs_say_why() {
        assert!(parse_disk("format=raw").unwrap_err().contains("path"));
        assert!(parse_disk("path=a,format=vmdk").unwrap_err().contains("vmdk"));
        assert!(parse_disk("path=a,cache=none").unwrap_err().contains("cache"));
        assert!(parse_disk("path=a,readonly=maybe").unwrap_err().contains("maybe"));
        assert!(parse_disk("path=a,junk").unwrap_err().contains("junk"));
    }

    #[test]
    fn nic_and_vsock_specs_parse() {
        assert_eq!(
            parse_nic("tap=tap0,mac=52:54:00:00:00:01").unwrap(),
            NicSpec { tap: "tap0".into(), mac: Some("52:54:00:00:00:01".into()) }
        );
        assert!(parse_nic("mac=52:54:00:00:00:01").is_err());
        assert_eq!(parse_vsock("cid=3").unwrap(), VsockSpec { cid: 3 });
        assert!(parse_vsock("cid=x").is_err());
        assert!(parse_vsock("port=1").is_err());
    }
}
