#![no_main]
//! Fuzz target `data_url`: see `media_api::fuzz_checks::data_url` for the properties it checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| media_api::fuzz_checks::data_url(data));
