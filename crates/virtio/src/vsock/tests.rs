//! vsock tests: a mock driver writes packets into guest memory and reads what the device
//! puts in its rx buffers; the host side is real Unix sockets in a temporary directory.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::conn::CONN_BUF;
use super::muxer::{Muxer, MAX_CONNECTIONS};
use super::packet::*;
use super::*;

const CID: u64 = 3;
const QSIZE: u16 = 256;
const SLOTS: u64 = 64;
const SLOT: u64 = 0x11000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const HOST_PORT0: u32 = 1 << 30;

/// A split virtqueue in test memory, driven from the driver's side.
struct Ring {
    base: u64,
    avail: u16,
    used_seen: u16,
    next_desc: u16,
}

impl Ring {
    fn new(base: u64) -> Self {
        Ring { base, avail: 0, used_seen: 0, next_desc: 0 }
    }
    fn avail_addr(&self) -> u64 {
        self.base + 16 * u64::from(QSIZE)
    }
    fn used_addr(&self) -> u64 {
        (self.avail_addr() + 6 + 2 * u64::from(QSIZE) + 3) & !3
    }
    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_desc_table_address(Some(self.base as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail_addr() as u32), Some(0));
        q.set_used_ring_address(Some(self.used_addr() as u32), Some(0));
        q.set_ready(true);
        q
    }
    /// Writes a chain of (addr, len, flags) descriptors, linked in order; returns the head.
    fn add(&mut self, mem: &GuestMemoryMmap, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | F_NEXT };
            self.write_desc(mem, idx, addr, len, flags, (idx + 1) % QSIZE);
        }
        self.next_desc = (head + descs.len() as u16) % QSIZE;
        self.publish(mem, head);
        head
    }
    fn write_desc(&self, mem: &GuestMemoryMmap, idx: u16, addr: u64, len: u32, f: u16, next: u16) {
        let a = self.base + 16 * u64::from(idx);
        mem.write_obj(addr, GuestAddress(a)).unwrap();
        mem.write_obj(len, GuestAddress(a + 8)).unwrap();
        mem.write_obj(f, GuestAddress(a + 12)).unwrap();
        mem.write_obj(next, GuestAddress(a + 14)).unwrap();
    }
    fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail_addr() + 4 + 2 * u64::from(self.avail % QSIZE);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail = self.avail.wrapping_add(1);
        mem.write_obj(self.avail, GuestAddress(self.avail_addr() + 2)).unwrap();
    }
    /// New used elements (id, len).
    fn used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used_addr() + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = self.used_addr() + 4 + 8 * u64::from(self.used_seen % QSIZE);
            let id: u32 = mem.read_obj(GuestAddress(e)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

fn hdr(op: Op, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op: op as u16,
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

type Packet = (Header, Vec<u8>);

struct Harness {
    mem: GuestMemoryMmap,
    dir: tempfile::TempDir,
    sock: PathBuf,
    muxer: Muxer,
    tx: Ring,
    rx: Ring,
    txq: Queue,
    rxq: Queue,
    tx_slot: u64,
    rx_slot: u64,
    rx_bufs: HashMap<u32, u64>,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("v.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let muxer = Muxer::new(CID, &sock, Some(listener), Arc::default()).unwrap();
        let mem = mem();
        let (tx, rx) = (Ring::new(0), Ring::new(0x8000));
        let (txq, rxq) = (tx.queue(), rx.queue());
        let mut h = Harness {
            mem,
            dir,
            sock,
            muxer,
            tx,
            rx,
            txq,
            rxq,
            tx_slot: 0,
            rx_slot: 0,
            rx_bufs: HashMap::new(),
        };
        h.post_rx(16, 4096 + HDR_LEN as u32);
        h
    }

    fn path(&self, port: u32) -> PathBuf {
        self.dir.path().join(format!("v.sock_{port}"))
    }

    fn tx_addr(&mut self) -> u64 {
        self.tx_slot += 1;
        0x10_0000 + (self.tx_slot % SLOTS) * SLOT
    }

    /// Sends a raw chain of descriptors through the tx queue.
    fn send_chain(&mut self, descs: &[(u64, u32, u16)]) -> Vec<(u32, u32)> {
        self.tx.add(&self.mem, descs);
        self.muxer.process_tx(&mut self.txq, &self.mem);
        self.tx.used(&self.mem)
    }

    fn send(&mut self, h: Header, payload: &[u8]) {
        let addr = self.tx_addr();
        self.mem.write_slice(&h.encode(), GuestAddress(addr)).unwrap();
        self.mem.write_slice(payload, GuestAddress(addr + HDR_LEN as u64)).unwrap();
        let used = self.send_chain(&[(addr, (HDR_LEN + payload.len()) as u32, 0)]);
        assert_eq!(used.len(), 1, "every tx chain is returned");
    }

    fn post_rx(&mut self, n: usize, len: u32) {
        for _ in 0..n {
            self.rx_slot += 1;
            let addr = 0x80_0000 + (self.rx_slot % SLOTS) * SLOT;
            let head = self.rx.add(&self.mem, &[(addr, len, F_WRITE)]);
            self.rx_bufs.insert(u32::from(head), addr);
        }
    }

    /// Runs host events and rx generation until quiet; returns the packets the guest got
    /// (and gives it fresh rx buffers for the ones used).
    fn pump(&mut self) -> Vec<Packet> {
        let mut got = Vec::new();
        let mut events = vec![EpollEvent::default(); 32];
        let mut quiet = 0;
        for _ in 0..100 {
            let n = self.muxer.wait(0, &mut events).unwrap();
            for ev in &events[..n] {
                self.muxer.handle_event(ev.data(), ev.event_set());
            }
            self.muxer.process_rx(&mut self.rxq, &self.mem);
            let used = self.rx.used(&self.mem);
            for &(id, len) in &used {
                let addr = self.rx_bufs[&id];
                let mut b = vec![0u8; len as usize];
                self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                if len as usize >= HDR_LEN {
                    let h = Header::decode(b[..HDR_LEN].try_into().unwrap());
                    assert_eq!(
                        h.len as usize,
                        len as usize - HDR_LEN,
                        "used length covers the packet"
                    );
                    got.push((h, b[HDR_LEN..].to_vec()));
                }
            }
            self.post_rx(used.len(), 4096 + HDR_LEN as u32);
            // Unix socket writes are readable at once: two idle rounds mean quiet.
            quiet = if n == 0 && used.is_empty() { quiet + 1 } else { 0 };
            if quiet == 2 {
                break;
            }
        }
        got
    }

    /// A host client connects to guest `port`; returns it and the host port the guest saw.
    fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut host = UnixStream::connect(&self.sock).unwrap();
        host.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let got = self.pump();
        assert_eq!(got.len(), 1, "{got:?}");
        let (req, _) = got[0];
        assert_eq!(req.op(), Some(Op::Request));
        assert_eq!((req.src_cid, req.dst_cid, req.dst_port), (HOST_CID, CID, port));
        (host, req.src_port)
    }

    fn established_host_conn(&mut self, guest_port: u32) -> (UnixStream, u32) {
        let (mut host, local) = self.host_connect(guest_port);
        self.send(hdr(Op::Response, guest_port, local), &[]);
        let mut line = [0u8; 64];
        let n = host.read(&mut line).unwrap();
        assert_eq!(&line[..n], format!("OK {local}\n").as_bytes());
        (host, local)
    }
}

/// Whether the device closed `s` (end-of-file, or a reset when it had unread bytes).
fn closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn ops(got: &[Packet]) -> Vec<Op> {
    got.iter().filter_map(|(h, _)| h.op()).collect()
}

fn data(got: &[Packet]) -> Vec<u8> {
    got.iter().filter(|(h, _)| h.op() == Some(Op::Rw)).flat_map(|(_, d)| d.clone()).collect()
}

#[test]
fn host_connect_sends_request_and_answers_ok_after_response() {
    let mut h = Harness::new();
    let (_host, local) = h.established_host_conn(5000);
    assert_eq!(local, HOST_PORT0);
    assert!(h.muxer.conn(local, 5000).is_some());
}

#[test]
fn host_connect_refused_by_guest_closes_the_host_stream() {
    let mut h = Harness::new();
    let (mut host, local) = h.host_connect(5001);
    h.send(hdr(Op::Rst, 5001, local), &[]);
    assert!(closed(&mut host), "the host sees end-of-file, no OK");
    assert_eq!(h.muxer.connection_count(), 0);
}

#[test]
fn data_flows_both_ways_on_a_host_initiated_connection() {
    let mut h = Harness::new();
    let (mut host, local) = h.established_host_conn(5000);
    host.write_all(b"hello guest").unwrap();
    let got = h.pump();
    assert_eq!(data(&got), b"hello guest");
    let (rw, _) = got[0];
    assert_eq!((rw.src_port, rw.dst_port, rw.buf_alloc), (local, 5000, CONN_BUF));

    let mut m = hdr(Op::Rw, 5000, local);
    m.len = 11;
    h.send(m, b"hello host!");
    let mut b = [0u8; 11];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello host!");
}

#[test]
fn bytes_sent_behind_the_connect_line_reach_the_guest() {
    let mut h = Harness::new();
    let mut host = UnixStream::connect(&h.sock).unwrap();
    host.write_all(b"CONNECT 77\nearly").unwrap();
    let got = h.pump();
    assert_eq!(ops(&got), [Op::Request]);
    h.send(hdr(Op::Response, 77, HOST_PORT0), &[]);
    assert_eq!(data(&h.pump()), b"early");
}

#[test]
fn guest_connects_to_the_per_port_socket_and_echoes() {
    let mut h = Harness::new();
    let listener = UnixListener::bind(h.path(6000)).unwrap();
    h.send(hdr(Op::Request, 1025, 6000), &[]);
    let got = h.pump();
    assert_eq!(ops(&got), [Op::Response]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (6000, 1025));
    let (mut peer, _) = listener.accept().unwrap();

    let mut m = hdr(Op::Rw, 1025, 6000);
    m.len = 4;
    h.send(m, b"ping");
    let mut b = [0u8; 4];
    peer.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    peer.write_all(b"pong").unwrap();
    assert_eq!(data(&h.pump()), b"pong");
}

#[test]
fn unknown_ports_and_connections_get_rst() {
    let mut h = Harness::new();
    h.send(hdr(Op::Request, 1025, 7000), &[]); // nothing listens on v.sock_7000
    let got = h.pump();
    assert_eq!(ops(&got), [Op::Rst]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port, got[0].0.dst_cid), (7000, 1025, CID));
    let mut m = hdr(Op::Rw, 1026, 7001);
    m.len = 1;
    h.send(m, b"x");
    assert_eq!(ops(&h.pump()), [Op::Rst]);
    h.send(hdr(Op::Rst, 1027, 7002), &[]);
    assert!(h.pump().is_empty(), "a reset is never answered with a reset");
}

