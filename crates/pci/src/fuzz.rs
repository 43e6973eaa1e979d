//! Entry point shared by the `pci_config` cargo-fuzz target and the corpus replay test: a byte
//! string is read as a sequence of guest accesses to CF8/CFC, ECAM and the BAR windows of a
//! root complex holding a device with MSI-X.

use std::sync::{Arc, Mutex};

use ironvirt_vm_bus::BusDevice;

use crate::{
    BarKind, ConfigSpace, MsiMessage, MsiSink, MsixConfig, PciConfigIo, PciConfigMmio, PciDevice,
    PciIds, PciRoot, PciWindows,
};

struct NullSink;
impl MsiSink for NullSink {
    fn update_route(&self, _: u16, _: MsiMessage) -> std::io::Result<()> {
        Ok(())
    }
    fn trigger(&self, _: u16) -> std::io::Result<()> {
        Ok(())
    }
}

struct FuzzDevice {
    config: ConfigSpace,
    msix: MsixConfig,
}

impl PciDevice for FuzzDevice {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn msix_control_written(&mut self, control: u16) {
        self.msix.set_message_control(control);
    }
    fn read_bar(&mut self, _bar: u8, offset: u64, data: &mut [u8]) {
        if offset < 0x1000 {
            self.msix.read_table(offset, data)
        } else {
            self.msix.read_pba(offset - 0x1000, data)
        }
    }
    fn write_bar(&mut self, _bar: u8, offset: u64, data: &[u8]) {
        if offset < 0x1000 {
            self.msix.write_table(offset, data)
        }
    }
}

/// Replays `data` as guest accesses; must never panic.
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) {
    let ids = PciIds {
        vendor_id: 0x1af4,
        device_id: 0x1044,
        revision_id: 1,
        class_code: 0xff00,
        subsystem_vendor_id: 0x1af4,
        subsystem_id: 0x40,
    };
    let mut config = ConfigSpace::new(&ids);
    let Ok(msix) = MsixConfig::new(4, Arc::new(NullSink)) else { return };
    if config.add_bar(0, BarKind::Memory32 { prefetchable: false }, 0x2000).is_err()
        || config.add_msix_capability(&msix.capability(0, 0, 0, 0x1000)).is_err()
    {
        return;
    }
    let Ok(mut root) =
        PciRoot::new(PciWindows { mmio32: PciWindows::DEFAULT_MMIO32, mmio64: None, io: None })
    else {
        return;
    };
    if root.add_device(Arc::new(Mutex::new(FuzzDevice { config, msix }))).is_err() {
        return;
    }
    let bars: Vec<_> = root.bar_dispatchers();
    let root = Arc::new(Mutex::new(root));
    let mut io = PciConfigIo::new(root.clone());
    let mut ecam = PciConfigMmio::new(root, 1);
    let mut windows: Vec<_> = bars.into_iter().map(|(_, w, b)| (w, b)).collect();
    // Each access: kind (1 byte), size selector (1), offset (4), value (8).
    for op in data.chunks_exact(14) {
        let size = [1usize, 2, 4, 8][usize::from(op[1] & 3)];
        let offset = u64::from(u32::from_le_bytes([op[2], op[3], op[4], op[5]]));
        let mut value = [0u8; 8];
        value.copy_from_slice(&op[6..14]);
        let write = op[0] & 0x80 != 0;
        let dev: &mut dyn BusDevice = match op[0] % 3 {
            0 => &mut io,
            1 => &mut ecam,
            _ => match windows.first_mut() {
                Some((_, b)) => b,
                None => continue,
            },
        };
        let offset = offset % 0x0010_0000;
        if write {
            dev.write(offset, &value[..size]);
        } else {
            let mut buf = [0xffu8; 8];
            dev.read(offset, &mut buf[..size]);
        }
    }
    let _ = windows.pop();
}

#[cfg(test)]
mod tests {
    #[test]
    fn corpus_replays_without_panics() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/pci_config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/pci_config exists") {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            super::fuzz_one(&data);
            n += 1;
        }
        assert!(n > 0, "the corpus has seeds");
    }
}
