//! virtio-vsock (virtio 1.2 §5.10): stream sockets between the guest and host processes, with
//! the host side as Unix sockets in the Firecracker convention:
//!
//! - **Host to guest**: a host process connects to `socket` and writes `CONNECT <port>\n`; the
//!   device sends the guest an OP_REQUEST for `<port>`. When the guest answers OP_RESPONSE the
//!   host reads `OK <hostport>\n` and the stream carries data; when it answers OP_RST (nothing
//!   listens), or not at all within 10 s, the host connection is closed.
//! - **Guest to host**: a guest connection to host (CID 2) port P becomes a connection to the
//!   Unix socket `<socket>_P`; if nothing listens there the guest gets OP_RST.
//!
//! Three queues (§5.10.2): rx (device to driver), tx (driver to device) and event (unused:
//! we never migrate). Flow control is credit based both ways (§5.10.6.3); host data is only
//! read from a host stream while the guest has credit for it, so a guest that stops reading
//! stalls the host writer instead of growing our memory. The device runs on its own thread
//! with an epoll loop over the queue kicks, the listening socket and every connection.

mod conn;
mod fuzz;
mod muxer;
pub mod packet;
#[cfg(test)]
mod tests;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EpollEvent;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::worker::queue_is_sane;
use crate::{
    device_type, ActivateError, Activation, VirtioDevice, VirtioInterrupt, WorkerError,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
};
#[doc(hidden)]
pub use fuzz::fuzz_one;
pub use muxer::{MAX_CONNECTIONS, MAX_HANDSHAKES};

/// VIRTIO_VSOCK_F_STREAM (§5.10.3): stream sockets.
pub const VIRTIO_VSOCK_F_STREAM: u64 = 1 << 0;

const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
const QUEUE_SIZES: [u16; 3] = [256, 256, 64];
const STOP_TOKEN: u64 = 0;
/// Queue `i`'s kick is token `1 + i`.
const FIRST_QUEUE_TOKEN: u64 = 1;

/// `--vsock cid=N,socket=PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 ..= 2^32 - 2; 0-2 are reserved, §5.10.4).
    pub cid: u64,
    /// Host-side Unix socket the device listens on; `<socket>_<port>` are where guest
    /// connections go.
    pub socket: PathBuf,
}

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The CID is reserved or does not fit the 32 bits Linux uses.
    #[error("Guest CID {cid} is invalid (use 3..=4294967294)")]
    InvalidCid {
        /// The CID given.
        cid: u64,
    },
    /// The host socket could not be created.
    #[error("Cannot listen on the vsock socket {}", .path.display())]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Default)]
pub(crate) struct Counters {
    /// tx packets handled.
    packets: AtomicU64,
    /// Payload bytes both ways.
    bytes: AtomicU64,
}

/// The vsock device.
pub struct Vsock {
    cid: u64,
    socket: PathBuf,
    listener: UnixListener,
    worker: Option<VsockWorker>,
    counters: Arc<Counters>,
}

impl Vsock {
    /// Creates the device and starts listening on `cfg.socket` (a stale socket file there is
    /// replaced, any other file is an error). Host clients may connect at once; they are
    /// served once the guest driver is up.
    pub fn new(cfg: &VsockConfig) -> Result<Vsock, VsockError> {
        if !(3..=u64::from(u32::MAX - 1)).contains(&cfg.cid) {
            return Err(VsockError::InvalidCid { cid: cfg.cid });
        }
        let listen_err = |source| VsockError::Listen { path: cfg.socket.clone(), source };
        let listener = ironvirt_sys_util::socket::bind_unix_listener(&cfg.socket, 0o600)
            .map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        Ok(Vsock {
            cid: cfg.cid,
            socket: cfg.socket.clone(),
            listener,
            worker: None,
            counters: Arc::default(),
        })
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// The host socket the device listens on.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.reset();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | VIRTIO_VSOCK_F_STREAM
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // §5.10.4: struct virtio_vsock_config { le64 guest_cid; }
        crate::read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // guest_cid is read-only.
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        if a.queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                expected: QUEUE_SIZES.len(),
                got: a.queues.len(),
            });
        }
        self.reset();
        let setup = |e| ActivateError::Worker(WorkerError::Setup(e));
        let listener = self.listener.try_clone().map_err(setup)?;
        let muxer =
            muxer::Muxer::new(self.cid, &self.socket, Some(listener), self.counters.clone())
                .map_err(setup)?;
        self.worker = Some(VsockWorker::start(muxer, a.mem, a.queues, a.interrupt)?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
    }

    fn counters(&self) -> (u64, u64) {
        (self.counters.packets.load(Ordering::Relaxed), self.counters.bytes.load(Ordering::Relaxed))
    }
}

