//! Opening, locking and accessing disk images: raw files and block devices with positional
//! I/O, qcow2 through `imago` (its synchronous build). Knows nothing about virtio.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{FormatAccess, StorageOpenOptions};
use nix::errno::Errno;
use nix::fcntl::{fallocate, fcntl, FallocateFlags, FcntlArg};

use super::{BlockConfig, BlockError, DiskFormat, SECTOR_SIZE};

/// Most images followed down a qcow2 backing chain (also stops chains that loop).
pub(crate) const MAX_BACKING_DEPTH: usize = 16;

type Image = FormatAccess<imago::file::File>;

enum Backend {
    /// Raw file or block device: pread/pwrite at the guest offset.
    Raw(File),
    /// qcow2 (with its backing chain, if any).
    Qcow2(Box<Image>),
}

/// An open, locked disk image.
pub(crate) struct Disk {
    backend: Backend,
    capacity_bytes: u64,
    writable: bool,
    /// Set once the host file system refused fallocate, so later requests skip straight to the
    /// fallback.
    no_fallocate: bool,
}

/// Opens the image `cfg` describes, locked against other VMMs.
pub(crate) fn open(cfg: &BlockConfig) -> Result<Disk, BlockError> {
    let writable = !cfg.readonly;
    let file = open_locked(&cfg.path, writable, cfg.direct)?;
    let (backend, capacity_bytes) = match cfg.format {
        DiskFormat::Raw => {
            let size = file_size(&file)
                .map_err(|cause| BlockError::Size { path: cfg.path.clone(), cause })?;
            (Backend::Raw(file), size)
        }
        DiskFormat::Qcow2 => {
            let image = open_qcow2(&cfg.path, file, writable, cfg, 0)?;
            let size = image.size();
            (Backend::Qcow2(Box::new(image)), size)
        }
    };
    if !capacity_bytes.is_multiple_of(SECTOR_SIZE) {
        return Err(BlockError::Misaligned { path: cfg.path.clone(), len: capacity_bytes });
    }
    Ok(Disk { backend, capacity_bytes, writable, no_fallocate: false })
}

/// Opens `path` (O_RDONLY unless `writable`, O_DIRECT if `direct`) and takes the OFD lock.
fn open_locked(path: &Path, writable: bool, direct: bool) -> Result<File, BlockError> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(writable);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    let file = opts.open(path).map_err(|cause| BlockError::Open { path: path.into(), cause })?;
    match ofd_lock(&file, writable) {
        Ok(()) => Ok(file),
        Err(Errno::EAGAIN | Errno::EACCES) => Err(BlockError::InUse { path: path.into() }),
        Err(e) => Err(BlockError::Lock { path: path.into(), cause: e.into() }),
    }
}

/// Takes an open-file-description lock on the whole file, without waiting: exclusive (write)
/// for images we write, shared (read) otherwise. It lives as long as the file description, so
/// closing the image (or the VMM exiting) releases it.
fn ofd_lock(file: &File, exclusive: bool) -> nix::Result<()> {
    let lock_type = if exclusive { libc::F_WRLCK } else { libc::F_RDLCK };
    let request = libc::flock {
        l_type: lock_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0, // to the end of the file, however long it grows
        l_pid: 0, // must be 0 for OFD locks
    };
    fcntl(file, FcntlArg::F_OFD_SETLK(&request)).map(drop)
}

/// Length of a regular file, or of a block device (by seeking to its end).
fn file_size(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        let mut f = file;
        f.seek(SeekFrom::End(0))
    } else {
        Ok(meta.len())
    }
}

fn imago_storage(
    path: &Path,
    file: File,
    writable: bool,
    direct: bool,
) -> io::Result<imago::file::File> {
    let opts = StorageOpenOptions::new().filename(path).write(writable).direct(direct);
    imago::file::File::from_open_file(file, opts)
}

/// Opens one qcow2 layer on an already locked `file`, then (recursively) its backing chain,
/// each backing file locked shared and opened read-only. Nothing is opened implicitly by
/// imago: external data files are refused and backing formats must be recorded in the header.
fn open_qcow2(
    path: &Path,
    file: File,
    writable: bool,
    cfg: &BlockConfig,
    depth: usize,
) -> Result<Image, BlockError> {
    let qcow2_err = |cause| BlockError::Qcow2 { path: path.into(), cause };
    let storage = imago_storage(path, file, writable, cfg.direct).map_err(qcow2_err)?;
    let mut image = Qcow2::<imago::file::File>::open_image(storage, writable).map_err(qcow2_err)?;
    if image.requires_external_data_file() {
        return Err(BlockError::ExternalDataFile { path: path.into() });
    }
    image.set_data_file(None);
    let backing = match image.implicit_backing_file().cloned() {
        None => None,
        Some(name) => Some(open_backing(path, &image, name, cfg, depth)?),
    };
    image.set_backing(backing);
    Ok(FormatAccess::new(image))
}

