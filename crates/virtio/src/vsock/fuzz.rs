//! The vsock packet path driven by arbitrary bytes: shared by the cargo-fuzz target
//! `vsock_packet` and the stable test that replays its corpus.
//!
//! Input: one byte of global settings (bit 0: EVENT_IDX; bits 1-3: rx buffers to post; bit 4:
//! make the first rx buffer too small for a header), then up to 8 records of
//! `[flags, payload_len/16, 44 header bytes, payload]` (short input is zero-padded). Record
//! flags: bit 0 splits the packet over two descriptors; bits 1-5 force src_cid to the guest,
//! dst_cid to the host, type to STREAM, the ports to the live host connection, and `len` to
//! the payload length (so random bytes reach the deeper states); bit 6 makes the descriptor
//! hostile (outside RAM or u32::MAX long); bit 7 makes the last descriptor chain to itself.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EpollEvent;

use super::muxer::Muxer;
use super::packet::{HDR_LEN, HOST_CID, TYPE_STREAM};

const GUEST_CID: u64 = 3;
const QSIZE: u16 = 16;
const TX_RING: u64 = 0x0;
const RX_RING: u64 = 0x1000;
const TX_DATA: u64 = 0x10000;
const RX_DATA: u64 = 0x40000;
const SLOT: u64 = 0x2000;
const HOST_PEER_PORT: u32 = 1234;
/// The host-side port the muxer gives its first host-initiated connection.
const HOST_LOCAL_PORT: u32 = 1 << 30;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// A split virtqueue laid out at `base` in `mem`, filled by the "driver" side here.
struct Ring {
    base: u64,
    avail: u16,
}

impl Ring {
    fn queue(&self, event_idx: bool) -> Option<Queue> {
        let mut q = Queue::new(QSIZE).ok()?;
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(self.base);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.base + 0x100);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.base + 0x200);
        q.set_used_ring_address(lo, hi);
        q.set_event_idx(event_idx);
        q.set_ready(true);
        Some(q)
    }

    fn desc(&self, mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        let _ = mem.write_slice(&d, GuestAddress(self.base + u64::from(i % QSIZE) * 16));
    }

    fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.base + 0x104 + u64::from(self.avail % QSIZE) * 2;
        let _ = mem.write_obj(head % QSIZE, GuestAddress(slot));
        self.avail = self.avail.wrapping_add(1);
        let _ = mem.write_obj(self.avail, GuestAddress(self.base + 0x102));
    }
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (a, b) = data.split_at(n.min(data.len()));
    *data = b;
    a
}

/// Runs one fuzz input through tx parsing and rx generation. Never panics on any input.
pub fn fuzz_one(mut data: &[u8]) {
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]) else {
        return;
    };
    let global = take(&mut data, 1).first().copied().unwrap_or(0);
    let event_idx = global & 1 != 0;
    let mut tx = Ring { base: TX_RING, avail: 0 };
    let mut rx = Ring { base: RX_RING, avail: 0 };
    let (Some(mut txq), Some(mut rxq)) = (tx.queue(event_idx), rx.queue(event_idx)) else {
        return;
    };
    let Ok(mut muxer) =
        Muxer::new(GUEST_CID, Path::new("/nonexistent/ironvirt-fuzz.sock"), None, Arc::default())
    else {
        return;
    };
    // A host client already past its CONNECT line, with data waiting for the guest.
    let Ok((mut host, dev)) = UnixStream::pair() else { return };
    let _ = host.write_all(&[0x5a; 300]);
    let _ = muxer.attach_host_client(dev, HOST_PEER_PORT);

    for rec in 0..8u16 {
        if data.is_empty() {
            break;
        }
        let flags = take(&mut data, 1).first().copied().unwrap_or(0);
        let plen = usize::from(take(&mut data, 1).first().copied().unwrap_or(0)) * 16;
        let mut pkt = vec![0u8; HDR_LEN + plen];
        let src = take(&mut data, HDR_LEN + plen);
        pkt[..src.len()].copy_from_slice(src);
        if flags & 2 != 0 {
            pkt[0..8].copy_from_slice(&GUEST_CID.to_le_bytes());
        }
        if flags & 4 != 0 {
            pkt[8..16].copy_from_slice(&HOST_CID.to_le_bytes());
        }
        if flags & 8 != 0 {
            pkt[28..30].copy_from_slice(&TYPE_STREAM.to_le_bytes());
        }
        if flags & 16 != 0 {
            pkt[16..20].copy_from_slice(&HOST_PEER_PORT.to_le_bytes());
            pkt[20..24].copy_from_slice(&HOST_LOCAL_PORT.to_le_bytes());
        }
        if flags & 32 != 0 {
            pkt[24..28].copy_from_slice(&(plen as u32).to_le_bytes());
        }
        let addr = TX_DATA + u64::from(rec) * SLOT;
        let _ = mem.write_slice(&pkt, GuestAddress(addr));
        let (head, second) = (rec * 2, rec * 2 + 1);
        let total = pkt.len() as u32;
        let (mut addr0, mut len0) = (addr, total);
        if flags & 64 != 0 {
            if plen % 32 == 0 {
                addr0 = 0xffff_ffff_0000;
            } else {
                len0 = u32::MAX;
            }
        }
        let looped = flags & 128 != 0;
        if flags & 1 != 0 {
            let cut = 20.min(len0);
            tx.desc(&mem, head, addr0, cut, F_NEXT, second);
            let next = if looped { second } else { 0 };
            let f = if looped { F_NEXT } else { 0 };
            tx.desc(&mem, second, addr0.wrapping_add(u64::from(cut)), len0 - cut, f, next);
        } else {
            let (f, next) = if looped { (F_NEXT, head) } else { (0, 0) };
            tx.desc(&mem, head, addr0, len0, f, next);
        }
        tx.publish(&mem, head);
    }

    let buffers = (global >> 1) & 7;
    for i in 0..u16::from(buffers) {
        let len = if i == 0 && global & 16 != 0 { 40 } else { 4096 + HDR_LEN as u32 };
        rx.desc(&mem, i, RX_DATA + u64::from(i) * SLOT, len, F_WRITE, 0);
        rx.publish(&mem, i);
    }

    let mut events = vec![EpollEvent::default(); 8];
    for _ in 0..3 {
        muxer.process_tx(&mut txq, &mem);
        if let Ok(n) = muxer.wait(0, &mut events) {
            for ev in events.iter().take(n) {
                muxer.handle_event(ev.data(), ev.event_set());
            }
        }
        muxer.process_rx(&mut rxq, &mem);
    }
    drop(host);
}
