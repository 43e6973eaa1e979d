//! The PCI root complex of a VM and its virtio devices: config access (CF8/CFC and ECAM),
//! BAR dispatch on the MMIO bus, MSI-X delivered through KVM GSI routes and irqfds, and
//! queue doorbells as KVM ioeventfds (so a guest kick never exits to a vCPU thread).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ironvirt_arch::layout::pci_intx_gsi;
use ironvirt_hypervisor::{EventFd, MsiRoute, Vm, FIRST_MSI_GSI};
use ironvirt_pci::{
    MsiMessage, MsiSink, PciConfigIo, PciConfigMmio, PciError, PciRoot, PciWindows, SharedPciDevice,
};
use ironvirt_virtio::pci::VirtioPciDevice;
use ironvirt_virtio::VirtioDevice;
use ironvirt_vm_bus::Bus;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EFD_NONBLOCK;

use crate::interrupts::{IntxPin, IntxResampler};
use crate::VmmError;

/// ECAM window for bus 0 (docs/PLATFORM.md): 1 MiB at 3.5 GiB.
pub(crate) const ECAM_BASE: u64 = ironvirt_arch::layout::PCI_ECAM_START;
const ECAM_BUSES: u16 = 1;
const ECAM_SIZE: u64 = ironvirt_arch::layout::PCI_ECAM_SIZE;

fn pci_err(cause: ironvirt_pci::PciError) -> VmmError {
    VmmError::Pci(cause.to_string())
}

/// All MSI routes of a VM; every change rewrites KVM's routing table.
pub(crate) struct MsiRouter {
    vm: Arc<Vm>,
    routes: Mutex<(BTreeMap<u32, MsiRoute>, u32)>,
}

impl MsiRouter {
    pub(crate) fn new(vm: Arc<Vm>) -> Arc<Self> {
        Arc::new(Self { vm, routes: Mutex::new((BTreeMap::new(), FIRST_MSI_GSI)) })
    }

    /// Reserves `n` consecutive GSIs.
    fn allocate(&self, n: u32) -> u32 {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let base = routes.1;
        routes.1 += n;
        base
    }

    fn set(&self, gsi: u32, message: MsiMessage) -> std::io::Result<()> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if message.masked {
            routes.0.remove(&gsi);
        } else {
            routes.0.insert(gsi, MsiRoute { gsi, address: message.addr, data: message.data });
        }
        let all: Vec<MsiRoute> = routes.0.values().copied().collect();
        self.vm.set_msi_routes(&all).map_err(std::io::Error::other)
    }
}

/// One device's MSI-X vectors: a GSI and an irqfd each.
struct DeviceMsi {
    router: Arc<MsiRouter>,
    base_gsi: u32,
    irqfds: Vec<EventFd>,
}

impl MsiSink for DeviceMsi {
    fn update_route(&self, vector: u16, message: MsiMessage) -> std::io::Result<()> {
        if usize::from(vector) >= self.irqfds.len() {
            return Ok(());
        }
        self.router.set(self.base_gsi + u32::from(vector), message)
    }

    fn trigger(&self, vector: u16) -> std::io::Result<()> {
        match self.irqfds.get(usize::from(vector)) {
            Some(fd) => fd.write(1),
            None => Ok(()),
        }
    }
}

/// The BAR windows of a guest with `mem`: the 32-bit window in the MMIO hole and a 64 GiB
/// 64-bit window at the first GiB boundary above RAM and 4 GiB (docs/PLATFORM.md).
pub(crate) fn windows(mem: &GuestMemoryMmap) -> PciWindows {
    PciWindows::above_ram(mem.last_addr().0 + 1)
}

