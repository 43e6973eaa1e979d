//! virtio-net header path: transmit chains and TAP frames through the device's handler, with
//! guest memory and both queues built from the input (`ironvirt_virtio::net::fuzz_one`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ironvirt_virtio::net::fuzz_one(data);
});
