//! virtio-blk unit tests: a mock driver builds descriptor chains in test guest memory over
//! temporary raw and qcow2 images.

use std::path::{Path, PathBuf};

use imago::qcow2::Qcow2;
use imago::{FormatCreateBuilder, Storage, StorageCreateOptions};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::request::{req_type, status, BlockHandler};
use super::*;
use crate::test_util::{desc, CountIrq};
use crate::worker::drain;
use crate::worker::QueueHandler;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const HDR: u64 = 0x10_0000;
const STATUS: u64 = 0x18_0000;
const TABLE: u64 = 0x1c_0000;
/// Data buffers run from here up to the end of guest memory.
const DATA: u64 = 0x20_0000;
const MEM_SIZE: usize = 0x400_0000; // 64 MiB

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn pattern(sector: u64, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u64 / 7 + sector * 31 + i as u64) as u8).collect()
}

/// A temporary directory with a raw image of `sectors` sectors filled with `fill`.
fn raw_image(sectors: u64, fill: u8) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    std::fs::write(&path, vec![fill; (sectors * SECTOR_SIZE) as usize]).unwrap();
    (dir, path)
}

fn qcow2_image(path: &Path, size: u64, backing: Option<(&str, &str)>) {
    let file = imago::file::File::create_open(StorageCreateOptions::new().filename(path)).unwrap();
    let mut builder = Qcow2::<imago::file::File>::create_builder(file).size(size);
    if let Some((name, format)) = backing {
        builder = builder.backing(name.into(), format.into());
    }
    builder.create().unwrap();
}

fn open(path: &Path) -> Block {
    Block::new(&BlockConfig::new(path)).unwrap()
}

/// What the driver sees after the device handled the queue.
struct Done {
    used_idx: u16,
    used_len: u32,
    status: u8,
    irqs: usize,
}

/// Runs `handler` over the chains `descs` (heads found by NEXT flags, as the mock does).
fn run_with(handler: &mut BlockHandler, m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Done {
    m.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
    let vq = MockSplitQueue::new(m, 16);
    vq.add_desc_chains(descs, 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let irq = CountIrq::default();
    drain(0, &mut q, m, handler, &irq);
    let used_len = m.read_obj::<u32>(vq.used_addr().unchecked_add(8)).unwrap();
    Done {
        used_idx: q.next_used(),
        used_len,
        status: m.read_obj(GuestAddress(STATUS)).unwrap(),
        irqs: irq.0.load(Ordering::Relaxed),
    }
}

fn run(block: &Block, m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Done {
    run_with(&mut block.handler(block.features()), m, descs)
}

/// The data part of a request.
enum Data<'a> {
    None,
    /// Device-readable data (OUT, DISCARD, WRITE_ZEROES).
    Out(&'a [u8]),
    /// Device-writable buffer of this many bytes (IN, GET_ID).
    In(u32),
}

/// Writes a request header (and data) into guest memory; returns its three-descriptor chain.
fn request(m: &GuestMemoryMmap, rtype: u32, sector: u64, data: Data) -> Vec<RawDescriptor> {
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&rtype.to_le_bytes());
    hdr[8..16].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&hdr, GuestAddress(HDR)).unwrap();
    let mut descs = vec![desc(HDR, 16, F_NEXT, 1)];
    match data {
        Data::None => {}
        Data::Out(bytes) => {
            m.write_slice(bytes, GuestAddress(DATA)).unwrap();
            descs.push(desc(DATA, bytes.len() as u32, F_NEXT, 2));
        }
        Data::In(len) => descs.push(desc(DATA, len, F_WRITE | F_NEXT, 2)),
    }
    let n = descs.len() as u16;
    if let Some(d) = descs.last_mut() {
        *d = with_next(*d, n);
    }
    descs.push(desc(STATUS, 1, F_WRITE, 0));
    descs
}

fn with_next(d: RawDescriptor, next: u16) -> RawDescriptor {
    let s = SplitDescriptor::from(d);
    desc(s.addr().0, s.len(), s.flags() | F_NEXT, next)
}

fn segment(sector: u64, num: u32, flags: u32) -> Vec<u8> {
    let mut s = sector.to_le_bytes().to_vec();
    s.extend_from_slice(&num.to_le_bytes());
    s.extend_from_slice(&flags.to_le_bytes());
    s
}

fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

// ---- configuration and features ----

#[test]
fn config_space_reports_capacity_limits_and_block_size() {
    let (_d, path) = raw_image(64, 0);
    let block = open(&path);
    let mut b8 = [0u8; 8];
    block.read_config(0, &mut b8);
    assert_eq!(u64::from_le_bytes(b8), 64);
    let mut b4 = [0u8; 4];
    block.read_config(20, &mut b4);
    assert_eq!(u32::from_le_bytes(b4), 512, "blk_size");
    block.read_config(12, &mut b4);
    assert_eq!(u32::from_le_bytes(b4), limits::SEG_MAX);
    block.read_config(36, &mut b4);
    assert_eq!(u32::from_le_bytes(b4), limits::MAX_DISCARD_SECTORS);
    block.read_config(52, &mut b4);
    assert_eq!(u32::from_le_bytes(b4), limits::MAX_WRITE_ZEROES_SEG);
    block.read_config(4096, &mut b4);
    assert_eq!(b4, [0; 4], "beyond the structure reads 0");
    let f = block.features();
    for bit in [features::FLUSH, features::DISCARD, features::WRITE_ZEROES, VIRTIO_F_VERSION_1] {
        assert_ne!(f & bit, 0);
    }
    assert_eq!(f & features::RO, 0);
    assert_eq!(block.device_type(), device_type::BLOCK);
}

#[test]
fn config_writes_are_ignored() {
    let (_d, path) = raw_image(8, 0);
    let mut block = open(&path);
    block.write_config(0, &[0xff; 8]);
    block.write_config(32, &[1]);
    assert_eq!(block.capacity_sectors(), 8);
}

#[test]
fn image_length_must_be_whole_sectors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.raw");
    std::fs::write(&path, vec![0u8; 1000]).unwrap();
    let err = Block::new(&BlockConfig::new(&path)).err().expect("1000 bytes is refused");
    assert!(matches!(err, BlockError::Misaligned { len: 1000, .. }), "{err}");
    assert!(err.to_string().contains("odd.raw"));
}

