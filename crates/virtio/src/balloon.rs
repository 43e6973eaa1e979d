//! virtio-balloon (virtio 1.2 §5.5): the host asks the guest to give back `num_pages` 4 KiB
//! pages; the driver puts their frame numbers on the inflate queue and we drop the host pages
//! behind them (`MADV_DONTNEED`, so the VMM's resident memory really falls), and takes pages
//! back through the deflate queue (nothing to do: anonymous memory refills with zeros on
//! touch). The statistics queue (VIRTIO_BALLOON_F_STATS_VQ) carries the guest's memory
//! statistics; the device holds the driver's one buffer and returns it when the host wants
//! fresh numbers ([`BalloonHandle::stats`] asks at most once a second).
//!
//! The target comes from the VMM's control thread through a [`BalloonHandle`]; the driver
//! reports its progress in the `actual` config field.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ironvirt_vm_bus::{guest_debug, guest_warn};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::worker::{drain, QueueHandler};
use crate::{
    device_type, ActivateError, Activation, VirtioDevice, VirtioInterrupt, WorkerError,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
};

/// VIRTIO_BALLOON_F_STATS_VQ (§5.5.3): the statistics queue exists.
pub const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
/// VIRTIO_BALLOON_F_DEFLATE_ON_OOM (§5.5.3): the guest may deflate under memory pressure.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// Balloon page frames are 4 KiB whatever the guest's page size (§5.5.6: PFN shift 12).
pub const BALLOON_PAGE_SIZE: u64 = 4096;
/// Most frame numbers taken from one inflate or deflate chain (Linux sends at most 256);
/// the rest of a longer chain is ignored.
pub const MAX_PFNS_PER_CHAIN: usize = 1024;
/// Most statistics entries read from one stats buffer (§5.5.6.3 defines 10 tags).
pub const MAX_STATS_ENTRIES: usize = 64;
const STATS_ENTRY_LEN: usize = 10; // le16 tag, le64 val: packed
const STATS_REFRESH: Duration = Duration::from_secs(1);
const QUEUE_SIZES: [u16; 3] = [256, 256, 4];
const INFLATE: u16 = 0;
const DEFLATE: u16 = 1;
const STATS: u16 = 2;

/// The guest's memory statistics (§5.5.6.3; `None` until the guest reports the tag), plus
/// the device's own counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BalloonStats {
    /// VIRTIO_BALLOON_S_SWAP_IN (0): bytes swapped in.
    pub swap_in: Option<u64>,
    /// VIRTIO_BALLOON_S_SWAP_OUT (1): bytes swapped out.
    pub swap_out: Option<u64>,
    /// VIRTIO_BALLOON_S_MAJFLT (2): major page faults.
    pub major_faults: Option<u64>,
    /// VIRTIO_BALLOON_S_MINFLT (3): minor page faults.
    pub minor_faults: Option<u64>,
    /// VIRTIO_BALLOON_S_MEMFREE (4): free memory, bytes.
    pub free_memory: Option<u64>,
    /// VIRTIO_BALLOON_S_MEMTOT (5): total memory, bytes.
    pub total_memory: Option<u64>,
    /// VIRTIO_BALLOON_S_AVAIL (6): available memory, bytes.
    pub available_memory: Option<u64>,
    /// VIRTIO_BALLOON_S_CACHES (7): disk caches, bytes.
    pub disk_caches: Option<u64>,
    /// VIRTIO_BALLOON_S_HTLB_PGALLOC (8): hugetlb allocations.
    pub hugetlb_allocations: Option<u64>,
    /// VIRTIO_BALLOON_S_HTLB_PGFAIL (9): hugetlb allocation failures.
    pub hugetlb_failures: Option<u64>,
    /// Statistics buffers received.
    pub updates: u64,
    /// Pages given back to the host so far (inflate).
    pub inflated_pages: u64,
    /// Pages the guest took back (deflate).
    pub deflated_pages: u64,
    /// Frame numbers outside guest RAM, skipped.
    pub bad_pfns: u64,
    /// Pages the host kernel refused to drop (locked or huge-page memory).
    pub discard_errors: u64,
}

impl BalloonStats {
    fn set(&mut self, tag: u16, val: u64) {
        let slot = match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            _ => return, // tags from a newer spec: ignored
        };
        *slot = Some(val);
    }
}

