//! The `dedup_window` fuzz target: see `bus_fuzz::dedup_window`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bus_fuzz::dedup_window(data));
