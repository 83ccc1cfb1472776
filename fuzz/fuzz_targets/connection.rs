//! The `connection` fuzz target: see `bus_fuzz::connection`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bus_fuzz::connection(data));