struct Shared {
    num_pages: AtomicU32,
    actual: AtomicU32,
    stats: Mutex<BalloonStats>,
    interrupt: Mutex<Option<Arc<dyn VirtioInterrupt>>>,
    /// Tells the worker to hand the stats buffer back (absent if no eventfd could be made).
    stats_request: Option<EventFd>,
    last_request: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Controls a [`Balloon`] from other threads (the VMM's control API).
#[derive(Clone)]
pub struct BalloonHandle {
    shared: Arc<Shared>,
}

impl BalloonHandle {
    /// Sets the number of 4 KiB pages the host wants in the balloon (`num_pages`, §5.5.4) and
    /// raises the configuration-change interrupt if the driver is active.
    pub fn set_target_pages(&self, pages: u32) -> io::Result<()> {
        self.shared.num_pages.store(pages, Ordering::Release);
        match lock(&self.shared.interrupt).as_ref() {
            Some(irq) => irq.notify_config(),
            None => Ok(()), // the driver reads num_pages when it starts
        }
    }

    /// The target last set.
    pub fn target_pages(&self) -> u32 {
        self.shared.num_pages.load(Ordering::Acquire)
    }

    /// Pages the driver says the balloon holds (`actual`, written by the driver).
    pub fn actual_pages(&self) -> u32 {
        self.shared.actual.load(Ordering::Acquire)
    }

    /// The last statistics and counters; asks the guest for fresh statistics if the last
    /// request is more than a second old (they arrive asynchronously).
    pub fn stats(&self) -> BalloonStats {
        let mut last = lock(&self.shared.last_request);
        if last.is_none_or(|t| t.elapsed() >= STATS_REFRESH) {
            *last = Some(Instant::now());
            if let Some(efd) = &self.shared.stats_request {
                let _ = efd.write(1);
            }
        }
        drop(last);
        lock(&self.shared.stats).clone()
    }
}

/// The balloon device.
pub struct Balloon {
    shared: Arc<Shared>,
    worker: Option<BalloonWorker>,
}

impl Default for Balloon {
    fn default() -> Self {
        Self::new()
    }
}

impl Balloon {
    /// A balloon with a target of 0 pages.
    pub fn new() -> Balloon {
        let stats_request = EventFd::new(EFD_NONBLOCK)
            .inspect_err(|e| log::warn!("balloon: no stats refresh eventfd: {e}"))
            .ok();
        Balloon {
            shared: Arc::new(Shared {
                num_pages: AtomicU32::new(0),
                actual: AtomicU32::new(0),
                stats: Mutex::default(),
                interrupt: Mutex::new(None),
                stats_request,
                last_request: Mutex::new(None),
            }),
            worker: None,
        }
    }

    /// A handle for the control thread.
    pub fn handle(&self) -> BalloonHandle {
        BalloonHandle { shared: self.shared.clone() }
    }

    fn config(&self) -> [u8; 8] {
        // §5.5.4: le32 num_pages; le32 actual.
        let mut c = [0u8; 8];
        c[..4].copy_from_slice(&self.shared.num_pages.load(Ordering::Acquire).to_le_bytes());
        c[4..].copy_from_slice(&self.shared.actual.load(Ordering::Acquire).to_le_bytes());
        c
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        device_type::BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_F_RING_EVENT_IDX
            | VIRTIO_BALLOON_F_STATS_VQ
            | VIRTIO_BALLOON_F_DEFLATE_ON_OOM
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::read_config_bytes(&self.config(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4..8) is the driver's; a partial write updates its bytes.
        let mut cfg = self.config();
        let Ok(start) = usize::try_from(offset) else { return };
        for (i, &b) in data.iter().enumerate() {
            match start.checked_add(i) {
                Some(at @ 4..=7) => cfg[at] = b,
                _ => guest_debug!("balloon: config write outside `actual` ignored"),
            }
        }
        let actual = u32::from_le_bytes([cfg[4], cfg[5], cfg[6], cfg[7]]);
        self.shared.actual.store(actual, Ordering::Release);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let expected = if a.features & VIRTIO_BALLOON_F_STATS_VQ != 0 { 3 } else { 2 };
        if a.queues.len() != expected {
            return Err(ActivateError::QueueCount { expected, got: a.queues.len() });
        }
        self.reset();
        *lock(&self.shared.interrupt) = Some(a.interrupt.clone());
        let handler = BalloonHandler {
            shared: self.shared.clone(),
            held: None,
            pfns: Vec::new(),
            broken: false,
        };
        let worker = BalloonWorker::start(handler, a.mem, a.queues, a.interrupt, &self.shared)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        *lock(&self.shared.interrupt) = None;
        self.shared.actual.store(0, Ordering::Release);
    }

    fn counters(&self) -> (u64, u64) {
        let s = lock(&self.shared.stats);
        (s.inflated_pages + s.deflated_pages, s.inflated_pages * BALLOON_PAGE_SIZE)
    }
}

/// Queue processing, shared by the worker thread and the tests.
struct BalloonHandler {
    shared: Arc<Shared>,
    /// The stats buffer we hold until the host wants fresh numbers.
    held: Option<u16>,
    pfns: Vec<u32>,
    /// A used entry could not be written: the device waits for a reset.
    broken: bool,
}

impl QueueHandler for BalloonHandler {
    fn is_broken(&self) -> bool {
        self.broken
    }

    fn process(&mut self, index: u16, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            if self.broken {
                break;
            }
            let head = chain.head_index();
            match index {
                INFLATE | DEFLATE => {
                    self.read_pfns(chain, mem);
                    if index == INFLATE {
                        self.inflate(mem);
                    } else {
                        lock(&self.shared.stats).deflated_pages += self.pfns.len() as u64;
                    }
                }
                _ => {
                    self.read_stats(chain, mem);
                    // §5.5.6.3: the driver has one stats buffer; a second one makes us give
                    // the older back rather than hold many.
                    match self.held.replace(head) {
                        Some(old) => self.complete(queue, mem, old),
                        None => continue,
                    }
                    used = true;
                    continue;
                }
            }
            self.complete(queue, mem, head);
            used = true;
        }
        used
    }
}

impl BalloonHandler {
    fn complete(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap, head: u16) {
        if queue.add_used(mem, head, 0).is_err() {
            guest_warn!("balloon: head index {head} cannot be returned; device needs reset");
            self.broken = true;
        }
    }

    /// Reads up to [`MAX_PFNS_PER_CHAIN`] le32 frame numbers into `self.pfns`.
    fn read_pfns(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) {
        self.pfns.clear();
        let Ok(mut reader) = chain.reader(mem) else {
            guest_debug!("balloon: malformed descriptor chain");
            return;
        };
        let n = (reader.available_bytes() / 4).min(MAX_PFNS_PER_CHAIN);
        let mut b = [0u8; 4];
        for _ in 0..n {
            if reader.read_exact(&mut b).is_err() {
                break;
            }
            self.pfns.push(u32::from_le_bytes(b));
        }
    }

    /// Drops the host pages behind `self.pfns`, a run of consecutive frames at a time.
    fn inflate(&mut self, mem: &GuestMemoryMmap) {
        let (mut good, mut bad, mut errors) = (0u64, 0u64, 0u64);
        let mut i = 0;
        while i < self.pfns.len() {
            let start = self.pfns[i];
            let mut run = 1usize;
            while i + run < self.pfns.len()
                && u64::from(self.pfns[i + run]) == u64::from(start) + run as u64
            {
                run += 1;
            }
            let addr = u64::from(start) * BALLOON_PAGE_SIZE;
            let len = run as u64 * BALLOON_PAGE_SIZE;
            match mem.get_slice(GuestAddress(addr), len as usize) {
                Ok(slice) => match ironvirt_sys_util::mem::discard(&slice) {
                    Ok(()) => good += run as u64,
                    Err(_) => errors += run as u64,
                },
                // A run leaving RAM (or crossing a region boundary): page by page.
                Err(_) if run > 1 => {
                    for p in 0..run as u64 {
                        match mem.get_slice(GuestAddress(addr + p * BALLOON_PAGE_SIZE), 4096) {
                            Ok(s) if ironvirt_sys_util::mem::discard(&s).is_ok() => good += 1,
                            Ok(_) => errors += 1,
                            Err(_) => bad += 1,
                        }
                    }
                }
                Err(_) => bad += 1,
            }
            i += run;
        }
        if bad > 0 {
            guest_debug!("balloon: {bad} inflate frame numbers outside guest RAM");
        }
        if errors > 0 {
            guest_warn!("balloon: the host kernel kept {errors} inflated pages");
        }
        let mut s = lock(&self.shared.stats);
        s.inflated_pages += good;
        s.bad_pfns += bad;
        s.discard_errors += errors;
    }

    /// Parses a stats buffer: packed (le16 tag, le64 val) entries, at most
    /// [`MAX_STATS_ENTRIES`]; unknown tags are ignored.
    fn read_stats(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) {
        let Ok(mut reader) = chain.reader(mem) else {
            guest_debug!("balloon: malformed stats chain");
            return;
        };
        let n = (reader.available_bytes() / STATS_ENTRY_LEN).min(MAX_STATS_ENTRIES);
        let mut s = lock(&self.shared.stats);
        let mut e = [0u8; STATS_ENTRY_LEN];
        for _ in 0..n {
            if reader.read_exact(&mut e).is_err() {
                break;
            }
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let mut v = [0u8; 8];
            v.copy_from_slice(&e[2..]);
            s.set(tag, u64::from_le_bytes(v));
        }
        s.updates += 1;
    }

    /// Gives the held stats buffer back so that the driver refills it.
    fn request_stats(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        match self.held.take() {
            Some(head) => {
                self.complete(queue, mem, head);
                true
            }
            None => false,
        }
    }
}

const STOP_TOKEN: u64 = u64::MAX;
const STATS_REQUEST_TOKEN: u64 = u64::MAX - 1;

struct BalloonWorker {
    thread: crate::worker::StoppableThread<()>,
}

impl BalloonWorker {
    fn start(
        mut handler: BalloonHandler,
        mem: GuestMemoryMmap,
        mut queues: Vec<(Queue, EventFd)>,
        irq: Arc<dyn VirtioInterrupt>,
        shared: &Shared,
    ) -> Result<Self, WorkerError> {
        let epoll = Epoll::new().map_err(WorkerError::Setup)?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(WorkerError::Setup)?;
        let add = |fd: i32, token: u64| {
            let ev = EpollEvent::new(EventSet::IN, token);
            epoll.ctl(ControlOperation::Add, fd, ev).map_err(WorkerError::Setup)
        };
        add(stop.as_raw_fd(), STOP_TOKEN)?;
        for (i, (_, kick)) in queues.iter().enumerate() {
            add(kick.as_raw_fd(), i as u64)?;
        }
        let request = match &shared.stats_request {
            Some(efd) => Some(efd.try_clone().map_err(WorkerError::Setup)?),
            None => None,
        };
        if let Some(r) = &request {
            add(r.as_raw_fd(), STATS_REQUEST_TOKEN)?;
        }
        let thread = std::thread::Builder::new()
            .name("virtio-balloon".into())
            .spawn(move || {
                let mut events = vec![EpollEvent::default(); queues.len() + 2];
                loop {
                    let n = match epoll.wait(-1, &mut events) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            log::error!("virtio-balloon: epoll failed, device stops: {e}");
                            return;
                        }
                    };
                    for ev in &events[..n] {
                        match ev.data() {
                            STOP_TOKEN => return,
                            STATS_REQUEST_TOKEN => {
                                if let Some(r) = &request {
                                    let _ = r.read();
                                }
                                let Some((q, _)) = queues.get_mut(usize::from(STATS)) else {
                                    continue;
                                };
                                if handler.request_stats(q, &mem)
                                    && q.needs_notification(&mem).unwrap_or(true)
                                {
                                    let _ = irq.notify_queue(STATS);
                                }
                            }
                            token => {
                                let Some((q, kick)) = queues.get_mut(token as usize) else {
                                    continue;
                                };
                                let _ = kick.read();
                                drain(token as u16, q, &mem, &mut handler, irq.as_ref());
                            }
                        }
                    }
                }
            })
            .map_err(WorkerError::Spawn)?;
        Ok(BalloonWorker { thread: crate::worker::StoppableThread::new(stop, thread) })
    }

    fn stop(self) {
        self.thread.stop();
    }
}

#[cfg(test)]
mod tests;
