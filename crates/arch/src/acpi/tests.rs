//! Tests for the ACPI tables: built into test guest memory, then parsed back the way an OSPM
//! would, checking the ACPI 6.5 offsets directly rather than through the builder types.

use std::process::Command;

use acpi_tables::aml::{BufferData, Device, EISAName, Name};
use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const MEM_SIZE: usize = 2 << 20;

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("2 MiB test memory")
}

fn build(cfg: &AcpiConfig) -> GuestMemoryMmap {
    let mem = guest_memory();
    let rsdp = create_acpi_tables(&mem, cfg).expect("tables build");
    assert_eq!(rsdp, GuestAddress(RSDP_ADDR));
    mem
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).expect("read");
    buf
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
}

/// Reads the whole table whose header is at `addr`.
fn table_at(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
    let header = read(mem, addr, SDT_HEADER_LEN);
    read(mem, addr, u32_at(&header, 4) as usize)
}

/// `(signature, address)` of every XSDT entry, via the RSDP.
fn xsdt_entries(mem: &GuestMemoryMmap) -> Vec<(String, u64)> {
    let rsdp = read(mem, RSDP_ADDR, 36);
    let xsdt = table_at(mem, u64_at(&rsdp, 24));
    (SDT_HEADER_LEN..xsdt.len())
        .step_by(8)
        .map(|off| {
            let addr = u64_at(&xsdt, off);
            (signature(&read(mem, addr, 4)), addr)
        })
        .collect()
}

fn find_table(mem: &GuestMemoryMmap, sig: &str) -> (u64, Vec<u8>) {
    let addr = xsdt_entries(mem)
        .into_iter()
        .find(|(s, _)| s == sig)
        .unwrap_or_else(|| panic!("{sig} not in XSDT"))
        .1;
    (addr, table_at(mem, addr))
}

fn dsdt(mem: &GuestMemoryMmap) -> Vec<u8> {
    let (_, fadt) = find_table(mem, "FACP");
    table_at(mem, u64_at(&fadt, 140))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// MADT interrupt controller structures as `(type, bytes)`.
fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut entries = Vec::new();
    let mut off = 44;
    while off < madt.len() {
        let len = madt[off + 1] as usize;
        assert!(len >= 2 && off + len <= madt.len(), "bad MADT entry at {off}");
        entries.push((madt[off], madt[off..off + len].to_vec()));
        off += len;
    }
    entries
}

/// A stand-in for the future PCI root bridge: `Device (PCI0) { Name (_HID, EISAID("PNP0A08")) }`.
struct TestRootBridge;

impl Aml for TestRootBridge {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        Device::new("PCI0".into(), vec![&Name::new("_HID".into(), &EISAName::new("PNP0A08"))])
            .to_aml_bytes(sink);
    }
}

/// An AML object too big for the ACPI region.
struct Huge;

impl Aml for Huge {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        Name::new("HUGE".into(), &BufferData::new(vec![0; 200 * 1024])).to_aml_bytes(sink);
    }
}

/// Bytes that are not a table.
struct NotATable;

impl Aml for NotATable {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(b"junk");
    }
}

#[test]
fn rsdp_is_at_0xe0000_with_valid_checksums_and_xsdt_pointer() {
    let mem = build(&AcpiConfig::default());

    let rsdp = read(&mem, RSDP_ADDR, 36);

    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(RSDP_ADDR % 16, 0);
    assert_eq!(sum(&rsdp[0..20]), 0, "ACPI 1.0 checksum");
    assert_eq!(rsdp[15], 2, "revision");
    assert_eq!(u32_at(&rsdp, 20), 36, "length");
    assert_eq!(sum(&rsdp), 0, "extended checksum");
    let xsdt_addr = u64_at(&rsdp, 24);
    assert!((RSDP_ADDR..ACPI_REGION_END).contains(&xsdt_addr));
    assert_eq!(&read(&mem, xsdt_addr, 4), b"XSDT");
}

