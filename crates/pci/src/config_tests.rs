use super::*;

const IDS: PciIds = PciIds {
    vendor_id: 0x1af4,
    device_id: 0x1042,
    revision_id: 1,
    class_code: 0x01_00_00,
    subsystem_vendor_id: 0x1af4,
    subsystem_id: 0x0002,
};

fn write32(cs: &mut ConfigSpace, offset: usize, value: u32) -> ConfigWriteEffect {
    cs.write(offset / 4, 0, &value.to_le_bytes())
}

fn read32(cs: &ConfigSpace, offset: usize) -> u32 {
    cs.read_reg(offset / 4)
}

#[test]
fn identification_registers_are_read_only() {
    let mut cs = ConfigSpace::new(&IDS);
    assert_eq!(read32(&cs, 0x00), 0x1042_1af4);
    assert_eq!(read32(&cs, 0x08), 0x0100_0001);
    assert_eq!(read32(&cs, 0x2c), 0x0002_1af4);
    assert_eq!(cs.read_u8(0x0e), 0, "type 0, single function");

    for offset in [0x00, 0x08, 0x2c, 0x30, 0x34] {
        write32(&mut cs, offset, 0xffff_ffff);
    }
    assert_eq!(read32(&cs, 0x00), 0x1042_1af4);
    assert_eq!(read32(&cs, 0x08), 0x0100_0001);
    assert_eq!(read32(&cs, 0x2c), 0x0002_1af4);
    assert_eq!(read32(&cs, 0x30), 0, "no expansion ROM: sizing reads 0");
    assert_eq!(read32(&cs, 0x34), 0, "no capabilities");
}

#[test]
fn command_register_keeps_only_defined_bits_and_status_is_read_only() {
    let mut cs = ConfigSpace::new(&IDS);
    write32(&mut cs, 0x04, 0xffff_ffff);
    assert_eq!(cs.command(), 0x0547);
    assert!(cs.memory_enabled());
    assert_eq!(read32(&cs, 0x04) >> 16, 0, "status has no writable or W1C bits here");
    cs.write(1, 0, &[0x00]);
    assert_eq!(cs.command(), 0x0500, "a byte write touches only its byte");
}

#[test]
fn byte_and_word_writes_merge_into_the_dword() {
    let mut cs = ConfigSpace::new(&IDS);
    cs.set_interrupt_pin(InterruptPin::IntA);
    cs.write(0x3c / 4, 0, &[0x0b]);
    assert_eq!(cs.interrupt_line(), 0x0b);
    cs.write(0x3c / 4, 0, &[0x0a, 0x04]);
    assert_eq!(read32(&cs, 0x3c), 0x0000_010a, "pin stays 1");
    cs.write(0x0c / 4, 0, &0xffff_ffffu32.to_le_bytes());
    assert_eq!(read32(&cs, 0x0c), 0x0000_00ff, "cache line size only; header type stays 0");
}

#[test]
fn odd_and_out_of_range_writes_are_ignored() {
    let mut cs = ConfigSpace::new(&IDS);
    assert_eq!(cs.write(1, 0, &[1, 2, 3]), ConfigWriteEffect::None);
    assert_eq!(cs.write(1, 3, &[1, 2]), ConfigWriteEffect::None);
    assert_eq!(cs.write(1, 0, &[0xff; 8]), ConfigWriteEffect::None);
    assert_eq!(cs.write(1, 7, &[1]), ConfigWriteEffect::None);
    assert_eq!(cs.write(1024, 0, &[1, 2, 3, 4]), ConfigWriteEffect::None);
    assert_eq!(cs.write(usize::MAX, 0, &[1]), ConfigWriteEffect::None);
    assert_eq!(cs.command(), 0);
    assert_eq!(cs.read_reg(1024), u32::MAX);
    assert_eq!(cs.read_reg(0x100 / 4), 0, "extended space: no extended capabilities");
}

#[test]
fn memory32_bar_sizing_reads_back_the_size_mask_and_restoring_reports_nothing() {
    let mut cs = ConfigSpace::new(&IDS);
    cs.add_bar(0, BarKind::Memory32 { prefetchable: false }, 0x4000).unwrap();
    cs.set_bar_address(0, 0xc000_4000).unwrap();
    assert_eq!(read32(&cs, 0x10), 0xc000_4000);

    assert_eq!(write32(&mut cs, 0x10, 0xffff_ffff), ConfigWriteEffect::None);
    assert_eq!(read32(&cs, 0x10), 0xffff_c000);
    assert_eq!(write32(&mut cs, 0x10, 0xc000_4000), ConfigWriteEffect::None);
    assert_eq!(cs.bar(0).unwrap().address, 0xc000_4000);
}

