//! A test function with a 32-bit MSI-X BAR and a 64-bit data BAR, and a recording MSI sink.

use std::io;
use std::sync::{Arc, Mutex};

use crate::{
    BarKind, ConfigSpace, IoEventSpec, MsiMessage, MsiSink, MsixConfig, PciDevice, PciIds,
};

/// What a [`RecordingSink`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkEvent {
    Route(u16, MsiMessage),
    Trigger(u16),
}

#[derive(Default)]
pub struct RecordingSink {
    pub events: Mutex<Vec<SinkEvent>>,
}

impl RecordingSink {
    pub fn take(&self) -> Vec<SinkEvent> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

impl MsiSink for RecordingSink {
    fn update_route(&self, vector: u16, message: MsiMessage) -> io::Result<()> {
        self.events.lock().unwrap().push(SinkEvent::Route(vector, message));
        Ok(())
    }
    fn trigger(&self, vector: u16) -> io::Result<()> {
        self.events.lock().unwrap().push(SinkEvent::Trigger(vector));
        Ok(())
    }
}

pub const TEST_IDS: PciIds = PciIds {
    vendor_id: 0x1af4,
    device_id: 0x1041,
    revision_id: 1,
    class_code: 0x02_00_00,
    subsystem_vendor_id: 0x1af4,
    subsystem_id: 0x0040,
};

/// BAR 0: 4 KiB 32-bit, MSI-X table at 0, PBA at 0x800. BAR 2: 64 KiB 64-bit prefetchable
/// scratch memory. Vector count 4.
pub const MSIX_BAR: u8 = 0;
pub const PBA_OFFSET: u64 = 0x800;
pub const DATA_BAR: u8 = 2;
pub const DATA_BAR_SIZE: u64 = 0x1_0000;

pub struct TestDevice {
    pub config: ConfigSpace,
    pub msix: MsixConfig,
    pub data: Vec<u8>,
}

impl TestDevice {
    pub fn new(sink: Arc<dyn MsiSink>) -> Self {
        let mut config = ConfigSpace::new(&TEST_IDS);
        config.add_bar(MSIX_BAR, BarKind::Memory32 { prefetchable: false }, 0x1000).unwrap();
        config.add_bar(DATA_BAR, BarKind::Memory64 { prefetchable: true }, DATA_BAR_SIZE).unwrap();
        config.add_vendor_capability(&[1, 2, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]).unwrap();
        let msix = MsixConfig::new(4, sink).unwrap();
        config
            .add_msix_capability(&msix.capability(MSIX_BAR, 0, MSIX_BAR, PBA_OFFSET as u32))
            .unwrap();
        Self { config, msix, data: vec![0; DATA_BAR_SIZE as usize] }
    }

    pub fn shared() -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self::new(Arc::new(RecordingSink::default()))))
    }
}

impl PciDevice for TestDevice {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn msix_control_written(&mut self, control: u16) {
        self.msix.set_message_control(control);
    }
    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        match bar {
            MSIX_BAR if offset < PBA_OFFSET => self.msix.read_table(offset, data),
            MSIX_BAR => self.msix.read_pba(offset - PBA_OFFSET, data),
            DATA_BAR => {
                let at = offset as usize;
                if let Some(src) = self.data.get(at..at + data.len()) {
                    data.copy_from_slice(src);
                }
            }
            _ => {}
        }
    }
    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        match bar {
            MSIX_BAR if offset < PBA_OFFSET => self.msix.write_table(offset, data),
            MSIX_BAR => self.msix.write_pba(offset - PBA_OFFSET, data),
            DATA_BAR => {
                let at = offset as usize;
                if let Some(dst) = self.data.get_mut(at..at + data.len()) {
                    dst.copy_from_slice(data);
                }
            }
            _ => {}
        }
    }
    fn ioeventfds(&self) -> Vec<IoEventSpec> {
        vec![IoEventSpec { bar: DATA_BAR, offset: 0x100, size: 2, datamatch: None, token: 0 }]
    }
    fn reset(&mut self) {
        self.config.reset();
        self.msix.reset();
    }
}

/// A xorshift64* generator for the hostile tests (no external crates).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
