#![no_main]
//! Fuzz target `object_segments`: see `media_api::fuzz_checks::object_segments` for the properties it checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| media_api::fuzz_checks::object_segments(data));
