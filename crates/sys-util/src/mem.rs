//! Giving guest memory pages back to the host kernel (balloon inflation).

use std::io;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// The host page size that [`discard`] needs its ranges aligned to.
pub fn page_size() -> usize {
    // SAFETY: sysconf reads a process-wide constant and touches no memory of ours.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// Drops the host pages behind `slice` (`madvise(MADV_DONTNEED)`), so the process's resident
/// memory falls. The range stays mapped: private anonymous memory reads back as zeros on the
/// next touch, file- or shm-backed memory reads back its backing contents. `slice` must start
/// and end on host page boundaries (`EINVAL` otherwise); locked or huge-page mappings also
/// fail with `EINVAL`. The dirty bitmap, if any, marks the whole range written.
pub fn discard<B: BitmapSlice>(slice: &VolatileSlice<'_, B>) -> io::Result<()> {
    if slice.is_empty() {
        return Ok(());
    }
    let guard = slice.ptr_guard_mut();
    // SAFETY: the range is `slice.len()` bytes of a live mapping that `slice` borrows for the
    // duration of the call. A `VolatileSlice` is memory that may change under us at any time
    // (guest RAM) and is never reached through Rust references, so replacing its contents with
    // zeros or the backing file's bytes cannot break an aliasing or validity assumption, and
    // MADV_DONTNEED keeps the mapping itself in place, so no pointer into it dangles.
    let rc = unsafe { libc::madvise(guard.as_ptr().cast(), slice.len(), libc::MADV_DONTNEED) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    slice.bitmap().mark_dirty(0, slice.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    #[test]
    fn discarded_anonymous_pages_read_back_zero() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_slice(&[0xa5; 0x10000], GuestAddress(0)).unwrap();
        let ps = page_size() as u64;
        discard(&mem.get_slice(GuestAddress(ps), ps as usize).unwrap()).unwrap();
        let mut page = vec![0u8; ps as usize];
        mem.read_slice(&mut page, GuestAddress(ps)).unwrap();
        assert!(page.iter().all(|&b| b == 0));
        mem.read_slice(&mut page, GuestAddress(0)).unwrap();
        assert!(page.iter().all(|&b| b == 0xa5), "neighbouring pages are untouched");
    }

    #[test]
    fn misaligned_ranges_are_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let err = discard(&mem.get_slice(GuestAddress(1), 100).unwrap()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }
}
