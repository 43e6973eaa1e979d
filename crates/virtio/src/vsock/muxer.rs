//! The vsock connection multiplexer: the table of connections between guest ports and host
//! Unix streams, the host listener and its `CONNECT <port>` handshakes, tx packet handling
//! (guest to host) and rx packet generation (host to guest). Owns the epoll instance the worker
//! waits on, since connection fds come and go with the traffic.
//!
//! Memory is bounded: at most [`MAX_CONNECTIONS`] connections with [`CONN_BUF`] bytes of
//! unforwarded guest data each, [`MAX_HANDSHAKES`] host clients still sending their
//! `CONNECT` line, [`MAX_STRAY_RST`] queued resets. Host data is read straight into the guest's
//! rx buffers, only as much as the guest's credit allows; with no credit the host stream is
//! simply not read.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ironvirt_vm_bus::{guest_debug, guest_warn};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::conn::{pending, Conn, ConnKey, State, CONN_BUF};
use super::packet::{
    Header, Op, HDR_LEN, HOST_CID, MAX_PKT_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::Counters;

/// Most connections at once (host- and guest-initiated together).
pub const MAX_CONNECTIONS: usize = 256;
/// Most accepted host clients that have not finished their `CONNECT <port>` line.
pub const MAX_HANDSHAKES: usize = 32;
/// Most resets queued for the guest that belong to no live connection.
pub const MAX_STRAY_RST: usize = 256;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_LINE: usize = 32;
/// How long a host client may take to send its `CONNECT` line.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the guest may take to answer an OP_REQUEST.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection waits for the guest's RST or for its data to drain.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Where host-initiated connections take their host-side ports from.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// epoll tokens below this are the worker's (stop, queue kicks); the listener and
/// connections get tokens from here up.
pub(super) const LISTENER_TOKEN: u64 = 8;
const FIRST_DYNAMIC_TOKEN: u64 = 16;

struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

enum Target {
    Handshake,
    Conn(ConnKey),
}

pub(super) struct Muxer {
    guest_cid: u64,
    /// `<socket>`: guest connections to host port P go to `<socket>_P`.
    socket: PathBuf,
    listener: Option<UnixListener>,
    epoll: Epoll,
    conns: HashMap<ConnKey, Conn>,
    handshakes: HashMap<u64, Handshake>,
    targets: HashMap<u64, Target>,
    next_token: u64,
    next_local_port: u32,
    rx_ready: VecDeque<ConnKey>,
    stray: VecDeque<Header>,
    scratch: Vec<u8>,
    counters: std::sync::Arc<Counters>,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted
}

impl Muxer {
    pub fn new(
        guest_cid: u64,
        socket: &Path,
        listener: Option<UnixListener>,
        counters: std::sync::Arc<Counters>,
    ) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        if let Some(l) = &listener {
            l.set_nonblocking(true)?;
            epoll.ctl(
                ControlOperation::Add,
                l.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
            )?;
        }
        Ok(Muxer {
            guest_cid,
            socket: socket.to_path_buf(),
            listener,
            epoll,
            conns: HashMap::new(),
            handshakes: HashMap::new(),
            targets: HashMap::new(),
            next_token: FIRST_DYNAMIC_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
            rx_ready: VecDeque::new(),
            stray: VecDeque::new(),
            scratch: vec![0; MAX_PKT_PAYLOAD as usize],
            counters,
        })
    }

    /// Adds a worker-owned fd (stop or kick eventfd) under `token` (< [`LISTENER_TOKEN`]).
    pub fn add_fd(&self, fd: i32, token: u64) -> io::Result<()> {
        self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token))
    }

    /// Waits for events; `timeout_ms` -1 waits forever.
    pub fn wait(&self, timeout_ms: i32, events: &mut [EpollEvent]) -> io::Result<usize> {
        self.epoll.wait(timeout_ms, events)
    }

    /// Milliseconds until the next deadline (handshake, connect, close), -1 for none.
    pub fn timeout_ms(&self, now: Instant) -> i32 {
        let next = self
            .conns
            .values()
            .filter_map(|c| c.deadline)
            .chain(self.handshakes.values().map(|h| h.deadline))
            .min();
        match next {
            None => -1,
            Some(d) => d.saturating_duration_since(now).as_millis().clamp(1, 60_000) as i32,
        }
    }

    #[cfg(test)]
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    #[cfg(test)]
    pub fn conn(&self, local_port: u32, peer_port: u32) -> Option<&Conn> {
        self.conns.get(&ConnKey { local_port, peer_port })
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token = self.next_token.checked_add(1).unwrap_or(FIRST_DYNAMIC_TOKEN);
        t
    }

    // ---- host side events ----

    /// Handles an epoll event for the listener or a connection.
    pub fn handle_event(&mut self, token: u64, events: EventSet) {
        if token == LISTENER_TOKEN {
            self.accept();
            return;
        }
        match self.targets.get(&token) {
            Some(Target::Handshake) => self.handshake_readable(token),
            Some(Target::Conn(key)) => {
                let key = *key;
                self.conn_event(key, events);
            }
            None => {}
        }
    }

    fn accept(&mut self) {
        let Some(listener) = &self.listener else { return };
        let mut accepted = Vec::new();
        for _ in 0..MAX_HANDSHAKES {
            match listener.accept() {
                Ok((s, _)) => accepted.push(s),
                Err(e) if would_block(&e) => break,
                Err(e) => {
                    log::warn!("vsock: accept on the host socket failed: {e}");
                    break;
                }
            }
        }
        for stream in accepted {
            if self.handshakes.len() >= MAX_HANDSHAKES || self.conns.len() >= MAX_CONNECTIONS {
                log::warn!("vsock: too many connections; closing a new host client");
                continue; // dropping `stream` closes it
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.token();
            let ev = EpollEvent::new(EventSet::IN, token);
            if self.epoll.ctl(ControlOperation::Add, stream.as_raw_fd(), ev).is_err() {
                continue;
            }
            let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
            self.handshakes.insert(token, Handshake { stream, line: Vec::new(), deadline });
            self.targets.insert(token, Target::Handshake);
        }
    }

    /// Reads the `CONNECT <port>\n` line one byte at a time, so that data the client sends
    /// right behind it stays in the socket for the guest.
    fn handshake_readable(&mut self, token: u64) {
        let Some(hs) = self.handshakes.get_mut(&token) else { return };
        let mut byte = [0u8; 1];
        let done = loop {
            match hs.stream.read(&mut byte) {
                Ok(0) => break Err(()),
                Ok(_) if byte[0] == b'\n' => break Ok(()),
                Ok(_) if hs.line.len() >= MAX_LINE => break Err(()),
                Ok(_) => hs.line.push(byte[0]),
                Err(e) if would_block(&e) => return,
                Err(_) => break Err(()),
            }
        };
        let Some(hs) = self.handshakes.remove(&token) else { return };
        self.targets.remove(&token);
        let port = done.ok().and_then(|()| parse_connect(&hs.line));
        let Some(port) = port else {
            log::debug!("vsock: host client sent no valid CONNECT line; closing it");
            return; // dropping the stream deregisters and closes it
        };
        self.host_connect(hs.stream, token, port);
    }

    /// Adds an already-accepted host client that asked for guest port `peer_port` (for the
    /// fuzzer, which has no listener).
    pub fn attach_host_client(&mut self, stream: UnixStream, peer_port: u32) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let token = self.token();
        let ev = EpollEvent::new(EventSet::IN, token);
        self.epoll.ctl(ControlOperation::Add, stream.as_raw_fd(), ev)?;
        self.host_connect(stream, token, peer_port);
        Ok(())
    }

    fn host_connect(&mut self, stream: UnixStream, token: u64, peer_port: u32) {
        if self.conns.len() >= MAX_CONNECTIONS {
            return;
        }
        let Some(local_port) = self.alloc_local_port() else { return };
        let key = ConnKey { local_port, peer_port };
        let mut conn = Conn::new(stream, token, State::HostConnecting);
        conn.registered = Some(EventSet::IN); // as the handshake left it
        conn.pending = pending::REQUEST;
        conn.deadline = Some(Instant::now() + CONNECT_TIMEOUT);
        self.conns.insert(key, conn);
        self.targets.insert(token, Target::Conn(key));
        self.sync(key);
    }

    fn alloc_local_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let p = self.next_local_port;
            self.next_local_port = p.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.local_port == p) {
                return Some(p);
            }
        }
        None
    }

    fn conn_event(&mut self, key: ConnKey, events: EventSet) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        if events.contains(EventSet::ERROR) {
            self.reset(key);
            return;
        }
        if events.contains(EventSet::IN) {
            c.data_ready = true;
        }
        if events.contains(EventSet::HANG_UP) {
            c.hup = true;
            if c.state == State::HostConnecting || c.host_eof || c.guest_shut_rcv {
                self.reset(key);
                return;
            }
            c.data_ready = true; // read what is left, up to end-of-file
        }
        if events.contains(EventSet::OUT) {
            self.flush(key);
        }
        self.sync(key);
    }

    /// Writes buffered guest data to the host stream.
    fn flush(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        while !c.tx_buf.is_empty() {
            let (front, _) = c.tx_buf.as_slices();
            match c.stream.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    c.tx_buf.drain(..n);
                    c.forwarded(n);
                }
                Err(e) if would_block(&e) => break,
                Err(_) => {
                    self.reset(key);
                    return;
                }
            }
        }
        self.after_tx_progress(key);
    }

    /// Shuts the host stream's write side once the guest said it sends no more and the
    /// buffer is empty; ends the connection once the guest is done both ways.
    fn after_tx_progress(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        if !c.tx_buf.is_empty() {
            return;
        }
        if c.guest_shut_send && !c.host_write_shut {
            c.host_write_shut = true;
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
        if c.guest_shut_send && c.guest_shut_rcv {
            self.reset(key); // §5.10.6.4: a full shutdown is answered with RST
        }
    }

    /// Brings the epoll registration in line with the connection's state and queues it for
    /// rx if it owes the guest a packet.
    fn sync(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        let want = c.interest();
        if want != c.registered {
            let fd = c.stream.as_raw_fd();
            let res = match (c.registered, want) {
                (None, Some(ev)) => {
                    self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(ev, c.token))
                }
                (Some(_), Some(ev)) => {
                    self.epoll.ctl(ControlOperation::Modify, fd, EpollEvent::new(ev, c.token))
                }
                (Some(_), None) => {
                    self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default())
                }
                (None, None) => Ok(()),
            };
            if let Err(e) = res {
                log::warn!("vsock: cannot update epoll for a connection: {e}");
                self.reset(key);
                return;
            }
            c.registered = want;
        }
        if c.has_rx_work() && !c.in_rx_queue {
            c.in_rx_queue = true;
            self.rx_ready.push_back(key);
        }
    }

    /// Drops a connection without telling the guest (it reset it, or it never existed).
    fn remove(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.remove(&key) {
            self.targets.remove(&c.token);
            // Closing the stream removes it from epoll.
        }
    }

    /// Drops a connection and queues an OP_RST for the guest.
    fn reset(&mut self, key: ConnKey) {
        self.remove(key);
        self.queue_rst(HOST_CID, key.local_port, key.peer_port);
    }

    fn queue_rst(&mut self, src_cid: u64, src_port: u32, dst_port: u32) {
        if self.stray.len() >= MAX_STRAY_RST {
            guest_debug!("vsock: reset queue full; dropping a reset");
            return;
        }
        self.stray.push_back(Header {
            src_cid,
            dst_cid: self.guest_cid,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op: Op::Rst as u16,
            ..Header::default()
        });
    }

    /// Ends connections and handshakes whose deadline passed.
    pub fn expire(&mut self, now: Instant) {
        self.handshakes.retain(|_, h| h.deadline > now);
        let targets = &mut self.targets;
        let handshakes = &self.handshakes;
        targets.retain(|t, tg| !matches!(tg, Target::Handshake) || handshakes.contains_key(t));
        let late: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            self.reset(key);
        }
    }

    // ---- tx: guest to host ----

    /// Handles every available tx chain; returns whether any was used.
    pub fn process_tx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            self.tx_chain(chain, mem);
            if queue.add_used(mem, head, 0).is_err() {
                guest_warn!("vsock: cannot return a tx buffer");
            }
            used = true;
        }
        used
    }

    fn tx_chain(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) {
        let Ok(mut reader) = chain.reader(mem) else {
            guest_debug!("vsock: malformed tx descriptor chain");
            return;
        };
        let mut hb = [0u8; HDR_LEN];
        if reader.available_bytes() < HDR_LEN || reader.read_exact(&mut hb).is_err() {
            guest_debug!("vsock: tx packet shorter than its header");
            return;
        }
        let hdr = Header::decode(&hb);
        self.counters.packets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if hdr.src_cid != self.guest_cid {
            guest_debug!(
                "vsock: tx packet from CID {} (the guest is {})",
                hdr.src_cid,
                self.guest_cid
            );
            return;
        }
        let op = hdr.op();
        let key = ConnKey { local_port: hdr.dst_port, peer_port: hdr.src_port };
        let bad_len = hdr.len > MAX_PKT_PAYLOAD || hdr.len as usize > reader.available_bytes();
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM || op.is_none() || bad_len {
            guest_debug!("vsock: invalid tx packet {hdr:?}");
            if op == Some(Op::Rst) {
                return; // never answer a reset with a reset
            }
            if self.conns.contains_key(&key) && hdr.dst_cid == HOST_CID {
                self.reset(key);
            } else {
                // The reset comes from where the guest sent the packet, so that a connect
                // to another CID fails at once instead of timing out.
                self.queue_rst(hdr.dst_cid, hdr.dst_port, hdr.src_port);
            }
            return;
        }
        let Some(op) = op else { return };
        if !self.conns.contains_key(&key) {
            match op {
                Op::Request => self.guest_connect(key, &hdr),
                Op::Rst => {}
                _ => self.queue_rst(HOST_CID, key.local_port, key.peer_port),
            }
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else { return };
        c.update_peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
        match op {
            Op::Request => self.reset(key),
            Op::Response => self.guest_accepted(key),
            Op::Rst => self.remove(key),
            Op::Shutdown => self.guest_shutdown(key, hdr.flags),
            Op::Rw => self.guest_data(key, hdr.len as usize, &mut reader),
            Op::CreditUpdate => {}
            Op::CreditRequest => c.pending |= pending::CREDIT_UPDATE,
        }
        self.sync(key);
    }

    fn guest_connect(&mut self, key: ConnKey, hdr: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            guest_debug!("vsock: connection limit reached; refusing port {}", key.local_port);
            self.queue_rst(HOST_CID, key.local_port, key.peer_port);
            return;
        }
        let stream = match connect_nonblocking(&port_path(&self.socket, key.local_port)) {
            Ok(s) => s,
            Err(e) => {
                log::debug!("vsock: guest connect to host port {} refused: {e}", key.local_port);
                self.queue_rst(HOST_CID, key.local_port, key.peer_port);
                return;
            }
        };
        let token = self.token();
        let mut conn = Conn::new(stream, token, State::Established);
        conn.update_peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
        conn.pending = pending::RESPONSE;
        self.conns.insert(key, conn);
        self.targets.insert(token, Target::Conn(key));
        self.sync(key);
    }

    fn guest_accepted(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        if c.state != State::HostConnecting {
            self.reset(key);
            return;
        }
        let line = format!("OK {}\n", key.local_port);
        match c.stream.write(line.as_bytes()) {
            Ok(n) if n == line.len() => {
                c.state = State::Established;
                c.deadline = None;
            }
            _ => self.reset(key),
        }
    }

    fn guest_shutdown(&mut self, key: ConnKey, flags: u32) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        c.guest_shut_rcv |= flags & SHUTDOWN_RCV != 0;
        c.guest_shut_send |= flags & SHUTDOWN_SEND != 0;
        if c.state == State::HostConnecting {
            self.reset(key);
            return;
        }
        if c.guest_shut_rcv && c.guest_shut_send && !c.tx_buf.is_empty() {
            c.state = State::Closing; // finish writing what the guest sent, then RST
            c.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
        }
        self.after_tx_progress(key);
    }

    fn guest_data(&mut self, key: ConnKey, len: usize, reader: &mut virtio_queue::Reader<'_>) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        if c.state != State::Established || c.guest_shut_send || len > c.our_free() {
            guest_debug!("vsock: guest data beyond its credit or after shutdown");
            self.reset(key);
            return;
        }
        let Some(buf) = self.scratch.get_mut(..len) else { return };
        if reader.read_exact(buf).is_err() {
            self.reset(key);
            return;
        }
        self.counters.bytes.fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
        let mut written = 0;
        if c.tx_buf.is_empty() {
            loop {
                match c.stream.write(&buf[written..]) {
                    Ok(n) if n > 0 && written + n < len => written += n,
                    Ok(n) => {
                        written += n;
                        break;
                    }
                    Err(e) if would_block(&e) => break,
                    Err(_) => {
                        self.reset(key);
                        return;
                    }
                }
            }
            c.forwarded(written);
        }
        c.tx_buf.extend(&buf[written..]);
    }

    // ---- rx: host to guest ----

    /// Whether anything waits for an rx buffer.
    pub fn has_rx_work(&self) -> bool {
        !self.stray.is_empty() || !self.rx_ready.is_empty()
    }

    /// Fills rx buffers while packets are owed to the guest; returns whether any was used.
    /// Leaves rx notifications enabled, so that a guest that refills its buffers kicks us.
    pub fn process_rx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        let mut owed = self.has_rx_work();
        while owed {
            if queue.disable_notification(mem).is_err() {
                break;
            }
            let mut progress = false;
            while owed {
                let Some(chain) = queue.pop_descriptor_chain(mem) else { break };
                progress = true;
                let head = chain.head_index();
                match self.fill_rx(chain, mem) {
                    Some(len) => {
                        if queue.add_used(mem, head, len).is_err() {
                            guest_warn!("vsock: cannot return an rx buffer");
                        }
                        used = true;
                        owed = self.has_rx_work();
                    }
                    None => {
                        queue.go_to_previous_position();
                        owed = false; // nothing could be produced after all
                    }
                }
            }
            if !progress || !crate::worker::queue_is_sane(queue, mem) {
                owed = false; // never loop on a queue that gives nothing
            }
            match queue.enable_notification(mem) {
                Ok(true) if owed => continue, // buffers arrived while we filled the last
                _ => break,
            }
        }
        used
    }

    /// Writes the next packet owed into `chain`; `None` when nothing was owed after all (the
    /// chain goes back to the ring).
    fn fill_rx(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Option<u32> {
        let Ok(mut writer) = chain.writer(mem) else {
            guest_debug!("vsock: malformed rx descriptor chain");
            return Some(0);
        };
        let cap = writer.available_bytes();
        if cap < HDR_LEN {
            guest_debug!("vsock: rx buffer of {cap} bytes cannot hold a header");
            return Some(0);
        }
        let max_payload = (cap - HDR_LEN).min(MAX_PKT_PAYLOAD as usize);
        let (hdr, payload_len) = self.next_rx_packet(max_payload)?;
        let mut hdr = hdr;
        hdr.len = payload_len as u32;
        let ok = writer.write_all(&hdr.encode()).is_ok()
            && writer.write_all(self.scratch.get(..payload_len).unwrap_or_default()).is_ok();
        if !ok {
            // The chain was checked against guest memory; only a racing guest gets here.
            guest_debug!("vsock: cannot write an rx packet");
        }
        Some(writer.bytes_written() as u32)
    }

    /// Picks the next packet: stray resets first, then one packet per ready connection in
    /// turn. Data is read into `scratch`; returns the header and payload length.
    fn next_rx_packet(&mut self, max_payload: usize) -> Option<(Header, usize)> {
        if let Some(h) = self.stray.pop_front() {
            return Some((h, 0));
        }
        for _ in 0..self.rx_ready.len() {
            let key = self.rx_ready.pop_front()?;
            let Some(c) = self.conns.get_mut(&key) else { continue };
            c.in_rx_queue = false;
            let packet = self.conn_packet(key, max_payload);
            self.sync(key);
            if let Some(p) = packet {
                return Some(p);
            }
            if let Some(h) = self.stray.pop_front() {
                return Some((h, 0)); // the connection failed while reading: its RST
            }
        }
        None
    }

    fn header(&self, key: ConnKey, c: &Conn, op: Op) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.local_port,
            dst_port: key.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op as u16,
            flags: 0,
            buf_alloc: CONN_BUF,
            fwd_cnt: c.fwd_cnt,
        }
    }

    fn conn_packet(&mut self, key: ConnKey, max_payload: usize) -> Option<(Header, usize)> {
        let c = self.conns.get(&key)?;
        let control = [
            (pending::REQUEST, Op::Request),
            (pending::RESPONSE, Op::Response),
            (pending::SHUTDOWN, Op::Shutdown),
            (pending::CREDIT_UPDATE, Op::CreditUpdate),
            (pending::CREDIT_REQUEST, Op::CreditRequest),
        ];
        if let Some(&(bit, op)) = control.iter().find(|(bit, _)| c.pending & bit != 0) {
            let mut h = self.header(key, c, op);
            if op == Op::Shutdown {
                h.flags = c.shutdown_flags;
            }
            let c = self.conns.get_mut(&key)?;
            c.pending &= !bit;
            c.last_fwd_cnt_sent = c.fwd_cnt;
            return Some((h, 0));
        }
        if !c.has_rx_work() {
            return None;
        }
        if c.peer_free() == 0 {
            let h = self.header(key, c, Op::CreditRequest);
            self.conns.get_mut(&key)?.credit_requested = true;
            return Some((h, 0));
        }
        self.read_host(key, max_payload)
    }

    /// Reads host data for one RW packet, bounded by the guest's credit and buffer.
    fn read_host(&mut self, key: ConnKey, max_payload: usize) -> Option<(Header, usize)> {
        let c = self.conns.get_mut(&key)?;
        let want = max_payload.min(c.peer_free() as usize);
        let buf = self.scratch.get_mut(..want)?;
        match c.stream.read(buf) {
            Ok(0) => {
                c.data_ready = false;
                c.host_eof = true;
                let mut flags = SHUTDOWN_SEND;
                if c.hup {
                    // The host closed entirely: the guest's data has nowhere to go either.
                    flags |= SHUTDOWN_RCV;
                    c.state = State::Closing;
                    c.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                }
                c.shutdown_flags = flags;
                let c = self.conns.get(&key)?;
                let mut h = self.header(key, c, Op::Shutdown);
                h.flags = flags;
                Some((h, 0))
            }
            Ok(n) => {
                c.rx_cnt = c.rx_cnt.wrapping_add(n as u32);
                c.last_fwd_cnt_sent = c.fwd_cnt;
                self.counters.bytes.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                let c = self.conns.get(&key)?;
                Some((self.header(key, c, Op::Rw), n))
            }
            Err(e) if would_block(&e) => {
                c.data_ready = false;
                None
            }
            Err(_) => {
                self.reset(key);
                None
            }
        }
    }
}

/// `<socket>_<port>`, the host socket a guest connection to `port` goes to.
fn port_path(socket: &Path, port: u32) -> PathBuf {
    let mut s = OsString::from(socket.as_os_str());
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connects without blocking the worker: a host listener whose backlog is full refuses
/// (EAGAIN) instead of stalling every other connection.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

/// Parses `CONNECT <port>` (without the newline; a trailing `\r` is tolerated).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let port = s.strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_parse_strictly() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295\r"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"connect 52"), None);
        assert_eq!(parse_connect(b"CONNECT"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(&[0xff, 0xfe]), None);
    }

    #[test]
    fn port_paths_append_the_port() {
        assert_eq!(port_path(Path::new("/run/v.sock"), 52), PathBuf::from("/run/v.sock_52"));
    }
}
