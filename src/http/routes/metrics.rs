//! `GET /metrics`: the Prometheus text exposition, on the main listener or — with
//! `MEDIA_METRICS_ADDR` — only on a separate internal one.
//!
//! Event counters are recorded where events happen; state gauges (DB pool and read lane use and the lane's statement counts, tenants with keys,
//! rows waiting for rotation) are refreshed here at scrape time. The rotation backlog is a count
//! over `media_objects`, so it is refreshed at most once a minute whatever the scrape rate.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::state::AppState;
use crate::telemetry::metrics::{self, names};

/// Smallest interval between two rotation-backlog queries.
const BACKLOG_EVERY: Duration = Duration::from_secs(60);

/// When the backlog gauges were last refreshed (shared by the app's clones of the state).
#[derive(Debug, Default, Clone)]
pub struct ScrapeState(Arc<Mutex<Option<Instant>>>);

/// `GET /metrics`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(scrape))
}

/// Prometheus metrics (on the main listener unless `MEDIA_METRICS_ADDR` moves them).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 503, description = "The request deadline passed", body = crate::http::openapi::ErrorBody)))]
async fn scrape(State(state): State<AppState>) -> impl IntoResponse {
    let (size, idle, max) = state.db.pool_stats();
    ::metrics::gauge!(names::DB_POOL, "state" => "idle").set(idle as f64);
    ::metrics::gauge!(names::DB_POOL, "state" => "in_use").set(size.saturating_sub(idle as u32) as f64);
    ::metrics::gauge!(names::DB_POOL_MAX).set(f64::from(max));
    if let Some((in_use, idle, max)) = state.media.read_lane_stats() {
        ::metrics::gauge!(names::DB_READ_LANE, "state" => "idle").set(idle as f64);
        ::metrics::gauge!(names::DB_READ_LANE, "state" => "in_use").set(f64::from(in_use));
        ::metrics::gauge!(names::DB_READ_LANE_MAX).set(f64::from(max));
    }
    if let Some(counts) = state.media.coalesced_reads() {
        ::metrics::counter!(names::DB_READ_LANE_STATEMENTS, "result" => "ok").absolute(counts.statements);
        ::metrics::counter!(names::DB_READ_LANE_STATEMENTS, "result" => "failed").absolute(counts.failed);
        ::metrics::counter!(names::DB_READ_LANE_READS).absolute(counts.reads);
    }
    let due = {
        let mut last = state.scrape.0.lock().unwrap_or_else(PoisonError::into_inner);
        let due = last.is_none_or(|at| at.elapsed() >= BACKLOG_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    };
    if due {
        match state.keys.rotation_backlog().await {
            Ok((tenants, pending, objects_pending, plain_objects)) => {
                ::metrics::gauge!(names::KEY_TENANTS).set(tenants as f64);
                ::metrics::gauge!(names::ROTATION_PENDING).set(pending as f64);
                ::metrics::gauge!(names::ROTATION_OBJECTS_PENDING).set(objects_pending as f64);
                ::metrics::gauge!(names::PLAIN_OBJECT_ROWS).set(plain_objects as f64);
            }
            Err(err) => tracing::warn!(error = %err, "cannot count the rotation backlog for /metrics"),
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics::render(&state.metrics))
}
