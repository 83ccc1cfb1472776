//! The `nonce_ring` fuzz target: see `bus_fuzz::nonce_ring`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bus_fuzz::nonce_ring(data));
