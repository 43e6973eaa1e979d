//! The control loop: boots the VM, waits for the event that ends the boot, and reboots or
//! returns the exit reason.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use ironvirt_devices::{Rtc, Serial, SystemClock};
use ironvirt_hypervisor::Hypervisor;
use ironvirt_vm_bus::GuestEvent;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{VmConfig, MAX_CPUS};
use crate::console::{Console, InputPump};
use crate::interrupts::{BootEvents, EventInterrupt};
use crate::machine::{boot, Persistent};
use crate::{ControlEvent, ExitReason, VmmError};

/// Generation tag of events that are valid whatever boot is running (signals).
const ANY_BOOT: u64 = u64::MAX;

/// Runs the VM described by `cfg` until it ends; returns why. The console is closed (output
/// flushed, terminal restored) before this returns.
pub fn run(cfg: &VmConfig) -> Result<ExitReason, VmmError> {
    let hv = Hypervisor::open()?;
    let max = (hv.max_vcpus() as u32).min(MAX_CPUS);
    if cfg.cpus == 0 || cfg.cpus > max {
        return Err(VmmError::TooManyCpus { requested: cfg.cpus, max });
    }
    ironvirt_sys_util::signals::install_kick_handler()
        .map_err(|cause| VmmError::Host { what: "the vCPU kick signal handler", cause })?;

    let (tx, rx) = mpsc::channel::<(u64, ControlEvent)>();
    let signal_tx = tx.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(sig) = ironvirt_sys_util::signals::wait_termination_signal() {
                if signal_tx.send((ANY_BOOT, ControlEvent::Signal(sig))).is_err() {
                    return;
                }
            }
        })
        .map_err(|cause| VmmError::Host { what: "the signal thread", cause })?;

    let mut console = Console::open(&cfg.serial).map_err(VmmError::Console)?;
    let serial_irq =
        EventFd::new(EFD_NONBLOCK).map_err(|cause| VmmError::Host { what: "an eventfd", cause })?;
    let irq_clone =
        serial_irq.try_clone().map_err(|cause| VmmError::Host { what: "an eventfd", cause })?;
    let (pump, on_rx_drained) = InputPump::new();
    let serial = Arc::new(Mutex::new(Serial::new(
        Arc::new(EventInterrupt(irq_clone)),
        console.writer(),
        Some(on_rx_drained),
    )));
    pump.attach(serial.clone());
    let persistent = Persistent {
        serial,
        serial_irq,
        rtc: Arc::new(Mutex::new(Rtc::new(Box::new(SystemClock)))),
        supported_cpuid: hv.supported_cpuid()?,
    };

    let result = (|| {
        console.start_input(pump).map_err(VmmError::Console)?;
        supervise(&hv, cfg, &persistent, tx, &rx)
    })();
    console.close();
    result
}

fn supervise(
    hv: &Hypervisor,
    cfg: &VmConfig,
    persistent: &Persistent,
    tx: mpsc::Sender<(u64, ControlEvent)>,
    rx: &mpsc::Receiver<(u64, ControlEvent)>,
) -> Result<ExitReason, VmmError> {
    for generation in 0.. {
        let machine = boot(hv, cfg, persistent, BootEvents { generation, tx: tx.clone() })?;
        let event = loop {
            let (tag, event) = rx.recv().expect("the control loop holds a sender");
            if tag == generation || tag == ANY_BOOT {
                break event;
            }
        };
        machine.stop();
        let reason = match event {
            ControlEvent::Guest(GuestEvent::PowerOff) => ExitReason::PowerOff,
            ControlEvent::Guest(GuestEvent::Reset) if !cfg.no_reboot => {
                log::info!("guest reset: rebooting");
                persistent.rtc.lock().unwrap_or_else(|p| p.into_inner()).reset();
                continue;
            }
            ControlEvent::Guest(GuestEvent::Reset) => ExitReason::Reset,
            ControlEvent::Guest(GuestEvent::Panic(v)) => {
                log::info!("guest reported a panic (pvpanic value {v:#x})");
                ExitReason::GuestPanic
            }
            ControlEvent::VcpuFailed { vcpu, reason } => {
                ExitReason::VcpuFailed(format!("vCPU {vcpu} stopped: {reason}"))
            }
            ControlEvent::Signal(sig) => ExitReason::Signal(sig),
        };
        return Ok(reason);
    }
    unreachable!("the boot loop only ends by returning")
}
