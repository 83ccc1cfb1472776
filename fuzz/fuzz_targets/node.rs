//! The `node` fuzz target: see `bus_fuzz::node`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bus_fuzz::node(data));
