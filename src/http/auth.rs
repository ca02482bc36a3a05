//! Auth routes: `GET /v1/auth/whoami` shows a client developer what the service made of their token
//! (subject, tenant, roles, scopes, permissions), and `GET /v1/dev/jwks.json` publishes the dev
//! issuer's public key (dev profile only; 404 otherwise).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::error::ApiError;
use crate::app::AppState;
use crate::auth::extract::Authenticated;
use crate::auth::Principal;

/// The auth routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/auth/whoami", get(whoami)).route("/v1/dev/jwks.json", get(dev_jwks))
}

async fn whoami(caller: Authenticated) -> Json<Principal> {
    Json(caller.principal().clone())
}

async fn dev_jwks(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.auth.dev_jwks().map(Json).ok_or(ApiError::NoRoute)
}