#[test]
fn missing_image_names_the_path() {
    let err = Block::new(&BlockConfig::new("/nonexistent/ironvirt.raw")).err().unwrap();
    assert!(err.to_string().contains("/nonexistent/ironvirt.raw"));
}

// ---- reads and writes on raw images ----

#[test]
fn written_sectors_land_at_their_file_offsets() {
    let (_d, path) = raw_image(64, 0);
    let block = open(&path);
    let m = mem();
    let data = pattern(5, 1024);
    let done = run(&block, &m, &request(&m, req_type::OUT, 5, Data::Out(&data)));
    assert_eq!((done.status, done.used_len, done.used_idx, done.irqs), (status::OK, 1, 1, 1));
    let file = file_bytes(&path);
    assert_eq!(&file[5 * 512..7 * 512], &data[..]);
    assert!(file[..5 * 512].iter().chain(&file[7 * 512..]).all(|&b| b == 0));
    let s = block.stats();
    assert_eq!((s.writes, s.bytes_written, s.requests), (1, 1024, 1));
}

#[test]
fn reads_return_the_file_bytes() {
    let (_d, path) = raw_image(64, 0);
    let content = pattern(0, 64 * 512);
    std::fs::write(&path, &content).unwrap();
    let block = open(&path);
    let m = mem();
    let done = run(&block, &m, &request(&m, req_type::IN, 10, Data::In(3 * 512)));
    assert_eq!((done.status, done.used_len), (status::OK, 3 * 512 + 1));
    let mut got = vec![0u8; 3 * 512];
    m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, &content[10 * 512..13 * 512]);
    assert_eq!(block.stats().bytes_read, 1536);
}

#[test]
fn requests_larger_than_the_bounce_buffer_are_chunked() {
    let (_d, path) = raw_image(8192, 0); // 4 MiB
    let block = open(&path);
    let m = mem();
    let data = pattern(1, 3 * 1024 * 1024 + 512);
    let done = run(&block, &m, &request(&m, req_type::OUT, 1, Data::Out(&data)));
    assert_eq!(done.status, status::OK);
    assert!(file_bytes(&path)[512..512 + data.len()] == data[..]);
    m.write_slice(&vec![0u8; data.len()], GuestAddress(DATA)).unwrap();
    let done = run(&block, &m, &request(&m, req_type::IN, 1, Data::In(data.len() as u32)));
    assert_eq!(done.status, status::OK);
    let mut got = vec![0u8; data.len()];
    m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert!(got == data);
}

#[test]
fn out_of_range_and_overflowing_sectors_fail_with_ioerr() {
    let (_d, path) = raw_image(16, 0);
    let block = open(&path);
    let m = mem();
    let two = vec![0xabu8; 1024];
    for sector in [15, 16, u64::MAX, u64::MAX / 512, u64::MAX / 512 - 1] {
        let done = run(&block, &m, &request(&m, req_type::OUT, sector, Data::Out(&two)));
        assert_eq!(done.status, status::IOERR, "write at {sector}");
        let done = run(&block, &m, &request(&m, req_type::IN, sector, Data::In(1024)));
        assert_eq!((done.status, done.used_len), (status::IOERR, 1), "read at {sector}");
    }
    assert!(file_bytes(&path).iter().all(|&b| b == 0));
    // The last sector itself is fine.
    let done = run(&block, &m, &request(&m, req_type::OUT, 15, Data::Out(&two[..512])));
    assert_eq!(done.status, status::OK);
    assert_eq!(block.stats().errors, 10);
}

#[test]
fn partial_sector_lengths_fail_with_ioerr() {
    let (_d, path) = raw_image(16, 0);
    let block = open(&path);
    let m = mem();
    let done = run(&block, &m, &request(&m, req_type::OUT, 0, Data::Out(&[1u8; 100])));
    assert_eq!(done.status, status::IOERR);
    let done = run(&block, &m, &request(&m, req_type::IN, 0, Data::In(513)));
    assert_eq!(done.status, status::IOERR);
    assert!(file_bytes(&path).iter().all(|&b| b == 0));
}

#[test]
fn requests_beyond_the_request_bound_fail_with_ioerr() {
    let (_d, path) = raw_image(1 << 17, 0); // 64 MiB
    let block = open(&path);
    let m = mem();
    let len = (MAX_REQUEST_BYTES + 512) as u32;
    let done = run(&block, &m, &request(&m, req_type::IN, 0, Data::In(len)));
    assert_eq!((done.status, done.used_len), (status::IOERR, 1));
}

