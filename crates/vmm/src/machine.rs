//! One boot of the VM: memory, KVM VM, devices, boot data and vCPU threads.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ironvirt_arch::acpi::pci::{mcfg, PciRootBridge};
use ironvirt_arch::acpi::{create_acpi_tables, AcpiConfig};
use ironvirt_arch::layout::{KVM_IDENTITY_MAP, KVM_TSS};
use ironvirt_arch::{regs, BootSource};
use ironvirt_devices::{acpi_pm, i8042, pvpanic, rtc, serial, AcpiPm, PvPanic, Rtc, Serial, I8042};
use ironvirt_hypervisor::{CpuId, Hypervisor, Vcpu, Vm};
use ironvirt_virtio::balloon::BalloonHandle;
use ironvirt_virtio::VirtioDevice;
use ironvirt_vm_bus::{Bus, GuestEventSink, SharedDevice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::VmConfig;
use ironvirt_api_types::IoCounters;

use crate::interrupts::{BootEvents, EventInterrupt, IntxResampler, IrqLine};
use crate::vcpu::{run_vcpu, PauseGate, VcpuShared, VcpuStats};
use crate::VmmError;

/// ISA IRQs of the platform devices (docs/PLATFORM.md).
const IRQ_KEYBOARD: u32 = 1;
const IRQ_COM1: u32 = 4;
const IRQ_SCI: u32 = 9;

/// Devices that outlive a guest reset: the UART (so console clients stay connected) and the
/// CMOS (its NVRAM survives resets, as on real hardware).
pub(crate) struct Persistent {
    pub(crate) serial: Arc<Mutex<Serial>>,
    pub(crate) serial_irq: EventFd,
    pub(crate) rtc: Arc<Mutex<Rtc>>,
    pub(crate) supported_cpuid: CpuId,
}

/// A booted VM with its vCPU threads running.
pub(crate) struct Machine {
    shared: Arc<VcpuShared>,
    threads: Vec<JoinHandle<()>>,
    acpi_pm: Arc<Mutex<AcpiPm>>,
    balloon: Option<BalloonHandle>,
    io: IoSources,
    /// Re-raises PCI INTx lines after the guest's EOIs, when PCI devices are attached.
    _intx: Option<IntxResampler>,
    /// Keeps the VM (and so its memory) alive until every vCPU thread is gone.
    _vm: Arc<Vm>,
}

fn open(what: &'static str, path: &Path) -> Result<File, VmmError> {
    File::open(path).map_err(|cause| VmmError::Open { what, path: path.to_path_buf(), cause })
}

fn host(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |cause| VmmError::Host { what, cause }
}

fn attach(
    bus: &mut Bus,
    name: &'static str,
    dev: SharedDevice,
    base: u64,
    len: u64,
) -> Result<(), VmmError> {
    bus.insert(dev, base, len).map_err(|cause| VmmError::Bus { name, cause })
}

/// Builds and starts one boot of the VM described by `cfg`.
pub(crate) fn boot(
    hv: &Hypervisor,
    cfg: &VmConfig,
    persistent: &Persistent,
    events: BootEvents,
) -> Result<Machine, VmmError> {
    let mut kernel = open("kernel", &cfg.kernel)?;
    let mut initramfs = cfg.initramfs.as_deref().map(|p| open("initramfs", p)).transpose()?;

    let memory = ironvirt_arch::create_guest_memory(cfg.memory)?;
    let vm = Arc::new(hv.create_vm()?);
    // The memory slot goes in before the in-kernel irqchip: once an irqchip exists, installing
    // a slot costs KVM an SRCU grace period (measured here: 0.2 ms before, ~5 ms after).
    vm.register_memory(&memory)?;
    vm.setup_platform(KVM_TSS, KVM_IDENTITY_MAP)?;
    let mut balloon = None;
    let mut io = IoSources::default();
    let devices = virtio_devices(cfg, &mut balloon, &mut io)?;
    let mut acpi = AcpiConfig { num_cpus: cfg.cpus, ..Default::default() };
    let windows = crate::pci::windows(&memory);
    if !devices.is_empty() {
        acpi.sb_devices.push(Box::new(PciRootBridge {
            // The 32-bit window lies below 4 GiB (PciRoot::new checks it).
            mmio_base: windows.mmio32.base as u32,
            mmio_size: windows.mmio32.size as u32,
            mmio64: windows.mmio64.map(|w| (w.base, w.size)),
        }));
        acpi.extra_tables.push(Box::new(mcfg(crate::pci::ECAM_BASE, 0)));
    }
    let rsdp = create_acpi_tables(&memory, &acpi)?;
    let source = BootSource {
        kernel: &mut kernel,
        initramfs: initramfs.as_mut(),
        cmdline: &cfg.cmdline,
        protocol: cfg.boot_protocol,
    };
    let entry = ironvirt_arch::load_boot(&memory, cfg.memory, rsdp.0, source)
        .map_err(|cause| VmmError::Boot { path: cfg.kernel.clone(), cause })?;
    regs::write_boot_tables(&memory)?;
    let (mut pio, acpi_pm) = platform_bus(&vm, persistent, &events)?;
    let mut mmio = Bus::new();
    let intx = if devices.is_empty() {
        None
    } else {
        Some(crate::pci::attach(&vm, &memory, windows, devices, &mut pio, &mut mmio)?)
    };
    let vcpus = create_vcpus(&vm, cfg, persistent, entry)?;

    let shared = Arc::new(VcpuShared {
        pio,
        mmio,
        events,
        stop: AtomicBool::new(false),
        pause: PauseGate::default(),
        stats: (0..cfg.cpus).map(|_| VcpuStats::default()).collect(),
    });
    let mut threads = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        let shared = shared.clone();
        let name = format!("vcpu{}", vcpu.id());
        let handle = std::thread::Builder::new()
            .name(name)
            .stack_size(256 * 1024)
            .spawn(move || run_vcpu(vcpu, shared))
            .map_err(host("a vCPU thread"))?;
        threads.push(handle);
    }
    Ok(Machine { shared, threads, acpi_pm, balloon, io, _intx: intx, _vm: vm })
}

