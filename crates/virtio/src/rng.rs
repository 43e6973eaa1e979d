//! virtio-rng (virtio 1.2 §5.4): one request queue; the device fills each chain's writable
//! buffers with random bytes from the host's `getrandom`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::worker::{QueueHandler, Worker};
use crate::{device_type, ActivateError, Activation, VirtioDevice, VIRTIO_F_VERSION_1};

/// Most bytes delivered per request, whatever length the chain claims (a chain of u32::MAX
/// bytes must not make the host produce gigabytes).
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;
const QUEUE_SIZE: u16 = 256;

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    bytes: AtomicU64,
}

/// The entropy device.
pub struct Rng {
    worker: Option<Worker>,
    counters: Arc<Counters>,
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl Rng {
    /// A virtio-rng device.
    pub fn new() -> Self {
        Self { worker: None, counters: Arc::default() }
    }
}

struct RngHandler {
    counters: Arc<Counters>,
    buf: Vec<u8>,
    /// A used entry could not be written: the device waits for a reset.
    broken: bool,
}

impl QueueHandler for RngHandler {
    fn process(&mut self, _index: u16, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = fill_chain(chain, mem, &mut self.buf);
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            self.counters.bytes.fetch_add(u64::from(len), Ordering::Relaxed);
            if queue.add_used(mem, head, len).is_err() {
                ironvirt_vm_bus::guest_warn!(
                    "virtio-rng: head index {head} cannot be returned; device needs reset"
                );
                self.broken = true;
                break;
            }
            used = true;
        }
        used
    }

    fn is_broken(&self) -> bool {
        self.broken
    }
}

/// Writes random bytes into the chain's writable part; returns how many (0 for a chain the
/// guest built badly).
fn fill_chain(
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    buf: &mut Vec<u8>,
) -> u32 {
    use std::io::Write;
    let Ok(mut writer) = chain.writer(mem) else {
        ironvirt_vm_bus::guest_debug!("virtio-rng: malformed descriptor chain");
        return 0;
    };
    let n = writer.available_bytes().min(MAX_BYTES_PER_REQUEST);
    buf.resize(n, 0);
    if getrandom::fill(&mut buf[..n]).is_err() {
        ironvirt_vm_bus::guest_warn!("virtio-rng: the host's getrandom failed");
        return 0;
    }
    match writer.write_all(&buf[..n]) {
        Ok(()) => n as u32,
        Err(_) => writer.bytes_written() as u32,
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | crate::VIRTIO_F_RING_EVENT_IDX
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0); // §5.4.4: no configuration.
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        if a.queues.len() != 1 {
            return Err(ActivateError::QueueCount { expected: 1, got: a.queues.len() });
        }
        let handler =
            RngHandler { counters: self.counters.clone(), buf: Vec::new(), broken: false };
        self.worker = Some(Worker::start("virtio-rng", a.mem, a.queues, a.interrupt, handler)?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }

    fn counters(&self) -> (u64, u64) {
        (
            self.counters.requests.load(Ordering::Relaxed),
            self.counters.bytes.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{desc, CountIrq};
    use crate::worker::drain;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;
    use vm_memory::{Address, Bytes, GuestAddress};

    const VRING_DESC_F_NEXT: u16 = 1;
    const VRING_DESC_F_WRITE: u16 = 2;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    fn run(mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> (Queue, Arc<Counters>, usize) {
        let vq = MockSplitQueue::new(mem, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let counters = Arc::new(Counters::default());
        let mut h = RngHandler { counters: counters.clone(), buf: Vec::new(), broken: false };
        let irq = CountIrq::default();
        drain(0, &mut q, mem, &mut h, &irq);
        let irqs = irq.0.load(Ordering::Relaxed);
        (q, counters, irqs)
    }

    #[test]
    fn fills_writable_buffers_with_random_bytes_and_interrupts() {
        let m = mem();
        let (q, counters, irqs) = run(&m, &[desc(0x10000, 4096, VRING_DESC_F_WRITE, 0)]);
        let mut got = vec![0u8; 4096];
        m.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
        let distinct = got.iter().collect::<std::collections::HashSet<_>>().len();
        assert!(distinct > 200, "4 KiB of random bytes has nearly all byte values");
        assert_eq!(counters.bytes.load(Ordering::Relaxed), 4096);
        assert_eq!(q.next_used(), 1);
        assert_eq!(irqs, 1);
    }

    #[test]
    fn a_head_index_beyond_the_ring_asks_for_a_reset_and_stops_the_queue() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let descs =
            [desc(0x10000, 64, VRING_DESC_F_WRITE, 0), desc(0x20000, 64, VRING_DESC_F_WRITE, 0)];
        vq.add_desc_chains(&descs, 0).unwrap();
        // The second avail entry names descriptor 100 of a 16-entry ring.
        m.write_obj(100u16, vq.avail_addr().unchecked_add(4 + 2)).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let counters = Arc::new(Counters::default());
        let mut h = RngHandler { counters, buf: Vec::new(), broken: false };
        let irq = CountIrq::default();
        drain(0, &mut q, &m, &mut h, &irq);
        assert_eq!(irq.1.load(Ordering::Relaxed), 1, "DEVICE_NEEDS_RESET requested");
        assert_eq!(q.next_used(), 1, "the good chain before it completed");
        assert_eq!(irq.0.load(Ordering::Relaxed), 1, "and was signalled");
        // More chains after that are consumed without being used until the reset.
        vq.add_desc_chains(&descs, 2).unwrap();
        drain(0, &mut q, &m, &mut h, &irq);
        assert_eq!(q.next_used(), 1);
        assert_eq!(q.next_avail(), 4);
    }

    #[test]
    fn huge_lengths_are_bounded() {
        let m = mem();
        // A chain claiming 4 GiB - 1 of guest memory that does not exist.
        let (q, counters, _) = run(&m, &[desc(0x10000, u32::MAX, VRING_DESC_F_WRITE, 0)]);
        assert_eq!(q.next_used(), 1, "the chain is completed, not left hanging");
        assert!(counters.bytes.load(Ordering::Relaxed) <= MAX_BYTES_PER_REQUEST as u64);
    }

    #[test]
    fn chains_outside_memory_or_readonly_complete_with_zero_bytes() {
        let m = mem();
        let (q, counters, _) = run(
            &m,
            &[
                desc(0xffff_ffff_0000, 64, VRING_DESC_F_WRITE, 0),
                desc(0x20000, 64, 0, 0), // device-readable only: nothing to fill
            ],
        );
        assert_eq!(q.next_used(), 2);
        assert_eq!(counters.bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn zero_length_and_multi_descriptor_chains_are_handled() {
        let m = mem();
        let (_, counters, _) = run(
            &m,
            &[
                desc(0x10000, 0, VRING_DESC_F_WRITE, 0),
                desc(0x20000, 16, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2),
                desc(0x30000, 16, VRING_DESC_F_WRITE, 0),
            ],
        );
        assert_eq!(counters.requests.load(Ordering::Relaxed), 2);
        assert_eq!(counters.bytes.load(Ordering::Relaxed), 32);
    }
}
