//! The `identity` fuzz target: see `bus_fuzz::identity`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bus_fuzz::identity(data));
