//! Platform devices of the ironvirt x86_64 machine, as plain state machines.
//!
//! This crate owns the legacy and fixed-hardware devices of the platform contract
//! (`docs/PLATFORM.md`): the COM1 16550A UART ([`Serial`]), the CMOS/MC146818 real-time clock
//! with its NVRAM ([`Rtc`]), the i8042 controller's reset line ([`I8042`]), the ACPI
//! fixed-hardware PM block ([`AcpiPm`]) and the pvpanic port ([`PvPanic`]).
//!
//! Every device implements [`ironvirt_vm_bus::BusDevice`] and receives offsets relative to its
//! base port. Interrupt lines, guest events (power off, reset, panic), output sinks and clocks
//! are injected through the small traits of `ironvirt-vm-bus` (and [`WallClock`] here), so the
//! devices test without KVM. This crate must not depend on the VMM, on KVM or on the hypervisor
//! crate.
//!
//! Threads: each device sits behind its own mutex on the port-I/O bus and is called from
//! whichever vCPU thread exits on one of its ports; the VMM's console input thread and its
//! control loop (power button, RTC reset) reach the same devices through that mutex. No device
//! spawns threads of its own.
//!
//! Anything a guest can trigger is logged through the rate-limited `guest_debug!`/`guest_warn!`
//! helpers; no guest access can panic.
#![forbid(unsafe_code)]

pub mod acpi_pm;
pub mod i8042;
pub mod pvpanic;
pub mod rtc;
pub mod serial;

#[cfg(test)]
mod test_util;

pub use acpi_pm::AcpiPm;
pub use i8042::I8042;
pub use pvpanic::PvPanic;
pub use rtc::{Rtc, SystemClock, WallClock};
pub use serial::{RxDrainedCallback, Serial, SerialCounters};
