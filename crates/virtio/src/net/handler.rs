//! Moving frames between the queues and the TAP: the transmit queue's chains become TAP writes,
//! TAP reads become receive-queue buffers (virtio 1.2 §5.1.6). At most one frame read from the
//! TAP waits here for guest buffers; while it waits nothing more is read.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ironvirt_net::Tap;
use virtio_queue::{Queue, QueueT, Writer};
use vm_memory::GuestMemoryMmap;

use super::header::{
    features, sanitize_rx_header, tx_header_ok, ETH_HLEN, HDR_LEN, MAX_FRAME_LEN,
    NUM_BUFFERS_OFFSET,
};

/// Frames handled per receive pass before the event loop looks at its other events.
pub(crate) const RX_BUDGET: usize = 256;
const FRAME_BUF_LEN: usize = HDR_LEN + MAX_FRAME_LEN;

/// Where frames go and come from: the TAP, or a test double.
pub(crate) trait FrameIo: Send + 'static {
    /// Reads one frame (header first); `WouldBlock` when none is queued.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame (header first).
    fn send(&mut self, frame: &[u8]) -> io::Result<usize>;
}

impl FrameIo for Arc<Tap> {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_frame(buf)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.write_frame(frame)
    }
}

/// Per-device counters, shared between the device and its worker.
#[derive(Default)]
pub(crate) struct Counters {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_dropped: AtomicU64,
    pub tx_dropped: AtomicU64,
    pub bad_rx_chains: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// Why a receive pass ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RxStop {
    /// The TAP has nothing more to read.
    TapEmpty,
    /// A frame waits for guest buffers; stop reading the TAP until the driver adds some.
    NoBuffers,
    /// [`RX_BUDGET`] frames were handled; more may be queued.
    Budget,
    /// Reading the TAP failed.
    TapError,
}

enum Delivery {
    Done,
    Dropped,
    NoBuffers,
}

/// The worker-side state of one virtio-net device.
pub(crate) struct NetHandler<B> {
    io: B,
    features: u64,
    counters: Arc<Counters>,
    tx_buf: Vec<u8>,
    rx_buf: Vec<u8>,
    /// Length of the frame in `rx_buf` still waiting for guest buffers (0: none).
    rx_pending: usize,
}

fn add_used(queue: &mut Queue, mem: &GuestMemoryMmap, head: u16, len: u32) {
    if queue.add_used(mem, head, len).is_err() {
        ironvirt_vm_bus::guest_warn!("virtio-net: cannot return a used buffer");
    }
}

impl<B: FrameIo> NetHandler<B> {
    pub(crate) fn new(io: B, features: u64, counters: Arc<Counters>) -> Self {
        Self {
            io,
            features,
            counters,
            tx_buf: vec![0; FRAME_BUF_LEN],
            rx_buf: vec![0; FRAME_BUF_LEN],
            rx_pending: 0,
        }
    }

    /// Whether a frame read from the TAP waits for guest buffers.
    #[cfg(test)]
    pub(crate) fn has_pending_frame(&self) -> bool {
        self.rx_pending != 0
    }

    /// The frame source and sink.
    #[cfg(test)]
    pub(crate) fn io_mut(&mut self) -> &mut B {
        &mut self.io
    }

    /// Gives the frame source and sink back.
    pub(crate) fn into_io(self) -> B {
        self.io
    }

