//! The `tls_server` fuzz target: see `bus_fuzz::tls_server`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bus_fuzz::tls_server(data));
