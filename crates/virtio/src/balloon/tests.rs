use std::sync::atomic::AtomicUsize;

use crate::test_util::desc;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes};

use super::*;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const MIB: u64 = 1 << 20;

#[derive(Default)]
struct CountIrq {
    queue: AtomicUsize,
    config: AtomicUsize,
    broken: AtomicUsize,
}
impl VirtioInterrupt for CountIrq {
    fn notify_queue(&self, _: u16) -> io::Result<()> {
        self.queue.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn notify_config(&self) -> io::Result<()> {
        self.config.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn device_broken(&self) {
        self.broken.fetch_add(1, Ordering::Relaxed);
    }
}

fn mem(size: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
}

fn handler(b: &Balloon) -> BalloonHandler {
    BalloonHandler { shared: b.shared.clone(), held: None, pfns: Vec::new(), broken: false }
}

/// Writes `pfns` at `at` and runs them through queue `index` as chains of `per_chain`.
fn run_pfns(b: &Balloon, m: &GuestMemoryMmap, index: u16, pfns: &[u32], per_chain: usize) {
    let at = 0x10_0000u64;
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    m.write_slice(&bytes, GuestAddress(at)).unwrap();
    let descs: Vec<RawDescriptor> = bytes
        .chunks(per_chain * 4)
        .enumerate()
        .map(|(i, c)| desc(at + (i * per_chain * 4) as u64, c.len() as u32, 0, 0))
        .collect();
    let vq = MockSplitQueue::new(m, 256);
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let irq = CountIrq::default();
    drain(index, &mut q, m, &mut handler(b), &irq);
    assert_eq!(q.next_used(), descs.len() as u16, "every chain is completed");
}

fn page_is(m: &GuestMemoryMmap, pfn: u64, byte: u8) -> bool {
    let mut p = vec![0u8; 4096];
    m.read_slice(&mut p, GuestAddress(pfn * 4096)).unwrap();
    p.iter().all(|&b| b == byte)
}

#[test]
fn inflated_pages_read_back_zero_and_neighbours_keep_their_data() {
    let m = mem(16 * MIB);
    m.write_slice(&vec![0xab; 0x20000], GuestAddress(0x200_0000 - 0x20000 - 0x100_0000)).unwrap();
    let base = (0x100_0000 - 0x20000) / 4096; // 32 pages of pattern
    let b = Balloon::new();
    let pfns: Vec<u32> = [base + 2, base + 3, base + 4, base + 10].map(|p| p as u32).to_vec();
    run_pfns(&b, &m, INFLATE, &pfns, 256);
    for p in [base + 2, base + 3, base + 4, base + 10] {
        assert!(page_is(&m, p, 0), "page {p} was given back");
    }
    for p in [base + 1, base + 5, base + 9, base + 11] {
        assert!(page_is(&m, p, 0xab), "page {p} untouched");
    }
    assert_eq!(b.handle().stats().inflated_pages, 4);
}

#[test]
fn frame_numbers_outside_ram_are_skipped_and_counted() {
    let m = mem(16 * MIB); // 4096 pages
    let b = Balloon::new();
    run_pfns(&b, &m, INFLATE, &[4094, 4095, 4096, 4097, u32::MAX, 7], 256);
    let s = b.handle().stats();
    assert_eq!((s.inflated_pages, s.bad_pfns), (3, 3));
}

#[test]
fn pfns_per_chain_are_bounded() {
    let m = mem(64 * MIB);
    let b = Balloon::new();
    let pfns: Vec<u32> = (0..4000).map(|i| 0x1000 + i).collect();
    run_pfns(&b, &m, INFLATE, &pfns, 4000);
    assert_eq!(b.handle().stats().inflated_pages, MAX_PFNS_PER_CHAIN as u64);
    run_pfns(&b, &m, DEFLATE, &pfns[..10], 256);
    assert_eq!(b.handle().stats().deflated_pages, 10);
}

fn region_rss_kib(m: &GuestMemoryMmap) -> u64 {
    let host = m.get_host_address(GuestAddress(0)).unwrap() as usize;
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = (a..b).contains(&host);
                    continue;
                }
            }
        }
        if inside {
            if let Some(v) = line.strip_prefix("Rss:") {
                return v.trim().trim_end_matches(" kB").parse().unwrap();
            }
        }
    }
    panic!("guest memory mapping not found in /proc/self/smaps");
}

