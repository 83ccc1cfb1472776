#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| bus_fuzz::header(data));
