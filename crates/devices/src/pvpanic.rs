//! The pvpanic port at `0x505` (ACPI `QEMU0001`), through which a guest reports a panic.
//!
//! Reads return the capabilities the device supports; a write reports an event (QEMU's
//! `docs/specs/pvpanic.rst` defines the bits).

use std::fmt;
use std::sync::Arc;

use ironvirt_vm_bus::{guest_debug, BusDevice, GuestEvent, GuestEventSink, RateLimiter};

/// The pvpanic port.
pub const PORT_BASE: u64 = 0x505;
/// The device decodes one port.
pub const PORT_LEN: u64 = 1;
/// Event bit: the guest panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// Event bit: the guest loaded a crash kernel and is about to run it.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
/// What reads return: the events this device understands.
pub const PVPANIC_CAPABILITIES: u8 = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;

/// The pvpanic device.
pub struct PvPanic {
    events: Arc<dyn GuestEventSink>,
}

impl fmt::Debug for PvPanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PvPanic").finish_non_exhaustive()
    }
}

impl PvPanic {
    /// A device that reports panics to `events` as [`GuestEvent::Panic`].
    pub fn new(events: Arc<dyn GuestEventSink>) -> Self {
        Self { events }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (0, [byte]) => *byte = PVPANIC_CAPABILITIES,
            (_, data) => guest_debug!("pvpanic: ignoring {}-byte read at {offset:#x}", data.len()),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let value = match (offset, data) {
            (0, &[value]) => value,
            _ => {
                guest_debug!("pvpanic: ignoring {}-byte write at {offset:#x}", data.len());
                return;
            }
        };
        if value & PVPANIC_PANICKED != 0 {
            // The VMM logs the event once and stops the VM; no log here.
            self.events.send(GuestEvent::Panic(value));
        } else if value & PVPANIC_CRASH_LOADED != 0 {
            static LIMITER: RateLimiter = RateLimiter::new();
            if LIMITER.admit().is_some() {
                log::info!("pvpanic: guest panicked and is starting its crash kernel");
            }
        } else {
            guest_debug!("pvpanic: ignoring event {value:#x}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{hostile_accesses, read_u8, EventRecorder};

    fn pvpanic() -> (PvPanic, Arc<EventRecorder>) {
        let events = Arc::new(EventRecorder::default());
        (PvPanic::new(events.clone()), events)
    }

    #[test]
    fn reads_report_panicked_and_crash_loaded_capabilities() {
        let (mut dev, _events) = pvpanic();

        assert_eq!(read_u8(&mut dev, 0), 0x03);
    }

    #[test]
    fn panicked_bit_sends_a_panic_event_with_the_value() {
        let (mut dev, events) = pvpanic();

        dev.write(0, &[PVPANIC_PANICKED]);
        dev.write(0, &[0x03]);

        assert_eq!(events.events(), vec![GuestEvent::Panic(1), GuestEvent::Panic(3)]);
    }

    #[test]
    fn crash_loaded_and_unknown_values_send_nothing() {
        let (mut dev, events) = pvpanic();

        dev.write(0, &[PVPANIC_CRASH_LOADED]);
        dev.write(0, &[0x00]);
        dev.write(0, &[0xf0]);

        assert!(events.events().is_empty());
    }

    #[test]
    fn hostile_accesses_never_panic() {
        let (mut dev, _events) = pvpanic();
        hostile_accesses(&mut dev, PORT_LEN);
    }
}