fn statm_resident_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn a_large_inflate_lowers_host_rss() {
    let size = 192 * MIB;
    let m = mem(size);
    let chunk = vec![0x5au8; MIB as usize];
    for i in 0..size / MIB {
        m.write_slice(&chunk, GuestAddress(i * MIB)).unwrap();
    }
    let (region_before, rss_before) = (region_rss_kib(&m), statm_resident_bytes());
    assert!(region_before >= 190 * 1024, "guest memory is resident: {region_before} KiB");
    let b = Balloon::new();
    // 128 MiB in Linux's order: chains of 256 frames, not all consecutive.
    let pfns: Vec<u32> = (0..(128 * MIB / 4096) as u32).map(|i| 0x2000 + (i ^ 1)).collect();
    run_pfns(&b, &m, INFLATE, &pfns, 256);
    let (region_after, rss_after) = (region_rss_kib(&m), statm_resident_bytes());
    // Most of the 128 MiB: the exact figure moves with transparent huge pages and with what
    // else the host does, so demand three quarters.
    assert!(
        region_before - region_after >= 96 * 1024,
        "the mapping shrank by most of 128 MiB: {region_before} -> {region_after} KiB"
    );
    // Other tests run in this process too: the process-wide figure only needs to show most.
    assert!(
        rss_before.saturating_sub(rss_after) >= 64 * MIB,
        "statm resident fell: {rss_before} -> {rss_after}"
    );
    assert_eq!(b.handle().stats().inflated_pages, 128 * MIB / 4096);
}

#[test]
fn hostile_chains_complete_without_stopping_the_device() {
    let m = mem(16 * MIB);
    // The frame numbers the chains point at: pages far from the rings.
    m.write_slice(&[0x00, 0x08, 0, 0, 0x01, 0x08, 0, 0], GuestAddress(0x10_0000)).unwrap();
    let b = Balloon::new();
    let vq = MockSplitQueue::new(&m, 16);
    vq.add_desc_chains(
        &[
            desc(0xffff_ffff_0000, 64, 0, 0),
            desc(0x10_0000, u32::MAX, 0, 0),
            desc(0x10_0000, 0, 0, 0),
            desc(0x10_0000, 8, F_WRITE, 0),
            desc(0x10_0000, 3, 0, 0),      // less than one PFN
            desc(0x10_0000, 8, F_NEXT, 5), // loops onto itself
        ],
        0,
    )
    .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let irq = CountIrq::default();
    drain(INFLATE, &mut q, &m, &mut handler(&b), &irq);
    assert_eq!(q.next_used(), 6, "every chain completes");
    assert_eq!(irq.broken.load(Ordering::Relaxed), 0);
    // The avail index running ahead of the ring: nothing is processed, the device is marked
    // broken, and the drain loop returns instead of spinning.
    m.write_obj(100u16, vq.avail_addr().checked_add(2).unwrap()).unwrap();
    drain(INFLATE, &mut q, &m, &mut handler(&b), &irq);
    assert_eq!(q.next_used(), 6);
    assert_eq!(irq.broken.load(Ordering::Relaxed), 1);
}

#[test]
fn target_updates_change_config_and_raise_the_config_interrupt() {
    let m = mem(16 * MIB);
    let mut b = Balloon::new();
    let h = b.handle();
    h.set_target_pages(1000).unwrap(); // not active: nothing to interrupt
    let mut cfg = [0u8; 4];
    b.read_config(0, &mut cfg);
    assert_eq!(u32::from_le_bytes(cfg), 1000);

    let irq = Arc::new(CountIrq::default());
    let vqs: Vec<MockSplitQueue<'_, GuestMemoryMmap>> =
        (0..3).map(|i| MockSplitQueue::create(&m, GuestAddress(i * 0x10000), 16)).collect();
    let queues = || -> Vec<(Queue, EventFd)> {
        vqs.iter()
            .map(|v| (v.create_queue().unwrap(), EventFd::new(EFD_NONBLOCK).unwrap()))
            .collect()
    };
    let act =
        |qs, features| Activation { mem: m.clone(), queues: qs, interrupt: irq.clone(), features };
    let mut two = queues();
    two.pop();
    assert!(matches!(
        b.activate(act(two, VIRTIO_BALLOON_F_STATS_VQ)),
        Err(ActivateError::QueueCount { expected: 3, got: 2 })
    ));
    b.activate(act(queues(), VIRTIO_BALLOON_F_STATS_VQ)).unwrap();
    h.set_target_pages(65536).unwrap();
    assert_eq!(irq.config.load(Ordering::Relaxed), 1);
    b.read_config(0, &mut cfg);
    assert_eq!(u32::from_le_bytes(cfg), 65536);
    b.reset();
    h.set_target_pages(1).unwrap();
    assert_eq!(irq.config.load(Ordering::Relaxed), 1, "no interrupt after reset");
}

