//! Wire types shared by `ironvirtd`, its clients (CLI, web UI) and the per-VM control API of
//! `ironvirt-vmm`. Plain serde structs and enums: no I/O, no validation beyond types (the
//! daemon validates definitions). The OpenAPI schema is derived from them with `utoipa`.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A persistent VM definition (what `ironvirt dump` prints and `ironvirt define` reads, as
/// TOML). Sizes are strings with binary units ("512M", "2G").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmDefinition {
    /// Unique name: 1-64 characters of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
    pub name: String,
    /// Stable identity; generated on define when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
    /// Number of vCPUs (1-64).
    pub cpus: u32,
    /// Guest memory, e.g. "512M" or "2G".
    pub memory: String,
    /// What the guest boots.
    pub boot: BootSpec,
    /// Virtual disks, in order (vda, vdb, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskSpec>,
    /// Network interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicSpec>,
    /// virtio-vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockSpec>,
    /// CPU template: "host" or "portable".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    /// Start the VM when the daemon starts.
    #[serde(default)]
    pub autostart: bool,
}

/// Direct kernel boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BootSpec {
    /// Kernel image path on the host.
    pub kernel: String,
    /// Initramfs path on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<String>,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// A disk image attached as virtio-blk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Image path on the host.
    pub path: String,
    /// "raw" or "qcow2"; never probed from the content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Attach read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// A network interface backed by a TAP device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// TAP device name on the host.
    pub tap: String,
    /// MAC address, e.g. "52:54:00:12:34:56"; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// virtio-vsock with its guest CID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VsockSpec {
    /// Guest context id (>= 3).
    pub cid: u32,
}

/// Lifecycle state of a VM as the daemon sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// Defined, no VMM process.
    ShutOff,
    /// VMM process started, not yet answering its API.
    Starting,
    /// Guest running.
    Running,
    /// vCPUs paused.
    Paused,
    /// Power button pressed, waiting for the guest to power off.
    ShuttingDown,
    /// The VMM died abnormally (guest panic, vCPU failure, signal); see `last_exit`.
    Crashed,
}

/// How the last VMM process of a VM ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExitInfo {
    /// Exit code (docs/PLATFORM.md), if the process exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Signal number, if it was killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Human-readable reason ("guest powered off", "guest panic", ...).
    pub reason: String,
    /// When, RFC 3339.
    pub at: String,
}

/// A VM as listed by `GET /v1/vms` and `GET /v1/vms/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmInfo {
    /// Name.
    pub name: String,
    /// UUID.
    pub uuid: Uuid,
    /// State.
    pub state: VmState,
    /// VMM process id while one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Autostart flag.
    pub autostart: bool,
    /// How the previous run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ExitInfo>,
}

/// Per-VM counters (`GET /v1/vms/{name}/stats`, and the VMM's `GET /v1/counters`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmCounters {
    /// One entry per vCPU.
    pub vcpus: Vec<VcpuCounters>,
    /// Serial console traffic.
    pub serial: SerialCounters,
    /// One entry per disk.
    #[serde(default)]
    pub disks: Vec<IoCounters>,
    /// One entry per NIC.
    #[serde(default)]
    pub nics: Vec<IoCounters>,
    /// Guest resets handled in this VMM process.
    pub reboots: u64,
    /// VMM process uptime in milliseconds.
    pub uptime_ms: u64,
}

/// vCPU counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VcpuCounters {
    /// vCPU index.
    pub id: u32,
    /// Exits to userspace handled.
    pub exits: u64,
    /// CPU time of the vCPU thread, nanoseconds.
    pub cpu_time_ns: u64,
}

/// Serial console counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SerialCounters {
    /// Bytes the guest wrote.
    pub tx_bytes: u64,
    /// Bytes delivered to the guest.
    pub rx_bytes: u64,
}

/// Disk or NIC counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IoCounters {
    /// Device name (vda, net0).
    pub name: String,
    /// Read (disk) or received (NIC) operations.
    pub read_ops: u64,
    /// Bytes read / received.
    pub read_bytes: u64,
    /// Write (disk) or transmitted (NIC) operations.
    pub write_ops: u64,
    /// Bytes written / transmitted.
    pub write_bytes: u64,
}

/// State reported by the VMM's control API (`GET /v1/vm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VmmRunState {
    /// vCPUs running.
    Running,
    /// vCPUs paused.
    Paused,
}

/// `GET /v1/vm` of the VMM control API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmmStatus {
    /// Run state.
    pub state: VmmRunState,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// VMM process id.
    pub pid: u32,
    /// VMM version.
    pub version: String,
}

/// A lifecycle event streamed by `GET /v1/events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// RFC 3339 timestamp.
    pub at: String,
    /// VM name.
    pub vm: String,
    /// What happened.
    pub kind: EventKind,
    /// State after the event.
    pub state: VmState,
    /// Extra detail (exit reason, error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Event kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// Definition created.
    Defined,
    /// Definition changed.
    Updated,
    /// Definition removed.
    Undefined,
    /// VMM started.
    Started,
    /// vCPUs paused.
    Suspended,
    /// vCPUs resumed.
    Resumed,
    /// Guest reset.
    Rebooted,
    /// Power button pressed.
    ShutdownRequested,
    /// VMM exited normally (guest powered off).
    Stopped,
    /// VMM killed by request.
    Destroyed,
    /// VMM died abnormally.
    Crashed,
    /// A running VM re-adopted after a daemon restart.
    Adopted,
}

/// Body of `PUT /v1/vms/{name}/autostart`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutostartRequest {
    /// Start the VM when the daemon starts.
    pub autostart: bool,
}

/// Every API error body: a stable machine-readable code and a message saying what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    /// Stable code: `not-found`, `conflict`, `invalid-definition`, `bad-request`,
    /// `unauthorized`, `internal`.
    pub code: String,
    /// What went wrong, with its causes.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_round_trips_through_toml() {
        let def = VmDefinition {
            name: "web1".into(),
            uuid: Some(Uuid::nil()),
            cpus: 2,
            memory: "1G".into(),
            boot: BootSpec {
                kernel: "/boot/vmlinuz".into(),
                initramfs: Some("/boot/initrd.img".into()),
                cmdline: Some("console=ttyS0".into()),
            },
            disks: vec![DiskSpec {
                path: "/var/lib/web1.qcow2".into(),
                format: Some("qcow2".into()),
                readonly: false,
            }],
            nics: vec![],
            vsock: None,
            cpu_template: None,
            autostart: true,
        };
        let text = toml::to_string(&def).unwrap();
        let back: VmDefinition = toml::from_str(&text).unwrap();
        assert_eq!(back, def);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let text =
            "name = \"a\"\ncpus = 1\nmemory = \"1G\"\ncolour = \"red\"\n[boot]\nkernel = \"k\"\n";
        let err = toml::from_str::<VmDefinition>(text).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn states_are_kebab_case_on_the_wire() {
        assert_eq!(serde_json::to_string(&VmState::ShutOff).unwrap(), "\"shut-off\"");
        assert_eq!(
            serde_json::to_string(&EventKind::ShutdownRequested).unwrap(),
            "\"shutdown-requested\""
        );
    }
}
