use super::*;
use crate::test_util::{RecordingSink, Rng, SinkEvent, TestDevice, DATA_BAR, MSIX_BAR, PBA_OFFSET};
use crate::{AddressWindow, BarSpace, MsiMessage, PciBars, PciWindows};

const MMIO64: AddressWindow = AddressWindow { base: 0x1_0000_0000, size: 0x1_0000_0000 };

fn root_with_devices(n: usize) -> (Arc<Mutex<PciRoot>>, Vec<Arc<RecordingSink>>) {
    let windows = PciWindows {
        mmio32: PciWindows::DEFAULT_MMIO32,
        mmio64: Some(MMIO64),
        io: Some(AddressWindow { base: 0xc000, size: 0x1000 }),
    };
    let mut root = PciRoot::new(windows).unwrap();
    let mut sinks = Vec::new();
    for _ in 0..n {
        let sink = Arc::new(RecordingSink::default());
        root.add_device(Arc::new(Mutex::new(TestDevice::new(sink.clone())))).unwrap();
        sinks.push(sink);
    }
    (Arc::new(Mutex::new(root)), sinks)
}

fn cf8(bus: u32, dev: u32, func: u32, reg: u32) -> [u8; 4] {
    (0x8000_0000 | bus << 16 | dev << 11 | func << 8 | reg).to_le_bytes()
}

fn io_read(io: &mut PciConfigIo, port: u64, len: usize) -> u32 {
    let mut b = [0u8; 4];
    io.read(port - 0xcf8, &mut b[..len]);
    u32::from_le_bytes(b) & (u32::MAX >> (32 - 8 * len as u32))
}

#[test]
fn config_address_latches_only_dword_writes_and_masks_reserved_bits() {
    let (root, _) = root_with_devices(0);
    let mut io = PciConfigIo::new(root);
    io.write(0, &0xffff_ffffu32.to_le_bytes());
    assert_eq!(io_read(&mut io, 0xcf8, 4), 0x80ff_fffc);
    io.write(0, &0x8000_0000u32.to_le_bytes());
    assert_eq!(io_read(&mut io, 0xcf8, 4), 0x8000_0000, "the mechanism #1 probe reads back");
    io.write(3, &[0x01]);
    io.write(2, &[0x12, 0x34]);
    assert_eq!(io_read(&mut io, 0xcf8, 4), 0x8000_0000, "byte/word writes do not latch");
    assert_eq!(io_read(&mut io, 0xcfb, 1), 0x80);
    assert_eq!(io_read(&mut io, 0xcfa, 2), 0x8000);
}

#[test]
fn config_data_serves_every_access_size_at_every_port() {
    let (root, _) = root_with_devices(1);
    let mut io = PciConfigIo::new(root);
    io.write(0, &cf8(0, 1, 0, 0x00));
    assert_eq!(io_read(&mut io, 0xcfc, 4), 0x1041_1af4);
    assert_eq!(io_read(&mut io, 0xcfc, 2), 0x1af4);
    assert_eq!(io_read(&mut io, 0xcfe, 2), 0x1041);
    assert_eq!(io_read(&mut io, 0xcfc, 1), 0xf4);
    assert_eq!(io_read(&mut io, 0xcfd, 1), 0x1a);
    assert_eq!(io_read(&mut io, 0xcfe, 1), 0x41);
    assert_eq!(io_read(&mut io, 0xcff, 1), 0x10);
    assert_eq!(io_read(&mut io, 0xcfd, 2), 0x411a, "unaligned but inside the dword");
    assert_eq!(io_read(&mut io, 0xcff, 2), 0xffff, "past 0xd00");
    assert_eq!(io_read(&mut io, 0xcfe, 4), 0xffff_ffff, "crosses the dword");

    io.write(0, &cf8(0, 1, 0, 0x3c));
    io.write(4, &[0x0b]);
    io.write(5, &[0x99]);
    assert_eq!(io_read(&mut io, 0xcfc, 4) & 0xffff, 0x000b, "interrupt pin is read-only");
    io.write(0, &cf8(0, 1, 0, 0x04));
    io.write(4, &0x0006u16.to_le_bytes());
    io.write(6, &0xffffu16.to_le_bytes());
    assert_eq!(io_read(&mut io, 0xcfc, 4), 0x0010_0006, "status RO (capabilities bit)");
    io.write(4, &0x0000_0002u32.to_le_bytes());
    assert_eq!(io_read(&mut io, 0xcfc, 2), 0x0002);
}

