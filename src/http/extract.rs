//! The axum extractor protected handlers take: [`Authenticated<R>`] authenticates the request and
//! checks the permission `R` names before the handler runs; a refusal is counted, audited and
//! answered as an RFC 6750 challenge through [`ApiError`].
//!
//! ```ignore
//! async fn upload(Authenticated(caller, ..): Authenticated<CanWrite>, …) -> Result<…, ApiError>
//! ```

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::admission::peer_ip;
use super::error::ApiError;
use super::observe::RequestSlot;
use super::state::AppState;
use crate::auth::{Permission, Principal};

/// What a route requires of its caller.
pub trait Requirement: Send + Sync + 'static {
    /// The permission needed, or `None` for any authenticated caller.
    const PERMISSION: Option<Permission>;
}

/// Any authenticated (or, in `optional` mode, anonymous) caller.
pub struct AnyCaller;
/// Callers holding `media:read`.
pub struct CanRead;
/// Callers holding `media:write`.
pub struct CanWrite;
/// Callers holding `media:admin`.
pub struct CanAdmin;

impl Requirement for AnyCaller {
    const PERMISSION: Option<Permission> = None;
}
impl Requirement for CanRead {
    const PERMISSION: Option<Permission> = Some(Permission::Read);
}
impl Requirement for CanWrite {
    const PERMISSION: Option<Permission> = Some(Permission::Write);
}
impl Requirement for CanAdmin {
    const PERMISSION: Option<Permission> = Some(Permission::Admin);
}

/// The caller of a request that passed authentication and the permission check of `R`.
pub struct Authenticated<R: Requirement = AnyCaller>(pub Arc<Principal>, PhantomData<R>);

impl<R: Requirement> Authenticated<R> {
    /// The principal.
    pub fn principal(&self) -> &Principal {
        &self.0
    }
}

impl<R: Requirement> FromRequestParts<AppState> for Authenticated<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let authorization = parts.headers.get(AUTHORIZATION).map(|value| value.as_bytes());
        let result = state.auth.authenticate(authorization).await.and_then(|principal| {
            if let Some(permission) = R::PERMISSION {
                principal.require(permission)?;
            }
            Ok(principal)
        });
        let peer = peer_ip(&parts.extensions);
        match result {
            Ok(principal) => {
                state.limits.check_principal(&principal, peer).await?;
                if let Some(slot) = parts.extensions.get::<Arc<RequestSlot>>() {
                    slot.set_caller(&principal);
                }
                Ok(Self(principal, PhantomData))
            }
            Err(err) => {
                state.auth.record_failure(&err, peer);
                // A refused token still spends the source's bucket: floods of bad tokens get 429.
                state.limits.check_ip(peer).await?;
                Err(ApiError::Auth(err))
            }
        }
    }
}
