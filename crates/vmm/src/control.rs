//! The control loop: boots the VM, waits for the event that ends the boot, answers control API
//! requests meanwhile, and reboots or returns the exit reason.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ironvirt_api_types::{SerialCounters, VcpuCounters, VmCounters, VmmRunState, VmmStatus};
use ironvirt_devices::{Rtc, Serial, SystemClock};
use ironvirt_hypervisor::Hypervisor;
use ironvirt_vm_bus::GuestEvent;
use ironvirt_vmm_protocol::{Pong, Request, Response};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{VmConfig, MAX_CPUS};
use crate::console::{Console, InputPump};
use crate::interrupts::{BootEvents, EventInterrupt};
use crate::machine::{boot, Machine, Persistent};
use crate::{ControlEvent, ExitReason, VmmError};

/// Generation tag of events that are valid whatever boot is running (signals, API requests).
const ANY_BOOT: u64 = u64::MAX;

fn host(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |cause| VmmError::Host { what, cause }
}

/// Runs the VM described by `cfg` until it ends; returns why. The console is closed (output
/// flushed, terminal restored) and the exit file written before this returns.
pub fn run(cfg: &VmConfig) -> Result<ExitReason, VmmError> {
    let result = run_inner(cfg);
    if let Some(path) = &cfg.exit_file {
        let (code, reason) = match &result {
            Ok(r) => (r.code(), r.to_string()),
            Err(e) => (1, crate::exit::error_chain(e)),
        };
        if let Err(e) = write_exit_file(path, code, &reason) {
            log::warn!("cannot write the exit file {}: {e}", path.display());
        }
    }
    result
}

fn run_inner(cfg: &VmConfig) -> Result<ExitReason, VmmError> {
    let started = Instant::now();
    let hv = Hypervisor::open()?;
    let max = (hv.max_vcpus() as u32).min(MAX_CPUS);
    if cfg.cpus == 0 || cfg.cpus > max {
        return Err(VmmError::TooManyCpus { requested: cfg.cpus, max });
    }
    ironvirt_sys_util::signals::install_kick_handler()
        .map_err(host("the vCPU kick signal handler"))?;

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
        .map_err(host("the signal thread"))?;

    let mut console = Console::open(&cfg.serial).map_err(VmmError::Console)?;
    let _api = match &cfg.api_socket {
        Some(path) => Some(crate::api::start(path, tx.clone(), ANY_BOOT).map_err(VmmError::Api)?),
        None => None,
    };
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(host("an eventfd"))?;
    let irq_clone = serial_irq.try_clone().map_err(host("an eventfd"))?;
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
        Supervisor { hv: &hv, cfg, persistent: &persistent, started, reboots: 0 }.run(tx, &rx)
    })();
    console.close();
    result
}

struct Supervisor<'a> {
    hv: &'a Hypervisor,
    cfg: &'a VmConfig,
    persistent: &'a Persistent,
    started: Instant,
    reboots: u64,
}

/// What an API request asks of the control loop.
enum ApiOutcome {
    Answer(Response),
    /// Answer, then reset the guest.
    Reset,
}

impl Supervisor<'_> {
    fn run(
        &mut self,
        tx: mpsc::Sender<(u64, ControlEvent)>,
        rx: &mpsc::Receiver<(u64, ControlEvent)>,
    ) -> Result<ExitReason, VmmError> {
        for generation in 0.. {
            let events = BootEvents { generation, tx: tx.clone() };
            let machine = boot(self.hv, self.cfg, self.persistent, events)?;
            let event = loop {
                let (tag, event) = rx.recv().expect("the control loop holds a sender");
                if tag != generation && tag != ANY_BOOT {
                    continue;
                }
                match event {
                    ControlEvent::Api(request, reply) => match self.api(request, &machine) {
                        ApiOutcome::Answer(response) => {
                            let _ = reply.send(response);
                        }
                        ApiOutcome::Reset => {
                            let _ = reply.send(Response::no_content());
                            break ControlEvent::Guest(GuestEvent::Reset);
                        }
                    },
                    other => break other,
                }
            };
            machine.stop();
            let reason = match event {
                ControlEvent::Guest(GuestEvent::PowerOff) => ExitReason::PowerOff,
                ControlEvent::Guest(GuestEvent::Reset) if !self.cfg.no_reboot => {
                    log::info!("guest reset: rebooting");
                    self.persistent.rtc.lock().unwrap_or_else(|p| p.into_inner()).reset();
                    self.reboots += 1;
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
                ControlEvent::Api(..) => unreachable!("answered in the wait loop"),
            };
            return Ok(reason);
        }
        unreachable!("the boot loop only ends by returning")
    }

    fn api(&self, request: Request, machine: &Machine) -> ApiOutcome {
        let conflict = |msg: &str| ApiOutcome::Answer(Response::error(409, "conflict", msg));
        ApiOutcome::Answer(match request {
            Request::Ping => Response::json(&Pong {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").into(),
            }),
            Request::Status => Response::json(&VmmStatus {
                state: if machine.is_paused() { VmmRunState::Paused } else { VmmRunState::Running },
                cpus: self.cfg.cpus,
                memory_bytes: self.cfg.memory,
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").into(),
            }),
            Request::Pause if !machine.pause() => return conflict("The VM is already paused"),
            Request::Resume if !machine.resume() => return conflict("The VM is not paused"),
            Request::Pause | Request::Resume => Response::no_content(),
            Request::PowerButton => {
                machine.press_power_button();
                Response::no_content()
            }
            Request::Reset => return ApiOutcome::Reset,
            Request::Counters => Response::json(&self.counters(machine)),
            Request::SetBalloon { target_mib } => match machine.set_balloon(target_mib) {
                Ok(()) => Response::no_content(),
                Err(msg) => return conflict(&msg),
            },
        })
    }

    fn counters(&self, machine: &Machine) -> VmCounters {
        let serial = self.persistent.serial.lock().unwrap_or_else(|p| p.into_inner()).counters();
        let (disks, nics) = machine.io_counters();
        VmCounters {
            vcpus: machine
                .vcpu_counters()
                .into_iter()
                .enumerate()
                .map(|(id, (exits, cpu_time_ns))| VcpuCounters {
                    id: id as u32,
                    exits,
                    cpu_time_ns,
                })
                .collect(),
            serial: SerialCounters { tx_bytes: serial.tx_bytes, rx_bytes: serial.rx_bytes },
            disks,
            nics,
            reboots: self.reboots,
            uptime_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

/// Writes the exit file atomically (temporary file, then rename).
fn write_exit_file(path: &Path, code: i32, reason: &str) -> std::io::Result<()> {
    let body = serde_json::json!({ "code": code, "reason": reason }).to_string();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}