#[test]
fn memory32_bar_relocation_is_reported_with_old_and_new_address() {
    let mut cs = ConfigSpace::new(&IDS);
    cs.add_bar(1, BarKind::Memory32 { prefetchable: true }, 0x1000).unwrap();
    cs.set_bar_address(1, 0xc000_0000).unwrap();
    assert_eq!(read32(&cs, 0x14), 0xc000_0008, "prefetchable bit");

    let effect = write32(&mut cs, 0x14, 0xd000_1fff);
    let expected = BarReprogram {
        index: 1,
        kind: BarKind::Memory32 { prefetchable: true },
        size: 0x1000,
        old: 0xc000_0000,
        new: 0xd000_1000,
    };
    assert_eq!(effect, ConfigWriteEffect::BarMoved(expected));
    assert_eq!(read32(&cs, 0x14), 0xd000_1008, "low bits are not address bits");
    assert_eq!(write32(&mut cs, 0x14, 0xd000_1000), ConfigWriteEffect::None, "same address");
}

#[test]
fn memory64_bar_sizing_covers_both_halves_and_relocation_reports_each_step() {
    let mut cs = ConfigSpace::new(&IDS);
    cs.add_bar(2, BarKind::Memory64 { prefetchable: true }, 0x2_0000_0000).unwrap();
    cs.set_bar_address(2, 0x10_0000_0000).unwrap();
    assert_eq!(read32(&cs, 0x18), 0x0000_000c, "64-bit, prefetchable");
    assert_eq!(read32(&cs, 0x1c), 0x10);

    write32(&mut cs, 0x18, 0xffff_ffff);
    assert_eq!(read32(&cs, 0x18), 0x0000_000c, "an 8 GiB BAR has no writable low address bits");
    write32(&mut cs, 0x18, 0x0000_0000);
    assert_eq!(write32(&mut cs, 0x1c, 0xffff_ffff), ConfigWriteEffect::None);
    assert_eq!(read32(&cs, 0x1c), 0xffff_fffe);
    assert_eq!(write32(&mut cs, 0x1c, 0x10), ConfigWriteEffect::None);

    let effect = write32(&mut cs, 0x1c, 0x20);
    let ConfigWriteEffect::BarMoved(r) = effect else { panic!("expected a move, got {effect:?}") };
    assert_eq!((r.index, r.old, r.new), (2, 0x10_0000_0000, 0x20_0000_0000));
    assert_eq!(cs.bar(2).unwrap().address, 0x20_0000_0000);
    assert!(cs.bar(3).is_none(), "the upper half is not a BAR of its own");
}

#[test]
fn small_memory64_bar_sizes_in_the_low_dword() {
    let mut cs = ConfigSpace::new(&IDS);
    cs.add_bar(4, BarKind::Memory64 { prefetchable: false }, 0x4000).unwrap();
    write32(&mut cs, 0x20, 0xffff_ffff);
    write32(&mut cs, 0x24, 0xffff_ffff);
    assert_eq!(read32(&cs, 0x20), 0xffff_c004);
    assert_eq!(read32(&cs, 0x24), 0xffff_ffff);
}

#[test]
fn io_bar_sizing_and_relocation() {
    let mut cs = ConfigSpace::new(&IDS);
    cs.add_bar(5, BarKind::Io, 0x40).unwrap();
    cs.set_bar_address(5, 0xc040).unwrap();
    assert_eq!(read32(&cs, 0x24), 0xc041);
    write32(&mut cs, 0x24, 0xffff_ffff);
    assert_eq!(read32(&cs, 0x24), 0xffff_ffc1);
    let effect = write32(&mut cs, 0x24, 0xc080);
    assert!(matches!(effect, ConfigWriteEffect::BarMoved(r) if r.new == 0xc080 && r.old == 0xc040));
}

#[test]
fn undefined_bars_read_zero_even_after_sizing() {
    let mut cs = ConfigSpace::new(&IDS);
    for bar in 0..6 {
        write32(&mut cs, 0x10 + bar * 4, 0xffff_ffff);
        assert_eq!(read32(&cs, 0x10 + bar * 4), 0);
    }
}

