//! Commands of the `media-api` binary, one file each, each with its clap `Opts` (where it takes any)
//! and a `run` function.

pub mod audit;
pub mod healthcheck;
pub mod keys;
pub mod migrate;
pub mod rotate_keys;
pub mod serve;
pub mod tenant;
pub mod token;
