//! The virtio-net header (`struct virtio_net_hdr_v1`, virtio 1.2 §5.1.6) and feature bits
//! (§5.1.3): which offloads a header may use given what the driver negotiated, and which TAP
//! offloads follow from it.

use ironvirt_net::offload;

/// Header length: with VIRTIO_F_VERSION_1 it always includes `num_buffers` (§5.1.6).
pub const HDR_LEN: usize = ironvirt_net::VNET_HDR_LEN;
/// Ethernet header length; shorter frames are malformed.
pub const ETH_HLEN: usize = 14;
/// Largest frame (without the header) either way: a 64 KiB GSO frame plus Ethernet and VLAN
/// headers.
pub const MAX_FRAME_LEN: usize = 65550;
/// Offset of `num_buffers` (le16) in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;

/// `flags`: the checksum from `csum_start` on is partial (§5.1.6.2).
pub const HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags` (device to driver only): the checksum was already validated (§5.1.6.4).
pub const HDR_F_DATA_VALID: u8 = 2;
/// `gso_type`: not a GSO frame.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 segmentation.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation.
pub const GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 segmentation.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type` flag: the TSO frame carries ECN.
pub const GSO_ECN: u8 = 0x80;

/// virtio-net feature bits (§5.1.3).
pub mod features {
    /// Device handles packets with partial checksum (driver to device).
    pub const CSUM: u64 = 1 << 0;
    /// Driver handles packets with partial checksum (device to driver).
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// Device has a given MAC address (config `mac`).
    pub const MAC: u64 = 1 << 5;
    /// Driver can receive TSOv4.
    pub const GUEST_TSO4: u64 = 1 << 7;
    /// Driver can receive TSOv6.
    pub const GUEST_TSO6: u64 = 1 << 8;
    /// Driver can receive TSO with ECN.
    pub const GUEST_ECN: u64 = 1 << 9;
    /// Driver can receive UFO.
    pub const GUEST_UFO: u64 = 1 << 10;
    /// Device can receive TSOv4.
    pub const HOST_TSO4: u64 = 1 << 11;
    /// Device can receive TSOv6.
    pub const HOST_TSO6: u64 = 1 << 12;
    /// Device can receive TSO with ECN.
    pub const HOST_ECN: u64 = 1 << 13;
    /// Device can receive UFO.
    pub const HOST_UFO: u64 = 1 << 14;
    /// Driver can merge receive buffers (`num_buffers`).
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// Configuration `status` field is valid.
    pub const STATUS: u64 = 1 << 16;
}

/// TAP offloads (`TUNSETOFFLOAD`) matching what the driver accepted for received frames
/// (§5.1.6.4, §5.1.3.1: the GUEST_TSO/UFO features depend on GUEST_CSUM, as the kernel's TSO
/// and UFO bits depend on its CSUM bit).
pub fn tap_offload(negotiated: u64) -> u32 {
    if negotiated & features::GUEST_CSUM == 0 {
        return 0;
    }
    let mut flags = offload::CSUM;
    if negotiated & features::GUEST_TSO4 != 0 {
        flags |= offload::TSO4;
    }
    if negotiated & features::GUEST_TSO6 != 0 {
        flags |= offload::TSO6;
    }
    if negotiated & features::GUEST_ECN != 0 && flags & (offload::TSO4 | offload::TSO6) != 0 {
        flags |= offload::TSO_ECN;
    }
    if negotiated & features::GUEST_UFO != 0 {
        flags |= offload::UFO;
    }
    flags
}

/// Whether a driver's GSO type is allowed given the features (`tso4`, `tso6`, `ufo`, `ecn`).
fn gso_allowed(gso_type: u8, negotiated: u64, bits: [u64; 4]) -> bool {
    let [tso4, tso6, ufo, ecn] = bits;
    let ecn_ok = gso_type & GSO_ECN == 0 || negotiated & ecn != 0;
    let base_ok = match gso_type & !GSO_ECN {
        GSO_NONE => gso_type == GSO_NONE,
        GSO_TCPV4 => negotiated & tso4 != 0,
        GSO_TCPV6 => negotiated & tso6 != 0,
        GSO_UDP => negotiated & ufo != 0,
        _ => false,
    };
    ecn_ok && base_ok
}

/// Checks a driver's transmit header (§5.1.6.2.1): partial checksums only with CSUM, GSO types
/// only with the matching HOST_* feature, no other flags. The TAP's kernel side validates the
/// offsets itself.
pub fn tx_header_ok(hdr: &[u8; HDR_LEN], negotiated: u64) -> bool {
    let (flags, gso_type) = (hdr[0], hdr[1]);
    let flags_ok = flags & !HDR_F_NEEDS_CSUM == 0
        && (flags & HDR_F_NEEDS_CSUM == 0 || negotiated & features::CSUM != 0);
    let bits = [features::HOST_TSO4, features::HOST_TSO6, features::HOST_UFO, features::HOST_ECN];
    flags_ok && gso_allowed(gso_type, negotiated, bits)
}