#[test]
fn config_data_decodes_bus_device_function_and_register() {
    let (root, _) = root_with_devices(2);
    let mut io = PciConfigIo::new(root);
    io.write(0, &cf8(0, 0, 0, 0x08));
    assert_eq!(io_read(&mut io, 0xcfc, 4) >> 8, 0x06_00_00, "host bridge class");
    io.write(0, &cf8(0, 2, 0, 0x2c));
    assert_eq!(io_read(&mut io, 0xcfc, 4), 0x0040_1af4, "slot 2 subsystem ids");
    for (bus, dev, func) in [(0, 3, 0), (0, 2, 1), (1, 0, 0), (255, 1, 0)] {
        io.write(0, &cf8(bus, dev, func, 0));
        assert_eq!(io_read(&mut io, 0xcfc, 4), u32::MAX, "{bus}:{dev}.{func}");
    }
    io.write(0, &0x0000_0800u32.to_le_bytes()); // device 1, enable bit clear
    assert_eq!(io_read(&mut io, 0xcfc, 4), u32::MAX);
    io.write(4, &[0xff; 4]);
    io.write(0, &cf8(0, 1, 0, 0x04));
    assert_eq!(io_read(&mut io, 0xcfc, 2), 0, "the disabled write went nowhere");
}

#[test]
fn ecam_decodes_offsets_and_reaches_extended_space() {
    let (root, _) = root_with_devices(1);
    let mut ecam = PciConfigMmio::new(root, 1);
    assert_eq!(ecam.size(), 1 << 20);
    let dev1 = 1 << 15;
    let mut b = [0u8; 4];
    ecam.read(dev1, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x1041_1af4);
    let mut w = [0u8; 2];
    ecam.read(dev1 + 2, &mut w);
    assert_eq!(u16::from_le_bytes(w), 0x1041);
    let mut one = [0u8; 1];
    ecam.read(dev1 + 0x0b, &mut one);
    assert_eq!(one, [0x02], "base class");
    ecam.read(dev1 + 0x100, &mut b);
    assert_eq!(b, [0; 4], "extended space present, no extended capabilities");
    ecam.read(dev1 | 1 << 12, &mut b);
    assert_eq!(b, [0xff; 4], "function 1");
    ecam.read(2 << 15, &mut b);
    assert_eq!(b, [0xff; 4], "slot 2 empty");
    let mut q = [0u8; 8];
    ecam.read(dev1, &mut q);
    assert_eq!(q, [0xff; 8], "8-byte accesses are not served");
    ecam.read(dev1 + 3, &mut w);
    assert_eq!(w, [0xff; 2], "crosses the dword");
    ecam.read(1 << 20, &mut b);
    assert_eq!(b, [0xff; 4], "past the 1 MiB window");

    ecam.write(dev1 + 0x3c, &[0x0a]);
    ecam.read(dev1 + 0x3c, &mut b);
    assert_eq!(b[0], 0x0a);
}

#[test]
fn full_ecam_window_reads_other_buses_as_all_ones() {
    let (root, _) = root_with_devices(1);
    let mut ecam = PciConfigMmio::new(root, 1000);
    assert_eq!(ecam.size(), 256 << 20);
    let mut b = [0u8; 4];
    ecam.read(1 << 20 | 1 << 15, &mut b);
    assert_eq!(b, [0xff; 4]);
    ecam.read((255 << 20) + 0xffc, &mut b);
    assert_eq!(b, [0xff; 4]);
    ecam.read(u64::MAX - 1, &mut b);
    assert_eq!(b, [0xff; 4]);
}

