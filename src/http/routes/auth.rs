//! Auth routes: `GET /v1/auth/whoami` shows a client developer what the service made of their token
//! (subject, tenant, roles, scopes, permissions), and `GET /v1/dev/jwks.json` publishes the dev
//! issuer's public key (dev profile only; 404 otherwise).

use axum::extract::State;
use axum::Json;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::http::error::ApiError;
use crate::http::extract::Authenticated;
use crate::http::openapi::{AuthErrors, CommonErrors, NotFound};
use crate::http::state::AppState;

/// The auth routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(whoami)).routes(routes!(dev_jwks))
}

/// The caller as the service sees it: subject, tenant, issuer, roles, scopes, permissions.
#[utoipa::path(get, path = "/v1/auth/whoami", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = Principal), AuthErrors))]
async fn whoami(caller: Authenticated) -> Json<Principal> {
    Json(caller.principal().clone())
}

/// The dev issuer's public keys (dev profile only).
#[utoipa::path(get, path = "/v1/dev/jwks.json", tag = "auth",
    responses((status = 200, description = "A JWK Set", body = Object), NotFound, CommonErrors))]
async fn dev_jwks(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.auth.dev_jwks().map(Json).ok_or(ApiError::NoRoute)
}
