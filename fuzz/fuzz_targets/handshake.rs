//! The `handshake` fuzz target: see `bus_fuzz::handshake`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bus_fuzz::handshake(data));
