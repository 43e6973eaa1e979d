//! virtio-blk request parser: arbitrary descriptor tables, avail rings and request bytes
//! through the device's queue handler (layout in `ironvirt_virtio::block::fuzz_one`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ironvirt_virtio::block::fuzz_one(data);
});