#[test]
fn credit_exhaustion_stops_reading_the_host_socket() {
    let mut h = Harness::new();
    let (mut host, local) = h.host_connect(5000);
    let mut resp = hdr(Op::Response, 5000, local);
    resp.buf_alloc = 4096;
    h.send(resp, &[]);
    let mut ok = [0u8; 32];
    let _ = host.read(&mut ok).unwrap();
    host.write_all(&[7u8; 64 * 1024]).unwrap();
    let got = h.pump();
    assert_eq!(data(&got).len(), 4096, "exactly the guest's credit");
    assert_eq!(ops(&got).last(), Some(&Op::CreditRequest));
    let c = h.muxer.conn(local, 5000).unwrap();
    assert_eq!(c.registered, Some(EventSet::empty()), "the host stream is not polled for input");
    assert!(h.pump().is_empty(), "nothing more without credit");

    let mut upd = hdr(Op::CreditUpdate, 5000, local);
    upd.buf_alloc = 4096;
    upd.fwd_cnt = 4096;
    h.send(upd, &[]);
    assert_eq!(data(&h.pump()).len(), 4096, "credit returned: the next 4 KiB");
}

#[test]
fn guest_data_beyond_our_credit_resets_the_connection() {
    let mut h = Harness::new();
    let (_host, local) = h.established_host_conn(5000);
    // The host never reads: fill its socket and our buffer, then overrun the credit.
    let chunk = vec![1u8; MAX_PKT_PAYLOAD as usize];
    let mut sent = 0usize;
    while h.muxer.conn(local, 5000).is_some() && sent < 8 * 1024 * 1024 {
        let mut m = hdr(Op::Rw, 5000, local);
        m.len = chunk.len() as u32;
        h.send(m, &chunk);
        sent += chunk.len();
    }
    assert!(h.muxer.conn(local, 5000).is_none(), "reset after overrunning the credit");
    let c = ops(&h.pump());
    assert!(c.contains(&Op::Rst), "{c:?}");
    assert!(sent > CONN_BUF as usize, "the buffer took a full credit first");
}

