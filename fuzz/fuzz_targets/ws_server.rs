//! The `ws_server` fuzz target: see `bus_fuzz::ws_server`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bus_fuzz::ws_server(data));
