//! The `replay_window` fuzz target: see `bus_fuzz::replay_window`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bus_fuzz::replay_window(data));
