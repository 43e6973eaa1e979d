//! Interrupt routing for MSI/MSI-X (KVM GSI routing table) and ioeventfd registration.

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch};
use vmm_sys_util::eventfd::EventFd;

use crate::{ioctl_err, Result, Vm};

/// GSIs 0..24 are the IOAPIC pins (0..16 also the PICs'); MSI routes start here.
pub const FIRST_MSI_GSI: u32 = 24;
/// Number of IOAPIC pins KVM emulates.
const IOAPIC_PINS: u32 = 24;

/// An MSI message: where the device writes and what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiRoute {
    /// GSI the route is installed at (>= [`FIRST_MSI_GSI`]).
    pub gsi: u32,
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip: chip, pin },
        },
        ..Default::default()
    }
}

/// The legacy routes KVM installs by default: GSI n to IOAPIC pin n, and GSIs 0..16 (but 2)
/// also to the PICs. Replacing the table must keep them.
fn legacy_routes() -> Vec<kvm_irq_routing_entry> {
    let mut routes = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < 16 && gsi != 2 {
            let (chip, pin) = if gsi < 8 {
                (KVM_IRQCHIP_PIC_MASTER, gsi)
            } else {
                (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
            };
            routes.push(irqchip(gsi, chip, pin));
        }
        routes.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    routes
}

impl Vm {
    /// Replaces KVM's routing table with the legacy routes plus `msi` routes.
    pub fn set_msi_routes(&self, msi: &[MsiRoute]) -> Result<()> {
        let mut entries = legacy_routes();
        for r in msi {
            entries.push(kvm_irq_routing_entry {
                gsi: r.gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                u: kvm_irq_routing_entry__bindgen_ty_1 {
                    msi: kvm_irq_routing_msi {
                        address_lo: r.address as u32,
                        address_hi: (r.address >> 32) as u32,
                        data: r.data,
                        ..Default::default()
                    },
                },
                ..Default::default()
            });
        }
        let table =
            KvmIrqRouting::from_entries(&entries).map_err(|_| crate::HypervisorError::Ioctl {
                op: "KVM_SET_GSI_ROUTING",
                cause: std::io::Error::from_raw_os_error(libc::E2BIG),
            })?;
        self.fd().set_gsi_routing(&table).map_err(ioctl_err("KVM_SET_GSI_ROUTING"))
    }

    /// Makes guest writes of any value to MMIO `addr` signal `event` inside KVM, without an
    /// exit to userspace.
    pub fn register_mmio_ioevent(&self, event: &EventFd, addr: u64) -> Result<()> {
        self.fd()
            .register_ioevent(event, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(ioctl_err("KVM_IOEVENTFD"))
    }

    /// Undoes [`Vm::register_mmio_ioevent`] (a BAR moved).
    pub fn unregister_mmio_ioevent(&self, event: &EventFd, addr: u64) -> Result<()> {
        self.fd()
            .unregister_ioevent(event, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(ioctl_err("KVM_IOEVENTFD deassign"))
    }

    /// Undoes [`Vm::register_irqfd`].
    pub fn unregister_irqfd(&self, event: &EventFd, gsi: u32) -> Result<()> {
        self.fd().unregister_irqfd(event, gsi).map_err(ioctl_err("KVM_IRQFD deassign"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_routes_cover_every_ioapic_pin_and_the_pics_but_the_cascade() {
        let routes = legacy_routes();
        // 24 IOAPIC pins plus 15 PIC inputs (IRQ 2 is the cascade).
        assert_eq!(routes.len(), 24 + 15);
        assert_eq!(routes.iter().filter(|r| r.gsi == 2).count(), 1);
        assert_eq!(routes.iter().filter(|r| r.gsi == 4).count(), 2);
        assert!(routes.iter().all(|r| r.gsi < FIRST_MSI_GSI && r.type_ == KVM_IRQ_ROUTING_IRQCHIP));
    }
}