#[test]
fn direct_io_reads_and_writes_through_the_aligned_bounce_buffer() {
    let (_d, path) = raw_image(64, 0);
    let cfg = BlockConfig { direct: true, ..BlockConfig::new(&path) };
    let block = match Block::new(&cfg) {
        Ok(b) => b,
        Err(e) => {
            panic!("O_DIRECT on {} failed (needs a file system with O_DIRECT): {e}", path.display())
        }
    };
    let m = mem();
    let data = pattern(3, 512);
    // An unaligned guest buffer: the bounce buffer keeps O_DIRECT happy.
    let done = run(&block, &m, &request(&m, req_type::OUT, 3, Data::Out(&data)));
    assert_eq!(done.status, status::OK);
    assert_eq!(&file_bytes(&path)[3 * 512..4 * 512], &data[..]);
    let done = run(&block, &m, &request(&m, req_type::IN, 3, Data::In(512)));
    assert_eq!(done.status, status::OK);
}

// ---- read-only disks and locking ----

#[test]
fn read_only_disks_offer_ro_and_reject_writes() {
    let (_d, path) = raw_image(16, 0x5a);
    let cfg = BlockConfig { readonly: true, ..BlockConfig::new(&path) };
    let block = Block::new(&cfg).unwrap();
    assert_ne!(block.features() & features::RO, 0);
    assert_eq!(block.features() & (features::DISCARD | features::WRITE_ZEROES), 0);
    let m = mem();
    let done = run(&block, &m, &request(&m, req_type::OUT, 0, Data::Out(&[0u8; 512])));
    assert_eq!(done.status, status::IOERR);
    let mut h = block.handler(block.features() | features::DISCARD | features::WRITE_ZEROES);
    let seg = segment(0, 1, 0);
    let done = run_with(&mut h, &m, &request(&m, req_type::WRITE_ZEROES, 0, Data::Out(&seg)));
    assert_eq!(done.status, status::IOERR);
    assert!(file_bytes(&path).iter().all(|&b| b == 0x5a));
    let done = run(&block, &m, &request(&m, req_type::IN, 0, Data::In(512)));
    assert_eq!(done.status, status::OK);
}

#[test]
fn read_only_disks_open_files_without_write_access() {
    let (_d, path) = raw_image(16, 0);
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    std::fs::set_permissions(&path, perms).unwrap();
    let cfg = BlockConfig { readonly: true, ..BlockConfig::new(&path) };
    let _block = Block::new(&cfg).unwrap();
    // /proc shows the flags the image was opened with.
    let rdonly = std::fs::read_dir("/proc/self/fd").unwrap().flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|t| t == path)
            && std::fs::read_to_string(format!(
                "/proc/self/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .is_ok_and(|info| {
                info.lines().any(|l| {
                    l.strip_prefix("flags:")
                        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
                        .is_some_and(|flags| {
                            flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32
                        })
                })
            })
    });
    assert!(rdonly, "the image is open O_RDONLY");
}

#[test]
fn a_second_writer_is_refused_with_an_error_naming_the_image() {
    let (_d, path) = raw_image(16, 0);
    let first = open(&path);
    let err = Block::new(&BlockConfig::new(&path)).err().expect("second writer refused");
    assert!(matches!(err, BlockError::InUse { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("in use by another VMM"),
        "{msg}"
    );
    // Readers are refused too while a writer holds it ...
    let ro = BlockConfig { readonly: true, ..BlockConfig::new(&path) };
    assert!(matches!(Block::new(&ro), Err(BlockError::InUse { .. })));
    // ... and the lock goes with the first device.
    drop(first);
    let _again = open(&path);
}

#[test]
fn readers_share_an_image_but_exclude_writers() {
    let (_d, path) = raw_image(16, 0);
    let ro = BlockConfig { readonly: true, ..BlockConfig::new(&path) };
    let _a = Block::new(&ro).unwrap();
    let _b = Block::new(&ro).unwrap();
    assert!(matches!(Block::new(&BlockConfig::new(&path)), Err(BlockError::InUse { .. })));
}

// ---- flush, GET_ID, unsupported ----

#[test]
fn flush_syncs_the_host_file_before_completing() {
    let (_d, path) = raw_image(16, 0);
    let block = open(&path);
    let m = mem();
    run(&block, &m, &request(&m, req_type::OUT, 1, Data::Out(&[7u8; 512])));
    assert_eq!(block.stats().host_syncs, 0, "writeback: writes alone do not sync");
    let done = run(&block, &m, &request(&m, req_type::FLUSH, 0, Data::None));
    assert_eq!((done.status, done.used_len), (status::OK, 1));
    let s = block.stats();
    assert_eq!((s.flushes, s.host_syncs), (1, 1));
}

#[test]
fn without_negotiated_flush_writes_are_synced_and_flush_is_unsupported() {
    let (_d, path) = raw_image(16, 0);
    let block = open(&path);
    let m = mem();
    let mut h = block.handler(block.features() & !features::FLUSH);
    let done = run_with(&mut h, &m, &request(&m, req_type::OUT, 1, Data::Out(&[7u8; 512])));
    assert_eq!(done.status, status::OK);
    assert_eq!(block.stats().host_syncs, 1, "write-through");
    let done = run_with(&mut h, &m, &request(&m, req_type::FLUSH, 0, Data::None));
    assert_eq!(done.status, status::UNSUPP);
}

#[test]
fn get_id_returns_the_serial_zero_padded_to_20_bytes() {
    let (_d, path) = raw_image(16, 0);
    let cfg = BlockConfig { serial: Some("ironvirt-0001".into()), ..BlockConfig::new(&path) };
    let block = Block::new(&cfg).unwrap();
    let m = mem();
    m.write_slice(&[0xffu8; 20], GuestAddress(DATA)).unwrap();
    let done = run(&block, &m, &request(&m, req_type::GET_ID, 0, Data::In(20)));
    assert_eq!((done.status, done.used_len), (status::OK, 21));
    let mut id = [0u8; 20];
    m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..13], b"ironvirt-0001");
    assert_eq!(&id[13..], &[0; 7]);
    // A shorter buffer gets what fits.
    let done = run(&block, &m, &request(&m, req_type::GET_ID, 0, Data::In(4)));
    assert_eq!((done.status, done.used_len), (status::OK, 5));
}

