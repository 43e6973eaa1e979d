//! The virtio-net worker thread: one epoll loop over the receive and transmit kick eventfds,
//! the TAP and a stop eventfd. The TAP is watched only while the receive queue can take a
//! frame: when buffers run out it leaves the epoll set until the driver kicks the receive
//! queue, so a guest that stops reading leaves frames queued in the kernel (bounded by the
//! TAP's own queue), never in our memory.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use ironvirt_net::Tap;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::handler::{Counters, NetHandler, RxStop};
use crate::worker::WorkerError;
use crate::VirtioInterrupt;

/// Queue indices (§5.1.2): receiveq1, transmitq1.
pub(crate) const RX_QUEUE: u16 = 0;
pub(crate) const TX_QUEUE: u16 = 1;

/// What woke the worker; maps to and from the epoll data word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    RxKick,
    TxKick,
    Tap,
    Stop,
}

impl Wake {
    fn token(self) -> u64 {
        self as u64
    }

    fn from_token(t: u64) -> Option<Self> {
        [Wake::RxKick, Wake::TxKick, Wake::Tap, Wake::Stop].into_iter().find(|w| w.token() == t)
    }
}

/// A running virtio-net worker; dropping it stops the thread.
pub(crate) struct NetWorker {
    stop: EventFd,
    thread: Option<JoinHandle<Vec<Queue>>>,
}

/// What the worker thread owns.
struct EventLoop {
    epoll: Epoll,
    mem: GuestMemoryMmap,
    rx: Queue,
    rx_kick: EventFd,
    tx: Queue,
    tx_kick: EventFd,
    stop: EventFd,
    tap: Arc<Tap>,
    tap_watched: bool,
    handler: NetHandler<Arc<Tap>>,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// Everything the worker needs at start.
pub(crate) struct WorkerParts {
    pub mem: GuestMemoryMmap,
    pub rx: (Queue, EventFd),
    pub tx: (Queue, EventFd),
    pub tap: Arc<Tap>,
    pub features: u64,
    pub counters: Arc<Counters>,
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

impl NetWorker {
    /// Starts the worker thread.
    pub(crate) fn start(parts: WorkerParts) -> Result<Self, WorkerError> {
        let epoll = Epoll::new().map_err(WorkerError::Setup)?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(WorkerError::Setup)?;
        let add = |fd: i32, wake: Wake| {
            epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, wake.token()))
                .map_err(WorkerError::Setup)
        };
        add(stop.as_raw_fd(), Wake::Stop)?;
        add(parts.rx.1.as_raw_fd(), Wake::RxKick)?;
        add(parts.tx.1.as_raw_fd(), Wake::TxKick)?;
        add(parts.tap.as_raw_fd(), Wake::Tap)?;
        let handler = NetHandler::new(parts.tap.clone(), parts.features, parts.counters);
        let event_loop = EventLoop {
            epoll,
            mem: parts.mem,
            rx: parts.rx.0,
            rx_kick: parts.rx.1,
            tx: parts.tx.0,
            tx_kick: parts.tx.1,
            stop: stop.try_clone().map_err(WorkerError::Setup)?,
            tap: parts.tap,
            tap_watched: true,
            handler,
            interrupt: parts.interrupt,
        };
        let thread = std::thread::Builder::new()
            .name("virtio-net".into())
            .spawn(move || event_loop.run())
            .map_err(WorkerError::Spawn)?;
        Ok(Self { stop, thread: Some(thread) })
    }

    /// Stops the thread and returns the queues (receive, transmit).
    pub(crate) fn stop(mut self) -> Vec<Queue> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Vec<Queue> {
        let _ = self.stop.write(1);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

impl Drop for NetWorker {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

impl EventLoop {
    fn run(mut self) -> Vec<Queue> {
        let mut events = [EpollEvent::default(); 4];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio-net worker: epoll failed, device stops: {e}");
                    break;
                }
            };
            for ev in &events[..n] {
                match Wake::from_token(ev.data()) {
                    Some(Wake::Stop) => {
                        let _ = self.stop.read();
                        return vec![self.rx, self.tx];
                    }
                    Some(Wake::TxKick) => {
                        let _ = self.tx_kick.read();
                        self.drain_tx();
                    }
                    Some(Wake::RxKick) => {
                        let _ = self.rx_kick.read();
                        // Buffers are looked at when frames come; no kicks needed until
                        // they run out again.
                        let _ = self.rx.disable_notification(&self.mem);
                        self.receive();
                    }
                    Some(Wake::Tap) => self.receive(),
                    None => {}
                }
            }
        }
        vec![self.rx, self.tx]
    }

    /// The disable-notify / drain / re-enable loop over the transmit queue (§2.7.10).
    fn drain_tx(&mut self) {
        let mut used = false;
        loop {
            if !crate::worker::queue_is_sane(&self.tx, &self.mem) {
                ironvirt_vm_bus::guest_warn!("virtio-net: transmit queue in an impossible state");
                self.interrupt.device_broken();
                return;
            }
            if self.tx.disable_notification(&self.mem).is_err() {
                break;
            }
            used |= self.handler.process_tx(&mut self.tx, &self.mem);
            match self.tx.enable_notification(&self.mem) {
                Ok(true) => continue,
                _ => break,
            }
        }
        if used {
            self.notify(TX_QUEUE);
        }
    }

    /// Receives frames until the TAP is empty or buffers run out; in the latter case asks
    /// the driver for a kick and stops watching the TAP.
    fn receive(&mut self) {
        let mut used = false;
        loop {
            if !crate::worker::queue_is_sane(&self.rx, &self.mem) {
                ironvirt_vm_bus::guest_warn!("virtio-net: receive queue in an impossible state");
                self.interrupt.device_broken();
                self.watch_tap(false);
                return;
            }
            let (stop, u) = self.handler.process_rx(&mut self.rx, &self.mem);
            used |= u;
            match stop {
                RxStop::NoBuffers => match self.rx.enable_notification(&self.mem) {
                    Ok(true) => {
                        // Buffers arrived while notifications were off.
                        let _ = self.rx.disable_notification(&self.mem);
                        continue;
                    }
                    Ok(false) => self.watch_tap(false),
                    Err(_) => {
                        ironvirt_vm_bus::guest_warn!("virtio-net: receive queue unusable");
                        self.watch_tap(false);
                    }
                },
                // A TAP that fails reads is left alone until the next receive kick.
                RxStop::TapError => self.watch_tap(false),
                RxStop::TapEmpty | RxStop::Budget => self.watch_tap(true),
            }
            break;
        }
        if used {
            self.notify(RX_QUEUE);
        }
    }

    fn watch_tap(&mut self, on: bool) {
        if on == self.tap_watched {
            return;
        }
        let (op, events) = if on {
            (ControlOperation::Add, EventSet::IN)
        } else {
            (ControlOperation::Delete, EventSet::empty())
        };
        let ev = EpollEvent::new(events, Wake::Tap.token());
        match self.epoll.ctl(op, self.tap.as_raw_fd(), ev) {
            Ok(()) => self.tap_watched = on,
            Err(e) => log::error!("virtio-net worker: cannot change the TAP's epoll entry: {e}"),
        }
    }

    fn notify(&mut self, index: u16) {
        let queue = if index == RX_QUEUE { &mut self.rx } else { &mut self.tx };
        if queue.needs_notification(&self.mem).unwrap_or(true) {
            if let Err(e) = self.interrupt.notify_queue(index) {
                ironvirt_vm_bus::guest_warn!("virtio-net: cannot interrupt the driver: {e}");
            }
        }
    }
}
