//! Integration tests: the service on port 0 against a real PostgreSQL and a real S3 server (Garage),
//! or SQLite and the filesystem, driven over real HTTP. `scripts/test` provides the servers.
//!
//! One test binary (modules below) so the suite links once.

#![allow(clippy::unwrap_used)]

mod audit;
mod auth;
mod cli;
mod faults;
mod fuzz_regressions;
mod health;
mod helpers;
mod jwks;
mod media;
mod migrations;
mod operations;
mod process;
mod repository;
mod rotation;
mod shred;
mod shutdown;
mod storage_contract;
