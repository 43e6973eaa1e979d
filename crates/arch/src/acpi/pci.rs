//! ACPI description of the PCI root complex: the `\_SB.PCI0` host bridge (DSDT) and the MCFG
//! table locating its ECAM window (PCI Firmware 3.2 §4.1.2; ACPI 6.5 §6.1.5, §6.2.13, §6.4.3.5).

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, Name, Package, PackageBuilder,
    ResourceTemplate, IO,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::{Aml, AmlSink};

use crate::layout::pci_intx_gsi;

/// Device slots on bus 0 that may hold a device (0 is the host bridge).
const DEVICE_SLOTS: std::ops::RangeInclusive<u8> = 1..=31;

/// The root bridge: bus 0 only, the 32-bit and (optional) 64-bit MMIO windows for BARs, the
/// CF8/CFC ports, and the legacy interrupt routing of every slot (`_PRT`).
pub struct PciRootBridge {
    /// First address of the 32-bit BAR window.
    pub mmio_base: u32,
    /// Size of the 32-bit window.
    pub mmio_size: u32,
    /// `(base, size)` of the 64-bit BAR window above RAM, if any.
    pub mmio64: Option<(u64, u64)>,
}

/// `_PRT` (ACPI 6.5 §6.2.13): for each slot and pin, `{ address, pin, 0, GSI }` with the
/// device's address as `slot << 16 | 0xffff` (any function) and the GSI given directly (no
/// link device), as [`pci_intx_gsi`] wires it.
fn routing_table() -> PackageBuilder {
    let mut prt = PackageBuilder::new();
    for slot in DEVICE_SLOTS {
        for pin in 0..4u8 {
            let address = (u32::from(slot) << 16) | 0xffff;
            let gsi = pci_intx_gsi(slot, pin);
            prt.add_element(&Package::new(vec![&address, &pin, &0u8, &gsi]));
        }
    }
    prt
}

impl Aml for PciRootBridge {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let end = self.mmio_base.saturating_add(self.mmio_size.saturating_sub(1));
        let buses = AddressSpace::<u16>::new_bus_number(0, 0);
        let config_ports = IO::new(0xcf8, 0xcf8, 1, 8);
        let mmio = AddressSpace::<u32>::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            self.mmio_base,
            end,
            None,
        );
        let mmio64 = self.mmio64.map(|(base, size)| {
            AddressSpace::<u64>::new_memory(
                AddressSpaceCacheable::NotCacheable,
                true,
                base,
                base.saturating_add(size.saturating_sub(1)),
                None,
            )
        });
        let mut resources: Vec<&dyn Aml> = vec![&buses, &config_ports, &mmio];
        if let Some(m) = &mmio64 {
            resources.push(m);
        }
        let crs = ResourceTemplate::new(resources);
        let prt = routing_table();
        Device::new(
            "PCI0".into(),
            vec![
                &Name::new("_HID".into(), &EISAName::new("PNP0A08")),
                &Name::new("_CID".into(), &EISAName::new("PNP0A03")),
                &Name::new("_UID".into(), &0usize),
                &Name::new("_SEG".into(), &0usize),
                &Name::new("_BBN".into(), &0usize),
                &Name::new("_CRS".into(), &crs),
                &Name::new("_PRT".into(), &prt),
            ],
        )
        .to_aml_bytes(sink);
    }
}

/// The MCFG table for one ECAM window covering buses `0..=last_bus` at `base`.
pub fn mcfg(base: u64, last_bus: u8) -> MCFG {
    let mut table = MCFG::new(*b"IRNVRT", *b"IRONVIRT", 1);
    table.add_ecam(base, 0, 0, last_bus);
    table
}