    /// Sends every available transmit chain; each completes with 0 bytes written (§5.1.6.2),
    /// malformed ones too. Returns whether any chain was used.
    pub(crate) fn process_tx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match self.read_tx_chain(chain, mem) {
                Ok(len) => self.send_frame(len),
                Err(why) => {
                    bump(&self.counters.tx_dropped, 1);
                    ironvirt_vm_bus::guest_debug!("virtio-net: dropping a transmit chain: {why}");
                }
            }
            add_used(queue, mem, head, 0);
            used = true;
        }
        used
    }

    /// Copies a transmit chain (header + frame) into `tx_buf`; returns its length.
    fn read_tx_chain(
        &mut self,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<usize, &'static str> {
        let mut reader = chain.reader(mem).map_err(|_| "malformed descriptor chain")?;
        let len = reader.available_bytes();
        if len < HDR_LEN {
            return Err("no virtio-net header");
        }
        if len < HDR_LEN + ETH_HLEN {
            return Err("frame shorter than an Ethernet header");
        }
        if len > FRAME_BUF_LEN {
            return Err("frame longer than 65550 bytes");
        }
        reader.read_exact(&mut self.tx_buf[..len]).map_err(|_| "unreadable buffer")?;
        let hdr: &mut [u8; HDR_LEN] =
            (&mut self.tx_buf[..HDR_LEN]).try_into().expect("slice has the header's length");
        if !tx_header_ok(hdr, self.features) {
            return Err("header uses an offload the driver did not negotiate");
        }
        // num_buffers is unused from driver to device (§5.1.6.2); the TAP ignores it too.
        hdr[NUM_BUFFERS_OFFSET..].fill(0);
        Ok(len)
    }

    fn send_frame(&mut self, len: usize) {
        match self.io.send(&self.tx_buf[..len]) {
            Ok(_) => {
                bump(&self.counters.tx_frames, 1);
                bump(&self.counters.tx_bytes, (len - HDR_LEN) as u64);
            }
            Err(e) => {
                // EAGAIN (TAP queue full) or a frame the kernel's header checks refused.
                bump(&self.counters.tx_dropped, 1);
                ironvirt_vm_bus::guest_debug!("virtio-net: TAP write failed: {e}");
            }
        }
    }

    /// Moves frames from the TAP into receive buffers until the TAP is empty, buffers run out
    /// (the frame then stays pending), or the budget is spent. Returns why it stopped and
    /// whether any buffer was used.
    pub(crate) fn process_rx(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> (RxStop, bool) {
        let mut used = false;
        for _ in 0..RX_BUDGET {
            if self.rx_pending == 0 {
                match self.io.recv(&mut self.rx_buf) {
                    Ok(n) if n < HDR_LEN + ETH_HLEN => {
                        bump(&self.counters.rx_dropped, 1);
                        continue;
                    }
                    Ok(n) => self.rx_pending = n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return (RxStop::TapEmpty, used)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        ironvirt_vm_bus::guest_warn!("virtio-net: TAP read failed: {e}");
                        return (RxStop::TapError, used);
                    }
                }
            }
            match self.deliver(queue, mem, &mut used) {
                Delivery::Done => self.rx_pending = 0,
                Delivery::Dropped => {
                    bump(&self.counters.rx_dropped, 1);
                    self.rx_pending = 0;
                }
                Delivery::NoBuffers => return (RxStop::NoBuffers, used),
            }
        }
        (RxStop::Budget, used)
    }

    /// Places the pending frame into one receive chain, or with MRG_RXBUF into as many as it
    /// needs with `num_buffers` set (§5.1.6.4). Chains popped for a frame that does not fit
    /// yet are given back (the available index rewinds), so a retry starts from them.
    fn deliver(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap, used: &mut bool) -> Delivery {
        let len = self.rx_pending;
        let hdr: &mut [u8; HDR_LEN] =
            (&mut self.rx_buf[..HDR_LEN]).try_into().expect("slice has the header's length");
        if !sanitize_rx_header(hdr, self.features) {
            return Delivery::Dropped;
        }
        let max_chains =
            if self.features & features::MRG_RXBUF != 0 { usize::from(queue.size()) } else { 1 };
        let mut chains: Vec<(u16, Writer<'_>)> = Vec::new();
        let mut capacity = 0usize;
        let mut start = queue.next_avail();
        while capacity < len {
            if chains.len() >= max_chains {
                // One chain too small without MRG_RXBUF (§5.1.6.3.1 asks the driver for
                // 1526 or 65562 bytes), or the whole ring too small: drop the frame, keep
                // the buffers for the next one.
                queue.set_next_avail(start);
                return Delivery::Dropped;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                queue.set_next_avail(start);
                return Delivery::NoBuffers;
            };
            let head = chain.head_index();
            let min_len = if chains.is_empty() { HDR_LEN } else { 1 };
            match chain.writer(mem) {
                Ok(w) if w.available_bytes() >= min_len => {
                    capacity = capacity.saturating_add(w.available_bytes());
                    chains.push((head, w));
                }
                _ => {
                    // A buffer no frame can go into (outside memory, read-only, shorter than
                    // the header). It completes empty, as do the ones gathered before it (the
                    // driver discards empty buffers), and the frame tries the next ones.
                    bump(&self.counters.bad_rx_chains, 1);
                    ironvirt_vm_bus::guest_debug!("virtio-net: unusable receive chain");
                    for (h, _) in chains.drain(..) {
                        add_used(queue, mem, h, 0);
                    }
                    add_used(queue, mem, head, 0);
                    *used = true;
                    start = queue.next_avail();
                    capacity = 0;
                }
            }
        }
        // At most queue.size() (<= 32768) chains: fits num_buffers.
        let num_buffers = chains.len() as u16;
        self.rx_buf[NUM_BUFFERS_OFFSET..HDR_LEN].copy_from_slice(&num_buffers.to_le_bytes());
        // Counted before the used ring moves, so whoever sees the frame also sees it counted.
        bump(&self.counters.rx_frames, 1);
        bump(&self.counters.rx_bytes, (len - HDR_LEN) as u64);
        let mut offset = 0usize;
        for (head, mut writer) in chains {
            let n = (len - offset).min(writer.available_bytes());
            let written = match writer.write_all(&self.rx_buf[offset..offset + n]) {
                Ok(()) => n,
                Err(_) => writer.bytes_written(),
            };
            offset += n;
            // n <= len <= FRAME_BUF_LEN fits u32.
            add_used(queue, mem, head, written as u32);
        }
        *used = true;
        Delivery::Done
    }
}
