//! The only crate that holds KVM file descriptors.
//!
//! [`Hypervisor`] opens `/dev/kvm`, [`Vm`] owns a VM fd together with the guest memory it maps
//! (so the memory always outlives the mappings KVM holds), and [`Vcpu`] owns a vCPU fd and turns
//! each `KVM_RUN` result into a [`VcpuExit`]. Upper layers (arch, vmm) never see `kvm-ioctls`
//! types except the plain-data `kvm-bindings` structs re-exported here. Each [`Vcpu`] is used by
//! exactly one vCPU thread; [`Vm`] is shared (`&self` methods only) by the VMM's threads.

mod exit;
mod routing;
mod vcpu;
mod vm;

use std::io;

pub use exit::{EmulationFailure, VcpuExit};
pub use kvm_bindings;
pub use kvm_bindings::CpuId;
pub use routing::{MsiRoute, FIRST_MSI_GSI};
pub use vcpu::Vcpu;
pub use vm::Vm;
pub use vmm_sys_util::eventfd::EventFd;

use kvm_ioctls::Kvm;

/// Where KVM lives.
pub const KVM_PATH: &str = "/dev/kvm";

/// Errors from talking to KVM. Each variant names the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// `/dev/kvm` does not exist.
    #[error("{KVM_PATH} does not exist: KVM is not available on this host (load kvm_intel or kvm_amd, or enable virtualization in the firmware)")]
    KvmMissing,
    /// `/dev/kvm` exists but could not be opened.
    #[error("Cannot open {KVM_PATH} (is this user in the kvm group?)")]
    KvmOpen(#[source] io::Error),
    /// The KVM API version is not the stable one.
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    /// A required KVM capability is missing.
    #[error("KVM lacks the required capability {0}")]
    MissingCap(&'static str),
    /// Any KVM ioctl failed.
    #[error("KVM {op} failed")]
    Ioctl {
        /// The operation, as a short phrase.
        op: &'static str,
        /// The errno KVM returned.
        #[source]
        cause: io::Error,
    },
    /// Guest memory does not fit KVM's memory slot limits.
    #[error("Guest memory region at {addr:#x} cannot be mapped into the VM")]
    MemoryRegion {
        /// Guest physical address of the region.
        addr: u64,
        /// Why.
        #[source]
        cause: io::Error,
    },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, HypervisorError>;

pub(crate) fn ioctl_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> HypervisorError {
    move |e| HypervisorError::Ioctl { op, cause: io::Error::from_raw_os_error(e.errno()) }
}

/// An open `/dev/kvm`.
pub struct Hypervisor {
    kvm: Kvm,
}

impl Hypervisor {
    /// Opens `/dev/kvm` and checks the API version and the capabilities ironvirt needs.
    pub fn open() -> Result<Self> {
        if !std::path::Path::new(KVM_PATH).exists() {
            return Err(HypervisorError::KvmMissing);
        }
        let kvm = Kvm::new()
            .map_err(|e| HypervisorError::KvmOpen(io::Error::from_raw_os_error(e.errno())))?;
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(HypervisorError::ApiVersion(version));
        }
        use kvm_ioctls::Cap;
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(HypervisorError::MissingCap(name));
            }
        }
        Ok(Self { kvm })
    }

    /// The CPUID leaves KVM can present to a guest on this host.
    pub fn supported_cpuid(&self) -> Result<CpuId> {
        self.kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl_err("KVM_GET_SUPPORTED_CPUID"))
    }

    /// The most vCPUs one VM may have on this host.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// Creates an empty VM (no memory, no vCPUs yet).
    pub fn create_vm(&self) -> Result<Vm> {
        let fd = self.kvm.create_vm().map_err(ioctl_err("KVM_CREATE_VM"))?;
        Ok(Vm::new(fd))
    }
}

/// How KVM's `/dev/kvm` is backed on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvmBacking {
    /// VT-x or AMD-V: guests run at native speed.
    Hardware,
    /// Software nested virtualization (`kvm_pvm`): guest ring 0 runs in KVM's emulator.
    Software,
    /// No usable KVM.
    Absent,
}

/// Tells whether `/dev/kvm` is backed by hardware virtualization, from the loaded modules.
pub fn kvm_backing() -> KvmBacking {
    let module = |name: &str| std::path::Path::new("/sys/module").join(name).exists();
    if !std::path::Path::new(KVM_PATH).exists() {
        KvmBacking::Absent
    } else if module("kvm_pvm") {
        KvmBacking::Software
    } else if module("kvm_intel") || module("kvm_amd") {
        KvmBacking::Hardware
    } else {
        KvmBacking::Software
    }
}
