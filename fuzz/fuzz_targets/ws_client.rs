//! The `ws_client` fuzz target: see `bus_fuzz::ws_client`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bus_fuzz::ws_client(data));
