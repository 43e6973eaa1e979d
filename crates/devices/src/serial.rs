//! COM1: a 16550A UART at ports `0x3f8..0x400`, IRQ 4.
//!
//! The register model is `vm_superio::Serial`; this module adapts it to the bus (one-byte
//! accesses only), delivers its interrupt through an injected [`Interrupt`], writes the guest's
//! output to a host sink, counts traffic and tells the host input side when the guest has
//! drained the receive FIFO.

use std::cell::Cell;
use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;

use ironvirt_vm_bus::{guest_debug, guest_warn, BusDevice, Interrupt};
use vm_superio::serial::{Error as UartError, SerialEvents};
use vm_superio::Trigger;

/// The COM1 base port.
pub const PORT_BASE: u64 = 0x3f8;
/// Number of ports the UART decodes (THR/RBR through SCR).
pub const PORT_LEN: u64 = 8;

/// Called on the vCPU thread whenever a guest read of RBR leaves the receive FIFO empty, so a
/// host input thread can push more bytes. It may be called more than once per drain (every
/// RBR read on an empty FIFO counts) and must not block or lock the serial device.
pub type RxDrainedCallback = Box<dyn Fn() + Send>;

/// Traffic counters, for the stats API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SerialCounters {
    /// Bytes the guest wrote to THR and the sink accepted.
    pub tx_bytes: u64,
    /// Bytes accepted into the receive FIFO by [`Serial::enqueue_input`].
    pub rx_bytes: u64,
    /// Output bytes lost because the sink returned an error.
    pub write_errors: u64,
}

/// Adapts an [`Interrupt`] to vm-superio's [`Trigger`].
struct IrqTrigger(Arc<dyn Interrupt>);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

/// vm-superio's event hooks: counters and the RX-drained callback. `Cell` is enough because
/// the device is only ever used behind one `&mut` (its bus mutex).
struct Hooks {
    tx_bytes: Cell<u64>,
    write_errors: Cell<u64>,
    on_rx_drained: Option<RxDrainedCallback>,
}

impl SerialEvents for Hooks {
    fn buffer_read(&self) {}

    fn out_byte(&self) {
        self.tx_bytes.set(self.tx_bytes.get().wrapping_add(1));
    }

    fn tx_lost_byte(&self) {
        self.write_errors.set(self.write_errors.get().wrapping_add(1));
    }

    fn in_buffer_empty(&self) {
        if let Some(callback) = &self.on_rx_drained {
            callback();
        }
    }
}

type Uart = vm_superio::Serial<IrqTrigger, Hooks, Box<dyn Write + Send>>;

/// The COM1 16550A UART.
pub struct Serial {
    uart: Uart,
    rx_bytes: u64,
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serial").field("counters", &self.counters()).finish_non_exhaustive()
    }
}

impl Serial {
    /// A UART raising `irq` (IRQ 4), writing guest output to `out` and calling `on_rx_drained`
    /// (see [`RxDrainedCallback`]) when the guest empties the receive FIFO.
    ///
    /// `out` is written and flushed once per byte on the vCPU thread; a sink that can block for
    /// long should buffer on its own. Errors from it are counted and logged, never fatal.
    pub fn new(
        irq: Arc<dyn Interrupt>,
        out: Box<dyn Write + Send>,
        on_rx_drained: Option<RxDrainedCallback>,
    ) -> Self {
        let hooks = Hooks { tx_bytes: Cell::new(0), write_errors: Cell::new(0), on_rx_drained };
        Self { uart: vm_superio::Serial::with_events(IrqTrigger(irq), hooks, out), rx_bytes: 0 }
    }

