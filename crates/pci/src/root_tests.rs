use super::*;
use crate::test_util::{TestDevice, DATA_BAR, DATA_BAR_SIZE, MSIX_BAR};
use ironvirt_vm_bus::BusDevice;

const MMIO64: AddressWindow = AddressWindow { base: 0x1_0000_0000, size: 0x10_0000_0000 };

fn windows() -> PciWindows {
    PciWindows { mmio32: PciWindows::DEFAULT_MMIO32, mmio64: Some(MMIO64), io: None }
}

fn at(device: u8) -> PciAddress {
    PciAddress { bus: 0, device, function: 0 }
}

fn read32(root: &PciRoot, addr: PciAddress, offset: u16) -> u32 {
    let mut b = [0u8; 4];
    root.config_read(addr, offset, &mut b);
    u32::from_le_bytes(b)
}

/// A device with one BAR of the given kind and size.
struct BarOnly(ConfigSpace);

impl BarOnly {
    fn shared(kind: BarKind, size: u64) -> SharedPciDevice {
        let mut cs = ConfigSpace::new(&crate::test_util::TEST_IDS);
        cs.add_bar(0, kind, size).unwrap();
        Arc::new(Mutex::new(BarOnly(cs)))
    }
}

impl PciDevice for BarOnly {
    fn config(&self) -> &ConfigSpace {
        &self.0
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.0
    }
    fn read_bar(&mut self, _: u8, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn write_bar(&mut self, _: u8, _: u64, _: &[u8]) {}
}

#[test]
fn host_bridge_sits_at_00_0() {
    let root = PciRoot::new(windows()).unwrap();
    assert_eq!(read32(&root, at(0), 0x00), 0x0008_1b36);
    assert_eq!(read32(&root, at(0), 0x08) >> 8, 0x06_00_00);
    assert_eq!(read32(&root, at(0), 0x0c) >> 16 & 0xff, 0, "type 0 header");
    assert_eq!(read32(&root, at(0), 0x10), 0, "no BARs");
}

#[test]
fn absent_functions_and_other_buses_read_all_ones_and_ignore_writes() {
    let mut root = PciRoot::new(windows()).unwrap();
    root.add_device(TestDevice::shared()).unwrap();
    for addr in [
        at(2),
        at(31),
        PciAddress { bus: 0, device: 1, function: 1 },
        PciAddress { bus: 1, device: 0, function: 0 },
        PciAddress { bus: 255, device: 1, function: 0 },
        PciAddress { bus: 0, device: 32, function: 0 },
    ] {
        root.config_write(addr, 0x04, &[0xff; 4]);
        assert_eq!(read32(&root, addr, 0x00), u32::MAX, "{addr:?}");
    }
    assert_eq!(read32(&root, at(1), 0x04) & 0xffff, 0, "slot 1 untouched");
    assert_eq!(read32(&root, at(1), 0x1000), u32::MAX, "past 4 KiB");
    let mut odd = [0u8; 3];
    root.config_read(at(1), 0, &mut odd);
    assert_eq!(odd, [0xff; 3]);
}

#[test]
fn add_device_allocates_naturally_aligned_bars_in_the_right_windows() {
    let mut root = PciRoot::new(windows()).unwrap();
    let dev = TestDevice::shared();
    assert_eq!(root.add_device(dev.clone()).unwrap(), 1);
    let bars = dev.lock().unwrap().config.bars();
    let msix = bars.iter().find(|b| b.index == MSIX_BAR).unwrap();
    let data = bars.iter().find(|b| b.index == DATA_BAR).unwrap();
    assert!((0xc000_0000..0xe000_0000).contains(&msix.address));
    assert_eq!(msix.address % msix.size, 0);
    assert!(data.address >= MMIO64.base && data.address + data.size <= MMIO64.end());
    assert_eq!(data.address % DATA_BAR_SIZE, 0);
    assert_eq!(read32(&root, at(1), 0x10) as u64, msix.address);
    assert_eq!(read32(&root, at(1), 0x1c) as u64, data.address >> 32);

    let second = BarOnly::shared(BarKind::Memory32 { prefetchable: false }, 0x1000);
    assert_eq!(root.add_device(second.clone()).unwrap(), 2);
    let b = second.lock().unwrap().config().bar(0).unwrap();
    assert_ne!(b.address, msix.address, "no overlap");
}

#[test]
fn thirty_one_devices_fit_and_the_thirty_second_is_refused() {
    let mut root = PciRoot::new(windows()).unwrap();
    for slot in 1..=31u8 {
        assert_eq!(root.add_device(TestDevice::shared()).unwrap(), slot);
    }
    assert_eq!(root.add_device(TestDevice::shared()), Err(PciError::NoFreeSlot));
    assert_eq!(read32(&root, at(31), 0x00), 0x1041_1af4);
    assert!(root.device(31).is_some() && root.device(32).is_none());
}

#[test]
fn exhausted_window_is_an_error_and_gives_back_partial_allocations() {
    let small = PciWindows {
        mmio32: AddressWindow { base: 0xc000_0000, size: 0x2000 },
        mmio64: Some(AddressWindow { base: 0x1_0000_0000, size: 0x1_0000 }),
        io: None,
    };
    let mut root = PciRoot::new(small).unwrap();
    root.add_device(TestDevice::shared()).unwrap();
    // The next TestDevice's 4 KiB BAR still fits, its 64 KiB BAR does not (largest first,
    // so nothing is allocated before the failure either way).
    assert_eq!(
        root.add_device(TestDevice::shared()),
        Err(PciError::WindowExhausted {
            bar: DATA_BAR,
            size: DATA_BAR_SIZE,
            window: "64-bit MMIO"
        })
    );
    let four_k = BarOnly::shared(BarKind::Memory32 { prefetchable: false }, 0x1000);
    assert_eq!(
        root.add_device(four_k).unwrap(),
        2,
        "the failed device left no slot or space behind"
    );
    let more = BarOnly::shared(BarKind::Memory32 { prefetchable: false }, 0x1000);
    assert_eq!(
        root.add_device(more),
        Err(PciError::WindowExhausted { bar: 0, size: 0x1000, window: "32-bit MMIO" })
    );
}

#[test]
fn io_bars_need_an_io_window() {
    let mut root = PciRoot::new(windows()).unwrap();
    assert_eq!(
        root.add_device(BarOnly::shared(BarKind::Io, 0x20)),
        Err(PciError::NoIoWindow { bar: 0 })
    );
    let mut with_io = windows();
    with_io.io = Some(AddressWindow { base: 0xc000, size: 0x1000 });
    let mut root = PciRoot::new(with_io).unwrap();
    let dev = BarOnly::shared(BarKind::Io, 0x20);
    root.add_device(dev.clone()).unwrap();
    let bar = dev.lock().unwrap().config().bar(0).unwrap();
    assert_eq!((bar.address, read32(&root, at(1), 0x10)), (0xc000, 0xc001));
    let (_, _, mut io) =
        root.bar_dispatchers().into_iter().find(|(s, _, _)| *s == BarSpace::Io).unwrap();
    let mut b = [0u8; 1];
    io.read(0x1f, &mut b);
    assert_eq!(b, [0x1f]);
}

#[test]
fn memory64_bars_fall_back_to_the_32_bit_window() {
    let mut root = PciRoot::new(PciWindows { mmio64: None, ..windows() }).unwrap();
    let dev = BarOnly::shared(BarKind::Memory64 { prefetchable: false }, 0x4000);
    root.add_device(dev.clone()).unwrap();
    let addr = dev.lock().unwrap().config().bar(0).unwrap().address;
    assert!((0xc000_0000..0xe000_0000).contains(&addr));
    assert_eq!(root.bar_dispatchers().len(), 1);
}

#[test]
fn windows_are_validated() {
    let bad32 =
        PciWindows { mmio32: AddressWindow { base: 0xf000_0000, size: 0x2000_0000 }, ..windows() };
    assert!(matches!(PciRoot::new(bad32), Err(PciError::Window { window: "32-bit MMIO", .. })));
    let empty = PciWindows { mmio32: AddressWindow { base: 0xc000_0000, size: 0 }, ..windows() };
    assert!(matches!(PciRoot::new(empty), Err(PciError::Window { .. })));
    let wraps = PciWindows { mmio64: Some(AddressWindow { base: u64::MAX, size: 2 }), ..windows() };
    assert!(matches!(PciRoot::new(wraps), Err(PciError::Window { window: "64-bit MMIO", .. })));
    let io = PciWindows { io: Some(AddressWindow { base: 0xf000, size: 0x2000 }), ..windows() };
    assert!(matches!(PciRoot::new(io), Err(PciError::Window { window: "I/O", .. })));
}

#[test]
fn default_64_bit_window_starts_above_ram_and_4_gib() {
    let small = PciWindows::above_ram(1 << 30);
    assert_eq!(small.mmio64.unwrap().base, 1 << 32);
    let big = PciWindows::above_ram((6 << 30) + 1);
    assert_eq!(big.mmio64.unwrap(), AddressWindow { base: 7 << 30, size: 64 << 30 });
    assert_eq!(big.mmio32, PciWindows::DEFAULT_MMIO32);
    PciRoot::new(big).unwrap();
}

#[test]
fn guest_relocation_moves_the_bar_map_and_reaches_the_hook() {
    let mut root = PciRoot::new(windows()).unwrap();
    let dev = BarOnly::shared(BarKind::Memory32 { prefetchable: false }, 0x1000);
    root.add_device(dev).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook_seen = seen.clone();
    root.set_relocation_hook(move |r, device| {
        let now = device.lock().unwrap().config().bar(r.bar.index).unwrap().address;
        assert_eq!(now, r.bar.new, "the device is unlocked and already moved");
        hook_seen.lock().unwrap().push(*r);
    });
    let old = u64::from(read32(&root, at(1), 0x10));
    let mut bars = root.bars(BarSpace::Memory, 0);

    let mut b = [0u8; 1];
    bars.read(old + 5, &mut b);
    assert_eq!(b, [5]);

    // Sizing then restoring moves nothing.
    root.config_write(at(1), 0x10, &[0xff; 4]);
    root.config_write(at(1), 0x10, &(old as u32).to_le_bytes());
    assert!(seen.lock().unwrap().is_empty());

    let new = 0xd000_0000u64;
    root.config_write(at(1), 0x10, &(new as u32).to_le_bytes());
    let relocations = seen.lock().unwrap().clone();
    assert_eq!(relocations.len(), 1);
    assert_eq!(
        (relocations[0].slot, relocations[0].bar.old, relocations[0].bar.new),
        (1, old, new)
    );

    let mut b = [0xaau8; 1];
    bars.read(old + 5, &mut b);
    assert_eq!(b, [0xaa], "the old range no longer routes");
    bars.read(new + 7, &mut b);
    assert_eq!(b, [7]);
    let mut straddle = [0xaau8; 4];
    bars.read(new + 0xffe, &mut straddle);
    assert_eq!(straddle, [0xaa; 4], "an access crossing the BAR end is not routed");
}

#[test]
fn reset_resets_every_device() {
    let mut root = PciRoot::new(windows()).unwrap();
    root.add_device(TestDevice::shared()).unwrap();
    root.config_write(at(1), 0x04, &[0x06, 0]);
    assert_eq!(read32(&root, at(1), 0x04) & 0xffff, 6);
    root.reset();
    assert_eq!(read32(&root, at(1), 0x04) & 0xffff, 0);
}
