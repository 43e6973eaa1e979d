//! Moving frames between the queues and the TAP: the transmit queue's chains become TAP writes,
//! TAP reads become receive-queue buffers (virtio 1.2 §5.1.6). A frame is read straight into
//! the next receive chain when that chain is usable; one longer than the chain continues into a
//! host buffer and is then placed like a frame read without a chain (over more chains with
//! MRG_RXBUF). At most one frame read from the TAP waits here for guest buffers; while it waits
//! nothing more is read.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ironvirt_net::Tap;
use ironvirt_sys_util::scatter::{read_into_guest, MAX_GUEST_SEGMENTS};
use virtio_queue::{Queue, QueueT, Writer};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

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

    /// Reads one frame (header first) into the guest `ranges` in order and then into `tail`;
    /// returns the frame's whole length, more than the room given if it was truncated.
    /// `InvalidInput`, with nothing read, when a range is not guest memory. This default (for
    /// test doubles) reads into a host buffer and copies.
    fn recv_into_guest(
        &mut self,
        mem: &GuestMemoryMmap,
        ranges: &[(GuestAddress, usize)],
        tail: &mut [u8],
    ) -> io::Result<usize> {
        if !ranges.iter().all(|&(addr, len)| mem.check_range(addr, len)) {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let mut frame = vec![0; FRAME_BUF_LEN];
        let n = self.recv(&mut frame)?;
        let mut rest = &frame[..n.min(FRAME_BUF_LEN)];
        for &(addr, len) in ranges {
            let (here, next) = rest.split_at(len.min(rest.len()));
            mem.write_slice(here, addr)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            rest = next;
        }
        let k = rest.len().min(tail.len());
        tail[..k].copy_from_slice(&rest[..k]);
        Ok(n)
    }
}

