//! The `quic_endpoint` fuzz target: see `bus_fuzz::quic_endpoint`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bus_fuzz::quic_endpoint(data));
