//! The fuzzing entry point for the net header path: guest memory, a transmit and a receive
//! queue and the frames the TAP would hand us, all built from arbitrary bytes, run through the
//! same handler the worker uses. `fuzz/fuzz_targets/net_header.rs` calls it; a unit test
//! replays `fuzz/corpus/net_header/` on stable.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::handler::{Counters, FrameIo, NetHandler, RxStop};
use super::OFFERED_FEATURES;

const MEM_SIZE: usize = 0x4_0000;
const QUEUE_SIZE: u16 = 16;
const TX_BASE: u64 = 0x1000;
const RX_BASE: u64 = 0x2000;
const AVAIL_OFFSET: u64 = 0x100;
const USED_OFFSET: u64 = 0x200;
/// Where the rest of the input lands: buffers for descriptors to point at.
pub(crate) const DATA_BASE: u64 = 0x1_0000;
const MAX_FRAMES: usize = 8;

/// A TAP stand-in: hands out queued frames, counts writes.
pub(crate) struct FakeTap {
    pub frames: VecDeque<Vec<u8>>,
    pub sent: Vec<Vec<u8>>,
}

impl FrameIo for FakeTap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(frame) = self.frames.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        if self.sent.len() < 64 {
            self.sent.push(frame.to_vec());
        }
        Ok(frame.len())
    }
}

/// Consumes the input front to back; missing bytes read as zero.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Vec<u8> {
        let k = n.min(self.0.len());
        let mut v = self.0[..k].to_vec();
        v.resize(n, 0);
        self.0 = &self.0[k..];
        v
    }

    fn u16(&mut self) -> u16 {
        let b = self.take(2);
        u16::from_le_bytes([b[0], b[1]])
    }
}

/// Writes a descriptor table and available ring from the input and returns a ready queue.
fn build_queue(mem: &GuestMemoryMmap, base: u64, event_idx: bool, input: &mut Input) -> Queue {
    let table = input.take(usize::from(QUEUE_SIZE) * 16);
    mem.write_slice(&table, GuestAddress(base)).expect("inside the fixed layout");
    // flags, idx, ring[QUEUE_SIZE], used_event.
    let avail = input.take(4 + 2 * usize::from(QUEUE_SIZE) + 2);
    mem.write_slice(&avail, GuestAddress(base + AVAIL_OFFSET)).expect("inside the fixed layout");
    let mut q = Queue::new(QUEUE_SIZE).expect("power of two");
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some((base + AVAIL_OFFSET) as u32), Some(0));
    q.set_used_ring_address(Some((base + USED_OFFSET) as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q
}

/// Runs one input: features (8 bytes), the transmit queue, the receive queue, then up to 8
/// TAP frames (`len` le16 + bytes) whose bytes also fill guest memory at `DATA_BASE`.
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) {
    let _ = run(data);
}

/// [`fuzz_one`], returning the handler's results for tests.
pub(crate) fn run(data: &[u8]) -> (Arc<Counters>, FakeTap, Queue, Queue) {
    let mut input = Input(data);
    let f = input.take(8);
    let features = u64::from_le_bytes(f.try_into().expect("8 bytes")) & OFFERED_FEATURES;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
        .expect("fixed guest memory layout");
    let event_idx = features & crate::VIRTIO_F_RING_EVENT_IDX != 0;
    let mut tx = build_queue(&mem, TX_BASE, event_idx, &mut input);
    let mut rx = build_queue(&mem, RX_BASE, event_idx, &mut input);
    let rest = input.0;
    let n = rest.len().min(MEM_SIZE - DATA_BASE as usize);
    mem.write_slice(&rest[..n], GuestAddress(DATA_BASE)).expect("inside the fixed layout");
    let mut frames = VecDeque::new();
    while frames.len() < MAX_FRAMES && !input.0.is_empty() {
        let len = usize::from(input.u16());
        frames.push_back(input.take(len.min(input.0.len())));
    }
    let counters = Arc::new(Counters::default());
    let tap = FakeTap { frames, sent: Vec::new() };
    let mut handler = NetHandler::new(tap, features, counters.clone());
    handler.process_tx(&mut tx, &mem);
    for _ in 0..4 {
        let (stop, _) = handler.process_rx(&mut rx, &mem);
        if stop != RxStop::Budget {
            break;
        }
    }
    (counters, handler.into_io(), tx, rx)
}