#[test]
fn bar_definitions_are_validated() {
    let mut cs = ConfigSpace::new(&IDS);
    let mem32 = BarKind::Memory32 { prefetchable: false };
    let mem64 = BarKind::Memory64 { prefetchable: false };
    assert_eq!(cs.add_bar(6, mem32, 0x1000), Err(PciError::BarIndex { index: 6 }));
    assert_eq!(cs.add_bar(5, mem64, 0x1000), Err(PciError::BarIndex { index: 5 }));
    assert_eq!(cs.add_bar(0, mem32, 0x1800), Err(PciError::BarSize { index: 0, size: 0x1800 }));
    assert_eq!(cs.add_bar(0, mem32, 8), Err(PciError::BarSize { index: 0, size: 8 }));
    assert_eq!(cs.add_bar(0, mem32, 1 << 32), Err(PciError::BarSize { index: 0, size: 1 << 32 }));
    assert_eq!(cs.add_bar(0, BarKind::Io, 512), Err(PciError::BarSize { index: 0, size: 512 }));
    cs.add_bar(0, mem64, 0x1000).unwrap();
    assert_eq!(cs.add_bar(1, mem32, 0x1000), Err(PciError::BarInUse { index: 1 }));
    assert_eq!(cs.add_bar(0, mem32, 0x1000), Err(PciError::BarInUse { index: 0 }));
    cs.add_bar(2, mem32, 0x1000).unwrap();
    assert_eq!(cs.add_bar(1, mem64, 0x1000), Err(PciError::BarInUse { index: 1 }));
    assert_eq!(
        cs.set_bar_address(2, 0xffff_f800),
        Err(PciError::BarAddress { index: 2, addr: 0xffff_f800 })
    );
    assert_eq!(
        cs.set_bar_address(2, 0x1_0000_0000),
        Err(PciError::BarAddress { index: 2, addr: 0x1_0000_0000 })
    );
    assert_eq!(cs.set_bar_address(3, 0), Err(PciError::NoBar { index: 3 }));
}

/// Walks the list the way a guest does: status bit 4, then pointers through read_reg.
fn guest_walk(cs: &ConfigSpace) -> Vec<(u8, u8)> {
    let mut caps = Vec::new();
    if cs.read_reg(1) >> 16 & 0x10 == 0 {
        return caps;
    }
    let mut ptr = (cs.read_reg(0x34 / 4) & 0xfc) as usize;
    while ptr != 0 {
        let header = cs.read_reg(ptr / 4);
        caps.push((ptr as u8, header as u8));
        ptr = ((header >> 8) & 0xfc) as usize;
    }
    caps
}

#[test]
fn capability_chain_links_every_capability_from_the_pointer() {
    let mut cs = ConfigSpace::new(&IDS);
    assert!(guest_walk(&cs).is_empty());
    let common = cs.add_vendor_capability(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0x38, 0, 0, 0]).unwrap();
    let notify = cs
        .add_vendor_capability(&[2, 0, 0, 0, 0, 0x10, 0, 0, 0, 0x10, 0, 0, 0, 4, 0, 0, 0])
        .unwrap();
    let msix = cs
        .add_msix_capability(&MsixCapability {
            vectors: 3,
            table_bar: 1,
            table_offset: 0x2000,
            pba_bar: 1,
            pba_offset: 0x3000,
        })
        .unwrap();
    let generic = cs.add_capability(0x05, &[0xaa, 0xbb]).unwrap();

    assert_eq!(common, 0x40);
    assert_eq!(notify, 0x50, "dword aligned after the 16-byte capability");
    assert_eq!(
        guest_walk(&cs),
        vec![(common, 0x09), (notify, 0x09), (msix, 0x11), (generic, 0x05)]
    );
    assert_eq!(cs.capabilities(), guest_walk(&cs));
    assert_eq!(cs.read_u8(usize::from(common) + 2), 16, "cap_len");
    assert_eq!(cs.read_u8(usize::from(notify) + 2), 20, "cap_len includes the multiplier");
    assert_eq!(cs.read_u8(usize::from(common) + 3), 1, "cfg_type");
    assert_eq!(read32(&cs, usize::from(msix)) >> 16, 2, "table size N-1");
    assert_eq!(read32(&cs, usize::from(msix) + 4), 0x2001, "table offset | BIR");
    assert_eq!(read32(&cs, usize::from(msix) + 8), 0x3001, "PBA offset | BIR");
    assert_eq!(cs.msix_capability_offset(), Some(msix));
}

