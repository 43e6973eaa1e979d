//! virtio-vsock: tx packet headers and payloads from arbitrary bytes (and rx generation
//! behind them). The input format is documented on `ironvirt_virtio::vsock::fuzz_one`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ironvirt_virtio::vsock::fuzz_one(data);
});