#[test]
fn serials_longer_than_20_bytes_are_refused() {
    let (_d, path) = raw_image(16, 0);
    let cfg = BlockConfig { serial: Some("x".repeat(21)), ..BlockConfig::new(&path) };
    assert!(matches!(Block::new(&cfg), Err(BlockError::SerialTooLong { .. })));
}

#[test]
fn unknown_request_types_are_unsupported() {
    let (_d, path) = raw_image(16, 0);
    let block = open(&path);
    let m = mem();
    for t in [2, 3, 10, 14, 99, u32::MAX] {
        let done = run(&block, &m, &request(&m, t, 0, Data::In(512)));
        assert_eq!((done.status, done.used_len), (status::UNSUPP, 1), "type {t}");
    }
    assert_eq!(block.stats().unsupported, 6);
}

// ---- discard and write-zeroes ----

#[test]
fn discard_accepts_valid_ranges_and_checks_flags_and_bounds() {
    let (_d, path) = raw_image(64, 0x11);
    let block = open(&path);
    let m = mem();
    let ok = segment(8, 16, 0);
    let done = run(&block, &m, &request(&m, req_type::DISCARD, 0, Data::Out(&ok)));
    assert_eq!(done.status, status::OK);
    assert_eq!(block.stats().discards, 1);
    for (seg, want) in [
        (segment(0, 8, 1), status::UNSUPP),       // unmap on a discard
        (segment(0, 8, 2), status::UNSUPP),       // unknown flag
        (segment(60, 8, 0), status::IOERR),       // past the end
        (segment(u64::MAX, 1, 0), status::IOERR), // overflowing sector
        (segment(0, limits::MAX_DISCARD_SECTORS + 1, 0), status::IOERR),
        (ok[..15].to_vec(), status::IOERR), // not whole segments
        (ok.repeat(limits::MAX_DISCARD_SEG as usize + 1), status::UNSUPP),
    ] {
        let done = run(&block, &m, &request(&m, req_type::DISCARD, 0, Data::Out(&seg)));
        assert_eq!(done.status, want, "{seg:?}");
    }
    let done = run(&block, &m, &request(&m, req_type::DISCARD, 0, Data::None));
    assert_eq!(done.status, status::IOERR, "no segment at all");
}

#[test]
fn write_zeroes_zeroes_exactly_the_ranges_with_and_without_unmap() {
    let (_d, path) = raw_image(64, 0xaa);
    let block = open(&path);
    let m = mem();
    let mut segs = segment(2, 2, 0);
    segs.extend(segment(8, 8, 1));
    let done = run(&block, &m, &request(&m, req_type::WRITE_ZEROES, 0, Data::Out(&segs)));
    assert_eq!(done.status, status::OK);
    let file = file_bytes(&path);
    for (i, b) in file.iter().enumerate() {
        let sector = i / 512;
        let zero = (2..4).contains(&sector) || (8..16).contains(&sector);
        assert_eq!(*b, if zero { 0 } else { 0xaa }, "byte {i}");
    }
    assert_eq!(file.len(), 64 * 512, "the file keeps its size");
    assert_eq!(block.stats().write_zeroes, 1);
}

#[test]
fn a_bad_segment_leaves_earlier_segments_unexecuted() {
    let (_d, path) = raw_image(64, 0xaa);
    let block = open(&path);
    let m = mem();
    let mut segs = segment(0, 4, 0);
    segs.extend(segment(63, 2, 0));
    let done = run(&block, &m, &request(&m, req_type::WRITE_ZEROES, 0, Data::Out(&segs)));
    assert_eq!(done.status, status::IOERR);
    assert!(file_bytes(&path).iter().all(|&b| b == 0xaa));
}

#[test]
fn write_zeroes_falls_back_to_writing_zero_buffers() {
    // A memfd-backed disk with fallocate marked unsupported takes the write path.
    let (_d, path) = raw_image(1024, 0xaa);
    let block = open(&path);
    block.disk.lock().unwrap().force_no_fallocate();
    let m = mem();
    let segs = segment(1, 1000, 0);
    let done = run(&block, &m, &request(&m, req_type::WRITE_ZEROES, 0, Data::Out(&segs)));
    assert_eq!(done.status, status::OK);
    let file = file_bytes(&path);
    assert!(file[512..1001 * 512].iter().all(|&b| b == 0));
    assert!(file[..512].iter().chain(&file[1001 * 512..]).all(|&b| b == 0xaa));
}

// ---- qcow2 ----

