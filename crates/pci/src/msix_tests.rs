use super::*;
use crate::test_util::{RecordingSink, SinkEvent};

fn setup(vectors: u16) -> (MsixConfig, Arc<RecordingSink>) {
    let sink = Arc::new(RecordingSink::default());
    (MsixConfig::new(vectors, sink.clone()).unwrap(), sink)
}

fn write32(m: &mut MsixConfig, offset: u64, value: u32) {
    m.write_table(offset, &value.to_le_bytes());
}

fn read32(m: &MsixConfig, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    m.read_table(offset, &mut b);
    u32::from_le_bytes(b)
}

fn pba64(m: &MsixConfig, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    m.read_pba(offset, &mut b);
    u64::from_le_bytes(b)
}

/// Programs vector `n` (still masked) with a recognisable message.
fn program(m: &mut MsixConfig, n: u16) {
    let base = u64::from(n) * 16;
    write32(m, base, 0xfee0_0000 | u32::from(n) << 12);
    write32(m, base + 4, 0);
    write32(m, base + 8, 0x40 + u32::from(n));
}

fn msg(n: u16) -> MsiMessage {
    MsiMessage { addr: 0xfee0_0000 | u64::from(n) << 12, data: 0x40 + u32::from(n), masked: false }
}

#[test]
fn sizes_follow_the_vector_count() {
    let (m, _) = setup(4);
    assert_eq!((m.vectors(), m.table_size(), m.pba_size()), (4, 64, 8));
    let (m, _) = setup(2048);
    assert_eq!((m.table_size(), m.pba_size()), (2048 * 16, 256));
    let (m, _) = setup(65);
    assert_eq!(m.pba_size(), 16);
    let sink: Arc<dyn MsiSink> = Arc::new(RecordingSink::default());
    assert_eq!(MsixConfig::new(0, sink.clone()).unwrap_err(), PciError::MsixVectors { count: 0 });
    assert_eq!(MsixConfig::new(2049, sink).unwrap_err(), PciError::MsixVectors { count: 2049 });
}

#[test]
fn entries_come_out_of_reset_masked_and_disabled() {
    let (m, sink) = setup(4);
    for n in 0..4 {
        assert_eq!(read32(&m, u64::from(n) * 16 + 12), 1);
        assert_eq!(m.vector(n), Some(MsiMessage { addr: 0, data: 0, masked: true }));
    }
    assert_eq!(m.vector(4), None);
    assert!(!m.enabled());
    assert!(sink.take().is_empty());
}

#[test]
fn masked_vector_writes_cost_no_route_update_until_unmasked() {
    let (mut m, sink) = setup(4);
    m.set_message_control(0x8000);
    assert!(sink.take().is_empty(), "every vector is still masked");
    program(&mut m, 2);
    assert!(sink.take().is_empty());
    write32(&mut m, 2 * 16 + 12, 0);
    assert_eq!(sink.take(), vec![SinkEvent::Route(2, msg(2))]);
    assert_eq!(m.vector(2), Some(msg(2)));

    write32(&mut m, 2 * 16 + 8, 0x99);
    let updated = MsiMessage { data: 0x99, ..msg(2) };
    assert_eq!(sink.take(), vec![SinkEvent::Route(2, updated)], "unmasked change re-routes");
    write32(&mut m, 2 * 16 + 12, 1);
    assert_eq!(sink.take(), vec![SinkEvent::Route(2, MsiMessage { masked: true, ..updated })]);
}

#[test]
fn trigger_sends_when_deliverable() {
    let (mut m, sink) = setup(4);
    program(&mut m, 1);
    write32(&mut m, 16 + 12, 0);
    m.set_message_control(0x8000);
    sink.take();
    assert_eq!(m.trigger(1).unwrap(), MsixDelivery::Sent);
    assert_eq!(sink.take(), vec![SinkEvent::Trigger(1)]);
    assert_eq!(m.trigger(9).unwrap(), MsixDelivery::NoSuchVector);
}

#[test]
fn masked_vector_sets_pending_and_is_delivered_on_unmask() {
    let (mut m, sink) = setup(4);
    m.set_message_control(0x8000);
    program(&mut m, 3);
    assert_eq!(m.trigger(3).unwrap(), MsixDelivery::Pending);
    assert!(m.is_pending(3));
    assert_eq!(pba64(&m, 0), 1 << 3);
    assert!(sink.take().is_empty());

    write32(&mut m, 3 * 16 + 12, 0);
    assert_eq!(sink.take(), vec![SinkEvent::Route(3, msg(3)), SinkEvent::Trigger(3)]);
    assert!(!m.is_pending(3));
    assert_eq!(pba64(&m, 0), 0);
}

#[test]
fn function_mask_holds_every_vector_and_releases_pending_ones() {
    let (mut m, sink) = setup(4);
    for n in 0..2 {
        program(&mut m, n);
        write32(&mut m, u64::from(n) * 16 + 12, 0);
    }
    m.set_message_control(0xc000);
    assert!(sink.take().is_empty(), "function masked: nothing deliverable yet");
    assert!(m.function_masked());
    assert_eq!(m.trigger(0).unwrap(), MsixDelivery::Pending);
    assert_eq!(m.trigger(3).unwrap(), MsixDelivery::Pending, "vector 3 is masked itself too");
    assert_eq!(pba64(&m, 0), 0b1001);

    m.set_message_control(0x8000);
    assert_eq!(
        sink.take(),
        vec![SinkEvent::Route(0, msg(0)), SinkEvent::Trigger(0), SinkEvent::Route(1, msg(1)),]
    );
    assert_eq!(pba64(&m, 0), 0b1000, "vector 3 stays pending behind its own mask");

    m.set_message_control(0xc000);
    let masked = |n| SinkEvent::Route(n, MsiMessage { masked: true, ..msg(n) });
    assert_eq!(sink.take(), vec![masked(0), masked(1)]);
}

