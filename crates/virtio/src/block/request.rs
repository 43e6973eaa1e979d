//! Request parsing and execution (virtio 1.2 §5.2.6) on the worker thread.
//!
//! A request is a device-readable header `{type: le32, reserved: le32, sector: le64}`, the data
//! (device-readable for writes, device-writable for reads), and a device-writable status byte:
//! the last writable byte of the chain. A chain without a writable byte, or whose writable
//! buffers are not all in guest memory, cannot be answered and completes with 0 bytes used;
//! every other malformed request completes with VIRTIO_BLK_S_IOERR or _UNSUPP.

use std::io::{Read, Write};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::disk::Disk;
use super::{features, limits, Counters, SECTOR_SIZE, SERIAL_LEN};
use crate::worker::{skip_available, QueueHandler};

/// Most data bytes one IN or OUT request may carry (`size_max * seg_max`); longer requests
/// complete with VIRTIO_BLK_S_IOERR.
pub const MAX_REQUEST_BYTES: usize = limits::SIZE_MAX as usize * limits::SEG_MAX as usize;
/// Size of the bounce buffer guest data passes through: the most host memory a request uses.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Alignment of the bounce buffer (enough for O_DIRECT on 4 KiB-sector devices).
const IO_ALIGN: usize = 4096;
/// Zero buffer for write-zeroes on hosts without fallocate.
const ZERO_BYTES: usize = 256 * 1024;
const HEADER_LEN: usize = 16;
const SEGMENT_LEN: usize = 16;

/// Request types (§5.2.6).
pub(crate) mod req_type {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
    pub const DISCARD: u32 = 11;
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status values (§5.2.6).
pub(crate) mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// `flags` bit of a discard/write-zeroes segment (§5.2.6: VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP).
const FLAG_UNMAP: u32 = 1;

/// A heap buffer whose usable part starts on an [`IO_ALIGN`] boundary, for O_DIRECT.
struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let storage = vec![0u8; len + IO_ALIGN];
        // `align_offset` may in theory give up (usize::MAX); the buffer is then merely
        // unaligned, which only O_DIRECT notices (as an I/O error).
        let start = storage.as_ptr().align_offset(IO_ALIGN);
        let start = if start < IO_ALIGN { start } else { 0 };
        Self { storage, start, len }
    }

    fn get(&self, n: usize) -> &[u8] {
        &self.storage[self.start..self.start + n.min(self.len)]
    }

    fn get_mut(&mut self, n: usize) -> &mut [u8] {
        &mut self.storage[self.start..self.start + n.min(self.len)]
    }
}

/// The worker-side half of a block device.
pub(crate) struct BlockHandler {
    disk: Arc<Mutex<Disk>>,
    counters: Arc<Counters>,
    serial: [u8; SERIAL_LEN],
    /// Features the driver accepted.
    negotiated: u64,
    readonly: bool,
    buf: AlignedBuf,
    zeroes: Option<AlignedBuf>,
    /// Set when the queue itself is unusable; the device then ignores kicks until reset.
    broken: bool,
}

/// What a request produced: its status and the data bytes written to the guest.
type Outcome = (u8, usize);

impl BlockHandler {
    pub(crate) fn new(
        disk: Arc<Mutex<Disk>>,
        counters: Arc<Counters>,
        serial: [u8; SERIAL_LEN],
        negotiated: u64,
        readonly: bool,
    ) -> Self {
        Self {
            disk,
            counters,
            serial,
            negotiated,
            readonly,
            buf: AlignedBuf::new(CHUNK_BYTES),
            zeroes: None,
            broken: false,
        }
    }

    fn count(&self, pick: impl Fn(&Counters) -> &AtomicU64, n: u64) {
        Counters::add(pick(&self.counters), n);
    }

    /// Executes one chain; returns the used length to report.
    fn execute(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
        self.count(|c| &c.requests, 1);
        // The status byte is the chain's last writable byte (§5.2.6).
        let mut data_out = match chain.clone().writer(mem) {
            Ok(w) if w.available_bytes() > 0 => w,
            _ => {
                ironvirt_vm_bus::guest_debug!("virtio-blk: request without a writable status byte");
                self.count(|c| &c.malformed, 1);
                return 0;
            }
        };
        let data_len = data_out.available_bytes() - 1;
        let Ok(mut status_out) = data_out.split_at(data_len) else {
            self.count(|c| &c.malformed, 1);
            return 0;
        };
        let (st, written) = match chain.reader(mem) {
            Ok(reader) => self.run(reader, data_out),
            Err(_) => {
                ironvirt_vm_bus::guest_debug!("virtio-blk: request header outside guest memory");
                (status::IOERR, 0)
            }
        };
        match st {
            status::IOERR => self.count(|c| &c.errors, 1),
            status::UNSUPP => self.count(|c| &c.unsupported, 1),
            _ => {}
        }
        if status_out.write_all(&[st]).is_err() {
            self.count(|c| &c.malformed, 1);
            return 0;
        }
        // The chain iterator caps a chain at u32::MAX bytes, so this never saturates.
        u32::try_from(written.saturating_add(1)).unwrap_or(u32::MAX)
    }

