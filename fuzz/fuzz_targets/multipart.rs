#![no_main]
//! Fuzz target `multipart`: see `media_api::fuzz_checks::multipart` for the properties it checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| media_api::fuzz_checks::multipart(data));
