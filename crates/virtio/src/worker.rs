//! A device's I/O thread: waits on its queues' kick eventfds and a stop eventfd, and drains
//! each kicked queue with the disable-notify / drain / re-enable loop (virtio 1.2 §2.7.10).

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::VirtioInterrupt;

/// Processes one queue's available buffers.
pub trait QueueHandler: Send + 'static {
    /// Handles every available chain of queue `index`; returns whether any was used (so the
    /// driver may need an interrupt). Must never panic on guest data.
    fn process(&mut self, index: u16, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool;

    /// Whether the driver left a queue in a state the device cannot go on from (a used entry
    /// that cannot be written, e.g. a head index beyond the ring). The worker then asks for a
    /// reset (DEVICE_NEEDS_RESET) and consumes, without completing, whatever arrives until
    /// the driver resets the device. Default: never.
    fn is_broken(&self) -> bool {
        false
    }
}

/// Marks everything the driver made available as seen without using it, so a stopped device
/// does not look as if it had pending work (the drain loop re-checks the avail index and would
/// otherwise spin). A broken device ignores its queue this way until reset.
pub(crate) fn skip_available(queue: &mut Queue, mem: &GuestMemoryMmap) {
    if let Ok(idx) = queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire) {
        queue.set_next_avail(idx.0);
    }
}

/// Errors starting or stopping a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// epoll/eventfd setup failed.
    #[error("Cannot set up the worker's event loop")]
    Setup(#[source] std::io::Error),
    /// The thread could not be spawned.
    #[error("Cannot spawn the worker thread")]
    Spawn(#[source] std::io::Error),
}

/// A device thread with the eventfd that tells it to stop; dropping it stops and joins it.
pub(crate) struct StoppableThread<T> {
    stop: EventFd,
    thread: Option<JoinHandle<T>>,
}

impl<T> StoppableThread<T> {
    /// Wraps `thread`, which must exit once `stop` is signalled.
    pub(crate) fn new(stop: EventFd, thread: JoinHandle<T>) -> Self {
        Self { stop, thread: Some(thread) }
    }

    /// Signals the thread, waits for it and returns what it returned (None if it panicked).
    pub(crate) fn stop(mut self) -> Option<T> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Option<T> {
        let thread = self.thread.take()?;
        let _ = self.stop.write(1);
        thread.join().ok()
    }
}

impl<T> Drop for StoppableThread<T> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A running worker; dropping it stops the thread and gives nothing back.
pub struct Worker {
    thread: StoppableThread<Vec<Queue>>,
}

const STOP_TOKEN: u64 = u64::MAX;

impl Worker {
    /// Starts a thread named `name` running `handler` over `queues`.
    pub fn start<H: QueueHandler>(
        name: &str,
        mem: GuestMemoryMmap,
        queues: Vec<(Queue, EventFd)>,
        interrupt: Arc<dyn VirtioInterrupt>,
        mut handler: H,
    ) -> Result<Self, WorkerError> {
        let epoll = Epoll::new().map_err(WorkerError::Setup)?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(WorkerError::Setup)?;
        let add = |fd: i32, token: u64| {
            epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token))
                .map_err(WorkerError::Setup)
        };
        add(stop.as_raw_fd(), STOP_TOKEN)?;
        for (i, (_, kick)) in queues.iter().enumerate() {
            add(kick.as_raw_fd(), i as u64)?;
        }
        let stop_clone = stop.try_clone().map_err(WorkerError::Setup)?;
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut queues = queues;
                let mut events = vec![EpollEvent::default(); queues.len() + 1];
                loop {
                    let n = match epoll.wait(-1, &mut events) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            log::error!("virtio worker: epoll failed, device stops: {e}");
                            break;
                        }
                    };
                    for ev in &events[..n] {
                        let token = ev.data();
                        if token == STOP_TOKEN {
                            let _ = stop_clone.read();
                            return queues.into_iter().map(|(q, _)| q).collect();
                        }
                        let Some((queue, kick)) = queues.get_mut(token as usize) else { continue };
                        let _ = kick.read();
                        drain(token as u16, queue, &mem, &mut handler, interrupt.as_ref());
                    }
                }
                queues.into_iter().map(|(q, _)| q).collect()
            })
            .map_err(WorkerError::Spawn)?;
        Ok(Self { thread: StoppableThread::new(stop, thread) })
    }

    /// Stops the thread and returns the queues (for reset or snapshot).
    pub fn stop(self) -> Vec<Queue> {
        self.thread.stop().unwrap_or_default()
    }
}

/// Drains `queue` until no buffers remain with notifications re-enabled, then interrupts the
/// driver if it asked for it.
pub(crate) fn drain<H: QueueHandler>(
    index: u16,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    handler: &mut H,
    interrupt: &dyn VirtioInterrupt,
) {
    let mut used_any = false;
    loop {
        if handler.is_broken() {
            skip_available(queue, mem);
            return;
        }
        if !queue_is_sane(queue, mem) {
            ironvirt_vm_bus::guest_warn!(
                "virtio: queue {index} is in an impossible state (avail index beyond the ring); device needs reset"
            );
            interrupt.device_broken();
            return;
        }
        if queue.disable_notification(mem).is_err() {
            break;
        }
        let used = handler.process(index, queue, mem);
        used_any |= used;
        if handler.is_broken() {
            skip_available(queue, mem);
            interrupt.device_broken();
            break;
        }
        match queue.enable_notification(mem) {
            // More buffers arrived meanwhile. A pass that used nothing ends the loop: the
            // handler found nothing it could take, and looping again would spin.
            Ok(true) if used => continue,
            _ => break,
        }
    }
    if used_any && queue.needs_notification(mem).unwrap_or(true) {
        if let Err(e) = interrupt.notify_queue(index) {
            ironvirt_vm_bus::guest_warn!("virtio: cannot interrupt the driver: {e}");
        }
    }
}

/// Whether the driver's avail index is at most one ring ahead of what we consumed (virtio 1.2
/// §2.7.13.3); anything else cannot come from a correct driver and would make every pass find
/// "more buffers" that are not there.
pub(crate) fn queue_is_sane(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    match queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire) {
        Ok(avail) => (avail - std::num::Wrapping(queue.next_avail())).0 <= queue.size(),
        Err(_) => false,
    }
}
