//! Memory sizes with binary units ("512M", "2G", "1T"; a bare number is MiB, as for
//! `ironvirt-vmm --memory`).

/// Smallest guest memory accepted.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Largest guest memory accepted.
pub const MAX_MEMORY: u64 = 1 << 40;

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a number with an optional K/M/G/T suffix.
    #[error("'{0}' is not a size (a number with K, M, G or T, binary units)")]
    Syntax(String),
    /// Outside 16 MiB..=1 TiB.
    #[error("{0} bytes is outside 16M..1T")]
    Range(u64),
    /// Not page aligned.
    #[error("{0} bytes is not a whole number of 4 KiB pages")]
    Unaligned(u64),
}

/// Parses a guest memory size into bytes and checks its range and alignment.
pub fn parse_memory(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (digits, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some('T' | 't') => (&t[..t.len() - 1], 40),
        _ => (t, 20),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SizeError::Syntax(s.to_string()));
    }
    let n: u64 = digits.parse().map_err(|_| SizeError::Syntax(s.to_string()))?;
    let bytes = n.checked_mul(1u64 << shift).ok_or(SizeError::Range(u64::MAX))?;
    if !(MIN_MEMORY..=MAX_MEMORY).contains(&bytes) {
        return Err(SizeError::Range(bytes));
    }
    if bytes % 4096 != 0 {
        return Err(SizeError::Unaligned(bytes));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_units_parse_to_bytes() {
        assert_eq!(parse_memory("512M"), Ok(512 << 20));
        assert_eq!(parse_memory("2G"), Ok(2 << 30));
        assert_eq!(parse_memory("1T"), Ok(1 << 40));
        assert_eq!(parse_memory("16384K"), Ok(16 << 20));
        assert_eq!(parse_memory("64"), Ok(64 << 20));
        assert_eq!(parse_memory("1GiB"), Ok(1 << 30));
    }

    #[test]
    fn out_of_range_malformed_and_unaligned_sizes_are_rejected() {
        assert_eq!(parse_memory("15M"), Err(SizeError::Range(15 << 20)));
        assert_eq!(parse_memory("2T"), Err(SizeError::Range(2 << 40)));
        assert!(matches!(parse_memory("lots"), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_memory("-1G"), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_memory(""), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_memory("99999999999999999T"), Err(SizeError::Range(_))));
        assert_eq!(parse_memory("16385K"), Err(SizeError::Unaligned(16385 << 10)));
    }
}
