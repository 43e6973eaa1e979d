//! A lock-free per-call-site rate limiter for guest-triggered log messages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Admits up to [`RateLimiter::BURST`] events per one-second window.
#[derive(Debug)]
pub struct RateLimiter {
    /// Window start in whole seconds since the epoch (upper 32 bits) and count (lower 32 bits).
    state: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimiter {
    /// Events admitted per window.
    pub const BURST: u64 = 10;

    /// A limiter with an empty window; `const` so it can live in a `static`.
    pub const fn new() -> Self {
        Self { state: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// Returns `Some(suppressed_since_last_admit)` when the event may be logged.
    pub fn admit(&self) -> Option<u64> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
            & 0xffff_ffff;
        let prev = self.state.load(Ordering::Relaxed);
        let (window, count) = (prev >> 32, prev & 0xffff_ffff);
        let next = if window == now { (now << 32) | (count + 1) } else { (now << 32) | 1 };
        // A lost race only miscounts one message; no retry loop needed.
        let _ = self.state.compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed);
        if (next & 0xffff_ffff) <= Self::BURST {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_a_burst_then_suppresses() {
        let limiter = RateLimiter::new();
        let admitted = (0..100).filter(|_| limiter.admit().is_some()).count() as u64;
        // Two windows at most can be seen if the second boundary falls inside the loop.
        assert!((RateLimiter::BURST..=2 * RateLimiter::BURST).contains(&admitted));
    }
}
