#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xen_abi::fuzzing::ring_backend(data));
