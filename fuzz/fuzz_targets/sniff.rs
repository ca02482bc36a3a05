#![no_main]
//! Fuzz target `sniff`: see `media_api::fuzz_checks::sniff` for the properties it checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| media_api::fuzz_checks::sniff(data));
