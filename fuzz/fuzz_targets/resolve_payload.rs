#![no_main]
//! Fuzz target `resolve_payload`: see `media_api::fuzz_checks::resolve_payload` for the properties it checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| media_api::fuzz_checks::resolve_payload(data));
