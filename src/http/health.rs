//! Liveness, readiness and version: the routes an orchestrator and an operator poll, all without auth.
//!
//! `/healthz` only says the process answers. `/readyz` checks the database and blob store concurrently
//! with a short timeout, and that every token issuer's signing keys are loaded; it names the one
//! that is down (503), so a load balancer stops sending traffic and
//! an operator knows where to look; details go to the log, not to the unauthenticated response.

use std::future::Future;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::app::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// `GET /healthz`, `GET /readyz`, `GET /v1/version`.
pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/v1/version", get(version))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn version() -> Json<Value> {
    Json(json!({ "name": env!("CARGO_PKG_NAME"), "version": env!("CARGO_PKG_VERSION") }))
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

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (database, storage) = tokio::join!(check("database", state.db.ping()), check("storage", state.blobs.check()));
    let mut results = vec![("database".to_owned(), database), ("storage".to_owned(), storage)];
    for (issuer, status) in state.auth.key_status() {
        let name = format!("jwks:{issuer}");
        let result = if status.loaded { Ok(()) } else { Err(format!("{name} has no signing keys yet")) };
        results.push((name, result));
    }
    let mut checks = serde_json::Map::new();
    let mut failures = Vec::new();
    for (name, result) in results {
        checks.insert(name, json!(if result.is_ok() { "ok" } else { "down" }));
        if let Err(message) = result {
            failures.push(message);
        }
    }
    if failures.is_empty() {
        return (StatusCode::OK, Json(json!({ "status": "ready", "checks": checks })));
    }
    let body = json!({
        "status": "not_ready",
        "checks": checks,
        "error": failures.join("; "),
        "code": "not_ready",
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body))
}
