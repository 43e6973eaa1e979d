//! x86_64 platform knowledge: the guest memory map, boot protocols (Linux 64-bit, PVH), CPUID
//! templates, MSR and register setup for the boot vCPU, and the ACPI tables.
//!
//! It writes into guest memory only through `vm-memory` and talks to KVM only through
//! `ironvirt-hypervisor`. It knows nothing of devices or the VMM's threads; callers pass the
//! port numbers and counts the tables must describe. Called from the VMM's main thread while a
//! VM is built (never from vCPU threads).

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod memory;
pub mod regs;

pub use boot::{load_boot, BootError, BootProtocol, BootSource};
pub use cpuid::{vcpu_cpuid, CpuTemplate};
pub use memory::{create_guest_memory, e820_map, MemoryError};
pub use regs::{EntryMode, RegsError};