#[test]
fn xsdt_tables_have_valid_signature_length_and_checksum() {
    let mem = build(&AcpiConfig::default());
    let rsdp = read(&mem, RSDP_ADDR, 36);
    let xsdt = table_at(&mem, u64_at(&rsdp, 24));
    assert_eq!(sum(&xsdt), 0);

    let entries = xsdt_entries(&mem);

    let sigs: Vec<&str> = entries.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(sigs, ["FACP", "APIC"]);
    for (sig, addr) in &entries {
        let table = table_at(&mem, *addr);
        assert!(table.len() >= SDT_HEADER_LEN, "{sig} length");
        assert!(*addr + table.len() as u64 <= ACPI_REGION_END, "{sig} end");
        assert_eq!(sum(&table), 0, "{sig} checksum");
    }
    let dsdt = dsdt(&mem);
    assert_eq!(&dsdt[0..4], b"DSDT");
    assert_eq!(sum(&dsdt), 0, "DSDT checksum");
}

#[test]
fn fadt_fields_are_at_acpi_6_5_offsets() {
    let cfg = AcpiConfig::default();
    let mem = build(&cfg);

    let (_, fadt) = find_table(&mem, "FACP");

    assert_eq!(fadt.len(), 276, "ACPI 6.5 FADT length");
    assert_eq!((fadt[8], fadt[131]), (6, 5), "FADT revision 6.5");
    let facs_addr = u32_at(&fadt, 36);
    assert_eq!(u64_at(&fadt, 132), u64::from(facs_addr), "X_FIRMWARE_CTRL");
    let dsdt_addr = u32_at(&fadt, 40);
    assert_eq!(u64_at(&fadt, 140), u64::from(dsdt_addr), "X_DSDT");
    assert!(fadt[45] <= 1, "preferred PM profile");
    assert_eq!(u16_at(&fadt, 46), 9, "SCI_INT");
    assert_eq!(u32_at(&fadt, 48), 0, "SMI_CMD");
    assert_eq!((fadt[52], fadt[53]), (0, 0), "ACPI_ENABLE/DISABLE");
    assert_eq!(u32_at(&fadt, 56), 0x600, "PM1a_EVT_BLK");
    assert_eq!(u32_at(&fadt, 64), 0x604, "PM1a_CNT_BLK");
    assert_eq!(u32_at(&fadt, 76), 0x608, "PM_TMR_BLK");
    assert_eq!(u32_at(&fadt, 80), 0, "GPE0_BLK");
    assert_eq!((fadt[88], fadt[89], fadt[91]), (4, 2, 4), "PM1_EVT/CNT, PM_TMR lengths");
    assert_eq!(u16_at(&fadt, 109), 0b11, "IAPC_BOOT_ARCH: LEGACY_DEVICES | 8042");
    let flags = u32_at(&fadt, 112);
    assert_eq!(
        flags,
        (1 << 0) | (1 << 2) | (1 << 5) | (1 << 10),
        "WBINVD | PROC_C1 | SLP_BUTTON | RESET_REG_SUP"
    );
    assert_eq!(flags & (1 << 4), 0, "PWR_BUTTON clear: fixed power button");
    assert_eq!(flags & (1 << 8), 0, "TMR_VAL_EXT clear: 24-bit timer");
    assert_eq!(flags & (1 << 20), 0, "not HW_REDUCED_ACPI");
    // RESET_REG: system I/O, 8 bits, offset 0, byte access, port 0x60c.
    assert_eq!(&fadt[116..120], &[1, 8, 0, 1]);
    assert_eq!(u64_at(&fadt, 120), 0x60c);
    assert_eq!(fadt[128], 0x01, "RESET_VALUE");
    // X_PM1a_EVT_BLK, X_PM1a_CNT_BLK, X_PM_TMR_BLK: system I/O, widths match the lengths.
    for (off, width, port) in [(148, 32, 0x600), (172, 16, 0x604), (208, 32, 0x608)] {
        assert_eq!((fadt[off], fadt[off + 1], fadt[off + 2]), (1, width, 0), "GAS {off}");
        assert_eq!(u64_at(&fadt, off + 4), port, "GAS {off} address");
    }
}

#[test]
fn facs_is_64_byte_aligned_with_signature() {
    let mem = build(&AcpiConfig::default());
    let (_, fadt) = find_table(&mem, "FACP");

    let facs_addr = u64_at(&fadt, 132);
    let facs = read(&mem, facs_addr, 64);

    assert_eq!(facs_addr % 64, 0);
    assert_eq!(&facs[0..4], b"FACS");
    assert_eq!(u32_at(&facs, 4), 64);
}