#[test]
fn actual_is_the_only_writable_config_field() {
    let mut b = Balloon::new();
    b.write_config(4, &500u32.to_le_bytes());
    assert_eq!(b.handle().actual_pages(), 500);
    b.write_config(0, &[9, 9, 9, 9]);
    assert_eq!(b.handle().target_pages(), 0, "num_pages is the device's");
    b.write_config(6, &[1, 0]); // partial write of actual's upper half
    assert_eq!(b.handle().actual_pages(), 500 + (1 << 16));
    b.write_config(u64::MAX, &[1]);
    let mut all = [0u8; 16];
    b.read_config(0, &mut all);
    assert_eq!(&all[8..], &[0; 8], "beyond the config reads zero");
}

fn stats_entries(entries: &[(u16, u64)]) -> Vec<u8> {
    entries.iter().flat_map(|(t, v)| t.to_le_bytes().into_iter().chain(v.to_le_bytes())).collect()
}

#[test]
fn stats_are_parsed_bounded_and_the_buffer_is_held_until_asked() {
    let m = mem(16 * MIB);
    let b = Balloon::new();
    let mut h = handler(&b);
    let mut bytes = stats_entries(&[(4, 111), (5, 222), (0x99, 7), (6, 333)]);
    bytes.extend_from_slice(&[1, 2, 3]); // a partial trailing entry
    m.write_slice(&bytes, GuestAddress(0x10_0000)).unwrap();
    // 1000 entries: only MAX_STATS_ENTRIES are read, so the last tag never lands.
    let mut many = stats_entries(&vec![(2, 1); 999]);
    many.extend(stats_entries(&[(3, 42)]));
    m.write_slice(&many, GuestAddress(0x20_0000)).unwrap();
    let vq = MockSplitQueue::new(&m, 16);
    vq.add_desc_chains(&[desc(0x10_0000, bytes.len() as u32, 0, 0)], 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    assert!(!h.process(STATS, &mut q, &m), "the stats buffer is held, not used");
    let s = b.handle().stats();
    assert_eq!(
        (s.free_memory, s.total_memory, s.available_memory),
        (Some(111), Some(222), Some(333))
    );
    assert_eq!((s.updates, s.swap_in), (1, None));

    vq.add_desc_chains(&[desc(0x20_0000, many.len() as u32, 0, 0)], 1).unwrap();
    vq.add_desc_chains(&[desc(0x10_0000, u32::MAX, 0, 0)], 2).unwrap();
    assert!(h.process(STATS, &mut q, &m), "a second buffer makes us give back the first");
    let s = b.handle().stats();
    // The u32::MAX chain lies outside RAM: it is not an update, but it is held and replaces
    // the second buffer.
    assert_eq!((s.major_faults, s.minor_faults, s.updates), (Some(1), None, 2));
    assert_eq!(q.next_used(), 2);
    assert!(h.request_stats(&mut q, &m));
    assert_eq!(q.next_used(), 3);
    assert!(!h.request_stats(&mut q, &m), "nothing held any more");
}

#[test]
fn worker_returns_the_stats_buffer_when_the_host_asks() {
    let m = mem(16 * MIB);
    let mut b = Balloon::new();
    let irq = Arc::new(CountIrq::default());
    let vqs: Vec<MockSplitQueue<'_, GuestMemoryMmap>> =
        (0..3).map(|i| MockSplitQueue::create(&m, GuestAddress(i * 0x10000), 16)).collect();
    let bytes = stats_entries(&[(4, 5)]);
    m.write_slice(&bytes, GuestAddress(0x10_0000)).unwrap();
    vqs[2].add_desc_chains(&[desc(0x10_0000, bytes.len() as u32, 0, 0)], 0).unwrap();
    let kicks: Vec<EventFd> = (0..3).map(|_| EventFd::new(EFD_NONBLOCK).unwrap()).collect();
    let queues = vqs
        .iter()
        .zip(&kicks)
        .map(|(v, k)| (v.create_queue().unwrap(), k.try_clone().unwrap()))
        .collect();
    b.activate(Activation {
        mem: m.clone(),
        queues,
        interrupt: irq.clone(),
        features: VIRTIO_BALLOON_F_STATS_VQ,
    })
    .unwrap();
    kicks[2].write(1).unwrap();
    let used_idx = || m.read_obj::<u16>(vqs[2].used_addr().checked_add(2).unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.handle().stats().free_memory.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(b.handle().stats().free_memory, Some(5));
    while used_idx() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(used_idx(), 1, "stats() asked the worker to give the buffer back");
    assert!(irq.queue.load(Ordering::Relaxed) >= 1);
    b.reset();
}