/// The virtio devices `cfg` asks for, in PCI slot order.
/// Readers of the disks' and NICs' counters, in command-line order, for the control API.
#[derive(Default)]
pub(crate) struct IoSources {
    disks: Vec<ironvirt_virtio::block::BlockStatsSource>,
    nics: Vec<ironvirt_virtio::net::NetStatsSource>,
}

/// The name Linux gives the `index`th virtio disk: vda..vdz, vdaa..
fn disk_name(index: usize) -> String {
    let mut suffix = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        suffix.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    suffix.reverse();
    format!("vd{}", String::from_utf8_lossy(&suffix))
}

impl IoSources {
    /// Per-disk then per-NIC counters: reads and writes for disks, received and transmitted
    /// frames for NICs.
    pub(crate) fn counters(&self) -> (Vec<IoCounters>, Vec<IoCounters>) {
        let disks = self
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let s = d.stats();
                IoCounters {
                    name: disk_name(i),
                    read_ops: s.reads,
                    read_bytes: s.bytes_read,
                    write_ops: s.writes,
                    write_bytes: s.bytes_written,
                }
            })
            .collect();
        let nics = self
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let s = n.stats();
                IoCounters {
                    name: format!("net{i}"),
                    read_ops: s.rx_frames,
                    read_bytes: s.rx_bytes,
                    write_ops: s.tx_frames,
                    write_bytes: s.tx_bytes,
                }
            })
            .collect();
        (disks, nics)
    }
}

