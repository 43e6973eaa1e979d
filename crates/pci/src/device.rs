//! The trait every function behind the root implements.

use std::sync::{Arc, Mutex};

use crate::config::{BarReprogram, ConfigSpace, ConfigWriteEffect};

/// A device shared between the root (config and BAR accesses) and its owner (the VMM, a
/// worker thread).
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// A doorbell the VMM should back with an ioeventfd, so a guest write there never exits to a
/// vCPU thread. Addresses are relative to a BAR so they follow relocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoEventSpec {
    /// BAR holding the doorbell.
    pub bar: u8,
    /// Offset inside the BAR.
    pub offset: u64,
    /// Access size the doorbell matches (1, 2, 4 or 8).
    pub size: u8,
    /// Only writes of this value trigger it; `None` matches any value.
    pub datamatch: Option<u64>,
    /// What the device wants signalled (for virtio-pci: the queue index); the VMM maps it to
    /// the eventfd it hands the device.
    pub token: u32,
}

/// One PCI function on bus 0 (always function 0 of its slot).
///
/// Config accesses arrive as dword registers: reads return the whole dword and the root
/// extracts bytes; writes carry the byte offset inside the dword and 1, 2 or 4 bytes that do
/// not cross it. All methods run on vCPU threads with the device's mutex held and must treat
/// every argument as guest-controlled.
pub trait PciDevice: Send {
    /// The function's configuration space.
    fn config(&self) -> &ConfigSpace;

    /// The function's configuration space, mutably.
    fn config_mut(&mut self) -> &mut ConfigSpace;

    /// Reads dword register `reg` (0..1024). Override for registers with side effects.
    fn read_config(&mut self, reg: usize) -> u32 {
        self.config().read_reg(reg)
    }

    /// Writes `data` at byte `offset` of dword register `reg`. Returns the BAR move to apply,
    /// if any; forwards MSI-X control writes to [`PciDevice::msix_control_written`] and
    /// command writes to [`PciDevice::command_written`].
    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) -> Option<BarReprogram> {
        match self.config_mut().write(reg, offset, data) {
            ConfigWriteEffect::BarMoved(reprogram) => Some(reprogram),
            ConfigWriteEffect::MsixControl(control) => {
                self.msix_control_written(control);
                None
            }
            ConfigWriteEffect::Command(command) => {
                self.command_written(command);
                None
            }
            ConfigWriteEffect::None => None,
        }
    }

    /// The guest wrote the command register (now `command`). No-op by default; a function
    /// with an INTx pin honours Interrupt Disable (bit 10) here.
    fn command_written(&mut self, _command: u16) {}

    /// The guest wrote the MSI-X message control register; pass it to
    /// [`crate::MsixConfig::set_message_control`]. No-op by default.
    fn msix_control_written(&mut self, _control: u16) {}

    /// Reads `data.len()` bytes at `offset` inside BAR `bar` (`data` comes pre-filled with
    /// all ones; leave it for unhandled accesses).
    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]);

    /// Writes `data` at `offset` inside BAR `bar`.
    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]);

    /// BAR `reprogram.index` moved (the config space already holds the new address). The
    /// root calls it after guest writes; devices rarely need it since BAR accesses arrive
    /// relative to the BAR.
    fn bar_moved(&mut self, _reprogram: &BarReprogram) {}

    /// Doorbells to back with ioeventfds (relative to BARs); empty by default. The VMM asks
    /// after adding the device and after every relocation of a BAR holding one.
    fn ioeventfds(&self) -> Vec<IoEventSpec> {
        Vec::new()
    }

    /// Device reset (VM reset or function-level reset): back to the power-on state. BAR
    /// addresses stay, as the root placed them. The default resets the configuration space.
    fn reset(&mut self) {
        self.config_mut().reset();
    }
}
