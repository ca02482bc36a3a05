#![no_main]
//! Fuzz target `wrapped_key`: see `media_api::fuzz_checks::wrapped_key` for the properties it checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| media_api::fuzz_checks::wrapped_key(data));
