//! The i8042 keyboard controller at ports `0x60` and `0x64`: the guest's reset line.
//!
//! The register model is `vm_superio::I8042Device`, which emulates just the "pulse reset line"
//! command (`0xfe` written to the command port, `0x64`) and reads every register as zero (no
//! output data, input buffer empty, so a guest waiting to send a command never stalls). This
//! module maps the bus range `0x60..0x65` onto it (offset 0 = data port, offset 4 =
//! command/status port; offsets 1 to 3 belong to other devices on a PC and are ignored) and
//! turns the reset into [`GuestEvent::Reset`].
//!
//! The keyboard interrupt (IRQ 1) is accepted and held so the wiring is in place, but it is
//! never raised: vm-superio 0.8.2 has no keyboard data path. A guest's i8042 driver therefore
//! finds no responding controller (its self-test times out) and carries on without a keyboard.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use ironvirt_vm_bus::{guest_debug, BusDevice, GuestEvent, GuestEventSink, Interrupt};
use vm_superio::{I8042Device, Trigger};

/// The data port.
pub const PORT_BASE: u64 = 0x60;
/// Ports spanned from the data port through the command/status port.
pub const PORT_LEN: u64 = 5;
/// Offset of the data port (`0x60`).
pub const DATA_OFFSET: u64 = 0;
/// Offset of the command (write) and status (read) port (`0x64`).
pub const COMMAND_OFFSET: u64 = 4;
/// The command that pulses the CPU reset line.
pub const CMD_RESET_CPU: u8 = 0xfe;

/// Adapts a [`GuestEventSink`] to vm-superio's [`Trigger`] for the reset line.
struct ResetTrigger(Arc<dyn GuestEventSink>);

impl Trigger for ResetTrigger {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        log::info!("i8042: guest pulsed the reset line");
        self.0.send(GuestEvent::Reset);
        Ok(())
    }
}

/// The i8042 controller (reset line only).
pub struct I8042 {
    device: I8042Device<ResetTrigger>,
    /// IRQ 1; reserved for a keyboard data path (see the module docs).
    keyboard_irq: Arc<dyn Interrupt>,
}

impl fmt::Debug for I8042 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("I8042").finish_non_exhaustive()
    }
}

impl I8042 {
    /// A controller that sends [`GuestEvent::Reset`] to `events` on command `0xfe`, with
    /// `keyboard_irq` (IRQ 1) reserved for keyboard input.
    pub fn new(events: Arc<dyn GuestEventSink>, keyboard_irq: Arc<dyn Interrupt>) -> Self {
        Self { device: I8042Device::new(ResetTrigger(events)), keyboard_irq }
    }

    /// The keyboard interrupt line this controller was wired to.
    pub fn keyboard_irq(&self) -> &Arc<dyn Interrupt> {
        &self.keyboard_irq
    }

    /// The vm-superio register offset for a bus access, or `None` when it is ignored.
    fn register(offset: u64, len: usize) -> Option<u8> {
        match (offset, len) {
            (DATA_OFFSET | COMMAND_OFFSET, 1) => u8::try_from(offset).ok(),
            _ => {
                guest_debug!("i8042: ignoring {len}-byte access at offset {offset:#x}");
                None
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(reg) = Self::register(offset, data.len()) {
            data[0] = self.device.read(reg);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(reg) = Self::register(offset, data.len()) {
            match self.device.write(reg, data[0]) {
                Ok(()) => {}
                Err(never) => match never {},
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{hostile_accesses, read_u8, CountingIrq, EventRecorder};

    fn i8042() -> (I8042, Arc<EventRecorder>) {
        let events = Arc::new(EventRecorder::default());
        (I8042::new(events.clone(), Arc::new(CountingIrq::default())), events)
    }

    #[test]
    fn reset_command_on_the_command_port_sends_a_reset_event() {
        let (mut dev, events) = i8042();

        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);

        assert_eq!(events.events(), vec![GuestEvent::Reset]);
    }

    #[test]
    fn other_commands_and_ports_send_nothing() {
        let (mut dev, events) = i8042();

        dev.write(COMMAND_OFFSET, &[0xaa]);
        dev.write(DATA_OFFSET, &[CMD_RESET_CPU]);
        dev.write(1, &[CMD_RESET_CPU]);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU, 0]);

        assert!(events.events().is_empty());
    }

    #[test]
    fn status_reads_as_idle_and_ignored_ports_keep_the_bus_fill() {
        let (mut dev, _events) = i8042();

        assert_eq!(read_u8(&mut dev, COMMAND_OFFSET), 0, "no output, input buffer empty");
        assert_eq!(read_u8(&mut dev, DATA_OFFSET), 0);
        assert_eq!(read_u8(&mut dev, 2), 0xff);
    }

    #[test]
    fn hostile_accesses_never_panic() {
        let (mut dev, _events) = i8042();
        hostile_accesses(&mut dev, PORT_LEN);
    }
}