#[test]
fn qcow2_images_read_and_write_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.qcow2");
    qcow2_image(&path, 1 << 20, None);
    let cfg = BlockConfig { format: DiskFormat::Qcow2, ..BlockConfig::new(&path) };
    let data = pattern(9, 4096);
    {
        let block = Block::new(&cfg).unwrap();
        assert_eq!(block.capacity_sectors(), 2048);
        let m = mem();
        let done = run(&block, &m, &request(&m, req_type::OUT, 9, Data::Out(&data)));
        assert_eq!(done.status, status::OK);
        let done = run(&block, &m, &request(&m, req_type::FLUSH, 0, Data::None));
        assert_eq!(done.status, status::OK);
        // Write-zeroes and discard go through imago.
        let mut segs = segment(9, 1, 0);
        segs.extend(segment(100, 128, 1));
        let done = run(&block, &m, &request(&m, req_type::WRITE_ZEROES, 0, Data::Out(&segs)));
        assert_eq!(done.status, status::OK);
        let done =
            run(&block, &m, &request(&m, req_type::DISCARD, 0, Data::Out(&segment(512, 128, 0))));
        assert_eq!(done.status, status::OK);
    }
    let block = Block::new(&cfg).unwrap();
    let m = mem();
    let done = run(&block, &m, &request(&m, req_type::IN, 9, Data::In(4096)));
    assert_eq!(done.status, status::OK);
    let mut got = vec![0u8; 4096];
    m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got[..512], &[0u8; 512], "sector 9 was zeroed");
    assert_eq!(&got[512..], &data[512..]);
}

#[test]
fn qcow2_overlay_writes_leave_the_backing_file_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let base_content = pattern(77, 1 << 20);
    std::fs::write(&base, &base_content).unwrap();
    let overlay = dir.path().join("overlay.qcow2");
    qcow2_image(&overlay, 1 << 20, Some(("base.raw", "raw")));
    let cfg = BlockConfig {
        format: DiskFormat::Qcow2,
        allow_backing: true,
        ..BlockConfig::new(&overlay)
    };
    let block = Block::new(&cfg).unwrap();
    let m = mem();
    // Unwritten sectors come from the backing file.
    let done = run(&block, &m, &request(&m, req_type::IN, 3, Data::In(1024)));
    assert_eq!(done.status, status::OK);
    let mut got = vec![0u8; 1024];
    m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, &base_content[3 * 512..5 * 512]);
    // Writes go to the overlay.
    let data = vec![0x42u8; 512];
    let done = run(&block, &m, &request(&m, req_type::OUT, 4, Data::Out(&data)));
    assert_eq!(done.status, status::OK);
    let mut segs = segment(100, 8, 0);
    segs.extend(segment(200, 8, 1));
    let done = run(&block, &m, &request(&m, req_type::WRITE_ZEROES, 0, Data::Out(&segs)));
    assert_eq!(done.status, status::OK);
    run(&block, &m, &request(&m, req_type::FLUSH, 0, Data::None));
    let done = run(&block, &m, &request(&m, req_type::IN, 3, Data::In(1024)));
    assert_eq!(done.status, status::OK);
    m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got[..512], &base_content[3 * 512..4 * 512]);
    assert_eq!(&got[512..], &data[..]);
    let done = run(&block, &m, &request(&m, req_type::IN, 200, Data::In(512)));
    assert_eq!(done.status, status::OK);
    m.read_slice(&mut got[..512], GuestAddress(DATA)).unwrap();
    assert_eq!(&got[..512], &[0u8; 512], "zeroed over the backing data");
    drop(block);
    assert!(file_bytes(&base) == base_content, "backing file unchanged");
}

#[test]
fn qcow2_backing_files_need_permission_and_a_recorded_format() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.raw"), vec![0u8; 1 << 16]).unwrap();
    let overlay = dir.path().join("overlay.qcow2");
    qcow2_image(&overlay, 1 << 16, Some(("base.raw", "raw")));
    let cfg = BlockConfig { format: DiskFormat::Qcow2, ..BlockConfig::new(&overlay) };
    let err = Block::new(&cfg).err().expect("backing refused by default");
    assert!(matches!(err, BlockError::BackingNotAllowed { .. }), "{err}");
    assert!(err.to_string().contains("base.raw") && err.to_string().contains("overlay.qcow2"));

    let odd = dir.path().join("odd.qcow2");
    qcow2_image(&odd, 1 << 16, Some(("base.raw", "vmdk")));
    let cfg =
        BlockConfig { format: DiskFormat::Qcow2, allow_backing: true, ..BlockConfig::new(&odd) };
    assert!(matches!(Block::new(&cfg), Err(BlockError::BackingFormatUnsupported { .. })));
}

#[test]
fn qcow2_backing_files_are_locked_shared() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::write(&base, vec![0u8; 1 << 16]).unwrap();
    let overlay = dir.path().join("overlay.qcow2");
    qcow2_image(&overlay, 1 << 16, Some(("base.raw", "raw")));
    let cfg = BlockConfig {
        format: DiskFormat::Qcow2,
        allow_backing: true,
        ..BlockConfig::new(&overlay)
    };
    let _vm = Block::new(&cfg).unwrap();
    let err = Block::new(&BlockConfig::new(&base)).err().expect("backing file is in use");
    assert!(err.to_string().contains("base.raw"), "{err}");
    let ro = BlockConfig { readonly: true, ..BlockConfig::new(&base) };
    assert!(Block::new(&ro).is_ok(), "other readers are fine");
}

