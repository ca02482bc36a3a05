//! The test harness, and nothing else: [`app`] (`spawn_app` on port 0 with a fresh database, the
//! S3 settings `scripts/test` exports, byte fixtures), [`connections`] (raw TCP clients from a
//! chosen loopback address), [`media`] (an app with a token issuer and
//! counts of what is stored), [`process`] (the real binary as a child process), [`own`] (a
//! PostgreSQL cluster and a Garage node a test can stop), [`limits`] (Redis for the shared-limits
//! tests, held uploads, readiness and metric readings), [`faults`] (loads, kills and the proofs
//! run after a fault), [`fleet`] (several replicas behind HAProxy), [`jwks`] (a JWKS server and
//! token minting from generated keys), [`s3_proxy`] (a proxy in front of Garage that answers chosen
//! requests with `503 SlowDown`) and [`repository`] (the encrypted repository on both
//! databases, without the service).

pub mod app;
pub mod connections;
pub mod faults;
pub mod fleet;
pub mod jwks;
pub mod limits;
pub mod media;
pub mod own;
pub mod process;
pub mod repository;
pub mod s3_proxy;
