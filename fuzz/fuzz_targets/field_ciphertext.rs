#![no_main]
//! Fuzz target `field_ciphertext`: see `media_api::fuzz_checks::field_ciphertext` for the properties it checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| media_api::fuzz_checks::field_ciphertext(data));