#[test]
fn qcow2_backing_chains_that_loop_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    qcow2_image(&a, 1 << 16, Some(("b.qcow2", "qcow2")));
    qcow2_image(&b, 1 << 16, Some(("a.qcow2", "qcow2")));
    let cfg = BlockConfig {
        format: DiskFormat::Qcow2,
        allow_backing: true,
        readonly: true,
        ..BlockConfig::new(&a)
    };
    assert!(matches!(Block::new(&cfg), Err(BlockError::BackingChainTooDeep { .. })));
}

#[test]
fn formats_are_never_probed() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("disk.qcow2");
    qcow2_image(&q, 1 << 20, None);
    // A qcow2 file opened as raw is just bytes: its header is guest data.
    let block = Block::new(&BlockConfig::new(&q)).unwrap();
    assert_eq!(block.capacity_sectors() * 512, std::fs::metadata(&q).unwrap().len());
    drop(block);
    // A raw file opened as qcow2 is refused.
    let (_d, raw) = raw_image(16, 0);
    let cfg = BlockConfig { format: DiskFormat::Qcow2, ..BlockConfig::new(&raw) };
    assert!(matches!(Block::new(&cfg), Err(BlockError::Qcow2 { .. })));
}

// ---- hostile queues ----

#[test]
fn chains_without_a_writable_status_byte_complete_with_zero_bytes() {
    let (_d, path) = raw_image(16, 0);
    let block = open(&path);
    let m = mem();
    let mut descs = request(&m, req_type::OUT, 0, Data::Out(&[1u8; 512]));
    descs.pop(); // no status descriptor
    let d = descs.len() - 1;
    descs[d] = desc(DATA, 512, 0, 0);
    let done = run(&block, &m, &descs);
    assert_eq!((done.used_idx, done.used_len), (1, 0));
    assert_eq!(block.stats().malformed, 1);
    assert!(file_bytes(&path).iter().all(|&b| b == 0), "nothing executed");
}

#[test]
fn status_outside_guest_memory_completes_with_zero_bytes() {
    let (_d, path) = raw_image(16, 0);
    let block = open(&path);
    let m = mem();
    let mut descs = request(&m, req_type::IN, 0, Data::In(512));
    descs[2] = desc(0xffff_ffff_0000, 1, F_WRITE, 0);
    let done = run(&block, &m, &descs);
    assert_eq!((done.used_idx, done.used_len), (1, 0));
}

#[test]
fn headers_outside_memory_short_or_empty_fail_with_ioerr() {
    let (_d, path) = raw_image(16, 0);
    let block = open(&path);
    let m = mem();
    for hdr in
        [desc(MEM_SIZE as u64 - 8, 16, F_NEXT, 1), desc(HDR, 8, F_NEXT, 1), desc(HDR, 0, F_NEXT, 1)]
    {
        let mut descs = request(&m, req_type::IN, 0, Data::None);
        descs[0] = hdr;
        let done = run(&block, &m, &descs);
        assert_eq!((done.status, done.used_len), (status::IOERR, 1));
    }
}

#[test]
fn huge_descriptor_lengths_are_refused_without_touching_the_disk() {
    let (_d, path) = raw_image(16, 0);
    let block = open(&path);
    let m = mem();
    // Device-writable data of u32::MAX bytes: the writable part is not in RAM, no status.
    let mut descs = request(&m, req_type::IN, 0, Data::In(512));
    descs[1] = desc(DATA, u32::MAX, F_WRITE | F_NEXT, 2);
    let done = run(&block, &m, &descs);
    assert_eq!((done.used_idx, done.used_len), (1, 0));
    // Device-readable data of u32::MAX bytes: virtio-queue ends a chain at 4 GiB (§2.7.5.2),
    // so the chain is only the header, without a status byte.
    let mut descs = request(&m, req_type::OUT, 0, Data::Out(&[1u8; 512]));
    descs[1] = desc(DATA, u32::MAX, F_NEXT, 2);
    let done = run(&block, &m, &descs);
    assert_eq!((done.used_idx, done.used_len), (1, 0));
    // Just under that, the data is outside RAM: the status is fine, the request is not.
    descs[1] = desc(DATA, u32::MAX - 32, F_NEXT, 2);
    let done = run(&block, &m, &descs);
    assert_eq!((done.status, done.used_len), (status::IOERR, 1));
    assert!(file_bytes(&path).iter().all(|&b| b == 0));
}

#[test]
fn descriptor_loops_end_after_a_queue_length_and_the_next_chain_still_works() {
    let (_d, path) = raw_image(16, 0);
    let block = open(&path);
    let m = mem();
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&req_type::IN.to_le_bytes());
    m.write_slice(&hdr, GuestAddress(HDR)).unwrap();
    // 0 -> 1 -> 0 -> ...: header, status byte, header, ... (16 descriptors, then cut).
    let mut descs = vec![desc(HDR, 16, F_NEXT, 1), desc(STATUS, 1, F_WRITE | F_NEXT, 0)];
    // A well-formed request after it, at table index 2..5.
    descs.extend(request(&m, req_type::GET_ID, 0, Data::In(20)).into_iter().map(|d| {
        let s = SplitDescriptor::from(d);
        let next = if s.flags() & F_NEXT != 0 { s.next() + 2 } else { 0 };
        desc(s.addr().0, s.len(), s.flags(), next)
    }));
    let vq = MockSplitQueue::new(&m, 16);
    for (i, d) in descs.iter().enumerate() {
        vq.desc_table().store(i as u16, *d).unwrap();
    }
    vq.avail().ring().ref_at(0).unwrap().store(0u16.to_le());
    vq.avail().ring().ref_at(1).unwrap().store(2u16.to_le());
    vq.avail().idx().store(2u16.to_le());
    let mut q: Queue = vq.create_queue().unwrap();
    let mut h = block.handler(block.features());
    drain(0, &mut q, &m, &mut h, &CountIrq::default());
    assert_eq!(q.next_used(), 2, "both chains completed");
    assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), status::OK, "GET_ID succeeded");
    assert_eq!(block.stats().requests, 2);
    assert!(!h.is_broken());
}