/// Makes a header the TAP produced fit what the driver negotiated (§5.1.6.4.1): without
/// GUEST_CSUM `flags` and the checksum fields are zero. Returns false when the frame uses a GSO
/// type the driver cannot take (the kernel should never send one; it is dropped).
pub fn sanitize_rx_header(hdr: &mut [u8; HDR_LEN], negotiated: u64) -> bool {
    if negotiated & features::GUEST_CSUM == 0 {
        hdr[0] = 0;
        hdr[6..10].fill(0);
    } else {
        hdr[0] &= HDR_F_NEEDS_CSUM | HDR_F_DATA_VALID;
    }
    let bits =
        [features::GUEST_TSO4, features::GUEST_TSO6, features::GUEST_UFO, features::GUEST_ECN];
    gso_allowed(hdr[1], negotiated, bits)
}

#[cfg(test)]
mod tests {
    use super::features::*;
    use super::*;

    #[test]
    fn tap_offloads_follow_the_guest_features_and_need_guest_csum() {
        assert_eq!(tap_offload(0), 0);
        assert_eq!(tap_offload(GUEST_TSO4 | GUEST_TSO6 | GUEST_UFO), 0, "no GUEST_CSUM");
        assert_eq!(tap_offload(GUEST_CSUM), offload::CSUM);
        assert_eq!(
            tap_offload(GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6 | GUEST_ECN | GUEST_UFO),
            offload::CSUM | offload::TSO4 | offload::TSO6 | offload::TSO_ECN | offload::UFO
        );
        assert_eq!(tap_offload(GUEST_CSUM | GUEST_ECN), offload::CSUM, "ECN needs TSO");
        // Host-side (driver to device) features never change what the TAP sends us.
        assert_eq!(tap_offload(CSUM | HOST_TSO4 | HOST_TSO6 | HOST_UFO), 0);
    }

    fn hdr(flags: u8, gso: u8) -> [u8; HDR_LEN] {
        let mut h = [0u8; HDR_LEN];
        h[0] = flags;
        h[1] = gso;
        h
    }

    #[test]
    fn tx_headers_may_use_only_negotiated_offloads() {
        assert!(tx_header_ok(&hdr(0, GSO_NONE), 0));
        assert!(!tx_header_ok(&hdr(HDR_F_NEEDS_CSUM, GSO_NONE), 0));
        assert!(tx_header_ok(&hdr(HDR_F_NEEDS_CSUM, GSO_NONE), CSUM));
        assert!(!tx_header_ok(&hdr(HDR_F_DATA_VALID, GSO_NONE), CSUM), "rx-only flag");
        assert!(!tx_header_ok(&hdr(HDR_F_NEEDS_CSUM, GSO_TCPV4), CSUM));
        assert!(tx_header_ok(&hdr(HDR_F_NEEDS_CSUM, GSO_TCPV4), CSUM | HOST_TSO4));
        assert!(!tx_header_ok(&hdr(HDR_F_NEEDS_CSUM, GSO_TCPV6), CSUM | HOST_TSO4));
        assert!(tx_header_ok(&hdr(HDR_F_NEEDS_CSUM, GSO_TCPV6), CSUM | HOST_TSO6));
        assert!(!tx_header_ok(&hdr(HDR_F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN), CSUM | HOST_TSO4));
        assert!(tx_header_ok(
            &hdr(HDR_F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN),
            CSUM | HOST_TSO4 | HOST_ECN
        ));
        assert!(tx_header_ok(&hdr(HDR_F_NEEDS_CSUM, GSO_UDP), CSUM | HOST_UFO));
        assert!(!tx_header_ok(&hdr(0, GSO_ECN), u64::MAX), "ECN alone is no GSO type");
        assert!(!tx_header_ok(&hdr(0, 2), u64::MAX), "unknown GSO type");
        assert!(!tx_header_ok(&hdr(0xff, 0xff), u64::MAX));
    }

    #[test]
    fn rx_headers_are_cleaned_for_drivers_without_guest_csum() {
        let mut h = hdr(HDR_F_NEEDS_CSUM | HDR_F_DATA_VALID, GSO_NONE);
        h[6..10].copy_from_slice(&[1, 2, 3, 4]);
        assert!(sanitize_rx_header(&mut h, 0));
        assert_eq!(h, [0; HDR_LEN]);
        let mut h = hdr(HDR_F_DATA_VALID | 4, GSO_NONE);
        assert!(sanitize_rx_header(&mut h, GUEST_CSUM));
        assert_eq!(h[0], HDR_F_DATA_VALID, "RSC_INFO and unknown bits cleared");
        assert!(!sanitize_rx_header(&mut hdr(1, GSO_TCPV4), GUEST_CSUM));
        assert!(sanitize_rx_header(&mut hdr(1, GSO_TCPV4), GUEST_CSUM | GUEST_TSO4));
    }
}
