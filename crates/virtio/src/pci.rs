//! The virtio 1.x modern PCI transport (virtio 1.2 §4.1): one memory BAR holding the common
//! configuration, ISR, device configuration, notification area and the MSI-X table and PBA,
//! described by vendor capabilities. Queue notifications are meant to be ioeventfds (see
//! [`PciDevice::ioeventfds`]); a notify write that still reaches us signals the same eventfd.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use ironvirt_pci::{
    BarKind, ConfigSpace, InterruptPin, IoEventSpec, MsiSink, MsixConfig, PciDevice, PciError,
    PciIds,
};
use ironvirt_vm_bus::{guest_debug, LevelInterrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::{Activation, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};

/// PCI vendor id of virtio devices (§4.1.2).
pub const VIRTIO_VENDOR_ID: u16 = 0x1af4;
/// Modern device ids are 0x1040 + device type (§4.1.2).
pub const VIRTIO_DEVICE_ID_BASE: u16 = 0x1040;

/// BAR layout (all in BAR 0).
pub const BAR_SIZE: u64 = 0x10000;
const COMMON_OFFSET: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_CFG_OFFSET: u64 = 0x2000;
const DEVICE_CFG_LEN: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
/// Each queue's doorbell is 4 bytes after the previous one.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x8000;
const MSIX_PBA_OFFSET: u64 = 0x9000;

// virtio_pci_cap cfg_type values (§4.1.4).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;

// device_status bits (§2.1).
const STATUS_FEATURES_OK: u8 = 8;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_NEEDS_RESET: u8 = 0x40;

/// Command register bit 10: the function must not assert INTx (PCI 3.0 §6.2.2).
const COMMAND_INTX_DISABLE: u16 = 1 << 10;

/// "No vector" for config_msix_vector / queue_msix_vector (§4.1.5.1.2).
pub const NO_VECTOR: u16 = 0xffff;

struct QueueConfig {
    queue: Queue,
    vector: u16,
}

/// The ISR and whether the command register's Interrupt Disable bit (PCI 3.0 §6.2.2) masks
/// INTx.
#[derive(Default)]
struct IsrState {
    isr: u8,
    intx_disabled: bool,
}

/// Interrupt delivery shared with the device's worker thread.
///
/// With MSI-X enabled a queue or configuration event goes to its vector (none with
/// `NO_VECTOR`). With MSI-X disabled it goes to the INTx line, if the VMM wired one: the ISR
/// bit is set and the line raised; the driver's ISR read clears both (§4.1.4.5). The ISR and
/// the line change together under one lock, so a read racing an event never leaves the line
/// high with the ISR empty (which a level-triggered interrupt would turn into a storm).
struct Interrupts {
    msix: Arc<Mutex<MsixConfig>>,
    queue_vectors: Mutex<Vec<u16>>,
    config_vector: Mutex<u16>,
    isr: Mutex<IsrState>,
    intx: OnceLock<Arc<dyn LevelInterrupt>>,
    /// Set by the device when the driver broke it; reported as DEVICE_NEEDS_RESET.
    needs_reset: std::sync::atomic::AtomicBool,
}

impl Interrupts {
    fn send(&self, vector: u16, isr_bit: u8) -> std::io::Result<()> {
        let mut msix = self.msix.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = self.isr.lock().unwrap_or_else(|p| p.into_inner());
        state.isr |= isr_bit;
        if msix.enabled() {
            drop(state);
            if vector == NO_VECTOR {
                return Ok(()); // §4.1.5.1.2: no interrupt for this event.
            }
            return msix.trigger(vector).map(|_| ());
        }
        drop(msix);
        match self.intx.get() {
            Some(line) if !state.intx_disabled => line.set_level(true),
            _ => Ok(()), // No INTx wired, or masked: the driver polls.
        }
    }

    /// The command register's Interrupt Disable bit changed: lower the line, or raise it
    /// again for an ISR still pending.
    fn set_intx_disabled(&self, disabled: bool) {
        let mut state = self.isr.lock().unwrap_or_else(|p| p.into_inner());
        if state.intx_disabled == disabled {
            return;
        }
        state.intx_disabled = disabled;
        if disabled || state.isr == 0 {
            self.lower_line();
        } else if let Some(line) = self.intx.get() {
            let msix_off = !self.msix.lock().unwrap_or_else(|p| p.into_inner()).enabled();
            if msix_off {
                if let Err(e) = line.set_level(true) {
                    log::warn!("virtio-pci: cannot raise the INTx line: {e}");
                }
            }
        }
    }

    /// The driver read the ISR: returns it, clears it and lowers the INTx line.
    fn take_isr(&self) -> u8 {
        let mut state = self.isr.lock().unwrap_or_else(|p| p.into_inner());
        let value = std::mem::take(&mut state.isr);
        self.lower_line();
        value
    }

    fn clear(&self) {
        *self.isr.lock().unwrap_or_else(|p| p.into_inner()) = IsrState::default();
        self.lower_line();
    }

    fn lower_line(&self) {
        if let Some(line) = self.intx.get() {
            if let Err(e) = line.set_level(false) {
                log::warn!("virtio-pci: cannot lower the INTx line: {e}");
            }
        }
    }
}

impl VirtioInterrupt for Interrupts {
    fn notify_queue(&self, queue: u16) -> std::io::Result<()> {
        let vector = self
            .queue_vectors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(usize::from(queue))
            .copied()
            .unwrap_or(NO_VECTOR);
        self.send(vector, 1)
    }

    fn notify_config(&self) -> std::io::Result<()> {
        let vector = *self.config_vector.lock().unwrap_or_else(|p| p.into_inner());
        self.send(vector, 2)
    }

    fn device_broken(&self) {
        if !self.needs_reset.swap(true, Ordering::AcqRel) {
            let _ = self.notify_config();
        }
    }
}

/// A virtio device behind the modern PCI transport.
pub struct VirtioPciDevice {
    config: ConfigSpace,
    device: Box<dyn VirtioDevice>,
    interrupts: Arc<Interrupts>,
    mem: GuestMemoryMmap,
    queues: Vec<QueueConfig>,
    kicks: Vec<EventFd>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    queue_select: u16,
    status: u8,
    config_generation: u8,
    active: bool,
}

/// Errors building the transport.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// Config space or MSI-X setup failed.
    #[error("Cannot build the PCI function")]
    Pci(#[from] PciError),
    /// An eventfd could not be created.
    #[error("Cannot create a queue eventfd")]
    EventFd(#[source] std::io::Error),
    /// A queue size is not a power of two.
    #[error("Queue {index} has an invalid maximum size")]
    QueueSize {
        /// Queue index.
        index: usize,
    },
}

fn vendor_cap(cfg_type: u8, offset: u64, length: u64, extra: Option<u32>) -> Vec<u8> {
    // struct virtio_pci_cap after cap_vndr/cap_next/cap_len (§4.1.4): cfg_type, bar, id,
    // padding[2], offset (le32), length (le32) [, notify_off_multiplier (le32)].
    let mut p = vec![cfg_type, 0, 0, 0, 0];
    p.extend_from_slice(&(offset as u32).to_le_bytes());
    p.extend_from_slice(&(length as u32).to_le_bytes());
    if let Some(x) = extra {
        p.extend_from_slice(&x.to_le_bytes());
    }
    p
}

impl VirtioPciDevice {
    /// Wraps `device`; MSI-X vectors (one per queue plus one for config changes) are
    /// delivered through `sink`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        sink: Arc<dyn MsiSink>,
    ) -> Result<Self, VirtioPciError> {
        let dtype = device.device_type();
        let class_code = match dtype {
            crate::device_type::NET => 0x02_0000,
            crate::device_type::BLOCK => 0x01_0000,
            _ => 0x00_ff00,
        };
        let ids = PciIds {
            vendor_id: VIRTIO_VENDOR_ID,
            device_id: VIRTIO_DEVICE_ID_BASE + dtype as u16,
            revision_id: 1,
            class_code,
            subsystem_vendor_id: VIRTIO_VENDOR_ID,
            subsystem_id: 0x40,
        };
        let mut config = ConfigSpace::new(&ids);
        config.add_bar(0, BarKind::Memory32 { prefetchable: false }, BAR_SIZE)?;
        let num_queues = device.queue_max_sizes().len();
        let msix = MsixConfig::new(num_queues as u16 + 1, sink)?;
        config.add_msix_capability(&msix.capability(
            0,
            MSIX_TABLE_OFFSET as u32,
            0,
            MSIX_PBA_OFFSET as u32,
        ))?;
        config.add_vendor_capability(&vendor_cap(CAP_COMMON, COMMON_OFFSET, COMMON_LEN, None))?;
        config.add_vendor_capability(&vendor_cap(
            CAP_NOTIFY,
            NOTIFY_OFFSET,
            u64::from(NOTIFY_OFF_MULTIPLIER) * num_queues as u64,
            Some(NOTIFY_OFF_MULTIPLIER),
        ))?;
        config.add_vendor_capability(&vendor_cap(CAP_ISR, ISR_OFFSET, 1, None))?;
        config.add_vendor_capability(&vendor_cap(
            CAP_DEVICE,
            DEVICE_CFG_OFFSET,
            DEVICE_CFG_LEN,
            None,
        ))?;
        let mut queues = Vec::with_capacity(num_queues);
        let mut kicks = Vec::with_capacity(num_queues);
        for (index, &max) in device.queue_max_sizes().iter().enumerate() {
            let queue = Queue::new(max).map_err(|_| VirtioPciError::QueueSize { index })?;
            queues.push(QueueConfig { queue, vector: NO_VECTOR });
            kicks.push(EventFd::new(EFD_NONBLOCK).map_err(VirtioPciError::EventFd)?);
        }
        let interrupts = Arc::new(Interrupts {
            msix: Arc::new(Mutex::new(msix)),
            queue_vectors: Mutex::new(vec![NO_VECTOR; num_queues]),
            config_vector: Mutex::new(NO_VECTOR),
            isr: Mutex::new(IsrState::default()),
            intx: OnceLock::new(),
            needs_reset: std::sync::atomic::AtomicBool::new(false),
        });
        Ok(Self {
            config,
            device,
            interrupts,
            mem,
            queues,
            kicks,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            status: 0,
            config_generation: 0,
            active: false,
        })
    }

    /// Wires INTA# to `line`, which the platform routes to `gsi` (reported in the interrupt
    /// line register, as firmware would leave it). Used while MSI-X is disabled; without it
    /// a driver that does not enable MSI-X must poll.
    pub fn with_intx(self, line: Arc<dyn LevelInterrupt>, gsi: u8) -> Self {
        let mut this = self;
        this.config.set_interrupt_pin(InterruptPin::IntA);
        this.config.set_interrupt_line(gsi);
        // `new` just made `interrupts`; nothing else has set the line.
        let _ = this.interrupts.intx.set(line);
        this
    }

    /// The eventfd signalled when the driver kicks queue `index` (for the VMM's ioeventfd).
    pub fn kick(&self, index: usize) -> Option<&EventFd> {
        self.kicks.get(index)
    }

    /// Requests and bytes the device handled.
    pub fn counters(&self) -> (u64, u64) {
        self.device.counters()
    }

    fn selected(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn reset_device(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for q in &mut self.queues {
            q.queue.reset();
            q.vector = NO_VECTOR;
        }
        *self.interrupts.queue_vectors.lock().unwrap_or_else(|p| p.into_inner()) =
            vec![NO_VECTOR; self.queues.len()];
        *self.interrupts.config_vector.lock().unwrap_or_else(|p| p.into_inner()) = NO_VECTOR;
        self.interrupts.clear();
        self.interrupts.needs_reset.store(false, Ordering::Release);
        self.status = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & crate::VIRTIO_F_RING_EVENT_IDX != 0;
        for q in &mut self.queues {
            q.queue.set_event_idx(event_idx);
        }
        if let Some(i) =
            self.queues.iter().position(|q| q.queue.ready() && !q.queue.is_valid(&self.mem))
        {
            guest_debug!("virtio-pci: queue {i} is not valid; device needs reset");
            self.status |= STATUS_NEEDS_RESET;
            return;
        }
        let mut queues = Vec::new();
        for (i, q) in self.queues.iter_mut().enumerate() {
            if !q.queue.ready() {
                continue;
            }
            let Ok(kick) = self.kicks[i].try_clone() else {
                self.status |= STATUS_NEEDS_RESET;
                return;
            };
            // The device owns the queue while active; a fresh one takes its place here and
            // reset starts from it.
            let fresh = Queue::new(q.queue.max_size()).expect("max size was valid at creation");
            queues.push((std::mem::replace(&mut q.queue, fresh), kick));
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupts.clone(),
            features: self.driver_features,
        };
        match self.device.activate(activation) {
            Ok(()) => self.active = true,
            Err(e) => {
                log::warn!("virtio-pci: cannot activate the device: {e}");
                self.status |= STATUS_NEEDS_RESET;
            }
        }
    }

    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset_device();
            return;
        }
        let mut value = value;
        if value & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            // §3.1.1: accept only a subset of what we offer, with VERSION_1.
            let offered = self.device.features();
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                value &= !STATUS_FEATURES_OK;
            }
        }
        let starting = value & STATUS_DRIVER_OK != 0 && self.status & STATUS_DRIVER_OK == 0;
        self.status = value;
        if starting && !self.active {
            self.activate();
        }
    }

    fn read_common(&mut self, offset: u64, data: &mut [u8]) {
        let features = self.device.features();
        let value: u64 = match (offset, data.len()) {
            (0x00, 4) => u64::from(self.device_feature_select),
            (0x04, 4) => match self.device_feature_select {
                0 => features & 0xffff_ffff,
                1 => features >> 32,
                _ => 0,
            },
            (0x08, 4) => u64::from(self.driver_feature_select),
            (0x0c, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (0x10, 2) => {
                u64::from(*self.interrupts.config_vector.lock().unwrap_or_else(|p| p.into_inner()))
            }
            (0x12, 2) => self.queues.len() as u64,
            (0x14, 1) => {
                let broken = self.interrupts.needs_reset.load(Ordering::Acquire);
                u64::from(self.status | if broken { STATUS_NEEDS_RESET } else { 0 })
            }
            (0x15, 1) => u64::from(self.config_generation),
            (0x16, 2) => u64::from(self.queue_select),
            (0x18, 2) => self.selected().map_or(0, |q| u64::from(q.queue.size())),
            (0x1a, 2) => self.selected().map_or(u64::from(NO_VECTOR), |q| u64::from(q.vector)),
            (0x1c, 2) => self.selected().map_or(0, |q| u64::from(q.queue.ready())),
            (0x1e, 2) => u64::from(self.queue_select),
            (0x20, 4) => self.selected().map_or(0, |q| q.queue.desc_table() & 0xffff_ffff),
            (0x24, 4) => self.selected().map_or(0, |q| q.queue.desc_table() >> 32),
            (0x28, 4) => self.selected().map_or(0, |q| q.queue.avail_ring() & 0xffff_ffff),
            (0x2c, 4) => self.selected().map_or(0, |q| q.queue.avail_ring() >> 32),
            (0x30, 4) => self.selected().map_or(0, |q| q.queue.used_ring() & 0xffff_ffff),
            (0x34, 4) => self.selected().map_or(0, |q| q.queue.used_ring() >> 32),
            _ => {
                guest_debug!("virtio-pci: common config read at {offset:#x} size {}", data.len());
                0
            }
        };
        data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut raw = [0u8; 8];
        raw[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(raw);
        // Queue layout may change only before the device starts (§4.1.4.3.2).
        let queue_writable = self.status & STATUS_DRIVER_OK == 0;
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = v as u32,
            (0x08, 4) => self.driver_feature_select = v as u32,
            (0x0c, 4) if self.status & STATUS_FEATURES_OK == 0 => {
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
            }
            (0x10, 2) => {
                *self.interrupts.config_vector.lock().unwrap_or_else(|p| p.into_inner()) = v as u16
            }
            (0x14, 1) => self.write_status(v as u8),
            (0x16, 2) => self.queue_select = v as u16,
            (0x18, 2) if queue_writable => {
                if let Some(q) = self.selected() {
                    q.queue.set_size(v as u16);
                }
            }
            (0x1a, 2) => {
                let sel = usize::from(self.queue_select);
                if let Some(q) = self.queues.get_mut(sel) {
                    q.vector = v as u16;
                    let mut vectors =
                        self.interrupts.queue_vectors.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(slot) = vectors.get_mut(sel) {
                        *slot = v as u16;
                    }
                }
            }
            (0x1c, 2) if queue_writable => {
                if let Some(q) = self.selected() {
                    q.queue.set_ready(v == 1);
                }
            }
            (0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34, 4) if queue_writable => {
                let Some(q) = self.selected() else { return };
                let (low, high) = if offset.is_multiple_of(8) {
                    (Some(v as u32), None)
                } else {
                    (None, Some(v as u32))
                };
                match offset & !7 {
                    0x20 => q.queue.set_desc_table_address(low, high),
                    0x28 => q.queue.set_avail_ring_address(low, high),
                    _ => q.queue.set_used_ring_address(low, high),
                }
            }
            _ => guest_debug!("virtio-pci: ignored common config write at {offset:#x}"),
        }
    }
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn command_written(&mut self, command: u16) {
        self.interrupts.set_intx_disabled(command & COMMAND_INTX_DISABLE != 0);
    }

    fn msix_control_written(&mut self, control: u16) {
        let enabled = {
            let mut msix = self.interrupts.msix.lock().unwrap_or_else(|p| p.into_inner());
            msix.set_message_control(control);
            msix.enabled()
        };
        if enabled {
            // Events go to vectors from now on; a pending INTx must not stay asserted.
            self.interrupts.lower_line();
        }
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar != 0 || !matches!(data.len(), 1 | 2 | 4 | 8) {
            return;
        }
        match offset {
            o if o < COMMON_LEN => self.read_common(o, data),
            ISR_OFFSET => {
                // Reading the ISR clears it (§4.1.4.5).
                data.fill(0);
                data[0] = self.interrupts.take_isr();
            }
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_LEN).contains(&o) => {
                self.device.read_config(o - DEVICE_CFG_OFFSET, data)
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                let msix = self.interrupts.msix.lock().unwrap_or_else(|p| p.into_inner());
                msix.read_table(o - MSIX_TABLE_OFFSET, data)
            }
            o if o >= MSIX_PBA_OFFSET => {
                let msix = self.interrupts.msix.lock().unwrap_or_else(|p| p.into_inner());
                msix.read_pba(o - MSIX_PBA_OFFSET, data)
            }
            _ => data.fill(0),
        }
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar != 0 || !matches!(data.len(), 1 | 2 | 4 | 8) {
            return;
        }
        match offset {
            o if o < COMMON_LEN => self.write_common(o, data),
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_LEN).contains(&o) => {
                self.device.write_config(o - DEVICE_CFG_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..MSIX_TABLE_OFFSET).contains(&o) => {
                // Normally absorbed by an ioeventfd; signal the same eventfd otherwise.
                let index = ((o - NOTIFY_OFFSET) / u64::from(NOTIFY_OFF_MULTIPLIER)) as usize;
                guest_debug!("virtio-pci: queue {index} notify reached the VMM (not an ioeventfd)");
                match self.kicks.get(index) {
                    Some(kick) => {
                        let _ = kick.write(1);
                    }
                    None => guest_debug!("virtio-pci: notify of absent queue {index}"),
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                let mut msix = self.interrupts.msix.lock().unwrap_or_else(|p| p.into_inner());
                msix.write_table(o - MSIX_TABLE_OFFSET, data)
            }
            _ => guest_debug!("virtio-pci: ignored BAR write at {offset:#x}"),
        }
    }

    fn ioeventfds(&self) -> Vec<IoEventSpec> {
        (0..self.queues.len() as u32)
            .map(|i| IoEventSpec {
                bar: 0,
                offset: NOTIFY_OFFSET + u64::from(i * NOTIFY_OFF_MULTIPLIER),
                size: 2,
                datamatch: None,
                token: i,
            })
            .collect()
    }

    fn reset(&mut self) {
        self.reset_device();
        self.interrupts.msix.lock().unwrap_or_else(|p| p.into_inner()).reset();
        self.config.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use vm_memory::GuestAddress;

    #[derive(Default)]
    struct NullSink;
    impl MsiSink for NullSink {
        fn update_route(&self, _: u16, _: ironvirt_pci::MsiMessage) -> std::io::Result<()> {
            Ok(())
        }
        fn trigger(&self, _: u16) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn device() -> VirtioPciDevice {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        VirtioPciDevice::new(Box::new(Rng::new()), mem, Arc::new(NullSink)).unwrap()
    }

    #[test]
    fn ids_and_capabilities_follow_the_modern_transport() {
        let d = device();
        let id = d.config().read_reg(0);
        assert_eq!(id, 0x1044_1af4, "vendor 1af4, device 0x1040 + 4");
        let caps = d.config().capabilities();
        assert_eq!(caps.iter().filter(|c| c.1 == 0x09).count(), 4, "common, notify, isr, device");
        assert!(caps.iter().any(|c| c.1 == 0x11), "MSI-X");
    }

    #[test]
    fn features_must_include_version_1_and_be_offered() {
        let mut d = device();
        d.write_bar(0, 0x04 + 4, &1u32.to_le_bytes()); // driver_feature_select = 1
        d.write_bar(0, 0x0c, &0u32.to_le_bytes()); // no VERSION_1
        d.write_bar(0, 0x14, &[STATUS_FEATURES_OK]);
        let mut s = [0u8];
        d.read_bar(0, 0x14, &mut s);
        assert_eq!(s[0] & STATUS_FEATURES_OK, 0, "FEATURES_OK refused without VERSION_1");
        d.write_bar(0, 0x14, &[0]);
        d.write_bar(0, 0x08, &1u32.to_le_bytes());
        d.write_bar(0, 0x0c, &1u32.to_le_bytes()); // VERSION_1 (bit 32)
        d.write_bar(0, 0x14, &[STATUS_FEATURES_OK]);
        d.read_bar(0, 0x14, &mut s);
        assert_ne!(s[0] & STATUS_FEATURES_OK, 0);
        let mut n = [0u8; 2];
        d.read_bar(0, 0x12, &mut n);
        assert_eq!(u16::from_le_bytes(n), 1, "one queue");
    }

    #[test]
    fn driver_ok_with_a_queue_outside_memory_asks_for_a_reset_instead_of_failing() {
        let mut d = device();
        d.write_bar(0, 0x08, &1u32.to_le_bytes());
        d.write_bar(0, 0x0c, &1u32.to_le_bytes());
        d.write_bar(0, 0x14, &[STATUS_FEATURES_OK]);
        d.write_bar(0, 0x20, &0xffff_0000u32.to_le_bytes()); // descriptors beyond RAM
        d.write_bar(0, 0x1c, &1u16.to_le_bytes());
        d.write_bar(0, 0x14, &[STATUS_FEATURES_OK | STATUS_DRIVER_OK]);
        let mut s = [0u8];
        d.read_bar(0, 0x14, &mut s);
        assert_ne!(s[0] & STATUS_NEEDS_RESET, 0);
        d.write_bar(0, 0x14, &[0]);
        d.read_bar(0, 0x14, &mut s);
        assert_eq!(s[0], 0, "reset clears the status");
    }

    /// An INTx line that remembers its level and counts rising edges.
    #[derive(Default)]
    struct Line {
        high: std::sync::atomic::AtomicBool,
        raised: std::sync::atomic::AtomicU32,
    }
    impl LevelInterrupt for Line {
        fn set_level(&self, high: bool) -> std::io::Result<()> {
            if high && !self.high.swap(true, Ordering::SeqCst) {
                self.raised.fetch_add(1, Ordering::SeqCst);
            }
            self.high.store(high, Ordering::SeqCst);
            Ok(())
        }
    }

    fn device_with_intx() -> (VirtioPciDevice, Arc<Line>) {
        let line = Arc::new(Line::default());
        (device().with_intx(line.clone(), 17), line)
    }

    fn isr(d: &mut VirtioPciDevice) -> u8 {
        let mut v = [0u8];
        d.read_bar(0, ISR_OFFSET, &mut v);
        v[0]
    }

    #[test]
    fn intx_pin_and_line_are_reported_in_config_space() {
        let (d, _) = device_with_intx();
        assert_eq!(d.config().read_reg(0x3c / 4) & 0xffff, 0x0111, "pin INTA#, line 17");
        assert_eq!(device().config().read_reg(0x3c / 4) & 0xffff, 0, "no pin without INTx");
    }

    #[test]
    fn without_msix_events_raise_intx_until_the_isr_is_read() {
        let (mut d, line) = device_with_intx();
        d.interrupts.notify_queue(0).unwrap();
        assert!(line.high.load(Ordering::SeqCst));
        d.interrupts.notify_config().unwrap();
        assert_eq!(isr(&mut d), 3, "queue and configuration bits");
        assert!(!line.high.load(Ordering::SeqCst), "the ISR read lowers the line");
        assert_eq!(isr(&mut d), 0, "and clears the ISR");
        d.interrupts.notify_queue(0).unwrap();
        assert!(line.high.load(Ordering::SeqCst));
        d.write_bar(0, 0x14, &[0]); // device reset
        assert!(!line.high.load(Ordering::SeqCst), "reset lowers the line");
        assert_eq!(isr(&mut d), 0);
    }

    #[test]
    fn interrupt_disable_masks_intx_and_unmasking_reasserts_a_pending_isr() {
        let (mut d, line) = device_with_intx();
        d.write_config(1, 0, &(COMMAND_INTX_DISABLE | 2).to_le_bytes());
        d.interrupts.notify_queue(0).unwrap();
        assert!(!line.high.load(Ordering::SeqCst), "masked");
        d.write_config(1, 0, &2u16.to_le_bytes());
        assert!(line.high.load(Ordering::SeqCst), "unmasked with the ISR pending");
        d.write_config(1, 0, &(COMMAND_INTX_DISABLE | 2).to_le_bytes());
        assert!(!line.high.load(Ordering::SeqCst), "masked again");
        assert_eq!(isr(&mut d), 1);
    }

    #[test]
    fn with_msix_enabled_events_never_touch_intx() {
        let (mut d, line) = device_with_intx();
        d.interrupts.notify_queue(0).unwrap();
        assert!(line.high.load(Ordering::SeqCst));
        let cap = usize::from(d.config().msix_capability_offset().unwrap());
        d.write_config(cap / 4, 2, &0x8000u16.to_le_bytes()); // MSI-X enable
        assert!(!line.high.load(Ordering::SeqCst), "enabling MSI-X lowers a pending INTx");
        d.interrupts.notify_queue(0).unwrap(); // NO_VECTOR: nothing at all
        d.interrupts.notify_config().unwrap();
        assert!(!line.high.load(Ordering::SeqCst));
        assert_eq!(line.raised.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn racing_events_and_isr_reads_never_leave_the_line_high_with_an_empty_isr() {
        let (d, line) = device_with_intx();
        let d = Arc::new(Mutex::new(d));
        let interrupts = d.lock().unwrap().interrupts.clone();
        let sender = std::thread::spawn(move || {
            for _ in 0..20_000 {
                interrupts.notify_queue(0).unwrap();
            }
        });
        let mut seen = 0u32;
        while !sender.is_finished() {
            seen += u32::from(isr(&mut d.lock().unwrap()) != 0);
        }
        sender.join().unwrap();
        let last = isr(&mut d.lock().unwrap());
        assert!(seen + u32::from(last) > 0);
        assert!(!line.high.load(Ordering::SeqCst), "line high after the final ISR read");
        let mut d = d.lock().unwrap();
        d.interrupts.notify_queue(0).unwrap();
        assert!(line.high.load(Ordering::SeqCst));
        assert_eq!(isr(&mut d), 1);
    }

    #[test]
    fn hostile_bar_accesses_never_panic() {
        let mut d = device();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = x % (BAR_SIZE + 64);
            let len = [0usize, 1, 2, 3, 4, 8, 16][(x >> 40) as usize % 7];
            let bar = ((x >> 50) % 3) as u8;
            let mut buf = vec![0u8; len];
            if x & 1 == 0 {
                d.read_bar(bar, off, &mut buf);
            } else {
                buf.iter_mut().enumerate().for_each(|(i, b)| *b = (x >> ((i % 8) * 8)) as u8);
                d.write_bar(bar, off, &buf);
            }
        }
        d.reset();
    }
}