#[test]
fn disabled_msix_neither_sends_nor_sets_pending() {
    let (mut m, sink) = setup(2);
    program(&mut m, 0);
    write32(&mut m, 12, 0);
    assert_eq!(m.trigger(0).unwrap(), MsixDelivery::Disabled);
    assert!(!m.is_pending(0));
    assert!(sink.take().is_empty());
    m.set_message_control(0x8000);
    assert_eq!(sink.take(), vec![SinkEvent::Route(0, msg(0))]);
    m.set_message_control(0);
    assert!(!m.enabled());
    assert!(m.vector(0).unwrap().masked);
}

#[test]
fn qword_accesses_cover_two_fields() {
    let (mut m, _) = setup(2);
    m.write_table(16, &0x0000_0001_fee0_1004u64.to_le_bytes());
    m.write_table(24, &0x0000_0000_0000_0055u64.to_le_bytes());
    let mut b = [0u8; 8];
    m.read_table(16, &mut b);
    assert_eq!(u64::from_le_bytes(b), 0x0000_0001_fee0_1004);
    m.read_table(24, &mut b);
    assert_eq!(u64::from_le_bytes(b), 0x0000_0000_0000_0055, "unmasked by the qword write");
    assert_eq!(m.vector(1).unwrap().addr, 0x1_fee0_1004);
}

#[test]
fn reserved_bits_read_as_zero() {
    let (mut m, _) = setup(1);
    write32(&mut m, 0, 0xffff_ffff);
    write32(&mut m, 12, 0xffff_fffe);
    assert_eq!(read32(&m, 0), 0xffff_fffc, "message address is dword aligned");
    assert_eq!(read32(&m, 12), 0, "only the mask bit exists");
}

#[test]
fn invalid_table_accesses_are_ignored_and_read_all_ones() {
    let (mut m, sink) = setup(2);
    program(&mut m, 0);
    let before: Vec<u32> = (0..8).map(|i| read32(&m, i * 4)).collect();
    let cases: &[(u64, usize)] =
        &[(0, 1), (0, 2), (8, 2), (2, 4), (4, 8), (12, 8), (32, 4), (28, 8), (u64::MAX - 3, 4)];
    for &(offset, len) in cases {
        m.write_table(offset, &vec![0u8; len]);
        let mut data = vec![0u8; len];
        m.read_table(offset, &mut data);
        assert!(data.iter().all(|&b| b == 0xff), "read of {len} at {offset:#x}");
    }
    let after: Vec<u32> = (0..8).map(|i| read32(&m, i * 4)).collect();
    assert_eq!(before, after);
    assert!(sink.take().is_empty());
}

#[test]
fn pba_is_read_only_and_bounded() {
    let (mut m, _) = setup(70);
    m.set_message_control(0x8000);
    m.trigger(65).unwrap();
    m.write_pba(8, &0u64.to_le_bytes());
    assert_eq!(pba64(&m, 8), 0b10);
    let mut d = [0u8; 4];
    m.read_pba(12, &mut d);
    assert_eq!(d, [0; 4]);
    m.read_pba(8, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0b10);
    assert_eq!(pba64(&m, 16), u64::MAX, "past the PBA");
    assert_eq!(pba64(&m, 4), u64::MAX, "misaligned qword");
    let mut b = [0u8; 2];
    m.read_pba(8, &mut b);
    assert_eq!(b, [0xff; 2]);
}

#[test]
fn reset_masks_everything_and_clears_pending() {
    let (mut m, sink) = setup(2);
    program(&mut m, 0);
    write32(&mut m, 12, 0);
    m.set_message_control(0x8000);
    write32(&mut m, 16 + 12, 1);
    m.set_message_control(0x8000);
    m.trigger(1).unwrap();
    sink.take();
    m.reset();
    assert!(!m.enabled() && !m.is_pending(1));
    assert_eq!(m.vector(0), Some(MsiMessage { addr: 0, data: 0, masked: true }));
    assert_eq!(
        sink.take(),
        vec![SinkEvent::Route(0, MsiMessage { addr: 0, data: 0, masked: true })]
    );
}

struct FailingSink;

impl MsiSink for FailingSink {
    fn update_route(&self, _: u16, _: MsiMessage) -> io::Result<()> {
        Err(io::Error::other("no route"))
    }
    fn trigger(&self, _: u16) -> io::Result<()> {
        Err(io::Error::other("no irqfd"))
    }
}

#[test]
fn sink_errors_are_reported_to_the_device_and_logged_for_the_guest_path() {
    let mut m = MsixConfig::new(1, Arc::new(FailingSink)).unwrap();
    m.set_message_control(0x8000);
    m.trigger(0).unwrap();
    write32(&mut m, 12, 0); // route update and pending delivery fail: logged, no panic
    assert!(!m.is_pending(0));
    assert!(m.trigger(0).is_err());
}