#[test]
fn madt_has_one_enabled_local_apic_per_cpu_plus_ioapic_and_sci_override() {
    for num_cpus in [1u32, 2, 8, 64, 255] {
        let mem = build(&AcpiConfig { num_cpus, ..Default::default() });

        let (_, madt) = find_table(&mem, "APIC");

        assert_eq!(u32_at(&madt, 36), 0xfee0_0000, "local APIC address");
        assert_eq!(u32_at(&madt, 40), 1, "PCAT_COMPAT");
        let entries = madt_entries(&madt);
        let lapics: Vec<_> = entries.iter().filter(|(t, _)| *t == 0).collect();
        assert_eq!(lapics.len(), num_cpus as usize, "{num_cpus} CPUs");
        for (i, (_, e)) in lapics.iter().enumerate() {
            assert_eq!(e.len(), 8);
            assert_eq!((e[2], e[3]), (i as u8, i as u8), "UID and APIC id");
            assert_eq!(u32_at(e, 4), 1, "Enabled");
        }
        let ioapics: Vec<_> = entries.iter().filter(|(t, _)| *t == 1).collect();
        assert_eq!(ioapics.len(), 1);
        let ioapic = &ioapics[0].1;
        assert_eq!(ioapic[2], 0, "IOAPIC id");
        assert_eq!(u32_at(ioapic, 4), 0xfec0_0000);
        assert_eq!(u32_at(ioapic, 8), 0, "GSI base");
        let overrides: Vec<_> = entries.iter().filter(|(t, _)| *t == 2).collect();
        assert_eq!(overrides.len(), 1, "only the SCI override, none for IRQ 0");
        let iso = &overrides[0].1;
        assert_eq!((iso[1], iso[2], iso[3]), (10, 0, 9), "len, bus, source");
        assert_eq!(u32_at(iso, 4), 9, "GSI");
        assert_eq!(u16_at(iso, 8), 0x000d, "active high, level");
        let nmis: Vec<_> = entries.iter().filter(|(t, _)| *t == 4).collect();
        assert_eq!(nmis.len(), 1);
        assert_eq!(&nmis[0].1[..], &[4, 6, 0xff, 0, 0, 1], "all CPUs, LINT1");
        assert_eq!(entries.len(), num_cpus as usize + 3, "nothing else");
    }
}

#[test]
fn dsdt_has_s5_package_and_device_ids() {
    let mem = build(&AcpiConfig::default());

    let dsdt = dsdt(&mem);

    assert_eq!(dsdt[8], 2, "DSDT revision 2");
    // NameOp "\_S5_" PackageOp PkgLength(1 byte) NumElements(4) BytePrefix 5 BytePrefix 5 0 0.
    assert!(contains(&dsdt, &[b'_', b'S', b'5', b'_', 0x12, 0x08, 4, 0x0a, 5, 0x0a, 5, 0, 0]));
    assert!(contains(&dsdt, b"_SB_"));
    assert!(contains(&dsdt, b"QEMU0001\0"), "pvpanic _HID string");
    // EISAID("PNP0501") = 0x0105d041 as a DWordConst.
    assert!(contains(&dsdt, &[0x0c, 0x41, 0xd0, 0x05, 0x01]), "COM1");
    assert!(contains(&dsdt, &[0x0c, 0x41, 0xd0, 0x0b, 0x00]), "RTC PNP0B00");
    assert!(contains(&dsdt, &[0x0c, 0x41, 0xd0, 0x03, 0x03]), "i8042 PNP0303");
    // COM1 _CRS: IO (Decode16, 0x3f8, 0x3f8, 1, 8), IRQNoFlags () {4}.
    assert!(contains(&dsdt, &[0x47, 1, 0xf8, 0x03, 0xf8, 0x03, 1, 8, 0x22, 0x10, 0x00]));
    // pvpanic _CRS: IO (Decode16, 0x505, 0x505, 1, 1), no IRQ.
    assert!(contains(&dsdt, &[0x47, 1, 0x05, 0x05, 0x05, 0x05, 1, 1, 0x79]));
}

#[test]
fn dsdt_s5_package_carries_configured_slp_typ() {
    let mem = build(&AcpiConfig { s5_slp_typ: 7, ..Default::default() });

    let dsdt = dsdt(&mem);

    assert!(contains(&dsdt, &[b'_', b'S', b'5', b'_', 0x12, 0x08, 4, 0x0a, 7]));
}

