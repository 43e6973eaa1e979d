//! Guest RAM layout: which ranges hold RAM for a given size, and the e820 map guests see.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout::*;

/// Smallest `--memory` accepted.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Largest `--memory` accepted (bounded further by the host's physical address width).
pub const MAX_MEMORY: u64 = 1 << 40;

/// Errors from laying out guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Size outside the supported range.
    #[error("Guest memory size {size} bytes is outside the supported range {MIN_MEMORY}..={MAX_MEMORY} bytes (16 MiB to 1 TiB)")]
    BadSize {
        /// The requested size.
        size: u64,
    },
    /// Size not a multiple of 4 KiB.
    #[error("Guest memory size {size} bytes is not a multiple of 4 KiB")]
    Unaligned {
        /// The requested size.
        size: u64,
    },
    /// The host could not reserve the address space.
    #[error("Cannot reserve {size} bytes of guest memory on the host")]
    Mmap {
        /// The requested size.
        size: u64,
        /// Why.
        #[source]
        cause: vm_memory::mmap::FromRangesError,
    },
}

/// The RAM ranges for `size` bytes: up to 3 GiB below the MMIO hole, the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Result<Vec<(GuestAddress, u64)>, MemoryError> {
    if !(MIN_MEMORY..=MAX_MEMORY).contains(&size) {
        return Err(MemoryError::BadSize { size });
    }
    if !size.is_multiple_of(4096) {
        return Err(MemoryError::Unaligned { size });
    }
    let low = size.min(MMIO_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if size > low {
        ranges.push((GuestAddress(RAM_ABOVE_4G), size - low));
    }
    Ok(ranges)
}

/// Reserves guest memory (anonymous, `MAP_NORESERVE`, not pre-faulted: pages are taken from
/// the host only as the guest touches them).
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)?
        .into_iter()
        .map(|(a, l)| (a, usize::try_from(l).expect("64-bit host")))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|cause| MemoryError::Mmap { size, cause })
}

/// e820 entry types (ACPI 6.5 §15, Table 15.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Type {
    /// Usable RAM.
    Ram = 1,
    /// Reserved, not to be used by the OS.
    Reserved = 2,
}

/// One entry of the memory map handed to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Type.
    pub kind: E820Type,
}

/// The memory map for `size` bytes of RAM: conventional memory, the EBDA and BIOS area with
/// the ACPI tables (reserved), RAM from 1 MiB to the hole, and RAM above 4 GiB.
pub fn e820_map(size: u64) -> Vec<E820Entry> {
    let low_end = size.min(MMIO_HOLE_START);
    let mut map = vec![
        E820Entry { addr: 0, size: EBDA_START, kind: E820Type::Ram },
        E820Entry { addr: EBDA_START, size: LOW_RAM_END - EBDA_START, kind: E820Type::Reserved },
        E820Entry { addr: ACPI_START, size: HIGH_RAM_START - ACPI_START, kind: E820Type::Reserved },
    ];
    if low_end > HIGH_RAM_START {
        map.push(E820Entry {
            addr: HIGH_RAM_START,
            size: low_end - HIGH_RAM_START,
            kind: E820Type::Ram,
        });
    }
    map.push(E820Entry { addr: PCI_ECAM_START, size: PCI_ECAM_SIZE, kind: E820Type::Reserved });
    if size > low_end {
        map.push(E820Entry { addr: RAM_ABOVE_4G, size: size - low_end, kind: E820Type::Ram });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guests_live_below_the_hole() {
        let r = ram_ranges(256 << 20).unwrap();
        assert_eq!(r, vec![(GuestAddress(0), 256 << 20)]);
        let map = e820_map(256 << 20);
        let ram: u64 = map.iter().filter(|e| e.kind == E820Type::Ram).map(|e| e.size).sum();
        assert_eq!(ram, (256 << 20) - (HIGH_RAM_START - EBDA_START));
    }

    #[test]
    fn large_guests_continue_above_4g() {
        let r = ram_ranges(6 << 30).unwrap();
        assert_eq!(r, vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 3 << 30)]);
        let last = *e820_map(6 << 30).last().unwrap();
        assert_eq!((last.addr, last.size), (4 << 30, 3 << 30));
    }

    #[test]
    fn rejects_zero_tiny_huge_and_unaligned_sizes() {
        assert!(matches!(ram_ranges(0), Err(MemoryError::BadSize { .. })));
        assert!(matches!(ram_ranges(1 << 20), Err(MemoryError::BadSize { .. })));
        assert!(matches!(ram_ranges(MAX_MEMORY + 4096), Err(MemoryError::BadSize { .. })));
        assert!(matches!(ram_ranges((128 << 20) + 1), Err(MemoryError::Unaligned { .. })));
    }

    #[test]
    fn sixty_four_gib_is_reserved_without_being_touched() {
        let mem = create_guest_memory(64 << 30).unwrap();
        use vm_memory::GuestMemoryBackend;
        assert_eq!(mem.num_regions(), 2);
    }
}