    fn run(&mut self, mut reader: Reader<'_>, data_out: Writer<'_>) -> Outcome {
        let mut hdr = [0u8; HEADER_LEN];
        if reader.read_exact(&mut hdr).is_err() {
            ironvirt_vm_bus::guest_debug!("virtio-blk: request header shorter than 16 bytes");
            return (status::IOERR, 0);
        }
        let rtype = u32::from_le_bytes(hdr[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(hdr[8..16].try_into().expect("8 bytes"));
        match rtype {
            req_type::IN => self.read_request(sector, data_out),
            req_type::OUT => (self.write_request(sector, reader), 0),
            req_type::FLUSH if self.negotiated & features::FLUSH != 0 => (self.flush(), 0),
            req_type::GET_ID => self.get_id(data_out),
            req_type::DISCARD if self.negotiated & features::DISCARD != 0 => {
                (self.discard_or_zero(reader, false), 0)
            }
            req_type::WRITE_ZEROES if self.negotiated & features::WRITE_ZEROES != 0 => {
                (self.discard_or_zero(reader, true), 0)
            }
            _ => (status::UNSUPP, 0),
        }
    }

    /// Byte offset of `sector` if `[sector, sector + len)` lies within the disk.
    fn checked_range(&self, capacity: u64, sector: u64, len: u64) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        (offset.checked_add(len)? <= capacity).then_some(offset)
    }

    fn read_request(&mut self, sector: u64, mut data_out: Writer<'_>) -> Outcome {
        let len = data_out.available_bytes();
        if !len.is_multiple_of(SECTOR_SIZE as usize) || len > MAX_REQUEST_BYTES {
            return (status::IOERR, 0);
        }
        let disk = self.disk.lock().unwrap_or_else(|e| e.into_inner());
        let Some(offset) = self.checked_range(disk.capacity_bytes(), sector, len as u64) else {
            return (status::IOERR, 0);
        };
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(CHUNK_BYTES);
            let chunk = self.buf.get_mut(n);
            if let Err(e) = disk.read(chunk, offset + done as u64) {
                ironvirt_vm_bus::guest_warn!("virtio-blk: read at byte {offset} failed: {e}");
                return (status::IOERR, done);
            }
            if data_out.write_all(chunk).is_err() {
                return (status::IOERR, data_out.bytes_written());
            }
            done += n;
        }
        self.count(|c| &c.reads, 1);
        self.count(|c| &c.bytes_read, len as u64);
        (status::OK, len)
    }