fn open_backing(
    path: &Path,
    image: &Qcow2<imago::file::File>,
    name: String,
    cfg: &BlockConfig,
    depth: usize,
) -> Result<Image, BlockError> {
    if !cfg.allow_backing {
        return Err(BlockError::BackingNotAllowed { path: path.into(), backing: name });
    }
    if depth + 1 >= MAX_BACKING_DEPTH {
        return Err(BlockError::BackingChainTooDeep {
            path: cfg.path.clone(),
            max: MAX_BACKING_DEPTH,
        });
    }
    let Some(format) = image.implicit_backing_format().cloned() else {
        return Err(BlockError::BackingFormatMissing { path: path.into(), backing: name });
    };
    let backing_path = resolve_backing(path, &name);
    match format.as_str() {
        "raw" | "file" => {
            let file = open_locked(&backing_path, false, cfg.direct)?;
            let raw_err = |cause| BlockError::Open { path: backing_path.clone(), cause };
            let storage = imago_storage(&backing_path, file, false, cfg.direct).map_err(raw_err)?;
            let raw = Raw::open_image(storage, false).map_err(raw_err)?;
            Ok(FormatAccess::new(raw))
        }
        "qcow2" => {
            let file = open_locked(&backing_path, false, cfg.direct)?;
            open_qcow2(&backing_path, file, false, cfg, depth + 1)
        }
        _ => Err(BlockError::BackingFormatUnsupported { path: path.into(), backing: name, format }),
    }
}

/// Backing file names are relative to the directory of the image that names them (as QEMU
/// resolves them).
fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let name = Path::new(name);
    if name.is_absolute() {
        return name.into();
    }
    match image.parent() {
        Some(dir) => dir.join(name),
        None => name.into(),
    }
}

fn off_t(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Whether fallocate failed because the host cannot do it here (rather than an I/O error).
fn fallocate_unsupported(e: Errno) -> bool {
    matches!(e, Errno::EOPNOTSUPP | Errno::EINVAL | Errno::ENODEV | Errno::ENOSYS)
}

impl Disk {
    /// Size in bytes, a multiple of [`SECTOR_SIZE`].
    pub(crate) fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Reads exactly `buf.len()` bytes at `offset` (already checked against the capacity).
    pub(crate) fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.backend {
            Backend::Raw(f) => f.read_exact_at(buf, offset),
            Backend::Qcow2(img) => img.read(buf, offset),
        }
    }

    /// Writes all of `buf` at `offset` (already checked against the capacity).
    pub(crate) fn write(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match &self.backend {
            Backend::Raw(f) => f.write_all_at(buf, offset),
            Backend::Qcow2(img) => img.write(buf, offset),
        }
    }

    /// Makes every completed write durable: fdatasync for raw images, metadata write-back plus
    /// sync for qcow2.
    pub(crate) fn sync(&self) -> io::Result<()> {
        match &self.backend {
            Backend::Raw(f) => f.sync_data(),
            Backend::Qcow2(img) => {
                img.flush()?;
                img.sync()
            }
        }
    }

    /// Writes back cached qcow2 metadata (no sync); a no-op for raw images.
    pub(crate) fn flush_caches(&self) -> io::Result<()> {
        match &self.backend {
            Backend::Qcow2(img) if self.writable => img.flush(),
            _ => Ok(()),
        }
    }

    /// Deallocates the range if the host can; reads of it may return anything afterwards
    /// (§5.2.6.2: the device MAY deallocate).
    pub(crate) fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        match &mut self.backend {
            Backend::Raw(f) => {
                if self.no_fallocate {
                    return Ok(());
                }
                let mode =
                    FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
                match fallocate(&*f, mode, off_t(offset)?, off_t(len)?) {
                    Ok(()) => Ok(()),
                    Err(e) if fallocate_unsupported(e) => {
                        self.no_fallocate = true;
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Backend::Qcow2(img) => match img.discard_to_any(offset, len) {
                Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(()),
                r => r,
            },
        }
    }

    /// Makes the range read as zeroes, deallocating it when `unmap` allows. `zeroes` is a
    /// zero-filled (aligned) buffer for hosts that cannot do it with fallocate.
    pub(crate) fn write_zeroes(
        &mut self,
        offset: u64,
        len: u64,
        unmap: bool,
        zeroes: &[u8],
    ) -> io::Result<()> {
        match &mut self.backend {
            Backend::Raw(f) => {
                if !self.no_fallocate {
                    let mode = if unmap {
                        FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    } else {
                        FallocateFlags::FALLOC_FL_ZERO_RANGE
                    } | FallocateFlags::FALLOC_FL_KEEP_SIZE;
                    match fallocate(&*f, mode, off_t(offset)?, off_t(len)?) {
                        Ok(()) => return Ok(()),
                        Err(e) if fallocate_unsupported(e) => self.no_fallocate = true,
                        Err(e) => return Err(e.into()),
                    }
                }
                write_zero_chunks(f, offset, len, zeroes)
            }
            Backend::Qcow2(img) if unmap => img.discard_to_zero(offset, len),
            Backend::Qcow2(img) => img.write_zeroes(offset, len),
        }
    }
}

fn write_zero_chunks(f: &File, offset: u64, len: u64, zeroes: &[u8]) -> io::Result<()> {
    if zeroes.is_empty() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(zeroes.len() as u64);
        // `n` fits the buffer, so the cast and the slice are in range.
        f.write_all_at(&zeroes[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}

impl Disk {
    /// A raw, unlocked disk over an already open file (the fuzz harness uses a memfd).
    pub(crate) fn from_raw_file(file: File) -> io::Result<Disk> {
        let capacity_bytes = file_size(&file)? / SECTOR_SIZE * SECTOR_SIZE;
        Ok(Disk {
            backend: Backend::Raw(file),
            capacity_bytes,
            writable: true,
            no_fallocate: false,
        })
    }
}

#[cfg(test)]
impl Disk {
    /// Makes the disk behave like a host without fallocate (tests of the fallback path).
    pub(crate) fn force_no_fallocate(&mut self) {
        self.no_fallocate = true;
    }
}
