//! The Differentiated System Description Table (DSDT): AML for `\_S5_` and the ISA devices.

use acpi_tables::aml::{Device, EISAName, Name, Package, Path, ResourceTemplate, Scope, IO, ZERO};
use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};

use super::{AcpiConfig, AcpiError, OEM_ID, OEM_REVISION, OEM_TABLE_ID, SDT_HEADER_LEN};

/// DSDT revision 2: integers in the AML are 64-bit (ACPI 6.5 §5.2.11.1).
const DSDT_REVISION: u8 = 2;
/// `_STA` value: present, enabled, shown in UI, functioning (ACPI 6.5 §6.3.7).
const STA_PRESENT_ENABLED: u8 = 0x0f;
/// Small resource IRQ descriptor, no information byte: tag 0x22 = type 0, name 0x4, length
/// 2 (ACPI 6.5 §6.4.2.1). Without the information byte the IRQ is edge-triggered, active high.
const IRQ_NO_FLAGS_TAG: u8 = 0x22;
/// Highest IRQ a small IRQ descriptor can name (its mask is 16 bits).
const IRQ_NO_FLAGS_MAX: u8 = 15;

/// `IRQNoFlags () { irq }`: an ISA IRQ, edge-triggered, active high, exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqNoFlags {
    irq: u8,
}

impl IrqNoFlags {
    /// Describes ISA IRQ `irq` (0..=15).
    ///
    /// # Errors
    /// [`AcpiError::Encode`] if `irq` is above 15.
    pub fn new(irq: u8) -> Result<Self, AcpiError> {
        if irq > IRQ_NO_FLAGS_MAX {
            return Err(AcpiError::Encode {
                what: format!("IRQNoFlags({irq})"),
                reason: "ISA IRQ numbers are 0..=15",
            });
        }
        Ok(Self { irq })
    }
}

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(IRQ_NO_FLAGS_TAG);
        sink.word(1 << self.irq);
    }
}

/// How a device identifies itself in `_HID`.
#[derive(Clone, Copy, Debug)]
enum Hid {
    /// A compressed EISA id such as `PNP0501` (ACPI 6.5 §6.1.5).
    Eisa(&'static str),
    /// A plain string id such as `QEMU0001`.
    Str(&'static str),
}

/// A fixed-resource ISA-style device under `\_SB`.
#[derive(Clone, Debug)]
struct IsaDevice {
    /// Four-character ACPI name.
    name: &'static str,
    hid: Hid,
    uid: Option<u8>,
    /// `(first port, number of ports)` ranges, each one `IO (Decode16, ...)` descriptor.
    io: Vec<(u16, u8)>,
    irq: Option<IrqNoFlags>,
    sta: Option<u8>,
}

impl Aml for IsaDevice {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let hid_eisa;
        let hid_str;
        let hid: &dyn Aml = match self.hid {
            Hid::Eisa(id) => {
                hid_eisa = EISAName::new(id);
                &hid_eisa
            }
            Hid::Str(id) => {
                hid_str = id;
                &hid_str
            }
        };
        // IO (Decode16, base, base, alignment 1, len): a fixed range (ACPI 6.5 §6.4.2.5).
        let io: Vec<IO> = self.io.iter().map(|&(base, len)| IO::new(base, base, 1, len)).collect();
        let mut resources: Vec<&dyn Aml> = io.iter().map(|io| io as &dyn Aml).collect();
        if let Some(irq) = &self.irq {
            resources.push(irq);
        }
        let crs = ResourceTemplate::new(resources);

        let hid = Name::new("_HID".into(), hid);
        let uid = self.uid.map(|uid| Name::new("_UID".into(), &uid));
        let sta = self.sta.map(|sta| Name::new("_STA".into(), &sta));
        let crs = Name::new("_CRS".into(), &crs);
        let mut children: Vec<&dyn Aml> = vec![&hid];
        children.extend(uid.as_ref().map(|n| n as &dyn Aml));
        children.extend(sta.as_ref().map(|n| n as &dyn Aml));
        children.push(&crs);
        Device::new(Path::new(self.name), children).to_aml_bytes(sink);
    }
}

/// The fixed platform devices of `docs/PLATFORM.md`, plus pvpanic when configured.
fn platform_devices(cfg: &AcpiConfig) -> Result<Vec<IsaDevice>, AcpiError> {
    let mut devices = vec![
        // 16550A UART, ports 0x3f8..0x400, IRQ 4.
        IsaDevice {
            name: "COM1",
            hid: Hid::Eisa("PNP0501"),
            uid: Some(1),
            io: vec![(0x3f8, 8)],
            irq: Some(IrqNoFlags::new(4)?),
            sta: None,
        },
        // MC146818 CMOS RTC, ports 0x70..0x72, IRQ 8.
        IsaDevice {
            name: "RTC_",
            hid: Hid::Eisa("PNP0B00"),
            uid: None,
            io: vec![(0x70, 2)],
            irq: Some(IrqNoFlags::new(8)?),
            sta: None,
        },
        // i8042 keyboard controller, data 0x60 and command/status 0x64, IRQ 1.
        IsaDevice {
            name: "PS2K",
            hid: Hid::Eisa("PNP0303"),
            uid: None,
            io: vec![(0x60, 1), (0x64, 1)],
            irq: Some(IrqNoFlags::new(1)?),
            sta: None,
        },
    ];
    if let Some(port) = cfg.pvpanic_port {
        // QEMU's pvpanic ISA device; Linux's pvpanic driver binds to this _HID.
        devices.push(IsaDevice {
            name: "PEVT",
            hid: Hid::Str("QEMU0001"),
            uid: None,
            io: vec![(port, 1)],
            irq: None,
            sta: Some(STA_PRESENT_ENABLED),
        });
    }
    Ok(devices)
}

/// Builds the DSDT: `\_S5_` and the `\_SB` scope with the platform devices followed by
/// [`AcpiConfig::sb_devices`].
pub(super) fn build_dsdt(cfg: &AcpiConfig) -> Result<Vec<u8>, AcpiError> {
    let devices = platform_devices(cfg)?;
    let mut aml = Vec::new();

    // \_S5_: Package {SLP_TYPa, SLP_TYPb, reserved, reserved} (ACPI 6.5 §7.4.2).
    let slp_typ = cfg.s5_slp_typ;
    Name::new("\\_S5_".into(), &Package::new(vec![&slp_typ, &slp_typ, &ZERO, &ZERO]))
        .to_aml_bytes(&mut aml);

    let mut sb_children: Vec<&dyn Aml> = devices.iter().map(|d| d as &dyn Aml).collect();
    sb_children.extend(cfg.sb_devices.iter().map(|d| d.as_ref() as &dyn Aml));
    Scope::new("\\_SB_".into(), sb_children).to_aml_bytes(&mut aml);

    let mut dsdt = Sdt::new(
        *b"DSDT",
        SDT_HEADER_LEN as u32,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&aml);
    Ok(dsdt.as_slice().to_vec())
}