fn virtio_devices(
    cfg: &VmConfig,
    balloon: &mut Option<BalloonHandle>,
    io: &mut IoSources,
) -> Result<Vec<Box<dyn VirtioDevice>>, VmmError> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    if let Some(v) = &cfg.vsock {
        let vsock = ironvirt_virtio::vsock::Vsock::new(&ironvirt_virtio::vsock::VsockConfig {
            cid: v.cid,
            socket: v.socket.clone(),
        })
        .map_err(|e| VmmError::Device {
            name: "virtio-vsock",
            reason: crate::exit::error_chain(&e),
        })?;
        devices.push(Box::new(vsock));
    }
    if cfg.rng {
        devices.push(Box::new(ironvirt_virtio::rng::Rng::new()));
    }
    for disk in &cfg.disks {
        let block = ironvirt_virtio::block::Block::new(&ironvirt_virtio::block::BlockConfig {
            path: disk.path.clone(),
            format: match disk.format {
                crate::config::DiskFormat::Raw => ironvirt_virtio::block::DiskFormat::Raw,
                crate::config::DiskFormat::Qcow2 => ironvirt_virtio::block::DiskFormat::Qcow2,
            },
            readonly: disk.readonly,
            direct: disk.direct,
            serial: disk.serial.clone(),
            allow_backing: disk.backing,
        })
        .map_err(|e| VmmError::Device {
            name: "virtio-blk",
            reason: crate::exit::error_chain(&e),
        })?;
        io.disks.push(block.stats_source());
        devices.push(Box::new(block));
    }
    for nic in &cfg.nets {
        let net = ironvirt_virtio::net::Net::new(&ironvirt_virtio::net::NetConfig {
            tap: nic.tap.clone(),
            mac: nic.mac,
        })
        .map_err(|e| VmmError::Device {
            name: "virtio-net",
            reason: crate::exit::error_chain(&e),
        })?;
        io.nics.push(net.stats_source());
        devices.push(Box::new(net));
    }
    if cfg.balloon {
        let device = ironvirt_virtio::balloon::Balloon::new();
        *balloon = Some(device.handle());
        devices.push(Box::new(device));
    }
    Ok(devices)
}