#[test]
fn dsdt_omits_pvpanic_when_not_configured() {
    let mem = build(&AcpiConfig { pvpanic_port: None, ..Default::default() });

    assert!(!contains(&dsdt(&mem), b"QEMU0001"));
}

#[test]
fn extra_sb_devices_are_appended_to_sb_scope() {
    let mem =
        build(&AcpiConfig { sb_devices: vec![Box::new(TestRootBridge)], ..Default::default() });

    let dsdt = dsdt(&mem);

    // EISAID("PNP0A08") = 0x080ad041.
    assert!(contains(&dsdt, &[b'P', b'C', b'I', b'0', 0x08, b'_', b'H', b'I', b'D']));
    assert!(contains(&dsdt, &[0x0c, 0x41, 0xd0, 0x0a, 0x08]));
    assert_eq!(sum(&dsdt), 0);
}

#[test]
fn extra_tables_are_listed_in_xsdt() {
    let extra = Sdt::new(*b"TEST", 40, 1, OEM_ID, OEM_TABLE_ID, 1);
    let mem = build(&AcpiConfig { extra_tables: vec![Box::new(extra)], ..Default::default() });

    let sigs: Vec<String> = xsdt_entries(&mem).into_iter().map(|(s, _)| s).collect();

    assert_eq!(sigs, ["FACP", "APIC", "TEST"]);
    let (addr, table) = find_table(&mem, "TEST");
    assert_eq!(addr % 16, 0);
    assert_eq!((table.len(), sum(&table)), (40, 0));
}

#[test]
fn malformed_extra_table_is_rejected() {
    let cfg = AcpiConfig { extra_tables: vec![Box::new(NotATable)], ..Default::default() };

    let err = create_acpi_tables(&guest_memory(), &cfg).unwrap_err();

    assert!(matches!(err, AcpiError::ExtraTable { index: 0, .. }), "{err}");
}

#[test]
fn zero_cpus_is_rejected() {
    let cfg = AcpiConfig { num_cpus: 0, ..Default::default() };

    let err = create_acpi_tables(&guest_memory(), &cfg).unwrap_err();

    assert!(matches!(err, AcpiError::CpuCount { num_cpus: 0, .. }), "{err}");
}

#[test]
fn more_than_255_cpus_is_rejected() {
    for num_cpus in [256, 1024, u32::MAX] {
        let cfg = AcpiConfig { num_cpus, ..Default::default() };

        let err = create_acpi_tables(&guest_memory(), &cfg).unwrap_err();

        assert!(matches!(err, AcpiError::CpuCount { .. }), "{err}");
    }
}

#[test]
fn invalid_sci_irq_and_sleep_type_are_rejected() {
    for irq in [0, 2, 16, 255] {
        let cfg = AcpiConfig { sci_irq: irq, ..Default::default() };
        let err = create_acpi_tables(&guest_memory(), &cfg).unwrap_err();
        assert!(matches!(err, AcpiError::SciIrq { .. }), "{err}");
    }
    let cfg = AcpiConfig { s5_slp_typ: 8, ..Default::default() };
    let err = create_acpi_tables(&guest_memory(), &cfg).unwrap_err();
    assert!(matches!(err, AcpiError::SleepType { value: 8 }), "{err}");
}

#[test]
fn irq_no_flags_rejects_non_isa_irq() {
    assert!(IrqNoFlags::new(15).is_ok());
    assert!(matches!(IrqNoFlags::new(16), Err(AcpiError::Encode { .. })));
}

#[test]
fn oversized_dsdt_fails_naming_the_table() {
    let cfg = AcpiConfig { sb_devices: vec![Box::new(Huge)], ..Default::default() };

    let err = create_acpi_tables(&guest_memory(), &cfg).unwrap_err();

    match &err {
        AcpiError::DoesNotFit { table, .. } => assert_eq!(table, "DSDT"),
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("DSDT"));
}

#[test]
fn memory_without_the_acpi_region_fails_to_write() {
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8_0000)]).expect("512 KiB");

    let err = create_acpi_tables(&mem, &AcpiConfig::default()).unwrap_err();

    assert!(matches!(err, AcpiError::WriteTable { .. }), "{err}");
}