/// Writes an indirect table at [`TABLE`] and returns the one descriptor pointing at it.
fn indirect(m: &GuestMemoryMmap, table: &[RawDescriptor]) -> RawDescriptor {
    for (i, d) in table.iter().enumerate() {
        m.write_obj(*d, GuestAddress(TABLE + 16 * i as u64)).unwrap();
    }
    desc(TABLE, 16 * table.len() as u32, F_INDIRECT, 0)
}

#[test]
fn indirect_chains_longer_than_the_queue_are_served_within_the_request_bound() {
    let (_d, path) = raw_image(128, 0);
    let block = open(&path);
    let m = mem();
    // 64 descriptors in a 16-entry queue: header, 62 x 512 bytes, status.
    let mut table = vec![desc(HDR, 16, F_NEXT, 1)];
    for i in 0..62u16 {
        table.push(desc(DATA + 512 * u64::from(i), 512, F_WRITE | F_NEXT, i + 2));
    }
    table.push(desc(STATUS, 1, F_WRITE, 0));
    request(&m, req_type::IN, 0, Data::None);
    let done = run(&block, &m, &[indirect(&m, &table)]);
    assert_eq!((done.status, done.used_len), (status::OK, 62 * 512 + 1));

    // 200 descriptors of 256 KiB each over the same memory: 50 MiB > the request bound.
    let mut table = vec![desc(HDR, 16, F_NEXT, 1)];
    for i in 0..200u16 {
        table.push(desc(DATA, 256 * 1024, F_WRITE | F_NEXT, i + 2));
    }
    table.push(desc(STATUS, 1, F_WRITE, 0));
    let done = run(&block, &m, &[indirect(&m, &table)]);
    assert_eq!((done.status, done.used_len), (status::IOERR, 1));
}

#[test]
fn nested_or_misaligned_indirect_tables_complete_with_zero_bytes() {
    let (_d, path) = raw_image(16, 0);
    let block = open(&path);
    let m = mem();
    request(&m, req_type::IN, 0, Data::None);
    // virtio-queue stops walking a chain at a nested indirect descriptor (§2.7.5.3.1) or a
    // table length that is not a multiple of 16: the chain is empty, so no status byte.
    let nested = vec![desc(HDR, 16, F_NEXT, 1), desc(TABLE + 0x1000, 32, F_INDIRECT, 0)];
    let done = run(&block, &m, &[indirect(&m, &nested)]);
    assert_eq!((done.used_idx, done.used_len), (1, 0));
    let table = vec![desc(HDR, 16, F_NEXT, 1), desc(STATUS, 1, F_WRITE, 0)];
    let mut misaligned = SplitDescriptor::from(indirect(&m, &table));
    misaligned = SplitDescriptor::new(misaligned.addr().0, 20, F_INDIRECT, 0);
    let done = run(&block, &m, &[RawDescriptor::from(misaligned)]);
    assert_eq!((done.used_idx, done.used_len), (1, 0));
    // An indirect table outside guest memory.
    let done = run(&block, &m, &[desc(0xffff_ffff_f000, 32, F_INDIRECT, 0)]);
    assert_eq!((done.used_idx, done.used_len), (1, 0));
    assert_eq!(block.stats().malformed, 3);
}

#[test]
fn an_avail_index_running_ahead_stops_the_device_without_panicking() {
    let (_d, path) = raw_image(16, 0);
    let block = open(&path);
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    vq.add_desc_chains(&request(&m, req_type::FLUSH, 0, Data::None), 0).unwrap();
    vq.avail().idx().store(100u16.to_le());
    let mut q: Queue = vq.create_queue().unwrap();
    let mut h = block.handler(block.features());
    let irq = CountIrq::default();
    // The worker's drain loop notices first and reports the device broken.
    drain(0, &mut q, &m, &mut h, &irq);
    assert_eq!(irq.1.load(Ordering::Relaxed), 1, "device marked broken");
    assert_eq!(q.next_used(), 0);
    // The handler on its own also stops, and stays stopped (without spinning) even once the
    // index looks sane again.
    assert!(!h.process(0, &mut q, &m));
    assert!(h.is_broken());
    vq.avail().idx().store(1u16.to_le());
    assert!(!h.process(0, &mut q, &m));
    assert_eq!((q.next_used(), irq.0.load(Ordering::Relaxed)), (0, 0));
    assert_eq!(block.stats().requests, 0);
}

#[test]
fn avail_entries_naming_heads_past_the_table_complete_nothing() {
    let (_d, path) = raw_image(16, 0);
    let block = open(&path);
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    vq.avail().ring().ref_at(0).unwrap().store(200u16.to_le());
    vq.avail().idx().store(1u16.to_le());
    let mut q: Queue = vq.create_queue().unwrap();
    let mut h = block.handler(block.features());
    drain(0, &mut q, &m, &mut h, &CountIrq::default());
    // The chain is empty (no status byte); the used ring refuses an out-of-range id, which
    // leaves the device nothing sane to do.
    assert_eq!(block.stats().malformed, 1);
    assert_eq!(q.next_used(), 0);
    assert!(h.is_broken());
}