/// Creates the vCPUs with their CPUID, MSRs, FPU and LAPIC state; vCPU 0 at the kernel entry.
fn create_vcpus(
    vm: &Vm,
    cfg: &VmConfig,
    persistent: &Persistent,
    entry: regs::EntryMode,
) -> Result<Vec<Vcpu>, VmmError> {
    let mut vcpus = Vec::with_capacity(cfg.cpus as usize);
    for id in 0..cfg.cpus {
        let vcpu = vm.create_vcpu(id)?;
        let cpuid =
            ironvirt_arch::vcpu_cpuid(&persistent.supported_cpuid, cfg.cpu_template, id, cfg.cpus);
        vcpu.set_cpuid(&cpuid)?;
        regs::setup_msrs(&vcpu)?;
        regs::setup_fpu(&vcpu)?;
        regs::setup_lapic(&vcpu)?;
        if id == 0 {
            regs::setup_boot_vcpu(&vcpu, entry)?;
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// The port-I/O bus with the platform devices of docs/PLATFORM.md, and the ACPI PM block
/// (the control API presses its power button).
fn platform_bus(
    vm: &Arc<Vm>,
    persistent: &Persistent,
    events: &BootEvents,
) -> Result<(Bus, Arc<Mutex<AcpiPm>>), VmmError> {
    let sink: Arc<dyn GuestEventSink> = Arc::new(events.clone());
    vm.register_irqfd(&persistent.serial_irq, IRQ_COM1)?;
    let kbd_irq = EventFd::new(EFD_NONBLOCK).map_err(host("an eventfd"))?;
    vm.register_irqfd(&kbd_irq, IRQ_KEYBOARD)?;
    let sci = Arc::new(IrqLine { vm: vm.clone(), gsi: IRQ_SCI });

    let mut pio = Bus::new();
    attach(&mut pio, "serial", persistent.serial.clone(), serial::PORT_BASE, serial::PORT_LEN)?;
    attach(&mut pio, "rtc", persistent.rtc.clone(), rtc::PORT_BASE, rtc::PORT_LEN)?;
    let kbd = I8042::new(sink.clone(), Arc::new(EventInterrupt(kbd_irq)));
    attach(&mut pio, "i8042", Arc::new(Mutex::new(kbd)), i8042::PORT_BASE, i8042::PORT_LEN)?;
    let pm = Arc::new(Mutex::new(AcpiPm::new(sci, sink.clone())));
    attach(&mut pio, "acpi-pm", pm.clone(), acpi_pm::PORT_BASE, acpi_pm::PORT_LEN)?;
    let panic = PvPanic::new(sink);
    attach(
        &mut pio,
        "pvpanic",
        Arc::new(Mutex::new(panic)),
        pvpanic::PORT_BASE,
        pvpanic::PORT_LEN,
    )?;
    Ok((pio, pm))
}

impl Machine {
    /// Pauses every vCPU; returns false if already paused. Waits (bounded) until all are
    /// parked, kicking them out of `KVM_RUN` meanwhile.
    pub(crate) fn pause(&self) -> bool {
        if !self.shared.pause.set(true) {
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while (self.shared.pause.parked() as usize) < self.threads.len()
            && Instant::now() < deadline
        {
            for handle in &self.threads {
                let _ = ironvirt_sys_util::signals::kick_thread(handle);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Resumes the vCPUs; returns false if not paused.
    pub(crate) fn resume(&self) -> bool {
        self.shared.pause.set(false)
    }

    /// Whether the vCPUs are paused.
    pub(crate) fn is_paused(&self) -> bool {
        self.shared.pause.requested()
    }

    /// Presses the ACPI power button (the guest decides what to do).
    pub(crate) fn press_power_button(&self) {
        self.acpi_pm.lock().unwrap_or_else(|p| p.into_inner()).press_power_button();
    }

    /// Asks the balloon to take `target_mib` MiB from the guest.
    pub(crate) fn set_balloon(&self, target_mib: u64) -> Result<(), String> {
        let handle = self
            .balloon
            .as_ref()
            .ok_or("The VM has no balloon device (start it with --balloon)")?;
        let pages = target_mib
            .checked_mul(256)
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| format!("Balloon target {target_mib} MiB is too large"))?;
        handle.set_target_pages(pages).map_err(|e| format!("Cannot update the balloon: {e}"))
    }

    /// Per-disk and per-NIC I/O counters.
    pub(crate) fn io_counters(&self) -> (Vec<IoCounters>, Vec<IoCounters>) {
        self.io.counters()
    }

    /// Per-vCPU counters: (exits, thread CPU time in ns).
    pub(crate) fn vcpu_counters(&self) -> Vec<(u64, u64)> {
        self.shared
            .stats
            .iter()
            .map(|s| {
                (s.exits.load(Ordering::Relaxed), thread_cpu_ns(s.tid.load(Ordering::Relaxed)))
            })
            .collect()
    }

    /// Stops every vCPU thread: sets the stop flag and kicks each thread out of `KVM_RUN`
    /// until it has exited.
    pub(crate) fn stop(self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.pause.wake_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        for handle in self.threads {
            while !handle.is_finished() {
                if Instant::now() > deadline {
                    log::warn!("a vCPU thread did not stop within 5 s; leaving it");
                    break;
                }
                let _ = ironvirt_sys_util::signals::kick_thread(&handle);
                std::thread::sleep(Duration::from_millis(1));
            }
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
}

/// CPU time of thread `tid` of this process in nanoseconds (first field of its schedstat).
fn thread_cpu_ns(tid: u32) -> u64 {
    if tid == 0 {
        return 0;
    }
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::disk_name;

    #[test]
    fn disks_are_named_vda_vdb_as_the_guest_sees_them() {
        let names: Vec<String> = [0, 1, 25, 26, 27, 701, 702].into_iter().map(disk_name).collect();
        assert_eq!(names, ["vda", "vdb", "vdz", "vdaa", "vdab", "vdzz", "vdaaa"]);
    }
}
