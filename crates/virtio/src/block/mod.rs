//! virtio-blk (virtio 1.2 §5.2): one request queue over a disk image.
//!
//! Images are raw files, host block devices, or qcow2 v3 (through `imago`, with backing files
//! only when allowed). The format is always given by the user and never probed from the image's
//! content. Every image is opened with an OFD lock (a write lock for writable images, a read
//! lock for read-only images and backing files), so a second VMM cannot open a writable image
//! that is in use. Requests run on the device's worker thread ([`crate::Worker`]), never on a
//! vCPU thread; guest buffers are copied through one bounded, aligned bounce buffer, so a
//! request never makes the host allocate more than [`CHUNK_BYTES`].
//!
//! Layout: `disk` opens images and performs I/O, `request` parses and executes requests,
//! `fuzz` feeds arbitrary bytes through the request path.

mod disk;
mod fuzz;
mod request;
#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::worker::Worker;
use crate::{
    device_type, ActivateError, Activation, VirtioDevice, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};

#[doc(hidden)]
pub use fuzz::fuzz_one;
pub use request::{CHUNK_BYTES, MAX_REQUEST_BYTES};

use disk::Disk;
use request::BlockHandler;

/// Size of a virtio-blk sector: capacities and request sectors count in these (§5.2.4).
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID answer (§5.2.6: VIRTIO_BLK_ID_BYTES).
pub const SERIAL_LEN: usize = 20;
const QUEUE_SIZE: u16 = 256;

/// Feature bits (virtio 1.2 §5.2.3).
pub mod features {
    /// VIRTIO_BLK_F_SIZE_MAX: `size_max` bounds one segment.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// VIRTIO_BLK_F_SEG_MAX: `seg_max` bounds segments per request.
    pub const SEG_MAX: u64 = 1 << 2;
    /// VIRTIO_BLK_F_RO: the disk is read-only.
    pub const RO: u64 = 1 << 5;
    /// VIRTIO_BLK_F_BLK_SIZE: `blk_size` is valid.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// VIRTIO_BLK_F_FLUSH: the FLUSH command is supported (writeback cache).
    pub const FLUSH: u64 = 1 << 9;
    /// VIRTIO_BLK_F_DISCARD: the DISCARD command is supported.
    pub const DISCARD: u64 = 1 << 13;
    /// VIRTIO_BLK_F_WRITE_ZEROES: the WRITE_ZEROES command is supported.
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// Limits advertised in configuration space (§5.2.4) and enforced on requests.
pub mod limits {
    /// `size_max`: most bytes in one data descriptor the driver may use.
    pub const SIZE_MAX: u32 = 256 * 1024;
    /// `seg_max`: most data segments per request (so a request carries at most
    /// `SIZE_MAX * SEG_MAX` = [`super::MAX_REQUEST_BYTES`] bytes).
    pub const SEG_MAX: u32 = 128;
    /// `max_discard_sectors` (128 MiB).
    pub const MAX_DISCARD_SECTORS: u32 = 1 << 18;
    /// `max_discard_seg`.
    pub const MAX_DISCARD_SEG: u32 = 32;
    /// `discard_sector_alignment` (4 KiB, the usual host file system block).
    pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
    /// `max_write_zeroes_sectors` (128 MiB).
    pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 18;
    /// `max_write_zeroes_seg`.
    pub const MAX_WRITE_ZEROES_SEG: u32 = 32;
}

/// Configuration-space offsets (§5.2.4, `struct virtio_blk_config`).
mod cfg {
    pub const CAPACITY: usize = 0;
    pub const SIZE_MAX: usize = 8;
    pub const SEG_MAX: usize = 12;
    pub const BLK_SIZE: usize = 20;
    pub const NUM_QUEUES: usize = 34;
    pub const MAX_DISCARD_SECTORS: usize = 36;
    pub const MAX_DISCARD_SEG: usize = 40;
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
    /// Everything up to and including `unused1[3]`; secure erase and zoned fields read 0.
    pub const LEN: usize = 60;
}

/// Image formats; always given explicitly, never probed from the image's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DiskFormat {
    /// A raw file or host block device.
    #[default]
    Raw,
    /// qcow2 (v2 or v3), optionally with a backing chain.
    Qcow2,
}

/// What `--disk` describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// Image file or block device.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// Open read-only and offer VIRTIO_BLK_F_RO.
    pub readonly: bool,
    /// Bypass the host page cache (O_DIRECT).
    pub direct: bool,
    /// Serial number returned by GET_ID (at most [`SERIAL_LEN`] bytes).
    pub serial: Option<String>,
    /// Open the backing files a qcow2 image names; refused otherwise.
    pub allow_backing: bool,
}

impl BlockConfig {
    /// A writable raw disk at `path` with every option off.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            format: DiskFormat::Raw,
            readonly: false,
            direct: false,
            serial: None,
            allow_backing: false,
        }
    }
}

