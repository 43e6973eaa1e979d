//! Ethernet MAC addresses as users write them (`52:54:00:12:34:56`).

/// The MAC QEMU gives its first NIC; a locally administered unicast address.
pub const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Parses six colon-separated pairs of hex digits (`52:54:00:12:34:56`). Multicast addresses
/// (low bit of the first byte set) and the all-zero address cannot be a NIC's address and are
/// rejected.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part =
            parts.next().ok_or_else(|| format!("MAC address {s:?} has fewer than 6 bytes"))?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("MAC address {s:?}: {part:?} is not two hex digits"));
        }
        *byte = u8::from_str_radix(part, 16)
            .map_err(|_| format!("MAC address {s:?}: {part:?} is not two hex digits"))?;
    }
    if parts.next().is_some() {
        return Err(format!("MAC address {s:?} has more than 6 bytes"));
    }
    if mac[0] & 1 != 0 {
        return Err(format!("MAC address {s:?} is a multicast address"));
    }
    if mac == [0; 6] {
        return Err(format!("MAC address {s:?} is all zeroes"));
    }
    Ok(mac)
}

/// Formats a MAC address the way [`parse_mac`] reads it.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_a_unicast_address() {
        let mac = parse_mac("52:54:00:AB:cd:0f").unwrap();
        assert_eq!(mac, [0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]);
        assert_eq!(format_mac(&mac), "52:54:00:ab:cd:0f");
        assert_eq!(parse_mac(&format_mac(&DEFAULT_MAC)).unwrap(), DEFAULT_MAC);
    }

    #[test]
    fn rejects_malformed_multicast_and_zero_addresses() {
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:5",
            "52:54:00:12:34:567",
            "52-54-00-12-34-56",
            "52:54:00:12:34:+5",
            "5g:54:00:12:34:56",
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad:?} must be rejected");
        }
    }
}
