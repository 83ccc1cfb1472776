//! The `frame_decoder` fuzz target: see `bus_fuzz::frame_decoder`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bus_fuzz::frame_decoder(data));
