//! The `header` fuzz target: see `bus_fuzz::header`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bus_fuzz::header(data));
