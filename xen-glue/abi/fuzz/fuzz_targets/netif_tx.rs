#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xen_abi::fuzzing::netif_tx(data));
