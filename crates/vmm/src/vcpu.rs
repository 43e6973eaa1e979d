//! The vCPU thread: run, dispatch the exit, repeat until told to stop.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

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
    /// Pause request and the number of vCPUs parked because of it.
    pub(crate) pause: PauseGate,
    /// Per-vCPU counters, indexed by vCPU id.
    pub(crate) stats: Vec<VcpuStats>,
}

/// Counters one vCPU thread keeps.
#[derive(Default)]
pub(crate) struct VcpuStats {
    /// Exits to userspace.
    pub(crate) exits: AtomicU64,
    /// Kernel thread id, for reading the thread's CPU time.
    pub(crate) tid: AtomicU32,
}

/// Where vCPU threads park while the VM is paused.
#[derive(Default)]
pub(crate) struct PauseGate {
    /// (paused requested, vCPUs parked).
    state: Mutex<(bool, u32)>,
    changed: Condvar,
}

impl PauseGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, (bool, u32)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests (or cancels) the pause; returns whether the state changed.
    pub(crate) fn set(&self, paused: bool) -> bool {
        let mut state = self.lock();
        let changed = state.0 != paused;
        state.0 = paused;
        self.changed.notify_all();
        changed
    }

    /// Whether a pause is requested.
    pub(crate) fn requested(&self) -> bool {
        self.lock().0
    }

    /// How many vCPUs are parked.
    pub(crate) fn parked(&self) -> u32 {
        self.lock().1
    }

    /// Called by a vCPU thread: blocks while a pause is requested and `stop` is not set.
    fn park(&self, stop: &AtomicBool) {
        let mut state = self.lock();
        state.1 += 1;
        self.changed.notify_all();
        while state.0 && !stop.load(Ordering::Acquire) {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.1 -= 1;
    }

    /// Wakes parked vCPUs so they notice `stop`.
    pub(crate) fn wake_all(&self) {
        let _guard = self.lock();
        self.changed.notify_all();
    }
}

/// The calling thread's kernel thread id, from `/proc/thread-self`.
fn current_tid() -> u32 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .unwrap_or(0)
}

/// What the loop does after an exit.
enum Next {
    Continue,
    Stop,
}

/// Body of a vCPU thread.
pub(crate) fn run_vcpu(mut vcpu: Vcpu, shared: Arc<VcpuShared>) {
    let id = vcpu.id();
    let stats = &shared.stats[id as usize];
    stats.tid.store(current_tid(), Ordering::Relaxed);
    while !shared.stop.load(Ordering::Acquire) {
        if shared.pause.requested() {
            shared.pause.park(&shared.stop);
            continue;
        }
        let exit = vcpu.run();
        stats.exits.fetch_add(1, Ordering::Relaxed);
        let next = match exit {
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
