//! The VMM's implementations of the device-facing interrupt and event traits.

use std::io;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use ironvirt_hypervisor::Vm;
use ironvirt_vm_bus::{GuestEvent, GuestEventSink, Interrupt, LevelInterrupt};
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::{ControlEvent, VmmError};

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

/// A PCI INTx pin as KVM sees it: an irqfd registered with a resample eventfd. Raising the
/// pin writes the irqfd (no ioctl on the device's thread). KVM lowers the GSI itself when the
/// guest ends the interrupt (EOI) and signals the resample eventfd; [`IntxResampler`] then
/// raises it again if the device still asserts it. Devices sharing a GSI share KVM's
/// resampler, so the line is the OR of its pins, as on a real board.
pub(crate) struct IntxPin {
    irqfd: EventFd,
    resample: EventFd,
    asserted: Mutex<bool>,
}

impl IntxPin {
    /// A pin on `gsi`, registered with KVM.
    pub(crate) fn new(vm: &Vm, gsi: u32) -> Result<Self, VmmError> {
        let eventfd = || {
            EventFd::new(EFD_NONBLOCK)
                .map_err(|cause| VmmError::Host { what: "an INTx eventfd", cause })
        };
        let pin = Self { irqfd: eventfd()?, resample: eventfd()?, asserted: Mutex::new(false) };
        vm.register_resample_irqfd(&pin.irqfd, &pin.resample, gsi)?;
        Ok(pin)
    }

    /// KVM lowered the line after an EOI: assert it again if the device still does.
    fn resampled(&self) {
        let _ = self.resample.read();
        let asserted = self.asserted.lock().unwrap_or_else(|p| p.into_inner());
        if *asserted {
            if let Err(e) = self.irqfd.write(1) {
                log::warn!("cannot re-assert an INTx line: {e}");
            }
        }
    }
}

impl LevelInterrupt for IntxPin {
    fn set_level(&self, high: bool) -> io::Result<()> {
        let mut asserted = self.asserted.lock().unwrap_or_else(|p| p.into_inner());
        *asserted = high;
        // Lowering waits for the guest's EOI, where KVM deasserts the line and resamples.
        if high {
            self.irqfd.write(1)
        } else {
            Ok(())
        }
    }
}

/// The thread of a VM that serves the resample eventfds of its INTx pins; dropping it stops
/// the thread.
pub(crate) struct IntxResampler {
    stop: EventFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl IntxResampler {
    const STOP: u64 = u64::MAX;

    /// Starts serving `pins`.
    pub(crate) fn start(pins: Vec<Arc<IntxPin>>) -> Result<Self, VmmError> {
        let host = |what| move |cause| VmmError::Host { what, cause };
        let stop = EventFd::new(EFD_NONBLOCK).map_err(host("an eventfd"))?;
        let epoll = Epoll::new().map_err(host("an epoll instance"))?;
        let watch = |fd: i32, token: u64| {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token))
        };
        watch(stop.as_raw_fd(), Self::STOP).map_err(host("an epoll registration"))?;
        for (i, pin) in pins.iter().enumerate() {
            watch(pin.resample.as_raw_fd(), i as u64).map_err(host("an epoll registration"))?;
        }
        let thread = std::thread::Builder::new()
            .name("intx-resample".into())
            .spawn(move || {
                let mut events = vec![EpollEvent::default(); pins.len() + 1];
                loop {
                    let n = match epoll.wait(-1, &mut events) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            log::error!("INTx resampling stopped: {e}");
                            return;
                        }
                    };
                    for event in &events[..n] {
                        match pins.get(event.data() as usize) {
                            Some(pin) => pin.resampled(),
                            None => return, // the stop token
                        }
                    }
                }
            })
            .map_err(host("the INTx resample thread"))?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for IntxResampler {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
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