#[test]
fn credit_updates_are_sent_as_data_is_forwarded() {
    let mut h = Harness::new();
    let (mut host, local) = h.established_host_conn(5000);
    let chunk = vec![2u8; 32 * 1024];
    let reader = std::thread::spawn(move || {
        let mut all = vec![0u8; 256 * 1024];
        host.read_exact(&mut all).unwrap();
    });
    for _ in 0..8 {
        let mut m = hdr(Op::Rw, 5000, local);
        m.len = chunk.len() as u32;
        h.send(m, &chunk);
        h.pump();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() && Instant::now() < deadline {
        h.pump(); // flushes what the host socket did not take at once
        std::thread::sleep(Duration::from_millis(1));
    }
    reader.join().unwrap();
    let got = h.pump();
    let mut fwd = got.iter().map(|(p, _)| p.fwd_cnt).max().unwrap_or(0);
    if fwd == 0 {
        h.send(hdr(Op::CreditRequest, 5000, local), &[]);
        let got = h.pump();
        assert_eq!(ops(&got), [Op::CreditUpdate]);
        fwd = got[0].0.fwd_cnt;
    }
    assert!(fwd >= CONN_BUF / 2, "the guest learns about forwarded bytes (fwd_cnt {fwd})");
}

#[test]
fn malformed_packets_are_dropped_or_reset_and_the_device_goes_on() {
    let mut h = Harness::new();
    // Short header.
    let a = h.tx_addr();
    assert_eq!(h.send_chain(&[(a, 20, 0)]), [(0, 0)]);
    // Wrong type, unknown op, oversized len, len beyond the buffer, another CID.
    let mut bad = Vec::new();
    let mut t = hdr(Op::Request, 1, 6000);
    t.type_ = 2;
    bad.push(t);
    let mut o = hdr(Op::Request, 2, 6000);
    o.op = 99;
    bad.push(o);
    let mut l = hdr(Op::Rw, 3, 6000);
    l.len = MAX_PKT_PAYLOAD + 1;
    bad.push(l);
    let mut l2 = hdr(Op::Rw, 4, 6000);
    l2.len = 100; // but no payload follows
    bad.push(l2);
    let mut d = hdr(Op::Request, 5, 6000);
    d.dst_cid = 5;
    bad.push(d);
    for p in &bad {
        h.send(*p, &[]);
    }
    let got = h.pump();
    assert_eq!(ops(&got), vec![Op::Rst; 5]);
    assert_eq!(got[4].0.src_cid, 5, "the RST comes from the CID the guest addressed");
    // Spoofed source CID: dropped silently.
    let mut s = hdr(Op::Request, 6, 6000);
    s.src_cid = 9;
    h.send(s, &[]);
    assert!(h.pump().is_empty());
    // The device still works.
    let _l = UnixListener::bind(h.path(6000)).unwrap();
    h.send(hdr(Op::Request, 7, 6000), &[]);
    assert_eq!(ops(&h.pump()), [Op::Response]);
}

#[test]
fn hostile_descriptor_chains_complete_without_stopping_the_device() {
    let mut h = Harness::new();
    let a = h.tx_addr();
    let good = hdr(Op::Request, 1, 9999);
    h.mem.write_slice(&good.encode(), GuestAddress(a)).unwrap();
    // Outside RAM, u32::MAX long, zero length, device-writable only.
    assert_eq!(h.send_chain(&[(0xffff_ffff_0000, 44, 0)]).len(), 1);
    assert_eq!(h.send_chain(&[(a, u32::MAX, 0)]).len(), 1);
    assert_eq!(h.send_chain(&[(a, 0, 0)]).len(), 1);
    assert_eq!(h.send_chain(&[(a, 44, F_WRITE)]).len(), 1);
    // A descriptor loop: the last descriptor chains back to the head.
    let head = h.tx.next_desc;
    h.tx.write_desc(&h.mem, head, a, 20, F_NEXT, head + 1);
    h.tx.write_desc(&h.mem, head + 1, a + 20, 24, F_NEXT, head);
    h.tx.next_desc += 2;
    h.tx.publish(&h.mem, head);
    h.muxer.process_tx(&mut h.txq, &h.mem);
    assert_eq!(h.tx.used(&h.mem).len(), 1);
    // A chain longer than the queue (QSIZE + 1 one-byte descriptors, wrapping onto itself).
    let descs: Vec<(u64, u32, u16)> = (0..=QSIZE).map(|i| (a + u64::from(i % 44), 1, 0)).collect();
    assert_eq!(h.send_chain(&descs).len(), 1);
    // A misaligned indirect table (length not a multiple of 16).
    assert_eq!(h.send_chain(&[(0x20_0000, 17, F_INDIRECT)]).len(), 1);
    // None of these got through as a request, and the host port 9999 saw nothing.
    let got = h.pump();
    assert!(got.iter().all(|(p, _)| p.op() == Some(Op::Rst)), "{got:?}");
    // The avail index running ahead of the ring: nothing is processed, nothing panics.
    let ahead = h.tx.avail.wrapping_add(QSIZE + 5);
    h.mem.write_obj(ahead, GuestAddress(h.tx.avail_addr() + 2)).unwrap();
    assert!(!h.muxer.process_tx(&mut h.txq, &h.mem));
}

#[test]
fn rx_buffers_too_small_or_outside_ram_are_consumed_and_the_packet_waits() {
    let mut h = Harness::new();
    let mut small = Harness::new();
    small.rx = Ring::new(0x8000);
    small.rxq = small.rx.queue();
    small.rx.add(&small.mem, &[(0x80_0000, 10, F_WRITE)]);
    small.rx.add(&small.mem, &[(0xffff_ffff_0000, 100, F_WRITE)]);
    small.send(hdr(Op::Request, 1, 7000), &[]);
    small.muxer.process_rx(&mut small.rxq, &small.mem);
    assert_eq!(small.rx.used(&small.mem), [(0, 0), (1, 0)]);
    small.rx.add(&small.mem, &[(0x80_0000, 44, F_WRITE)]);
    small.muxer.process_rx(&mut small.rxq, &small.mem);
    assert_eq!(small.rx.used(&small.mem), [(2, 44)], "the RST went into the next good buffer");
    drop(h.pump());
}

#[test]
fn guest_shutdown_half_closes_then_resets_the_host_stream() {
    let mut h = Harness::new();
    let (mut host, local) = h.established_host_conn(5000);
    let mut s = hdr(Op::Shutdown, 5000, local);
    s.flags = SHUTDOWN_SEND;
    h.send(s, &[]);
    let mut b = [0u8; 4];
    assert_eq!(host.read(&mut b).unwrap(), 0, "the host reads end-of-file");
    host.write_all(b"late").unwrap();
    assert_eq!(data(&h.pump()), b"late", "the other direction still works");
    s.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    h.send(s, &[]);
    assert_eq!(ops(&h.pump()), [Op::Rst]);
    assert_eq!(h.muxer.connection_count(), 0);
}

#[test]
fn host_close_is_announced_with_shutdown() {
    let mut h = Harness::new();
    let (host, local) = h.established_host_conn(5000);
    drop(host);
    let got = h.pump();
    assert_eq!(ops(&got), [Op::Shutdown]);
    assert_eq!(got[0].0.flags, SHUTDOWN_SEND | SHUTDOWN_RCV);
    h.send(hdr(Op::Rst, 5000, local), &[]);
    assert_eq!(h.muxer.connection_count(), 0);
}

#[test]
fn unanswered_requests_and_silent_host_clients_time_out() {
    let mut h = Harness::new();
    let (mut host, _) = h.host_connect(5000);
    let mut silent = UnixStream::connect(&h.sock).unwrap();
    h.pump();
    h.muxer.expire(Instant::now() + Duration::from_secs(60));
    assert!(closed(&mut host));
    assert!(closed(&mut silent));
    assert_eq!(ops(&h.pump()), [Op::Rst]);
}

#[test]
fn connections_are_bounded() {
    let mut h = Harness::new();
    let listener = UnixListener::bind(h.path(6000)).unwrap();
    let mut peers = Vec::new();
    for port in 0..MAX_CONNECTIONS as u32 {
        h.send(hdr(Op::Request, 2000 + port, 6000), &[]);
        peers.push(listener.accept().unwrap());
        h.pump();
    }
    assert_eq!(h.muxer.connection_count(), MAX_CONNECTIONS);
    h.send(hdr(Op::Request, 1999, 6000), &[]);
    assert_eq!(ops(&h.pump()), [Op::Rst]);
    let mut host = UnixStream::connect(&h.sock).unwrap();
    host.write_all(b"CONNECT 1\n").unwrap();
    h.pump();
    assert!(closed(&mut host), "host clients beyond the limit are closed");
}

#[test]
fn bad_host_connect_lines_close_the_client() {
    let mut h = Harness::new();
    for line in [&b"HELLO\n"[..], b"CONNECT x\n", &[b'9'; 100][..]] {
        let mut host = UnixStream::connect(&h.sock).unwrap();
        host.write_all(line).unwrap();
        assert!(h.pump().is_empty());
        assert!(closed(&mut host));
    }
}

#[derive(Default)]
struct CountIrq(AtomicUsize);
impl VirtioInterrupt for CountIrq {
    fn notify_queue(&self, _: u16) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn notify_config(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn device_rejects_reserved_cids_and_reports_its_cid() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("v.sock");
    assert!(matches!(
        Vsock::new(&VsockConfig { cid: 2, socket: socket.clone() }),
        Err(VsockError::InvalidCid { cid: 2 })
    ));
    let dev = Vsock::new(&VsockConfig { cid: 42, socket: socket.clone() }).unwrap();
    let mut cfg = [0u8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 42);
    assert_eq!(dev.device_type(), 19);
    assert_ne!(dev.features() & VIRTIO_VSOCK_F_STREAM, 0);
    drop(dev);
    assert!(!socket.exists(), "the socket file goes with the device");
}

#[test]
fn worker_thread_serves_a_host_connection_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("v.sock");
    let mut dev = Vsock::new(&VsockConfig { cid: CID, socket: socket.clone() }).unwrap();
    let mem = mem();
    let (mut tx, mut rx, evq) = (Ring::new(0), Ring::new(0x8000), Ring::new(0x10000));
    rx.add(&mem, &[(0x80_0000, 4096 + 44, F_WRITE)]);
    let kicks: Vec<EventFd> = (0..3).map(|_| EventFd::new(EFD_NONBLOCK).unwrap()).collect();
    let irq = Arc::new(CountIrq::default());
    let queues = vec![
        (rx.queue(), kicks[0].try_clone().unwrap()),
        (tx.queue(), kicks[1].try_clone().unwrap()),
        (evq.queue(), kicks[2].try_clone().unwrap()),
    ];
    dev.activate(Activation { mem: mem.clone(), queues, interrupt: irq.clone(), features: 0 })
        .unwrap();
    let mut host = UnixStream::connect(&socket).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    host.write_all(b"CONNECT 5000\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let used = loop {
        let u = rx.used(&mem);
        if !u.is_empty() || Instant::now() > deadline {
            break u;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(used.len(), 1, "the guest got the OP_REQUEST");
    assert!(irq.0.load(Ordering::Relaxed) >= 1);
    let mut b = [0u8; HDR_LEN];
    mem.read_slice(&mut b, GuestAddress(0x80_0000)).unwrap();
    let req = Header::decode(&b);
    assert_eq!((req.op(), req.dst_port), (Some(Op::Request), 5000));
    mem.write_slice(&hdr(Op::Response, 5000, req.src_port).encode(), GuestAddress(0x10_0000))
        .unwrap();
    tx.add(&mem, &[(0x10_0000, 44, 0)]);
    kicks[1].write(1).unwrap();
    let mut line = [0u8; 32];
    let n = host.read(&mut line).unwrap();
    assert_eq!(&line[..n], format!("OK {}\n", req.src_port).as_bytes());
    dev.reset();
    assert_eq!(host.read(&mut line).unwrap(), 0, "reset closes host connections");
}

#[test]
fn fuzz_corpus_replays_without_panics() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/vsock_packet");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/vsock_packet exists") {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        fuzz_one(&data);
        n += 1;
    }
    assert!(n >= 4, "seed corpus present");
    fuzz_one(&[]);
    fuzz_one(&[0xff; 3000]);
}

#[test]
fn avail_index_beyond_the_ring_stops_the_tx_drain() {
    let mut h = Harness::new();
    let ahead = h.tx.avail.wrapping_add(QSIZE + 1);
    h.mem.write_obj(ahead, GuestAddress(h.tx.avail_addr() + 2)).unwrap();
    assert!(drain_tx(&mut h.muxer, &mut h.txq, &h.mem).is_err(), "the device must stop");
}
