//! How a VM run ends, and the VMM's error type.

use std::io;

/// Why the VMM stopped, with the process exit code each maps to (docs/PLATFORM.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off.
    PowerOff,
    /// The guest reset and `--no-reboot` was given.
    Reset,
    /// The guest reported a panic through pvpanic.
    GuestPanic,
    /// A vCPU could not continue (emulation failure, KVM error).
    VcpuFailed(String),
    /// A termination signal arrived.
    Signal(i32),
}

impl ExitReason {
    /// The documented process exit code.
    pub fn code(&self) -> i32 {
        match self {
            Self::PowerOff => 0,
            Self::Reset => 3,
            Self::GuestPanic => 4,
            Self::VcpuFailed(_) => 5,
            Self::Signal(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PowerOff => f.write_str("guest powered off"),
            Self::Reset => f.write_str("guest reset (--no-reboot)"),
            Self::GuestPanic => f.write_str("guest panicked"),
            Self::VcpuFailed(why) => f.write_str(why),
            Self::Signal(sig) => write!(f, "stopped by signal {sig}"),
        }
    }
}

/// An error and its causes on one line, separated by ": ".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// Errors that stop the VMM before or while running a guest.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// KVM could not be used.
    #[error("KVM is not usable")]
    Kvm(#[from] ironvirt_hypervisor::HypervisorError),
    /// More vCPUs requested than allowed.
    #[error("{requested} vCPUs requested; this host's KVM allows at most {max}")]
    TooManyCpus {
        /// Requested.
        requested: u32,
        /// Allowed.
        max: u32,
    },
    /// Guest memory could not be set up.
    #[error("Cannot set up guest memory")]
    Memory(#[from] ironvirt_arch::MemoryError),
    /// A file named on the command line could not be opened.
    #[error("Cannot open {what} {}", path.display())]
    Open {
        /// Kernel or initramfs.
        what: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        cause: io::Error,
    },
    /// Loading the kernel, initramfs or command line failed.
    #[error("Cannot load {}", path.display())]
    Boot {
        /// The kernel path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        cause: ironvirt_arch::BootError,
    },
    /// ACPI tables could not be built.
    #[error("Cannot build the ACPI tables")]
    Acpi(#[from] ironvirt_arch::acpi::AcpiError),
    /// vCPU setup failed.
    #[error("Cannot set up the vCPUs")]
    Regs(#[from] ironvirt_arch::RegsError),
    /// A device could not be placed on a bus.
    #[error("Cannot attach device {name}")]
    Bus {
        /// The device.
        name: &'static str,
        /// Why.
        #[source]
        cause: ironvirt_vm_bus::BusError,
    },
    /// The control API socket could not be set up.
    #[error("Cannot set up the control API socket")]
    Api(#[source] io::Error),
    /// A device could not be created (its backend failed: image, TAP, socket).
    #[error("Cannot set up {name}: {reason}")]
    Device {
        /// Device kind.
        name: &'static str,
        /// Why, with causes.
        reason: String,
    },
    /// The PCI root complex or a PCI device could not be set up.
    #[error("Cannot set up PCI: {0}")]
    Pci(String),
    /// The serial console backend could not be set up.
    #[error("Cannot set up the serial console")]
    Console(#[source] io::Error),
    /// A host resource (thread, eventfd, signal handler) could not be created.
    #[error("Cannot create {what}")]
    Host {
        /// What.
        what: &'static str,
        /// Why.
        #[source]
        cause: io::Error,
    },
}