/// Builds the root complex with `devices` in `windows` and puts its config access and BAR
/// windows on the buses. Each device gets MSI-X vectors and INTA#, routed as the DSDT's
/// `_PRT` says ([`pci_intx_gsi`]); the returned resampler serves the INTx lines while it lives.
pub(crate) fn attach(
    vm: &Arc<Vm>,
    mem: &GuestMemoryMmap,
    windows: PciWindows,
    devices: Vec<Box<dyn VirtioDevice>>,
    pio: &mut Bus,
    mmio: &mut Bus,
) -> Result<IntxResampler, VmmError> {
    let mut root = PciRoot::new(windows).map_err(pci_err)?;
    let router = MsiRouter::new(vm.clone());
    let mut pins = Vec::new();
    // Doorbell addresses per slot, to move the ioeventfds when the guest moves a BAR.
    let mut doorbells: BTreeMap<u8, Vec<(u64, EventFd)>> = BTreeMap::new();
    for device in devices {
        let vectors = device.queue_max_sizes().len() as u32 + 1;
        let base_gsi = router.allocate(vectors);
        let mut irqfds = Vec::new();
        for v in 0..vectors {
            let fd = EventFd::new(EFD_NONBLOCK)
                .map_err(|cause| VmmError::Host { what: "an irqfd", cause })?;
            vm.register_irqfd(&fd, base_gsi + v)?;
            irqfds.push(fd);
        }
        let sink = Arc::new(DeviceMsi { router: router.clone(), base_gsi, irqfds });
        let slot = root.next_free_slot().ok_or_else(|| pci_err(PciError::NoFreeSlot))?;
        let gsi = pci_intx_gsi(slot, 0);
        let pin = Arc::new(IntxPin::new(vm, gsi)?);
        pins.push(pin.clone());
        // GSIs 16..24 fit the interrupt line register.
        let dev = VirtioPciDevice::new(device, mem.clone(), sink)
            .map_err(|e| VmmError::Pci(ironvirt_vmm_error_chain(&e)))?
            .with_intx(pin, gsi as u8);
        let specs = ironvirt_pci::PciDevice::ioeventfds(&dev);
        let kicks: Vec<EventFd> = specs
            .iter()
            .map(|s| dev.kick(s.token as usize).and_then(|k| k.try_clone().ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| VmmError::Pci("cannot clone a queue eventfd".into()))?;
        let shared: SharedPciDevice = Arc::new(Mutex::new(dev));
        let slot = root.add_device(shared.clone()).map_err(pci_err)?;
        let bar0 = shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .config()
            .bar(0)
            .map(|b| b.address)
            .unwrap_or(0);
        let mut bells = Vec::new();
        for (spec, kick) in specs.iter().zip(kicks) {
            let addr = bar0 + spec.offset;
            vm.register_mmio_ioevent(&kick, addr)?;
            bells.push((spec.offset, kick));
        }
        doorbells.insert(slot, bells);
    }
    let hook_vm = vm.clone();
    root.set_relocation_hook(move |moved, _device| {
        let Some(bells) = doorbells.get(&moved.slot) else { return };
        if moved.bar.index != 0 {
            return;
        }
        for (offset, kick) in bells {
            let _ = hook_vm.unregister_mmio_ioevent(kick, moved.bar.old + offset);
            if let Err(e) = hook_vm.register_mmio_ioevent(kick, moved.bar.new + offset) {
                log::warn!("cannot move a virtio doorbell to {:#x}: {e}", moved.bar.new + offset);
            }
        }
    });
    let root = Arc::new(Mutex::new(root));
    let bus_err = |name, cause| VmmError::Bus { name, cause };
    pio.insert(Arc::new(Mutex::new(PciConfigIo::new(root.clone()))), 0xcf8, 8)
        .map_err(|c| bus_err("pci-config-io", c))?;
    mmio.insert(
        Arc::new(Mutex::new(PciConfigMmio::new(root.clone(), ECAM_BUSES))),
        ECAM_BASE,
        ECAM_SIZE,
    )
    .map_err(|c| bus_err("pci-ecam", c))?;
    let dispatchers = root.lock().unwrap_or_else(|p| p.into_inner()).bar_dispatchers();
    for (_, window, bars) in dispatchers {
        mmio.insert(Arc::new(Mutex::new(bars)), window.base, window.size)
            .map_err(|c| bus_err("pci-bars", c))?;
    }
    IntxResampler::start(pins)
}

fn ironvirt_vmm_error_chain(e: &dyn std::error::Error) -> String {
    crate::exit::error_chain(e)
}