/// The device thread; stopping it closes every connection (a reset guest forgets them too).
struct VsockWorker {
    thread: crate::worker::StoppableThread<()>,
}

impl VsockWorker {
    fn start(
        muxer: muxer::Muxer,
        mem: GuestMemoryMmap,
        queues: Vec<(Queue, EventFd)>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<Self, WorkerError> {
        let stop = EventFd::new(EFD_NONBLOCK).map_err(WorkerError::Setup)?;
        muxer.add_fd(stop.as_raw_fd(), STOP_TOKEN).map_err(WorkerError::Setup)?;
        for (i, (_, kick)) in queues.iter().enumerate() {
            muxer
                .add_fd(kick.as_raw_fd(), FIRST_QUEUE_TOKEN + i as u64)
                .map_err(WorkerError::Setup)?;
        }
        let stop_clone = stop.try_clone().map_err(WorkerError::Setup)?;
        let thread = std::thread::Builder::new()
            .name("virtio-vsock".into())
            .spawn(move || run(muxer, mem, queues, interrupt.as_ref(), &stop_clone))
            .map_err(WorkerError::Spawn)?;
        Ok(VsockWorker { thread: crate::worker::StoppableThread::new(stop, thread) })
    }

    fn stop(self) {
        self.thread.stop();
    }
}

fn notify(queue: &mut Queue, index: usize, mem: &GuestMemoryMmap, irq: &dyn VirtioInterrupt) {
    if queue.needs_notification(mem).unwrap_or(true) {
        if let Err(e) = irq.notify_queue(index as u16) {
            ironvirt_vm_bus::guest_warn!("vsock: cannot interrupt the driver: {e}");
        }
    }
}

/// Drains the tx queue with the disable / process / re-enable loop (§2.7.10). `Err` when the
/// driver broke the queue (avail index beyond the ring): the device must stop.
fn drain_tx(
    muxer: &mut muxer::Muxer,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
) -> Result<bool, Broken> {
    let mut used = false;
    loop {
        if !queue_is_sane(queue, mem) {
            return Err(Broken);
        }
        if queue.disable_notification(mem).is_err() {
            break;
        }
        let progress = muxer.process_tx(queue, mem);
        used |= progress;
        match queue.enable_notification(mem) {
            Ok(true) if progress => continue,
            _ => break,
        }
    }
    Ok(used)
}

/// The driver put a queue in a state no correct driver can (§2.7.13.3 invariants).
struct Broken;

/// Stops the device for good (until reset): its connections close with the muxer.
fn broken(irq: &dyn VirtioInterrupt) {
    ironvirt_vm_bus::guest_warn!(
        "virtio-vsock: a queue's avail index ran beyond the ring; device needs reset"
    );
    irq.device_broken();
}

fn run(
    mut muxer: muxer::Muxer,
    mem: GuestMemoryMmap,
    mut queues: Vec<(Queue, EventFd)>,
    irq: &dyn VirtioInterrupt,
    stop: &EventFd,
) {
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        let n = match muxer.wait(muxer.timeout_ms(Instant::now()), &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("virtio-vsock: epoll failed, device stops: {e}");
                return;
            }
        };
        let mut tx_kicked = false;
        for ev in &events[..n] {
            let token = ev.data();
            if token == STOP_TOKEN {
                let _ = stop.read();
                return;
            }
            let queue_index = token.wrapping_sub(FIRST_QUEUE_TOKEN);
            if let Some((_, kick)) = queues.get(queue_index as usize) {
                let _ = kick.read();
                tx_kicked |= queue_index as usize == TX_QUEUE;
                continue; // an rx kick only means "buffers available": handled below
            }
            muxer.handle_event(token, ev.event_set());
        }
        if tx_kicked {
            if let Some((q, _)) = queues.get_mut(TX_QUEUE) {
                match drain_tx(&mut muxer, q, &mem) {
                    Ok(true) => notify(q, TX_QUEUE, &mem, irq),
                    Ok(false) => {}
                    Err(Broken) => return broken(irq),
                }
            }
        }
        muxer.expire(Instant::now());
        if let Some((q, _)) = queues.get_mut(RX_QUEUE) {
            if muxer.has_rx_work() && !queue_is_sane(q, &mem) {
                return broken(irq);
            }
            if muxer.process_rx(q, &mem) {
                notify(q, RX_QUEUE, &mem, irq);
            }
        }
    }
}