// ---- the worker thread ----

#[test]
fn activation_runs_requests_on_the_worker_and_reset_stops_it() {
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
    let (_d, path) = raw_image(16, 0);
    let mut block = open(&path);
    let m = mem();
    let data = pattern(2, 512);
    for round in 0..2 {
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&request(&m, req_type::OUT, 2, Data::Out(&data)), 0).unwrap();
        let q: Queue = vq.create_queue().unwrap();
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = Arc::new(CountIrq::default());
        block
            .activate(Activation {
                mem: m.clone(),
                queues: vec![(q, kick.try_clone().unwrap())],
                interrupt: irq.clone(),
                features: block.features(),
            })
            .unwrap();
        kick.write(1).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while irq.0.load(Ordering::Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline, "the worker answers");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        block.reset();
        assert_eq!(block.stats().writes, round + 1);
    }
    assert_eq!(&file_bytes(&path)[1024..1536], &data[..]);
    assert_eq!(block.counters(), (2, 1024));
}

#[test]
fn activation_needs_exactly_one_queue() {
    let (_d, path) = raw_image(16, 0);
    let mut block = open(&path);
    let err = block
        .activate(Activation {
            mem: mem(),
            queues: vec![],
            interrupt: Arc::new(CountIrq::default()),
            features: block.features(),
        })
        .err()
        .unwrap();
    assert!(matches!(err, ActivateError::QueueCount { expected: 1, got: 0 }));
}

// ---- fuzz harness ----

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/virtio_blk")
}

#[test]
fn fuzz_corpus_replays_without_panicking() {
    let dir = corpus_dir();
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {} missing: {e}", dir.display()))
        .flatten()
        .collect();
    assert!(entries.len() >= 5, "seed inputs in {}", dir.display());
    for e in entries {
        fuzz_one(&std::fs::read(e.path()).unwrap());
    }
}

#[test]
fn fuzz_harness_survives_short_and_random_inputs() {
    for len in 0..300 {
        fuzz_one(&vec![0xffu8; len]);
    }
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..300 {
        let input: Vec<u8> = (0..400)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fuzz_one(&input);
    }
}

/// Regenerates the seed corpus: `cargo test -p ironvirt-virtio write_fuzz_seeds -- --ignored`.
#[test]
#[ignore = "writes fuzz/corpus/virtio_blk"]
fn write_fuzz_seeds() {
    use super::fuzz::{encode, DATA_ADDR};
    let (h, d, s) = (DATA_ADDR, DATA_ADDR + 0x100, DATA_ADDR + 0x80);
    let hdr = |t: u32, sector: u64| {
        let mut v = t.to_le_bytes().to_vec();
        v.extend_from_slice(&[0; 4]);
        v.extend_from_slice(&sector.to_le_bytes());
        v
    };
    let chain3 = |data_flags: u16, len: u32| {
        vec![(h, 16, F_NEXT, 1), (d, len, data_flags | F_NEXT, 2), (s, 1, F_WRITE, 0)]
    };
    let seg = segment(4, 8, 1);
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("write", encode(2, &chain3(0, 512), &[0], &[(h, &hdr(1, 3)), (d, &[0x5a; 512])])),
        ("read", encode(3, &chain3(F_WRITE, 1024), &[0], &[(h, &hdr(0, 1))])),
        ("flush", encode(2, &[(h, 16, F_NEXT, 1), (s, 1, F_WRITE, 0)], &[0], &[(h, &hdr(4, 0))])),
        ("get_id", encode(0, &chain3(F_WRITE, 20), &[0], &[(h, &hdr(8, 0))])),
        ("write_zeroes", encode(8, &chain3(0, 16), &[0], &[(h, &hdr(13, 0)), (d, &seg)])),
        ("discard", encode(8, &chain3(0, 16), &[0], &[(h, &hdr(11, 0)), (d, &segment(0, 8, 0))])),
        ("read_only_write", encode(4, &chain3(0, 512), &[0], &[(h, &hdr(1, 0))])),
        (
            "loop",
            encode(0, &[(h, 16, F_NEXT, 1), (s, 1, F_WRITE | F_NEXT, 0)], &[0], &[(h, &hdr(0, 0))]),
        ),
        ("indirect", {
            let table: Vec<u8> = [
                (h, 16u32, F_NEXT, 1u16),
                (h + 0x200, 512, F_WRITE | F_NEXT, 2),
                (s, 1, F_WRITE, 0),
            ]
            .iter()
            .flat_map(|&(a, l, f, n)| {
                let mut e = a.to_le_bytes().to_vec();
                e.extend_from_slice(&l.to_le_bytes());
                e.extend_from_slice(&f.to_le_bytes());
                e.extend_from_slice(&n.to_le_bytes());
                e
            })
            .collect();
            encode(0, &[(d, 48, F_INDIRECT, 0)], &[0], &[(h, &hdr(0, 0)), (d, &table)])
        }),
        ("out_of_range", encode(0, &chain3(F_WRITE, 512), &[0, 0], &[(h, &hdr(0, 1 << 40))])),
        ("avail_ahead", {
            let mut v = encode(0, &chain3(0, 512), &[0], &[(h, &hdr(1, 0))]);
            v[257] = 200;
            v
        }),
    ];
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