    /// Queues host input for the guest and raises the receive interrupt when the guest enabled
    /// it. Returns how many leading bytes of `bytes` fit into the receive FIFO (possibly 0, also
    /// while the guest has the UART in loopback mode); the caller keeps the rest until
    /// `on_rx_drained` fires. Never blocks.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let accepted = bytes.len().min(self.uart.fifo_capacity());
        if accepted == 0 {
            return 0;
        }
        let accepted = match self.uart.enqueue_raw_bytes(&bytes[..accepted]) {
            Ok(n) => n,
            // The bytes are in the FIFO; only the interrupt was lost. The guest will still see
            // them through LSR.DR or the next IER write, which re-raises a pending RX interrupt.
            Err(UartError::Trigger(e)) => {
                guest_warn!("serial: cannot raise the receive interrupt: {e}");
                accepted
            }
            Err(UartError::FullFifo) => 0,
            Err(UartError::IOError(e)) => {
                guest_warn!("serial: unexpected I/O error while queueing input: {e}");
                0
            }
        };
        self.rx_bytes = self.rx_bytes.wrapping_add(accepted as u64);
        accepted
    }

    /// Free space in the receive FIFO, in bytes.
    pub fn rx_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// A snapshot of the traffic counters.
    pub fn counters(&self) -> SerialCounters {
        let hooks = self.uart.events();
        SerialCounters {
            tx_bytes: hooks.tx_bytes.get(),
            rx_bytes: self.rx_bytes,
            write_errors: hooks.write_errors.get(),
        }
    }

    /// Maps a bus access onto a UART register offset, or `None` for accesses the 16550A does
    /// not decode (anything but one byte inside the 8 ports).
    fn register(offset: u64, len: usize) -> Option<u8> {
        if len != 1 || offset >= PORT_LEN {
            guest_debug!("serial: ignoring {len}-byte access at offset {offset:#x}");
            return None;
        }
        u8::try_from(offset).ok()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(reg) = Self::register(offset, data.len()) {
            data[0] = self.uart.read(reg);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(reg) = Self::register(offset, data.len()) else {
            return;
        };
        match self.uart.write(reg, data[0]) {
            Ok(()) => {}
            // Already counted by `Hooks::tx_lost_byte`; the guest carries on either way.
            Err(UartError::IOError(e)) => guest_warn!("serial: output sink failed, byte lost: {e}"),
            Err(UartError::Trigger(e)) => guest_warn!("serial: cannot raise the interrupt: {e}"),
            Err(UartError::FullFifo) => guest_debug!("serial: loopback byte dropped, FIFO full"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::test_util::{hostile_accesses, read_u8, CountingIrq};

    const THR: u64 = 0;
    const RBR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const SCR: u64 = 7;
    const IER_RDA: u8 = 0x01;
    const IER_THRE: u8 = 0x02;
    const LSR_DR: u8 = 0x01;

    /// A sink shared with the test.
    #[derive(Clone, Default)]
    struct SharedSink(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedSink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct FailingSink;

    impl Write for FailingSink {
        fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn serial_with_sink() -> (Serial, Arc<CountingIrq>, SharedSink) {
        let irq = Arc::new(CountingIrq::default());
        let sink = SharedSink::default();
        let serial = Serial::new(irq.clone(), Box::new(sink.clone()), None);
        (serial, irq, sink)
    }

    #[test]
    fn thr_byte_reaches_the_sink_and_raises_the_interrupt_when_ier_enables_it() {
        let (mut serial, irq, sink) = serial_with_sink();
        serial.write(IER, &[IER_THRE]);
        assert_eq!(read_u8(&mut serial, IIR) & 0x0f, 0x02, "THRE pending once enabled");
        let after_ier = irq.count();

        serial.write(THR, b"h");
        serial.write(THR, b"i");

        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hi");
        assert_eq!(irq.count(), after_ier + 1, "THRE raised again after the IIR read acked it");
        assert_eq!(serial.counters().tx_bytes, 2);
    }

    #[test]
    fn thr_byte_raises_no_interrupt_while_ier_is_clear() {
        let (mut serial, irq, sink) = serial_with_sink();

        serial.write(THR, b"x");

        assert_eq!(sink.0.lock().unwrap().as_slice(), b"x");
        assert_eq!(irq.count(), 0);
    }

    #[test]
    fn enqueued_input_is_readable_raises_rx_interrupt_and_reports_the_drain() {
        let irq = Arc::new(CountingIrq::default());
        let drained = Arc::new(AtomicUsize::new(0));
        let drained_cb = drained.clone();
        let mut serial = Serial::new(
            irq.clone(),
            Box::new(io::sink()),
            Some(Box::new(move || {
                drained_cb.fetch_add(1, Ordering::SeqCst);
            })),
        );
        serial.write(IER, &[IER_RDA]);

        let accepted = serial.enqueue_input(b"ok");

        assert_eq!(accepted, 2);
        assert_eq!(irq.count(), 1);
        assert_eq!(read_u8(&mut serial, IIR) & 0x0f, 0x04, "IIR says received data available");
        assert_ne!(read_u8(&mut serial, LSR) & LSR_DR, 0);
        assert_eq!(read_u8(&mut serial, RBR), b'o');
        assert_eq!(drained.load(Ordering::SeqCst), 0, "FIFO not empty yet");
        assert_eq!(read_u8(&mut serial, RBR), b'k');
        assert_eq!(drained.load(Ordering::SeqCst), 1);
        assert_eq!(read_u8(&mut serial, LSR) & LSR_DR, 0);
        assert_eq!(serial.counters().rx_bytes, 2);
    }

    #[test]
    fn enqueue_input_accepts_only_what_fits_in_the_fifo() {
        let (mut serial, _irq, _sink) = serial_with_sink();
        let capacity = serial.rx_capacity();

        let first = serial.enqueue_input(&vec![b'a'; capacity + 10]);
        let second = serial.enqueue_input(b"more");

        assert_eq!(first, capacity);
        assert_eq!(second, 0);
        assert_eq!(serial.enqueue_input(&[]), 0);
        assert_eq!(serial.counters().rx_bytes, capacity as u64);
    }

    #[test]
    fn sink_errors_are_counted_and_the_guest_carries_on() {
        let irq = Arc::new(CountingIrq::default());
        let mut serial = Serial::new(irq, Box::new(FailingSink), None);
        serial.write(SCR, &[0x5a]);

        serial.write(THR, b"a");
        serial.write(THR, b"b");

        let counters = serial.counters();
        assert_eq!(counters.write_errors, 2);
        assert_eq!(counters.tx_bytes, 0);
        assert_eq!(read_u8(&mut serial, SCR), 0x5a, "the UART still works");
    }

    #[test]
    fn registers_read_back_through_one_byte_accesses() {
        let (mut serial, _irq, _sink) = serial_with_sink();

        serial.write(LCR, &[0x03]);
        serial.write(MCR, &[0x0b]);

        assert_eq!(read_u8(&mut serial, LCR), 0x03);
        assert_eq!(read_u8(&mut serial, MCR), 0x0b);
        assert_eq!(read_u8(&mut serial, LSR) & 0x60, 0x60, "transmitter empty and idle");
    }

    #[test]
    fn wide_accesses_are_ignored() {
        let (mut serial, _irq, sink) = serial_with_sink();
        let mut wide = [0xffu8; 2];

        serial.write(THR, b"ab");
        serial.read(LSR, &mut wide);

        assert!(sink.0.lock().unwrap().is_empty());
        assert_eq!(wide, [0xff, 0xff], "read left as the bus pre-filled it");
    }

    #[test]
    fn hostile_accesses_never_panic() {
        let (mut serial, _irq, _sink) = serial_with_sink();
        hostile_accesses(&mut serial, PORT_LEN);
        serial.enqueue_input(b"still alive");
    }
}
