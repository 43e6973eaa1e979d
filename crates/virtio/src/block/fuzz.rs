//! The request path driven by arbitrary bytes: the cargo-fuzz target `virtio_blk` calls
//! [`fuzz_one`], and a unit test replays the saved corpus through it on stable.
//!
//! Input layout: byte 0 holds options (bit 0 EVENT_IDX, bit 1 FLUSH negotiated, bit 2
//! read-only, bit 3 DISCARD and WRITE_ZEROES negotiated); the next 256 bytes are the 16-entry
//! descriptor table, then 2 bytes of avail index and 32 bytes of avail ring; everything after
//! is copied into guest memory at [`DATA_ADDR`]. Guest memory is 64 KiB; the disk is a 64 KiB
//! memfd.

use std::fs::File;
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::disk::Disk;
use super::request::BlockHandler;
use super::{features, Counters, SERIAL_LEN};
use crate::VirtioInterrupt;

/// Entries in the fuzzed queue.
pub(crate) const QUEUE_SIZE: u16 = 16;
/// Guest memory size.
const MEM_SIZE: usize = 0x10000;
const DESC_ADDR: u64 = 0;
const AVAIL_ADDR: u64 = 0x100;
const USED_ADDR: u64 = 0x200;
/// Where the input's payload lands in guest memory.
pub(crate) const DATA_ADDR: u64 = 0x1000;
const DISK_BYTES: u64 = 0x10000;
/// Length of the fixed part of an input.
pub(crate) const HEADER_BYTES: usize = 1 + 256 + 2 + 32;

struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn notify_queue(&self, _queue: u16) -> std::io::Result<()> {
        Ok(())
    }
    fn notify_config(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs the virtio-blk request handler over a queue built from `data` (see the module docs).
/// Never panics on any input; host resources it needs (memory, memfd) failing is a no-op.
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) {
    let Some(mem) = guest_memory(data) else { return };
    let opts = data.first().copied().unwrap_or(0);
    let Some(mut queue) = queue(opts & 1 != 0, &mem) else { return };
    let Some(disk) = memfd_disk() else { return };
    let mut negotiated = 0;
    if opts & 2 != 0 {
        negotiated |= features::FLUSH;
    }
    if opts & 8 != 0 {
        negotiated |= features::DISCARD | features::WRITE_ZEROES;
    }
    let mut handler = BlockHandler::new(
        Arc::new(Mutex::new(disk)),
        Arc::new(Counters::default()),
        *b"fuzz-serial\0\0\0\0\0\0\0\0\0",
        negotiated,
        opts & 4 != 0,
    );
    debug_assert_eq!(SERIAL_LEN, 20);
    crate::worker::drain(0, &mut queue, &mem, &mut handler, &NoInterrupt);
    // A second kick with nothing new must be harmless too.
    crate::worker::drain(0, &mut queue, &mem, &mut handler, &NoInterrupt);
}

fn guest_memory(data: &[u8]) -> Option<GuestMemoryMmap> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).ok()?;
    let fixed = data.get(1..).unwrap_or(&[]);
    let desc = &fixed[..fixed.len().min(256)];
    mem.write_slice(desc, GuestAddress(DESC_ADDR)).ok()?;
    let rest = fixed.get(256..).unwrap_or(&[]);
    // avail ring: flags (0), idx, ring[16].
    let avail = &rest[..rest.len().min(34)];
    mem.write_slice(avail, GuestAddress(AVAIL_ADDR + 2)).ok()?;
    let payload = data.get(HEADER_BYTES..).unwrap_or(&[]);
    let room = MEM_SIZE - DATA_ADDR as usize;
    mem.write_slice(&payload[..payload.len().min(room)], GuestAddress(DATA_ADDR)).ok()?;
    Some(mem)
}

fn queue(event_idx: bool, mem: &GuestMemoryMmap) -> Option<Queue> {
    let mut q = Queue::new(QUEUE_SIZE).ok()?;
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(DESC_ADDR as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL_ADDR as u32), Some(0));
    q.set_used_ring_address(Some(USED_ADDR as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q.is_valid(mem).then_some(q)
}

fn memfd_disk() -> Option<Disk> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(c"ironvirt-blk-fuzz", MFdFlags::MFD_CLOEXEC).ok()?;
    let file = File::from(fd);
    file.set_len(DISK_BYTES).ok()?;
    Disk::from_raw_file(file).ok()
}

/// Builds an input for [`fuzz_one`] (tests and seed generation).
#[cfg(test)]
pub(crate) fn encode(
    opts: u8,
    descs: &[(u64, u32, u16, u16)],
    avail: &[u16],
    payload: &[(u64, &[u8])],
) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_BYTES];
    out[0] = opts;
    for (i, &(addr, len, flags, next)) in descs.iter().take(QUEUE_SIZE as usize).enumerate() {
        let d = &mut out[1 + i * 16..1 + (i + 1) * 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
    }
    out[257..259].copy_from_slice(&(avail.len() as u16).to_le_bytes());
    for (i, head) in avail.iter().take(QUEUE_SIZE as usize).enumerate() {
        out[259 + i * 2..261 + i * 2].copy_from_slice(&head.to_le_bytes());
    }
    for &(addr, bytes) in payload {
        let at = HEADER_BYTES + (addr - DATA_ADDR) as usize;
        if out.len() < at + bytes.len() {
            out.resize(at + bytes.len(), 0);
        }
        out[at..at + bytes.len()].copy_from_slice(bytes);
    }
    out
}
