//! One `readv(2)` straight into guest memory: the virtio-net receive path reads a TAP frame
//! into the guest's buffers without an intermediate host copy.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, Permissions, VolatileSlice};

/// Most guest memory pieces [`read_into_guest`] takes (ranges split where guest memory
/// regions end count once per piece).
pub const MAX_GUEST_SEGMENTS: usize = 32;

/// Reads once from `fd` into the guest `ranges` in order and then into `tail`, with a single
/// `readv`. Returns what the call returned: for a TAP, the frame's whole length, which exceeds
/// the room given when the frame was truncated. `InvalidInput` when a range is not writable
/// guest memory or the ranges need more than [`MAX_GUEST_SEGMENTS`] pieces; nothing is read
/// then.
pub fn read_into_guest(
    fd: BorrowedFd<'_>,
    mem: &GuestMemoryMmap,
    ranges: &[(GuestAddress, usize)],
    tail: &mut [u8],
) -> io::Result<usize> {
    let too_many = || io::Error::new(io::ErrorKind::InvalidInput, "too many guest segments");
    let mut slices: [Option<VolatileSlice<'_>>; MAX_GUEST_SEGMENTS] = [None; MAX_GUEST_SEGMENTS];
    let mut count = 0usize;
    for &(addr, len) in ranges {
        let pieces = mem
            .get_slices(addr, len, Permissions::Write)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        for piece in pieces {
            let piece = piece.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            *slices.get_mut(count).ok_or_else(too_many)? = Some(piece);
            count += 1;
        }
    }
    // Guards keep each slice's pointer valid (a no-op for plain mmap regions) until readv
    // has returned.
    let guards: [Option<_>; MAX_GUEST_SEGMENTS] =
        std::array::from_fn(|i| slices[i].as_ref().map(|s| s.ptr_guard_mut()));
    let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
    let mut iov = [empty; MAX_GUEST_SEGMENTS + 1];
    for (slot, guard) in iov.iter_mut().zip(guards.iter().flatten()) {
        *slot = libc::iovec { iov_base: guard.as_ptr().cast(), iov_len: guard.len() };
    }
    iov[count] = libc::iovec { iov_base: tail.as_mut_ptr().cast(), iov_len: tail.len() };
    // SAFETY: the first `count` iovecs describe guest memory that `slices` borrows from `mem`
    // for this whole call (each writable, its exact length, its guard alive until after the
    // call); guest RAM is only ever accessed volatilely, never through Rust references, so the
    // kernel writing it cannot break an aliasing assumption. The last iovec is `tail`, borrowed
    // mutably for the call. `count + 1 <= iov.len()`, and the kernel writes nothing past the
    // lengths given.
    let n = unsafe { libc::readv(fd.as_raw_fd(), iov.as_ptr(), (count + 1) as libc::c_int) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize; // non-negative, checked above
    let mut left = n;
    for slice in slices.iter().flatten() {
        let written = left.min(slice.len());
        slice.bitmap().mark_dirty(0, written);
        left -= written;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;
    use vm_memory::Bytes;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)])
            .unwrap()
    }

    #[test]
    fn a_datagram_is_scattered_over_guest_ranges_across_regions_then_the_tail() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let msg: Vec<u8> = (0..40u8).collect();
        a.send(&msg).unwrap();
        let m = mem();
        let mut tail = [0u8; 16];

        let ranges = [(GuestAddress(0xff8), 16), (GuestAddress(0x100), 4)];
        let n = read_into_guest(b.as_fd(), &m, &ranges, &mut tail).unwrap();

        assert_eq!(n, 36, "a datagram socket reports what it copied (a TAP the whole frame)");
        let mut got = [0u8; 16];
        m.read_slice(&mut got, GuestAddress(0xff8)).unwrap();
        assert_eq!(got[..], msg[..16], "split over the two regions");
        let mut got = [0u8; 4];
        m.read_slice(&mut got, GuestAddress(0x100)).unwrap();
        assert_eq!(got[..], msg[16..20]);
        assert_eq!(tail[..], msg[20..36]);
    }

    #[test]
    fn ranges_outside_guest_memory_or_too_many_read_nothing() {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.send(b"frame").unwrap();
        let m = mem();
        let mut tail = [0u8; 8];

        let outside = [(GuestAddress(0x1f00), 0x200)];
        let err = read_into_guest(b.as_fd(), &m, &outside, &mut tail).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let many = vec![(GuestAddress(0), 1); MAX_GUEST_SEGMENTS + 1];
        let err = read_into_guest(b.as_fd(), &m, &many, &mut tail).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);

        let n = read_into_guest(b.as_fd(), &m, &[], &mut tail).unwrap();
        assert_eq!((n, &tail[..5]), (5, &b"frame"[..]), "the datagram is still queued");
    }
}