/// What a guest driver does: enumerate through 0xcf8, size and place BAR 0, find MSI-X in the
/// capability list, program a vector through the BAR, enable MSI-X, then fire it.
#[test]
fn guest_driver_flow_reaches_the_msi_sink() {
    let (root, sinks) = root_with_devices(1);
    let mut io = PciConfigIo::new(root.clone());
    let mut mmio = root.lock().unwrap().bars(BarSpace::Memory, 0);
    let cfg_read = |io: &mut PciConfigIo, reg: u32| {
        io.write(0, &cf8(0, 1, 0, reg));
        io_read(io, 0xcfc, 4)
    };
    let cfg_write = |io: &mut PciConfigIo, reg: u32, v: u32| {
        io.write(0, &cf8(0, 1, 0, reg));
        io.write(4, &v.to_le_bytes());
    };
    cfg_write(&mut io, 0x10, u32::MAX);
    let size = !(cfg_read(&mut io, 0x10) & !0xf) + 1;
    assert_eq!(size, 0x1000);
    cfg_write(&mut io, 0x10, 0xc800_0000);
    cfg_write(&mut io, 0x04, 0x6);

    let mut ptr = cfg_read(&mut io, 0x34) & 0xfc;
    let mut msix_cap = None;
    while ptr != 0 {
        let header = cfg_read(&mut io, ptr);
        if header & 0xff == 0x11 {
            msix_cap = Some(ptr);
        }
        ptr = header >> 8 & 0xfc;
    }
    let cap = msix_cap.expect("MSI-X capability in the chain");
    assert_eq!(cfg_read(&mut io, cap + 4), u32::from(MSIX_BAR));
    assert_eq!(cfg_read(&mut io, cap + 8), PBA_OFFSET as u32 | u32::from(MSIX_BAR));

    let entry = 0xc800_0000 + 16;
    mmio.write(entry, &0xfee0_0000u32.to_le_bytes());
    mmio.write(entry + 4, &0u32.to_le_bytes());
    mmio.write(entry + 8, &0x31u32.to_le_bytes());
    mmio.write(entry + 12, &0u32.to_le_bytes());
    let control = cfg_read(&mut io, cap);
    cfg_write(&mut io, cap, control | 0x8000_0000);

    let expected = MsiMessage { addr: 0xfee0_0000, data: 0x31, masked: false };
    assert_eq!(sinks[0].take(), vec![SinkEvent::Route(1, expected)]);
    let mut pba = [0u8; 8];
    mmio.read(0xc800_0000 + PBA_OFFSET, &mut pba);
    assert_eq!(pba, [0; 8]);
    let mut data = [0u8; 4];
    let device = root.lock().unwrap().device(1).unwrap();
    let data_bar = device.lock().unwrap().config().bar(DATA_BAR).unwrap().address;
    mmio.write(data_bar + 0x40, &[1, 2, 3, 4]);
    mmio.read(data_bar + 0x40, &mut data);
    assert_eq!(data, [1, 2, 3, 4]);
}

const SIZES: [usize; 7] = [0, 1, 2, 3, 4, 8, 16];

fn random_offset(rng: &mut Rng, span: u64) -> u64 {
    match rng.below(4) {
        0 => rng.next(),
        1 => u64::MAX - rng.below(16),
        _ => rng.below(span),
    }
}

/// Random offsets, sizes and values on every bus adapter: nothing panics, whatever the guest
/// does to config space (BAR moves, MSI-X enable) in between.
#[test]
fn hostile_accesses_on_every_bus_device_never_panic() {
    let (root, _) = root_with_devices(3);
    let mut io = PciConfigIo::new(root.clone());
    let mut ecam = PciConfigMmio::new(root.clone(), 256);
    let mut dispatchers: Vec<(u64, PciBars)> = root
        .lock()
        .unwrap()
        .bar_dispatchers()
        .into_iter()
        .map(|(_, window, bars)| (window.size, bars))
        .collect();
    dispatchers.push((u64::MAX, root.lock().unwrap().bars(BarSpace::Memory, 0)));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Turn MSI-X on in every device so table writes reach the sink path.
    for slot in 1..=3u64 {
        let cap = 0x50; // after the 16-byte vendor capability at 0x40
        ecam.write(slot << 15 | cap, &0x8000_0011u32.to_le_bytes());
        let mut b = [0u8; 4];
        ecam.read(slot << 15 | cap, &mut b);
        assert_eq!(u32::from_le_bytes(b) & 0x8000_00ff, 0x8000_0011, "MSI-X on in slot {slot}");
    }
    for _ in 0..200_000 {
        let size = SIZES[rng.below(SIZES.len() as u64) as usize];
        let mut data: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
        let write = rng.below(2) == 0;
        let (device, offset): (&mut dyn BusDevice, u64) = match rng.below(5) {
            0 => {
                let o = random_offset(&mut rng, 8);
                (&mut io, o)
            }
            1 => {
                // Mostly bus 0, slots 0..4, so writes land on real registers.
                let o = if rng.below(2) == 0 {
                    rng.below(4 << 15)
                } else {
                    random_offset(&mut rng, 256 << 20)
                };
                (&mut ecam, o)
            }
            2 => {
                // Near a BAR's current address (wherever the guest moved it), through the
                // dispatcher that covers all of memory.
                let slot = 1 + rng.below(3) as u8;
                let bar = [MSIX_BAR, DATA_BAR][rng.below(2) as usize];
                let device = root.lock().unwrap().device(slot).unwrap();
                let b = device.lock().unwrap().config().bar(bar).unwrap();
                let o = b.address.wrapping_add(rng.below(b.size + 32)).wrapping_sub(16);
                let (_, bars) = dispatchers.last_mut().unwrap();
                (bars, o)
            }
            _ => {
                let i = rng.below(dispatchers.len() as u64) as usize;
                let (span, bars) = &mut dispatchers[i];
                let o = random_offset(&mut rng, *span);
                (bars, o)
            }
        };
        if write {
            device.write(offset, &data);
        } else {
            device.read(offset, &mut data);
        }
    }
}
