//! The vCPU thread: run, dispatch the exit, repeat until told to stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ironvirt_hypervisor::{Vcpu, VcpuExit};
use ironvirt_vm_bus::{guest_debug, guest_warn, Bus, GuestEvent};

use crate::interrupts::BootEvents;
use crate::ControlEvent;

/// `KVM_SYSTEM_EVENT_*` types (Documentation/virt/kvm/api.rst).
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;

/// What every vCPU thread of one boot shares.
pub(crate) struct VcpuShared {
    pub(crate) pio: Bus,
    pub(crate) mmio: Bus,
    pub(crate) events: BootEvents,
    pub(crate) stop: AtomicBool,
}

/// What the loop does after an exit.
enum Next {
    Continue,
    Stop,
}

/// Body of a vCPU thread.
pub(crate) fn run_vcpu(mut vcpu: Vcpu, shared: Arc<VcpuShared>) {
    let id = vcpu.id();
    while !shared.stop.load(Ordering::Acquire) {
        let next = match vcpu.run() {
            Ok(VcpuExit::InternalError) => {
                let failure = vcpu.internal_error();
                fail(&shared, id, failure.to_string())
            }
            Ok(exit) => handle_exit(&shared, id, exit),
            Err(e) => fail(
                &shared,
                id,
                format!(
                    "{e}: {}",
                    std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
                ),
            ),
        };
        if let Next::Stop = next {
            break;
        }
    }
    log::debug!("vCPU {id} stopped");
}

fn fail(shared: &VcpuShared, id: u32, reason: String) -> Next {
    shared.events.send(ControlEvent::VcpuFailed { vcpu: id, reason });
    Next::Stop
}

fn handle_exit(shared: &VcpuShared, id: u32, exit: VcpuExit<'_>) -> Next {
    match exit {
        VcpuExit::IoIn { port, data } => {
            if !shared.pio.read(u64::from(port), data) {
                data.fill(0xff);
                guest_debug!("vCPU {id}: read of unclaimed port {port:#x} ({} bytes)", data.len());
            }
        }
        VcpuExit::IoOut { port, data } => {
            if !shared.pio.write(u64::from(port), data) {
                guest_debug!("vCPU {id}: write of unclaimed port {port:#x}: {data:02x?}");
            }
        }
        VcpuExit::MmioRead { addr, data } => {
            if !shared.mmio.read(addr, data) {
                data.fill(0xff);
                guest_debug!("vCPU {id}: read of unclaimed MMIO {addr:#x} ({} bytes)", data.len());
            }
        }
        VcpuExit::MmioWrite { addr, data } => {
            if !shared.mmio.write(addr, data) {
                guest_debug!("vCPU {id}: write of unclaimed MMIO {addr:#x}: {data:02x?}");
            }
        }
        VcpuExit::Interrupted => {}
        VcpuExit::Hlt => guest_debug!("vCPU {id}: HLT exit"),
        // A triple fault: PC hardware resets the machine.
        VcpuExit::Shutdown => {
            log::info!("vCPU {id}: triple fault, resetting");
            shared.events.send(ControlEvent::Guest(GuestEvent::Reset));
            return Next::Stop;
        }
        VcpuExit::SystemEvent(kind) => {
            let event = match kind {
                SYSTEM_EVENT_SHUTDOWN => GuestEvent::PowerOff,
                SYSTEM_EVENT_RESET => GuestEvent::Reset,
                SYSTEM_EVENT_CRASH => GuestEvent::Panic(0),
                other => {
                    guest_warn!("vCPU {id}: unknown system event {other}");
                    return Next::Continue;
                }
            };
            shared.events.send(ControlEvent::Guest(event));
            return Next::Stop;
        }
        VcpuExit::FailEntry(reason) => {
            return fail(
                shared,
                id,
                format!("KVM could not enter the guest (hardware reason {reason:#x})"),
            )
        }
        VcpuExit::InternalError => unreachable!("handled by run_vcpu"),
        VcpuExit::Other(what) => {
            return fail(shared, id, format!("unexpected KVM exit: {what}"));
        }
    }
    Next::Continue
}