/// Errors opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image (or a backing file) could not be opened.
    #[error("Cannot open disk image {}", .path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        cause: io::Error,
    },
    /// Another process holds a conflicting OFD lock on the image.
    #[error("Disk image {} is in use by another VMM", .path.display())]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// Taking the OFD lock failed for another reason.
    #[error("Cannot lock disk image {}", .path.display())]
    Lock {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        cause: io::Error,
    },
    /// The size could not be determined.
    #[error("Cannot determine the size of disk image {}", .path.display())]
    Size {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        cause: io::Error,
    },
    /// The image is not a whole number of sectors.
    #[error("Disk image {} is {len} bytes long, not a multiple of {SECTOR_SIZE}", .path.display())]
    Misaligned {
        /// The file.
        path: PathBuf,
        /// Its length (virtual size for qcow2).
        len: u64,
    },
    /// imago refused the qcow2 image.
    #[error("Cannot open qcow2 image {}", .path.display())]
    Qcow2 {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        cause: io::Error,
    },
    /// The qcow2 image has a backing file but backing files were not allowed.
    #[error(
        "Disk image {} has the backing file {backing:?}; backing files are opened only with backing=on",
        .path.display()
    )]
    BackingNotAllowed {
        /// The qcow2 image.
        path: PathBuf,
        /// The backing file name recorded in its header.
        backing: String,
    },
    /// The qcow2 image names a backing file without its format; we never probe formats.
    #[error(
        "Disk image {} names the backing file {backing:?} without a format (recreate it with -F raw|qcow2)",
        .path.display()
    )]
    BackingFormatMissing {
        /// The qcow2 image.
        path: PathBuf,
        /// The backing file name.
        backing: String,
    },
    /// The backing format is neither raw nor qcow2.
    #[error("Disk image {} has backing file {backing:?} in unsupported format {format:?}", .path.display())]
    BackingFormatUnsupported {
        /// The qcow2 image.
        path: PathBuf,
        /// The backing file name.
        backing: String,
        /// The format recorded.
        format: String,
    },
    /// The backing chain is longer than we follow (or loops).
    #[error("Backing chain of disk image {} is deeper than {max} images", .path.display())]
    BackingChainTooDeep {
        /// The top image.
        path: PathBuf,
        /// Most images followed.
        max: usize,
    },
    /// External qcow2 data files are not supported.
    #[error("Disk image {} needs an external data file, which is not supported", .path.display())]
    ExternalDataFile {
        /// The qcow2 image.
        path: PathBuf,
    },
    /// The serial number does not fit GET_ID's 20 bytes.
    #[error("Disk serial {serial:?} is longer than {SERIAL_LEN} bytes")]
    SerialTooLong {
        /// The serial given.
        serial: String,
    },
}

/// Counters, updated by the worker thread.
#[derive(Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    flushes: AtomicU64,
    host_syncs: AtomicU64,
    discards: AtomicU64,
    write_zeroes: AtomicU64,
    errors: AtomicU64,
    unsupported: AtomicU64,
    malformed: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Reads a disk's counters (see [`Block::stats_source`]).
#[derive(Clone)]
pub struct BlockStatsSource(Arc<Counters>);

impl BlockStatsSource {
    /// A snapshot of the counters.
    pub fn stats(&self) -> BlockStats {
        let c = &*self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BlockStats {
            requests: get(&c.requests),
            reads: get(&c.reads),
            writes: get(&c.writes),
            bytes_read: get(&c.bytes_read),
            bytes_written: get(&c.bytes_written),
            flushes: get(&c.flushes),
            host_syncs: get(&c.host_syncs),
            discards: get(&c.discards),
            write_zeroes: get(&c.write_zeroes),
            errors: get(&c.errors),
            unsupported: get(&c.unsupported),
            malformed: get(&c.malformed),
        }
    }
}

/// A snapshot of a disk's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Chains completed (any type, any status, malformed ones included).
    pub requests: u64,
    /// Successful read (IN) requests.
    pub reads: u64,
    /// Successful write (OUT) requests.
    pub writes: u64,
    /// Bytes read from the image for the guest.
    pub bytes_read: u64,
    /// Bytes written to the image.
    pub bytes_written: u64,
    /// Successful FLUSH requests.
    pub flushes: u64,
    /// Host syncs (fdatasync / qcow2 flush+sync) performed, for flushes and write-through.
    pub host_syncs: u64,
    /// Successful DISCARD requests.
    pub discards: u64,
    /// Successful WRITE_ZEROES requests.
    pub write_zeroes: u64,
    /// Requests completed with VIRTIO_BLK_S_IOERR.
    pub errors: u64,
    /// Requests completed with VIRTIO_BLK_S_UNSUPP.
    pub unsupported: u64,
    /// Chains completed with 0 bytes because no status byte could be written.
    pub malformed: u64,
}

