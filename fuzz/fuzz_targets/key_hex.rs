//! The `key_hex` fuzz target: see `bus_fuzz::key_hex`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bus_fuzz::key_hex(data));
