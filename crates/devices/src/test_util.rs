//! Mocks and helpers shared by the device unit tests.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ironvirt_vm_bus::{BusDevice, GuestEvent, GuestEventSink, Interrupt, LevelInterrupt};

/// An edge interrupt that counts its triggers.
#[derive(Default)]
pub struct CountingIrq {
    count: AtomicUsize,
}

impl CountingIrq {
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Interrupt for CountingIrq {
    fn trigger(&self) -> io::Result<()> {
        self.count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A level interrupt that records every level it was set to.
#[derive(Default)]
pub struct LevelRecorder {
    levels: Mutex<Vec<bool>>,
}

impl LevelRecorder {
    pub fn levels(&self) -> Vec<bool> {
        self.levels.lock().unwrap().clone()
    }

    /// The current line level (low when never set).
    pub fn is_high(&self) -> bool {
        self.levels.lock().unwrap().last().copied().unwrap_or(false)
    }
}

impl LevelInterrupt for LevelRecorder {
    fn set_level(&self, high: bool) -> io::Result<()> {
        self.levels.lock().unwrap().push(high);
        Ok(())
    }
}

/// A guest event sink that records every event.
#[derive(Default)]
pub struct EventRecorder {
    events: Mutex<Vec<GuestEvent>>,
}

impl EventRecorder {
    pub fn events(&self) -> Vec<GuestEvent> {
        self.events.lock().unwrap().clone()
    }
}

impl GuestEventSink for EventRecorder {
    fn send(&self, event: GuestEvent) {
        self.events.lock().unwrap().push(event);
    }
}

/// Reads one byte at `offset`.
pub fn read_u8(dev: &mut dyn BusDevice, offset: u64) -> u8 {
    let mut data = [0xffu8; 1];
    dev.read(offset, &mut data);
    data[0]
}

/// Reads a little-endian u16 at `offset`.
pub fn read_u16(dev: &mut dyn BusDevice, offset: u64) -> u16 {
    let mut data = [0xffu8; 2];
    dev.read(offset, &mut data);
    u16::from_le_bytes(data)
}

/// Reads a little-endian u32 at `offset`.
pub fn read_u32(dev: &mut dyn BusDevice, offset: u64) -> u32 {
    let mut data = [0xffu8; 4];
    dev.read(offset, &mut data);
    u32::from_le_bytes(data)
}

/// Hammers every offset of `[0, len + 2)` with reads and writes of 1, 2, 4 and 8 bytes of
/// pseudo-random data (accesses straddling the end included, although the bus never sends
/// them). The caller asserts nothing: a panic fails the test.
pub fn hostile_accesses(dev: &mut dyn BusDevice, len: u64) {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _round in 0..64 {
        for offset in 0..len + 2 {
            for size in [1usize, 2, 4, 8] {
                let mut data = [0u8; 8];
                for b in data.iter_mut() {
                    *b = rng.next() as u8;
                }
                dev.write(offset, &data[..size]);
                let mut out = [0xffu8; 8];
                dev.read(offset, &mut out[..size]);
            }
        }
    }
    // Odd sizes and absurd offsets too.
    dev.write(u64::MAX, &[0xff; 3]);
    dev.read(u64::MAX - 1, &mut [0u8; 3]);
    dev.write(0, &[]);
    dev.read(0, &mut []);
}

/// A tiny deterministic PRNG for the hostile tests.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
