//! Address-range buses and the small traits devices are written against.
//!
//! This crate owns the [`Bus`] that maps port-I/O or MMIO addresses onto devices, the
//! [`BusDevice`] trait devices implement, the [`Interrupt`] trait through which they raise
//! interrupts, and the [`GuestEventSink`] through which they ask the VMM to power off, reset or
//! report a guest panic. It must not depend on KVM or on the VMM: the VMM implements the traits
//! (irqfd, channels) and its vCPU threads call [`Bus::read`]/[`Bus::write`] on every I/O exit.
//! Every vCPU thread touches the buses concurrently; each device sits behind its own mutex.
#![forbid(unsafe_code)]

mod bus;
mod ratelimit;

pub use bus::{Bus, BusDevice, BusError, SharedDevice};
pub use ratelimit::RateLimiter;

use std::io;

/// Raises an edge-triggered interrupt line (ISA IRQ, later MSI vectors).
pub trait Interrupt: Send + Sync {
    /// Signals the interrupt once.
    fn trigger(&self) -> io::Result<()>;
}

/// Drives a level-triggered interrupt line (the ACPI SCI, later PCI INTx).
pub trait LevelInterrupt: Send + Sync {
    /// Raises (`true`) or lowers (`false`) the line.
    fn set_level(&self, high: bool) -> io::Result<()>;
}

/// What a device can ask of the machine as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestEvent {
    /// The guest asked for power-off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset (i8042, ACPI reset register, triple fault).
    Reset,
    /// The guest reported a panic (pvpanic); the value is what it wrote.
    Panic(u8),
}

/// Receives [`GuestEvent`]s; implemented by the VMM's control loop.
pub trait GuestEventSink: Send + Sync {
    /// Delivers one event. Must not block for long: it runs on a vCPU thread.
    fn send(&self, event: GuestEvent);
}

/// A rate-limited `log::debug!` for anything a guest can trigger at will.
///
/// Each call site has its own limiter: the first [`RateLimiter::BURST`] messages per second are
/// logged, the rest are counted and summarised once the next window opens.
#[macro_export]
macro_rules! guest_debug {
    ($($arg:tt)+) => {{
        static LIMITER: $crate::RateLimiter = $crate::RateLimiter::new();
        if let Some(suppressed) = LIMITER.admit() {
            if suppressed > 0 {
                log::debug!("({} similar messages suppressed)", suppressed);
            }
            log::debug!($($arg)+);
        }
    }};
}

/// Like [`guest_debug!`] but at warning level, for guest behaviour a user should see.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => {{
        static LIMITER: $crate::RateLimiter = $crate::RateLimiter::new();
        if let Some(suppressed) = LIMITER.admit() {
            if suppressed > 0 {
                log::warn!("({} similar messages suppressed)", suppressed);
            }
            log::warn!($($arg)+);
        }
    }};
}
