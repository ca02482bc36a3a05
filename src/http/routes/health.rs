//! Liveness, readiness and version: the routes an orchestrator and an operator poll, all without auth.
//!
//! `/healthz` only says the process answers. `/readyz` checks the database and blob store concurrently
//! with a short timeout, and that every token issuer's signing keys are loaded; it names the one
//! that is down (503), so a load balancer stops sending traffic and
//! an operator knows where to look; details go to the log, not to the unauthenticated response.
//! Issuers are one check together: while at least one trusted issuer has keys the service still
//! serves that issuer's callers, so an issuer without keys makes it `degraded` (200, naming the
//! issuer); only when no issuer has keys is it not ready.
//! With `MEDIA_REDIS_URL`, `limits` says whether the limits are shared (`ok`) or each replica's
//! own because Redis does not answer (`degraded`): still ready, as the service works either way.

use std::future::Future;
use std::time::Duration;

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::admission::LimitsState;
use crate::http::openapi::CommonErrors;
use crate::http::state::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// `GET /healthz`, `GET /readyz`, `GET /v1/version`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz)).routes(routes!(version))
}

/// Liveness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: &'static str,
}

/// Readiness: each dependency `ok` or `down`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, `degraded` (200: some token issuer has no signing keys, another has) or `not_ready`.
    #[schema(example = "ready")]
    status: &'static str,
    /// `database`, `storage`, `keyring` and `jwks:<issuer>` per issuer → `ok` or `down`; with
    /// `MEDIA_REDIS_URL`, `limits` → `ok` (shared through Redis) or `degraded` (Redis does not
    /// answer: each replica's own limits; ready all the same).
    checks: BTreeMap<String, &'static str>,
    /// What is down (only when not ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// What is down while the service still works (only when degraded): the issuers without keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    degraded: Option<String>,
    /// `not_ready` (only when not ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
}

/// Name and version of the running service.
#[derive(Debug, Serialize, ToSchema)]
pub struct Version {
    /// `media-api`.
    name: &'static str,
    /// The crate version.
    version: &'static str,
}

/// Whether the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health), CommonErrors))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The running version.
#[utoipa::path(get, path = "/v1/version", tag = "operations", responses((status = 200, body = Version), CommonErrors))]
async fn version() -> Json<Version> {
    Json(Version { name: env!("CARGO_PKG_NAME"), version: env!("CARGO_PKG_VERSION") })
}

/// Runs one readiness check; `Err` carries the log detail.
async fn check<E: std::fmt::Display>(name: &str, probe: impl Future<Output = Result<(), E>>) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => {
            tracing::warn!(dependency = name, error = %err, "readiness check failed");
            Err(format!("{name} is down"))
        }
        Err(_) => {
            tracing::warn!(dependency = name, "readiness check timed out");
            Err(format!("{name} did not answer within {}s", CHECK_TIMEOUT.as_secs()))
        }
    }
}

/// Fails when tenant keys are wrapped under a master key the keyring does not hold (an operator
/// removed a KEK too early). A database error is not the keyring's: the database check reports it.
async fn keyring_covers_stored_keys(state: &AppState) -> Result<(), String> {
    let Ok(in_use) = state.keys.keks_in_use().await else { return Ok(()) };
    let missing: Vec<String> = in_use.into_iter().map(|(id, _)| id).filter(|id| !state.keyring.contains(id)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!("tenant keys are wrapped under master keys missing from the keyring: {}", missing.join(", ")))
}

/// Whether the database, blob store, keyring and every issuer's signing keys are usable.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready, or degraded (a token issuer without keys while another has them)", body = Readiness),
    (status = 503, description = "A dependency is down (`error` names it), or the deadline passed", body = Readiness),
))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let (database, storage, keyring) = tokio::join!(
        check("database", state.db.ping()),
        check("storage", state.blobs.check()),
        check("keyring", keyring_covers_stored_keys(&state)),
    );
    let mut checks = BTreeMap::new();
    let mut failures = Vec::new();
    for (name, result) in [("database", database), ("storage", storage), ("keyring", keyring)] {
        checks.insert(name.to_owned(), if result.is_ok() { "ok" } else { "down" });
        failures.extend(result.err());
    }
    let issuers = state.auth.key_status();
    let without_keys: Vec<String> =
        issuers.iter().filter(|(_, status)| !status.loaded).map(|(issuer, _)| format!("jwks:{issuer}")).collect();
    for (issuer, status) in &issuers {
        checks.insert(format!("jwks:{issuer}"), if status.loaded { "ok" } else { "down" });
    }
    let mut degraded = None;
    if !without_keys.is_empty() {
        let message = format!("{} has no signing keys yet", without_keys.join(", "));
        if without_keys.len() == issuers.len() {
            failures.push(message);
        } else {
            tracing::warn!(issuers = %without_keys.join(", "), "readiness degraded: some token issuers have no keys");
            degraded = Some(message);
        }
    }
    match state.limits.state() {
        LimitsState::Local => {}
        LimitsState::Shared => _ = checks.insert("limits".to_owned(), "ok"),
        LimitsState::Degraded => _ = checks.insert("limits".to_owned(), "degraded"),
    }
    if failures.is_empty() {
        let status = if degraded.is_some() { "degraded" } else { "ready" };
        return (StatusCode::OK, Json(Readiness { status, checks, error: None, degraded, code: None }));
    }
    let error = Some(failures.join("; "));
    let body = Readiness { status: "not_ready", checks, error, degraded, code: Some("not_ready") };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body))
}