impl FrameIo for Arc<Tap> {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_frame(buf)
    }

    fn recv_into_guest(
        &mut self,
        mem: &GuestMemoryMmap,
        ranges: &[(GuestAddress, usize)],
        tail: &mut [u8],
    ) -> io::Result<usize> {
        read_into_guest(self.as_fd(), mem, ranges, tail)
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

/// What getting the next frame from the TAP did.
enum Fetch {
    /// Read straight into a receive chain and published.
    Delivered,
    /// Read and dropped (counted by the caller).
    Dropped,
    /// Read into `rx_buf`: `rx_pending` is set and the frame still needs buffers.
    Pending,
    /// Interrupted by a signal; nothing read.
    Again,
    /// Nothing read: the pass ends.
    Stop(RxStop),
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
    /// The writable pieces of the receive chain a frame is read into (kept for its capacity).
    rx_ranges: Vec<(GuestAddress, usize)>,
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
            rx_ranges: Vec::with_capacity(MAX_GUEST_SEGMENTS),
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
                let fetch = match self.fetch_direct(queue, mem) {
                    Some(fetch) => fetch,
                    None => self.fetch_into_rx_buf(),
                };
                match fetch {
                    Fetch::Delivered => {
                        used = true;
                        continue;
                    }
                    Fetch::Dropped => {
                        bump(&self.counters.rx_dropped, 1);
                        continue;
                    }
                    Fetch::Pending => {}
                    Fetch::Again => continue,
                    Fetch::Stop(stop) => return (stop, used),
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

    /// Reads the next frame into `rx_buf` (no chain to read it into, or one [`Self::deliver`]
    /// must judge).
    fn fetch_into_rx_buf(&mut self) -> Fetch {
        match self.io.recv(&mut self.rx_buf) {
            // Shorter than a header, or truncated (longer than any frame we take).
            Ok(n) if n < HDR_LEN + ETH_HLEN || n > self.rx_buf.len() => Fetch::Dropped,
            Ok(n) => {
                self.rx_pending = n;
                Fetch::Pending
            }
            Err(e) => self.read_error(e),
        }
    }

    fn read_error(&self, e: io::Error) -> Fetch {
        match e.kind() {
            io::ErrorKind::WouldBlock => Fetch::Stop(RxStop::TapEmpty),
            io::ErrorKind::Interrupted => Fetch::Again,
            _ => {
                ironvirt_vm_bus::guest_warn!("virtio-net: TAP read failed: {e}");
                Fetch::Stop(RxStop::TapError)
            }
        }
    }

    /// Reads the next frame straight into the next receive chain (no copy through `rx_buf`),
    /// and publishes it when it fits that chain. `None`, with the chain given back and nothing
    /// read, when there is no chain or it is one [`Self::deliver`] must judge (too short for
    /// the header in its first piece, too many pieces, not writable guest memory).
    fn fetch_direct(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Option<Fetch> {
        let start = queue.next_avail();
        let chain = queue.pop_descriptor_chain(mem)?;
        let head = chain.head_index();
        self.rx_ranges.clear();
        let mut capacity = 0usize;
        let mut usable = true;
        for desc in chain.writable() {
            let len = desc.len() as usize; // u32 fits usize on our 64-bit hosts
            if self.rx_ranges.len() == MAX_GUEST_SEGMENTS {
                usable = false;
                break;
            }
            capacity = capacity.saturating_add(len);
            self.rx_ranges.push((desc.addr(), len));
        }
        if !usable || self.rx_ranges.first().is_none_or(|&(_, len)| len < HDR_LEN) {
            queue.set_next_avail(start);
            return None;
        }
        // The room in the chain, then the rest of `rx_buf` for a frame longer than the chain.
        let room = capacity.min(FRAME_BUF_LEN);
        let n = match self.io.recv_into_guest(mem, &self.rx_ranges, &mut self.rx_buf[room..]) {
            Ok(n) => n,
            Err(e) => {
                queue.set_next_avail(start);
                if e.kind() == io::ErrorKind::InvalidInput {
                    return None; // nothing was read
                }
                return Some(self.read_error(e));
            }
        };
        if !(HDR_LEN + ETH_HLEN..=FRAME_BUF_LEN).contains(&n) {
            queue.set_next_avail(start);
            return Some(Fetch::Dropped);
        }
        if n > capacity {
            // Longer than the chain: gather the frame in `rx_buf` and place it like one read
            // there, over more chains if MRG_RXBUF allows (the chain is given back for it).
            queue.set_next_avail(start);
            return Some(self.gather_from_guest(mem, n));
        }
        let addr = self.rx_ranges[0].0;
        let mut hdr = [0u8; HDR_LEN];
        if mem.read_slice(&mut hdr, addr).is_err() || !sanitize_rx_header(&mut hdr, self.features) {
            queue.set_next_avail(start);
            return Some(Fetch::Dropped);
        }
        hdr[NUM_BUFFERS_OFFSET..].copy_from_slice(&1u16.to_le_bytes());
        if mem.write_slice(&hdr, addr).is_err() {
            queue.set_next_avail(start);
            return Some(Fetch::Dropped);
        }
        // Counted before the used ring moves, so whoever sees the frame also sees it counted.
        bump(&self.counters.rx_frames, 1);
        bump(&self.counters.rx_bytes, (n - HDR_LEN) as u64);
        // n <= FRAME_BUF_LEN fits u32.
        add_used(queue, mem, head, n as u32);
        Some(Fetch::Delivered)
    }

    /// Copies the part of an `n`-byte frame that went into the chain (`rx_ranges`) back in
    /// front of the part that went into `rx_buf`, making it the pending frame.
    fn gather_from_guest(&mut self, mem: &GuestMemoryMmap, n: usize) -> Fetch {
        let mut offset = 0usize;
        for &(addr, len) in &self.rx_ranges {
            if mem.read_slice(&mut self.rx_buf[offset..offset + len], addr).is_err() {
                return Fetch::Dropped;
            }
            offset += len;
        }
        self.rx_pending = n;
        Fetch::Pending
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
