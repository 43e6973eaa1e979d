//! ACPI description of the PCI root complex: the `\_SB.PCI0` host bridge (DSDT) and the MCFG
//! table locating its ECAM window (PCI Firmware 3.2 §4.1.2; ACPI 6.5 §6.1.5, §6.4.3.5).

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, Name, ResourceTemplate, IO,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::{Aml, AmlSink};

/// The root bridge: bus 0 only, the 32-bit MMIO window for BARs, and the CF8/CFC ports.
pub struct PciRootBridge {
    /// First address of the 32-bit BAR window.
    pub mmio_base: u32,
    /// Size of the window.
    pub mmio_size: u32,
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
        let crs = ResourceTemplate::new(vec![&buses, &config_ports, &mmio]);
        Device::new(
            "PCI0".into(),
            vec![
                &Name::new("_HID".into(), &EISAName::new("PNP0A08")),
                &Name::new("_CID".into(), &EISAName::new("PNP0A03")),
                &Name::new("_UID".into(), &0usize),
                &Name::new("_SEG".into(), &0usize),
                &Name::new("_BBN".into(), &0usize),
                &Name::new("_CRS".into(), &crs),
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
