#![no_main]
//! Fuzz target `content_disposition`: see `media_api::fuzz_checks::content_disposition` for the properties it checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| media_api::fuzz_checks::content_disposition(data));