#[test]
fn tables_do_not_overlap_and_stay_in_region_for_max_cpus() {
    let cfg = AcpiConfig { num_cpus: MAX_CPUS, ..Default::default() };
    let mem = build(&cfg);
    let (_, fadt) = find_table(&mem, "FACP");
    let mut ranges = vec![(RSDP_ADDR, 36u64)];
    let rsdp = read(&mem, RSDP_ADDR, 36);
    let xsdt_addr = u64_at(&rsdp, 24);
    ranges.push((xsdt_addr, table_at(&mem, xsdt_addr).len() as u64));
    for (_, addr) in xsdt_entries(&mem) {
        ranges.push((addr, table_at(&mem, addr).len() as u64));
    }
    ranges.push((u64_at(&fadt, 132), 64));
    ranges.push((u64_at(&fadt, 140), dsdt(&mem).len() as u64));

    ranges.sort();

    for pair in ranges.windows(2) {
        assert!(pair[0].0 + pair[0].1 <= pair[1].0, "overlap: {pair:x?}");
    }
    let (last, len) = ranges[ranges.len() - 1];
    assert!(last + len <= ACPI_REGION_END);
}

/// Disassembles every table with ACPICA's `iasl` and fails on any error or warning it reports.
/// Needs `iasl` (Debian package acpica-tools, installed by scripts/install-deps.sh).
#[test]
fn iasl_disassembles_all_tables_cleanly() {
    assert!(
        std::process::Command::new("iasl").arg("-v").output().is_ok(),
        "iasl is missing: run scripts/install-deps.sh (apt-get install -y acpica-tools)"
    );
    let dir = std::env::temp_dir().join(format!("ironvirt-acpi-iasl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bridge = super::pci::PciRootBridge {
        mmio_base: 0xc000_0000,
        mmio_size: 0x2000_0000,
        mmio64: Some((0x1_4000_0000, 64 << 30)),
    };
    let mem = build(&AcpiConfig {
        num_cpus: 4,
        sb_devices: vec![Box::new(bridge)],
        extra_tables: vec![Box::new(super::pci::mcfg(0xe000_0000, 0))],
        ..Default::default()
    });
    let (_, fadt) = find_table(&mem, "FACP");
    // The RSDP is left out: this iasl (20200925) does not take a bare RSDP from a file, and
    // the unit tests above check it byte by byte.
    let mut tables =
        vec![("facs".to_string(), read(&mem, u64_at(&fadt, 132), 64)), ("dsdt".into(), dsdt(&mem))];
    for (sig, addr) in xsdt_entries(&mem) {
        tables.push((sig.to_lowercase(), table_at(&mem, addr)));
    }

    for (name, bytes) in tables {
        let file = dir.join(format!("{name}.dat"));
        std::fs::write(&file, bytes).expect("write table");
        let out = Command::new("iasl")
            .arg("-d")
            .arg(&file)
            .output()
            .expect("iasl not found: apt-get install -y acpica-tools");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "iasl -d {name}: {text}");
        let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).expect("dsl");
        for bad in ["Error", "Warning", "Invalid", "Unknown"] {
            assert!(!dsl.contains(bad), "{name}.dsl mentions {bad}:\n{dsl}");
            assert!(!text.contains(bad), "iasl {name} output mentions {bad}:\n{text}");
        }
    }
    // The root bridge as iasl reads it back: both BAR windows, and a _PRT entry per slot and
    // pin (slot 1 INTA# on GSI 17, slot 31 INTD# on GSI 16 + (31 + 3) % 8 = 18).
    let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).expect("dsl");
    let uncommented: Vec<&str> = dsl.lines().map(|l| l.split("//").next().unwrap_or("")).collect();
    let squeezed = uncommented.join(" ").split_whitespace().collect::<Vec<_>>().join(" ");
    for want in [
        "DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, 0x00000000, 0xC0000000, 0xDFFFFFFF,",
        "QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, 0x0000000000000000, 0x0000000140000000, 0x000000113FFFFFFF,",
        "Name (_PRT, Package (0x7C) {",
        "Package (0x04) { 0x0001FFFF, Zero, Zero, 0x11 }",
        "Package (0x04) { 0x001FFFFF, 0x03, Zero, 0x12 }",
    ] {
        assert!(squeezed.contains(want), "dsdt.dsl lacks {want}:\n{dsl}");
    }
    if std::env::var_os("IRONVIRT_KEEP_ACPI").is_none() {
        std::fs::remove_dir_all(&dir).ok();
    }
}