#[test]
fn capabilities_are_read_only_except_their_write_mask() {
    let mut cs = ConfigSpace::new(&IDS);
    let vendor =
        usize::from(cs.add_vendor_capability_with_mask(&[5, 0, 0], &[0, 0xff, 0]).unwrap());
    let msix = usize::from(
        cs.add_msix_capability(&MsixCapability {
            vectors: 8,
            table_bar: 0,
            table_offset: 0,
            pba_bar: 0,
            pba_offset: 0x800,
        })
        .unwrap(),
    );
    write32(&mut cs, vendor, 0xffff_ffff);
    write32(&mut cs, vendor + 4, 0xffff_ffff);
    assert_eq!(read32(&cs, vendor), 0x0506_0009 | ((msix as u32) << 8));
    assert_eq!(read32(&cs, vendor + 4), 0x0000_00ff, "the masked byte only");

    let effect = write32(&mut cs, msix, 0xffff_ffff);
    assert_eq!(effect, ConfigWriteEffect::MsixControl(0xc007));
    assert_eq!(read32(&cs, msix), 0xc007_0011, "id, next (0) and table size stay");
    assert_eq!(cs.write(msix / 4, 0, &[0]), ConfigWriteEffect::None, "byte 0 is not control");
    assert_eq!(cs.write(msix / 4, 3, &[0x40]), ConfigWriteEffect::MsixControl(0x4007));
    write32(&mut cs, msix + 4, 0);
    assert_eq!(read32(&cs, msix + 4), 0, "table offset/BIR read-only (was 0)");
    write32(&mut cs, msix + 8, 0);
    assert_eq!(read32(&cs, msix + 8), 0x800);
}

#[test]
fn capability_builder_rejects_what_does_not_fit() {
    let mut cs = ConfigSpace::new(&IDS);
    assert_eq!(
        cs.add_capability(0x09, &[0; 200]),
        Err(PciError::CapabilitySpace { id: 0x09, len: 202 })
    );
    assert_eq!(
        cs.add_capability_with_mask(0x09, &[0; 4], &[0; 3]),
        Err(PciError::CapabilityMask { id: 0x09, body_len: 4, mask_len: 3 })
    );
    let msix =
        MsixCapability { vectors: 1, table_bar: 0, table_offset: 0, pba_bar: 0, pba_offset: 8 };
    assert_eq!(
        cs.add_msix_capability(&MsixCapability { vectors: 0, ..msix }),
        Err(PciError::MsixVectors { count: 0 })
    );
    assert_eq!(
        cs.add_msix_capability(&MsixCapability { pba_offset: 4, ..msix }),
        Err(PciError::MsixLayout { bar: 0, offset: 4 })
    );
    assert_eq!(
        cs.add_msix_capability(&MsixCapability { table_bar: 6, ..msix }),
        Err(PciError::MsixLayout { bar: 6, offset: 0 })
    );
    cs.add_msix_capability(&msix).unwrap();
    assert_eq!(cs.add_msix_capability(&msix), Err(PciError::MsixCapabilityExists));
    for _ in 0..47 {
        if cs.add_capability(0x09, &[0, 0]).is_err() {
            break;
        }
    }
    assert!(cs.add_capability(0x09, &[0, 0]).is_err(), "space runs out at 0x100");
    assert!(cs.capabilities().iter().all(|&(o, _)| o >= 0x40));
}

#[test]
fn reset_restores_registers_but_keeps_bars() {
    let mut cs = ConfigSpace::new(&IDS);
    cs.add_bar(0, BarKind::Memory32 { prefetchable: false }, 0x1000).unwrap();
    let msix = usize::from(
        cs.add_msix_capability(&MsixCapability {
            vectors: 1,
            table_bar: 0,
            table_offset: 0,
            pba_bar: 0,
            pba_offset: 0x800,
        })
        .unwrap(),
    );
    write32(&mut cs, 0x04, 0x6);
    write32(&mut cs, 0x10, 0xc000_0000);
    write32(&mut cs, 0x3c, 0x0b);
    write32(&mut cs, msix, 0x8000_0000);
    cs.reset();
    assert_eq!(cs.command(), 0);
    assert_eq!(cs.interrupt_line(), 0);
    assert_eq!(read32(&cs, msix) >> 16, 0);
    assert_eq!(cs.bar(0).unwrap().address, 0xc000_0000);
    assert_eq!(read32(&cs, 0x00), 0x1042_1af4);
}

#[test]
fn merge_bytes_places_bytes_at_their_offset() {
    assert_eq!(merge_bytes(2, &[0x34, 0x12]), Some((0x1234_0000, 0xffff_0000)));
    assert_eq!(merge_bytes(3, &[0xab]), Some((0xab00_0000, 0xff00_0000)));
    assert_eq!(merge_bytes(0, &[1, 2, 3, 4]), Some((0x0403_0201, 0xffff_ffff)));
    assert_eq!(merge_bytes(2, &[1, 2, 3, 4]), None);
    assert_eq!(merge_bytes(0, &[]), None);
}
