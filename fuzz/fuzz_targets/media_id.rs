#![no_main]
//! Fuzz target `media_id`: see `media_api::fuzz_checks::media_id` for the properties it checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| media_api::fuzz_checks::media_id(data));