/// A virtio-blk device.
pub struct Block {
    disk: Arc<Mutex<Disk>>,
    config: [u8; cfg::LEN],
    avail_features: u64,
    serial: [u8; SERIAL_LEN],
    worker: Option<Worker>,
    counters: Arc<Counters>,
    path: PathBuf,
}

impl Block {
    /// Opens (and locks) the image `cfg` describes.
    pub fn new(cfg: &BlockConfig) -> Result<Block, BlockError> {
        let serial = serial_bytes(cfg.serial.as_deref())?;
        let disk = disk::open(cfg)?;
        let capacity_sectors = disk.capacity_bytes() / SECTOR_SIZE;
        let mut avail_features = VIRTIO_F_VERSION_1
            | VIRTIO_F_RING_EVENT_IDX
            | VIRTIO_F_RING_INDIRECT_DESC
            | features::SIZE_MAX
            | features::SEG_MAX
            | features::BLK_SIZE
            | features::FLUSH;
        if cfg.readonly {
            avail_features |= features::RO;
        } else {
            avail_features |= features::DISCARD | features::WRITE_ZEROES;
        }
        Ok(Block {
            config: config_space(capacity_sectors),
            disk: Arc::new(Mutex::new(disk)),
            avail_features,
            serial,
            worker: None,
            counters: Arc::default(),
            path: cfg.path.clone(),
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        u64::from_le_bytes(
            self.config[cfg::CAPACITY..cfg::CAPACITY + 8].try_into().expect("8 bytes"),
        )
    }

    /// The image path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> BlockStats {
        self.stats_source().stats()
    }

    /// A handle that reads the counters after the device moved behind its transport.
    pub fn stats_source(&self) -> BlockStatsSource {
        BlockStatsSource(self.counters.clone())
    }

    fn handler(&self, negotiated: u64) -> BlockHandler {
        BlockHandler::new(
            self.disk.clone(),
            self.counters.clone(),
            self.serial,
            negotiated,
            self.avail_features & features::RO != 0,
        )
    }
}

fn serial_bytes(serial: Option<&str>) -> Result<[u8; SERIAL_LEN], BlockError> {
    let mut out = [0u8; SERIAL_LEN];
    if let Some(s) = serial {
        if s.len() > SERIAL_LEN {
            return Err(BlockError::SerialTooLong { serial: s.into() });
        }
        out[..s.len()].copy_from_slice(s.as_bytes());
    }
    Ok(out)
}

fn config_space(capacity_sectors: u64) -> [u8; cfg::LEN] {
    let mut c = [0u8; cfg::LEN];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    put(cfg::CAPACITY, &capacity_sectors.to_le_bytes());
    put(cfg::SIZE_MAX, &limits::SIZE_MAX.to_le_bytes());
    put(cfg::SEG_MAX, &limits::SEG_MAX.to_le_bytes());
    put(cfg::BLK_SIZE, &(SECTOR_SIZE as u32).to_le_bytes());
    put(cfg::NUM_QUEUES, &1u16.to_le_bytes());
    put(cfg::MAX_DISCARD_SECTORS, &limits::MAX_DISCARD_SECTORS.to_le_bytes());
    put(cfg::MAX_DISCARD_SEG, &limits::MAX_DISCARD_SEG.to_le_bytes());
    put(cfg::DISCARD_SECTOR_ALIGNMENT, &limits::DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
    put(cfg::MAX_WRITE_ZEROES_SECTORS, &limits::MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
    put(cfg::MAX_WRITE_ZEROES_SEG, &limits::MAX_WRITE_ZEROES_SEG.to_le_bytes());
    put(cfg::WRITE_ZEROES_MAY_UNMAP, &[1]);
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // `writeback` is writable only with VIRTIO_BLK_F_CONFIG_WCE (§5.2.4), not offered; every
        // other field is read-only.
        ironvirt_vm_bus::guest_debug!("virtio-blk: ignoring a configuration space write");
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        if a.queues.len() != 1 {
            return Err(ActivateError::QueueCount { expected: 1, got: a.queues.len() });
        }
        let handler = self.handler(a.features & self.avail_features);
        self.worker = Some(Worker::start("virtio-blk", a.mem, a.queues, a.interrupt, handler)?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop();
        }
        // Write back qcow2 metadata caches so the image is consistent while the guest is away.
        let disk = self.disk.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = disk.flush_caches() {
            log::warn!("virtio-blk {}: cannot flush the image on reset: {e}", self.path.display());
        }
    }

    fn counters(&self) -> (u64, u64) {
        let s = self.stats();
        (s.requests, s.bytes_read.saturating_add(s.bytes_written))
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if self.worker.is_some() {
            self.reset();
        }
    }
}
