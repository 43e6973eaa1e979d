//! The VMM's implementations of the device-facing interrupt and event traits.

use std::io;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use ironvirt_hypervisor::Vm;
use ironvirt_vm_bus::{GuestEvent, GuestEventSink, Interrupt, LevelInterrupt};
use vmm_sys_util::eventfd::EventFd;

use crate::ControlEvent;

/// An edge interrupt delivered through an eventfd registered with KVM as an irqfd.
pub(crate) struct EventInterrupt(pub(crate) EventFd);

impl Interrupt for EventInterrupt {
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// A level-triggered GSI driven with `KVM_IRQ_LINE`.
pub(crate) struct IrqLine {
    pub(crate) vm: Arc<Vm>,
    pub(crate) gsi: u32,
}

impl LevelInterrupt for IrqLine {
    fn set_level(&self, high: bool) -> io::Result<()> {
        self.vm.set_irq_line(self.gsi, high).map_err(io::Error::other)
    }
}

/// Sends guest events of one boot to the control loop, tagged with that boot's generation so
/// late events from a previous boot are ignored.
#[derive(Clone)]
pub(crate) struct BootEvents {
    pub(crate) generation: u64,
    pub(crate) tx: Sender<(u64, ControlEvent)>,
}

impl BootEvents {
    pub(crate) fn send(&self, event: ControlEvent) {
        // The control loop outlives every boot; a send error means it is already gone.
        let _ = self.tx.send((self.generation, event));
    }
}

impl GuestEventSink for BootEvents {
    fn send(&self, event: GuestEvent) {
        BootEvents::send(self, ControlEvent::Guest(event));
    }
}
