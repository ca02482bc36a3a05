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
//!
//! The checks cost a database round trip, a query and an S3 `HeadBucket`, and `/readyz` needs no
//! token, so it answers from a result at most [`MAX_AGE`] old ([`ReadinessCache`]): at most one check
//! runs at a time, in a task of its own, and every caller that comes while it runs waits for that
//! same result. Each client network also has a `/readyz` rate limit of its own
//! (`MEDIA_RATE_LIMIT_READYZ_*`, in admission): 429 `rate_limited` past it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, Shared};
use futures::FutureExt;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::admission::LimitsState;
use crate::http::openapi::{CommonErrors, ErrorBody};
use crate::http::state::AppState;
use crate::telemetry::metrics::names;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Oldest readiness result `/readyz` answers with.
pub const MAX_AGE: Duration = Duration::from_secs(1);

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
#[derive(Debug, Clone, Serialize, ToSchema)]
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

/// Whether the database, blob store, keyring and every issuer's signing keys are usable, as checked
/// at most [`MAX_AGE`] ago.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready, or degraded (a token issuer without keys while another has them)", body = Readiness),
    (status = 429, description = "This client asked too often (`rate_limited`); see `Retry-After`", body = ErrorBody),
    (status = 503, description = "A dependency is down (`error` names it), or the deadline passed", body = Readiness),
))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let (status, body) = state.readiness.answer(&state).await;
    (status, Json(body))
}

/// A readiness answer.
type Answer = (StatusCode, Readiness);

/// `/readyz`'s last result and the check in flight (see the module docs).
#[derive(Default)]
pub struct ReadinessCache {
    slot: Mutex<Slot>,
    runs: AtomicU64,
    waiting: AtomicUsize,
}

#[derive(Default)]
struct Slot {
    last: Option<(Instant, Answer)>,
    running: Option<Shared<BoxFuture<'static, Answer>>>,
}

impl ReadinessCache {
    /// The last result if it is at most [`MAX_AGE`] old; else the result of the check in flight,
    /// started now if none is.
    pub async fn answer(&self, state: &AppState) -> Answer {
        let running = {
            let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, answer)) = &slot.last {
                if at.elapsed() <= MAX_AGE {
                    return answer.clone();
                }
            }
            slot.running.get_or_insert_with(|| self.start(state.clone())).clone()
        };
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        running.await
    }

    /// Checks run so far (tests, with [`Self::waiting`]).
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }

    /// Callers waiting for the check in flight now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Runs the checks in a task of their own, which stores the result and clears the slot: a
    /// caller that goes away does not stop them, and the slot never holds the state.
    fn start(&self, state: AppState) -> Shared<BoxFuture<'static, Answer>> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        metrics::counter!(names::READINESS_CHECKS).increment(1);
        let task = tokio::spawn(async move {
            let answer = std::panic::AssertUnwindSafe(check_all(&state))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| not_ready(BTreeMap::new(), vec!["the readiness check failed".to_owned()], None));
            let mut slot = state.readiness.slot.lock().unwrap_or_else(PoisonError::into_inner);
            slot.last = Some((Instant::now(), answer.clone()));
            slot.running = None;
            answer
        });
        let stopped = || not_ready(BTreeMap::new(), vec!["the readiness check was stopped".to_owned()], None);
        task.map(move |joined| joined.unwrap_or_else(|_| stopped())).boxed().shared()
    }
}

/// Counts a caller waiting for the check in flight, until it stops waiting (answered or gone).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs every readiness check now.
async fn check_all(state: &AppState) -> Answer {
    let (database, storage, keyring) = tokio::join!(
        check("database", state.db.ping()),
        check("storage", state.blobs.check()),
        check("keyring", keyring_covers_stored_keys(state)),
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
        return (StatusCode::OK, Readiness { status, checks, error: None, degraded, code: None });
    }
    not_ready(checks, failures, degraded)
}

/// The 503 answer naming what failed.
fn not_ready(checks: BTreeMap<String, &'static str>, failures: Vec<String>, degraded: Option<String>) -> Answer {
    let error = Some(failures.join("; "));
    let body = Readiness { status: "not_ready", checks, error, degraded, code: Some("not_ready") };
    (StatusCode::SERVICE_UNAVAILABLE, body)
}
