//! Replays `fuzz/regressions/<target>/*` — edge cases written by hand and every input a fuzzer
//! once failed on — through the same checks the fuzz targets run (`media_api::fuzz_checks`).

use media_api::fuzz_checks::{run, TARGETS};

#[test]
fn every_recorded_fuzz_input_passes_its_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    for target in TARGETS {
        let dir = root.join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{target} has no recorded inputs");
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            let outcome = std::panic::catch_unwind(|| run(target, &data));
            assert!(outcome.is_ok(), "{target}: {} fails its check again", input.display());
        }
    }
}

#[test]
#[should_panic(expected = "no fuzz target named")]
fn an_unknown_target_is_an_error_not_a_silent_pass() {
    run("no_such_target", b"");
}
