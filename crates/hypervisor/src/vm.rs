//! The VM file descriptor and the guest memory mapped into it.

use std::sync::Mutex;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::{ioctl_err, HypervisorError, Result, Vcpu};

/// A KVM VM. Methods take `&self` so the VMM's threads can share it.
pub struct Vm {
    fd: VmFd,
    /// Memory registered with KVM. Holding it here keeps every mapping alive for as long as
    /// KVM may access it (the VM fd is closed first when `Vm` drops: fields drop in order).
    memory: Mutex<Vec<GuestMemoryMmap>>,
}

impl Vm {
    pub(crate) fn new(fd: VmFd) -> Self {
        Self { fd, memory: Mutex::new(Vec::new()) }
    }

    pub(crate) fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Creates the in-kernel interrupt controllers (PIC, IOAPIC, LAPICs) and PIT, and places
    /// the TSS and identity-map pages KVM needs on Intel hosts at `tss_addr` (three pages) and
    /// `identity_map_addr` (one page), which must lie in a hole the guest cannot use as RAM.
    pub fn setup_platform(&self, tss_addr: u64, identity_map_addr: u64) -> Result<()> {
        self.fd
            .set_identity_map_address(identity_map_addr)
            .map_err(ioctl_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        let tss = usize::try_from(tss_addr).expect("TSS address is a 32-bit constant");
        self.fd.set_tss_address(tss).map_err(ioctl_err("KVM_SET_TSS_ADDR"))?;
        self.fd.create_irq_chip().map_err(ioctl_err("KVM_CREATE_IRQCHIP"))?;
        // The speaker port (0x61) is handled in the kernel too, as a dummy.
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        self.fd.create_pit2(pit).map_err(ioctl_err("KVM_CREATE_PIT2"))?;
        Ok(())
    }

    /// Maps every region of `memory` into the guest, one KVM slot per region.
    pub fn register_memory(&self, memory: &GuestMemoryMmap) -> Result<()> {
        let mut held = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        let first_slot = held.iter().map(|m| m.num_regions()).sum::<usize>();
        for (i, region) in memory.iter().enumerate() {
            let slot = u32::try_from(first_slot + i).expect("slot count is tiny");
            let host = region.as_ptr() as u64;
            let mem = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host,
            };
            // SAFETY: `host` is the start of a live mmap of `region.len()` bytes owned by
            // `memory`; a clone of `memory` (sharing the same mappings) is stored in `self` below
            // and dropped only after the VM fd, so KVM never sees a dangling mapping.
            unsafe { self.fd.set_user_memory_region(mem) }.map_err(|e| {
                HypervisorError::MemoryRegion {
                    addr: region.start_addr().0,
                    cause: std::io::Error::from_raw_os_error(e.errno()),
                }
            })?;
        }
        held.push(memory.clone());
        Ok(())
    }

    /// Makes every signal of `event` raise the (edge) interrupt `gsi`.
    pub fn register_irqfd(&self, event: &EventFd, gsi: u32) -> Result<()> {
        self.fd.register_irqfd(event, gsi).map_err(ioctl_err("KVM_IRQFD"))
    }

    /// Makes every signal of `event` assert the level-triggered interrupt `gsi`; when the
    /// guest acknowledges it (EOI), KVM deasserts `gsi` and signals `resample`, so the source
    /// can assert it again if it is still pending (`KVM_IRQFD_FLAG_RESAMPLE`).
    pub fn register_resample_irqfd(
        &self,
        event: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> Result<()> {
        self.fd
            .register_irqfd_with_resample(event, resample, gsi)
            .map_err(ioctl_err("KVM_IRQFD (resample)"))
    }

    /// Sets the level of interrupt line `gsi` (for level-triggered sources like the SCI).
    pub fn set_irq_line(&self, gsi: u32, high: bool) -> Result<()> {
        self.fd.set_irq_line(gsi, high).map_err(ioctl_err("KVM_IRQ_LINE"))
    }

    /// Creates vCPU `id` (its APIC id as well).
    pub fn create_vcpu(&self, id: u32) -> Result<Vcpu> {
        let fd = self.fd.create_vcpu(u64::from(id)).map_err(ioctl_err("KVM_CREATE_VCPU"))?;
        Ok(Vcpu::new(fd, id))
    }
}
