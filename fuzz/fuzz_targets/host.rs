//! The `host` fuzz target: see `bus_fuzz::host`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bus_fuzz::host(data));
