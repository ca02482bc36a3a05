//! One router per resource, each handler parsing the request, calling one use case and rendering
//! the answer: [`upload`], [`direct`] uploads, [`media`] (download, presign, delete), [`resolve`],
//! [`blobs`] (the service's own signed links), [`auth`] (whoami, dev JWKS), [`health`] and
//! [`metrics`].

pub mod auth;
pub mod blobs;
pub mod direct;
pub mod health;
pub mod media;
pub mod metrics;
pub mod resolve;
pub mod upload;
