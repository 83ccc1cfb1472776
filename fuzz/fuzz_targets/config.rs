//! The `config` fuzz target: see `bus_fuzz::config`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bus_fuzz::config(data));
