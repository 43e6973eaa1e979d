//! Helpers shared by the devices' unit tests.

use std::sync::atomic::{AtomicUsize, Ordering};

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};

use crate::VirtioInterrupt;

/// Counts queue notifications (`.0`) and `device_broken` calls (`.1`).
#[derive(Default)]
pub(crate) struct CountIrq(pub(crate) AtomicUsize, pub(crate) AtomicUsize);

impl VirtioInterrupt for CountIrq {
    fn notify_queue(&self, _: u16) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn notify_config(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn device_broken(&self) {
        self.1.fetch_add(1, Ordering::Relaxed);
    }
}

/// One split-ring descriptor.
pub(crate) fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}