    fn write_request(&mut self, sector: u64, mut data_in: Reader<'_>) -> u8 {
        if self.readonly {
            return status::IOERR; // §5.2.6.2: and MUST NOT write any data
        }
        let len = data_in.available_bytes();
        if !len.is_multiple_of(SECTOR_SIZE as usize) || len > MAX_REQUEST_BYTES {
            return status::IOERR;
        }
        let disk = self.disk.lock().unwrap_or_else(|e| e.into_inner());
        let Some(offset) = self.checked_range(disk.capacity_bytes(), sector, len as u64) else {
            return status::IOERR;
        };
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(CHUNK_BYTES);
            let chunk = self.buf.get_mut(n);
            if data_in.read_exact(chunk).is_err() {
                return status::IOERR;
            }
            if let Err(e) = disk.write(chunk, offset + done as u64) {
                ironvirt_vm_bus::guest_warn!("virtio-blk: write at byte {offset} failed: {e}");
                return status::IOERR;
            }
            done += n;
        }
        drop(disk);
        self.count(|c| &c.writes, 1);
        self.count(|c| &c.bytes_written, len as u64);
        self.write_through()
    }

    /// Without VIRTIO_BLK_F_FLUSH the driver cannot flush, so the device is write-through
    /// (§5.2.5): writes are durable before they complete.
    fn write_through(&mut self) -> u8 {
        if self.negotiated & features::FLUSH != 0 {
            return status::OK;
        }
        self.sync()
    }

    fn sync(&mut self) -> u8 {
        let disk = self.disk.lock().unwrap_or_else(|e| e.into_inner());
        self.count(|c| &c.host_syncs, 1);
        match disk.sync() {
            Ok(()) => status::OK,
            Err(e) => {
                ironvirt_vm_bus::guest_warn!("virtio-blk: sync failed: {e}");
                status::IOERR
            }
        }
    }

    fn flush(&mut self) -> u8 {
        let st = self.sync();
        if st == status::OK {
            self.count(|c| &c.flushes, 1);
        }
        st
    }

    fn get_id(&mut self, mut data_out: Writer<'_>) -> Outcome {
        let n = data_out.available_bytes().min(SERIAL_LEN);
        match data_out.write_all(&self.serial[..n]) {
            Ok(()) => (status::OK, n),
            Err(_) => (status::IOERR, data_out.bytes_written()),
        }
    }

    /// DISCARD (`zero` false) or WRITE_ZEROES (`zero` true): a list of 16-byte segments
    /// `{sector: le64, num_sectors: le32, flags: le32}`, all checked before any is executed.
    fn discard_or_zero(&mut self, mut reader: Reader<'_>, zero: bool) -> u8 {
        if self.readonly {
            return status::IOERR;
        }
        let (max_seg, max_sectors) = if zero {
            (limits::MAX_WRITE_ZEROES_SEG, limits::MAX_WRITE_ZEROES_SECTORS)
        } else {
            (limits::MAX_DISCARD_SEG, limits::MAX_DISCARD_SECTORS)
        };
        let len = reader.available_bytes();
        if len == 0 || !len.is_multiple_of(SEGMENT_LEN) {
            return status::IOERR;
        }
        if len / SEGMENT_LEN > max_seg as usize {
            return status::UNSUPP;
        }
        let mut disk = self.disk.lock().unwrap_or_else(|e| e.into_inner());
        let capacity = disk.capacity_bytes();
        let mut segments = Vec::with_capacity(len / SEGMENT_LEN);
        for _ in 0..len / SEGMENT_LEN {
            let mut seg = [0u8; SEGMENT_LEN];
            if reader.read_exact(&mut seg).is_err() {
                return status::IOERR;
            }
            let sector = u64::from_le_bytes(seg[0..8].try_into().expect("8 bytes"));
            let num = u32::from_le_bytes(seg[8..12].try_into().expect("4 bytes"));
            let flags = u32::from_le_bytes(seg[12..16].try_into().expect("4 bytes"));
            // §5.2.6.2: unknown flags, and unmap on a discard, are unsupported.
            if flags & !FLAG_UNMAP != 0 || (!zero && flags & FLAG_UNMAP != 0) {
                return status::UNSUPP;
            }
            if num > max_sectors {
                return status::IOERR;
            }
            let bytes = u64::from(num) * SECTOR_SIZE;
            let Some(offset) = self.checked_range(capacity, sector, bytes) else {
                return status::IOERR;
            };
            segments.push((offset, bytes, flags & FLAG_UNMAP != 0));
        }
        for (offset, bytes, unmap) in segments {
            let result = if zero {
                let zeroes = self.zeroes.get_or_insert_with(|| AlignedBuf::new(ZERO_BYTES));
                disk.write_zeroes(offset, bytes, unmap, zeroes.get(ZERO_BYTES))
            } else {
                disk.discard(offset, bytes)
            };
            if let Err(e) = result {
                ironvirt_vm_bus::guest_warn!("virtio-blk: discard/write-zeroes failed: {e}");
                return status::IOERR;
            }
        }
        drop(disk);
        if zero {
            self.count(|c| &c.write_zeroes, 1);
            self.write_through()
        } else {
            self.count(|c| &c.discards, 1);
            status::OK
        }
    }
}

impl QueueHandler for BlockHandler {
    fn is_broken(&self) -> bool {
        self.broken
    }

    fn process(&mut self, _index: u16, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        if self.broken {
            skip_available(queue, mem);
            return false;
        }
        let mut used = false;
        loop {
            let chain = match queue.iter(mem) {
                Ok(mut avail) => avail.next(),
                Err(e) => {
                    // E.g. the avail index ran more than a queue size ahead: nothing in the ring
                    // can be trusted any more.
                    ironvirt_vm_bus::guest_warn!("virtio-blk: queue unusable, device stops: {e}");
                    self.broken = true;
                    break;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let len = self.execute(chain, mem);
            if let Err(e) = queue.add_used(mem, head, len) {
                ironvirt_vm_bus::guest_warn!("virtio-blk: used ring unusable, device stops: {e}");
                self.broken = true;
                break;
            }
            used = true;
        }
        if self.broken {
            skip_available(queue, mem);
        }
        used
    }
}
