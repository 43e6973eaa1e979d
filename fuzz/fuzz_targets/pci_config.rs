//! Guest accesses to PCI configuration space (CF8/CFC, ECAM) and MSI-X BARs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ironvirt_pci::fuzz::fuzz_one(data);
});
