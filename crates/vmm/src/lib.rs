//! The VMM library: turns a [`VmConfig`] into a running VM and supervises it until the guest
//! powers off, resets (rebooting in the same process unless told not to), panics, or a vCPU
//! fails.
//!
//! Threads: the caller's thread runs the control loop ([`run`]); one thread per vCPU runs
//! `KVM_RUN` and dispatches I/O exits to the port and MMIO buses; console input threads feed the
//! UART; one thread waits for termination signals; one serves the control API socket. Every event that ends a boot reaches the
//! control loop as a [`ControlEvent`] on one channel, so VM state has a single owner.
//! Depends on arch, devices, hypervisor, vm-bus and sys-util; nothing depends on it but binaries.

mod api;
mod config;
mod console;
mod control;
mod exit;
mod interrupts;
mod machine;
mod pci;
mod vcpu;

pub use config::{
    parse_size, DiskConfig, DiskFormat, NetConfig, SerialConfig, VmConfig, VsockConfig,
};
pub use control::run;
pub use exit::{error_chain, ExitReason, VmmError};

/// What reaches the control loop.
#[derive(Debug)]
pub(crate) enum ControlEvent {
    /// A device or vCPU asked for power-off, reset or reported a panic.
    Guest(ironvirt_vm_bus::GuestEvent),
    /// A vCPU cannot continue.
    VcpuFailed {
        /// Which.
        vcpu: u32,
        /// Why, as one line.
        reason: String,
    },
    /// A termination signal arrived.
    Signal(i32),
    /// A control API request and where to send the answer.
    Api(ironvirt_vmm_protocol::Request, std::sync::mpsc::Sender<ironvirt_vmm_protocol::Response>),
}
