//! Integration tests: the service on port 0 against a real PostgreSQL and a real S3 server (Garage),
//! or SQLite and the filesystem, driven over real HTTP. `scripts/test` provides the servers.
//!
//! One test binary (modules below) so the suite links once. `support/` holds the harness; every
//! other module holds tests only.

#![allow(clippy::unwrap_used)]

mod audit;
mod audit_privacy;
mod auth;
mod auth_policy;
mod chunked_puts;
mod cli;
mod coalesce;
mod connections;
mod dedup;
mod encryption;
mod exclusion;
mod faults;
mod fleet;
mod form_puts;
#[cfg(feature = "fuzzing")]
mod fuzz_regressions;

/// Without the `fuzzing` feature the recorded fuzz inputs are not replayed: say so, loudly, rather
/// than pass without them.
#[cfg(not(feature = "fuzzing"))]
#[test]
fn fuzz_regressions_are_replayed_only_with_the_fuzzing_feature() {
    panic!("the fuzz regressions (fuzz/regressions/) replay only with `--features fuzzing`: run scripts/test");
}
mod health;
mod hostile;
mod hostile_bodies;
mod jwks;
mod limits;
mod media;
mod migrations;
mod object_keys;
mod object_moves;
mod operations;
mod read_lane;
mod reconcile;
mod replicas;
mod repository;
mod rotation;
mod s3_uploads;
mod shred;
mod shutdown;
mod storage_contract;
mod support;
