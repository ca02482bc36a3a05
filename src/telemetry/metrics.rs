//! Prometheus metrics: the process-wide recorder, the names every module records under, and the
//! text rendered at `/metrics`.
//!
//! Modules record through the `metrics` facade (`metrics::counter!(names::PRESIGNS).increment(1)`);
//! [`install`] puts the Prometheus recorder behind it once per process (tests that build several
//! apps share it, so their counters only grow). Gauges that describe state rather than events — DB
//! pool use, JWKS key counts, rows waiting for rotation — are set when `/metrics` is scraped.
//!
//! The recorder keeps every histogram sample until its upkeep folds them into the buckets. A
//! scrape runs it; [`spawn_upkeep`] runs it every [`UPKEEP_PERIOD`] as well, so a service nobody
//! scrapes does not grow with each request's latency sample (it did: about 19 bytes per request,
//! 80 MiB after 4.9 million requests; `scripts/bench-request-memory`, docs/performance.md).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Metric names (one place, so dashboards and the operator guide can rely on them).
pub mod names {
    /// Counter of connections closed as soon as accepted, by `reason` (`per_ip`: over
    /// `MEDIA_MAX_CONNECTIONS_PER_IP`).
    pub const CONNECTIONS_REFUSED: &str = "media_connections_refused_total";
    /// Counter of connections closed because no complete request head came within
    /// `MEDIA_KEEPALIVE_TIMEOUT` (idle keep-alive, nothing sent, or a slow head).
    pub const CONNECTIONS_TIMED_OUT: &str = "media_connections_timed_out_total";
    pub const SEND_TIMEOUTS: &str = "media_send_timeouts_total";
    /// Gauge of connections open (served, in a TLS handshake or closing).
    pub const CONNECTIONS_OPEN: &str = "media_connections_open";
    /// Counter of readiness checks run (`/readyz` answers from a result at most 1 s old).
    pub const READINESS_CHECKS: &str = "media_readiness_checks_total";
    /// Counter of HTTP requests by `method`, `route` (template) and `status`.
    pub const HTTP_REQUESTS: &str = "media_http_requests_total";
    /// Histogram of request latency (to the response head) by `method` and `route`.
    pub const HTTP_DURATION: &str = "media_http_request_duration_seconds";
    /// Gauge of requests being handled.
    pub const HTTP_IN_FLIGHT: &str = "media_http_requests_in_flight";
    /// Counter of bytes stored by uploads.
    pub const UPLOAD_BYTES: &str = "media_upload_bytes_total";
    /// Counter of accepted uploads by `result` (`stored`, `deduped`).
    pub const UPLOADS: &str = "media_uploads_total";
    /// Counter of refused uploads by `reason` (the error code).
    pub const UPLOAD_REJECTIONS: &str = "media_upload_rejections_total";
    /// Counter of S3 parts sent again whole after their live request, by `reason`: `short` (the
    /// body ended inside the live part, which happens when S3 was idle while the last part filled),
    /// `failed` (the request failed), `unanswered` (no answer in time once the part was filled).
    pub const S3_PART_RESENDS: &str = "media_s3_part_resends_total";
    /// Counter of failed uploads whose object delete was left to the sweeper because
    /// `BACKGROUND_DISCARDS` deletes were already running (a store whose deletes hang).
    pub const DISCARDS_DEFERRED: &str = "media_failed_upload_deletes_deferred_total";
    /// Counter of streamed `PutObject`s given up because S3 stopped taking their body or answering
    /// (`sized::Stall`), by `stage`: `body` (S3 took no further byte), `answer` (every byte was
    /// handed to the connection and S3 did not answer).
    pub const S3_PUT_STALLS: &str = "media_s3_put_stalls_total";
    /// Counter of streamed `PutObject`s of a guessed length (a form's file) rebuilt afterwards
    /// because the guess was wrong, by `reason`: `short` (the file ended first: a part or an
    /// epilogue after it), `long` (a closing delimiter without its line break).
    pub const S3_PUT_REBUILDS: &str = "media_s3_put_rebuilds_total";
    /// Counter of questions asking the store whether it takes a chunked `PutObject`
    /// (`MEDIA_S3_CHUNKED_PUT=auto`), by `answer`: `taken`, `refused`, `undecided` (a failure that
    /// says nothing: asked again after a while).
    pub const S3_CHUNKED_PUT_QUESTIONS: &str = "media_s3_chunked_put_questions_total";
    /// Histogram of S3 request attempts by `operation` (the S3 API name) and `outcome` (`ok`,
    /// `client_error`, `server_error`, `no_answer`): the time from sending to the answer's head.
    pub const S3_REQUEST_DURATION: &str = "media_s3_request_duration_seconds";
    /// Gauge of uploads holding a slot.
    pub const UPLOADS_IN_FLIGHT: &str = "media_uploads_in_flight";
    /// Counter of 429 answers by `scope` (`principal`, `ip`, `readyz`).
    pub const RATE_LIMITED: &str = "media_rate_limited_total";
    /// Counter of refused tokens by `reason`.
    pub const AUTH_FAILURES: &str = "media_auth_failures_total";
    /// Counter of JWKS fetches by `issuer` and `result` (`ok`, `error`).
    pub const JWKS_REFRESHES: &str = "media_jwks_refreshes_total";
    /// Gauge of signing keys loaded per `issuer`.
    pub const JWKS_KEYS: &str = "media_jwks_keys";
    /// Counter of presigned URLs issued.
    pub const PRESIGNS: &str = "media_presigns_total";
    /// Counter: stored encrypted objects that failed their integrity check on a read.
    pub const OBJECT_INTEGRITY_FAILURES: &str = "media_object_integrity_failures_total";
    /// Histogram of placeholders (IDs) replaced per resolve call.
    pub const RESOLVE_PLACEHOLDERS: &str = "media_resolve_placeholders";
    pub const RESOLVE_REJECTIONS: &str = "media_resolve_rejections_total";
    /// Counter of blob store failures by `op`.
    pub const BLOB_ERRORS: &str = "media_blob_store_errors_total";
    /// Counter of database failures answered as errors.
    pub const DB_ERRORS: &str = "media_db_errors_total";
    /// Counter of request handlers that panicked (answered 500 `internal`); any is a bug.
    pub const PANICS: &str = "media_handler_panics_total";
    /// Gauge of rows still encrypted under a DEK version that is not their tenant's active one.
    pub const ROTATION_PENDING: &str = "media_rotation_rows_pending";
    /// Gauge of rows whose object is sealed under a DEK version older than their tenant's active one.
    pub const ROTATION_OBJECTS_PENDING: &str = "media_rotation_object_rows_pending";
    /// Gauge of ready rows whose object is stored in the clear.
    pub const PLAIN_OBJECT_ROWS: &str = "media_plain_object_rows";
    /// Gauge of tenants with keys.
    pub const KEY_TENANTS: &str = "media_keys_tenants";
    /// Gauge of database connections by `state` (`idle`, `in_use`).
    pub const DB_POOL: &str = "media_db_pool_connections";
    /// Gauge of the pool's maximum size.
    pub const DB_POOL_MAX: &str = "media_db_pool_max_connections";
    /// Gauge of the read lane's connections by `state` (`idle`, `in_use`; PostgreSQL service only).
    pub const DB_READ_LANE: &str = "media_db_read_lane_connections";
    /// Gauge of the read lane's size.
    pub const DB_READ_LANE_MAX: &str = "media_db_read_lane_max_connections";
    /// Counter of statements the read lane ran for rows by id (coalesced reads share one), by
    /// `result` (`ok`; `failed`: failed or out of time, its reads retried one by one).
    pub const DB_READ_LANE_STATEMENTS: &str = "media_db_read_lane_statements_total";
    /// Counter of rows by id the read lane's statements answered (over the statements: the batching).
    pub const DB_READ_LANE_READS: &str = "media_db_read_lane_reads_total";
    /// Counter of TLS certificate reloads by `result` (`ok`, `error`).
    pub const TLS_RELOADS: &str = "media_tls_reloads_total";
    /// Gauge: 1 while this process hears other processes' cache invalidations (Postgres).
    pub const CACHE_LISTENING: &str = "media_cache_invalidation_listening";
    /// Counter of limit checks answered by this process's own limits because Redis
    /// (`MEDIA_REDIS_URL`) did not answer, by `check` (`rate`, `uploads`).
    pub const LIMITS_FALLBACK: &str = "media_limits_fallback_total";
    /// Counter of audit events that could not be appended (the operation they record went on).
    pub const AUDIT_APPEND_FAILURES: &str = "media_audit_append_failures_total";
    /// Gauge (with `MEDIA_REDIS_URL`): 1 while the limits are shared through Redis, 0 while this
    /// process falls back to its own.
    pub const LIMITS_SHARED: &str = "media_limits_shared";
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds: 1 ms to 30 min (an S3 request streaming a slow client's upload).
const LATENCY_BUCKETS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0, 300.0, 1800.0];
/// Placeholder-count buckets.
const COUNT_BUCKETS: [f64; 9] = [0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 256.0];

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(names::RESOLVE_PLACEHOLDERS.into()), &COUNT_BUCKETS)
                })
                .expect("bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets without a scrape (the exporter's
/// own default, which only its HTTP listener mode spawns).
pub const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// Runs the recorder's upkeep every `period` until the task is aborted: the bound on the samples
/// held between scrapes.
pub fn spawn_upkeep(handle: PrometheusHandle, period: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(every(period, move || handle.run_upkeep()))
}

/// Calls `work` once per `period`, the first time one period from now.
async fn every(period: Duration, work: impl Fn()) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        work();
    }
}

/// Renders the current values as Prometheus text.
pub fn render(handle: &PrometheusHandle) -> String {
    handle.run_upkeep();
    handle.render()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(names::CONNECTIONS_REFUSED, "Connections closed as soon as accepted, by reason (per_ip)");
    describe_counter!(
        names::CONNECTIONS_TIMED_OUT,
        "Connections closed without a complete request head within MEDIA_KEEPALIVE_TIMEOUT"
    );
    describe_counter!(
        names::SEND_TIMEOUTS,
        "Connections dropped because the client accepted no byte of a response within MEDIA_SEND_TIMEOUT"
    );
    describe_gauge!(names::CONNECTIONS_OPEN, "Connections open");
    describe_counter!(names::READINESS_CHECKS, "Readiness checks run (answers are shared for up to 1 s)");
    describe_counter!(names::HTTP_REQUESTS, "HTTP requests by method, route template and status");
    describe_histogram!(names::HTTP_DURATION, Unit::Seconds, "Time to the response head, by method and route");
    describe_gauge!(names::HTTP_IN_FLIGHT, "Requests being handled");
    describe_counter!(names::UPLOAD_BYTES, Unit::Bytes, "Bytes of accepted uploads");
    describe_counter!(names::UPLOADS, "Accepted uploads by result (stored, deduped)");
    describe_counter!(names::UPLOAD_REJECTIONS, "Refused uploads by reason (error code)");
    describe_counter!(
        names::S3_PART_RESENDS,
        "S3 parts sent again whole after their live request, by reason (short, failed, unanswered)"
    );
    describe_counter!(
        names::DISCARDS_DEFERRED,
        "Failed uploads whose object delete was left to the sweeper: too many deletes were running"
    );
    describe_counter!(
        names::S3_PUT_STALLS,
        "Streamed S3 PutObjects given up on a stalled store, by stage (body, answer)"
    );
    describe_counter!(
        names::S3_PUT_REBUILDS,
        "Streamed S3 PutObjects of a guessed length rebuilt to the real one, by reason (short, long)"
    );
    describe_counter!(
        names::S3_CHUNKED_PUT_QUESTIONS,
        "Questions whether the store takes a chunked PutObject, by answer (taken, refused, undecided)"
    );
    describe_histogram!(
        names::S3_REQUEST_DURATION,
        Unit::Seconds,
        "S3 request attempts by operation and outcome (ok, client_error, server_error, no_answer)"
    );
    describe_gauge!(names::UPLOADS_IN_FLIGHT, "Uploads holding a concurrency slot");
    describe_counter!(names::RATE_LIMITED, "Requests answered 429 by scope (principal, ip, readyz)");
    describe_counter!(names::AUTH_FAILURES, "Refused bearer tokens by reason");
    describe_counter!(names::JWKS_REFRESHES, "JWKS fetches by issuer and result");
    describe_gauge!(names::JWKS_KEYS, "Signing keys loaded per issuer");
    describe_counter!(names::PRESIGNS, "Presigned URLs issued");
    describe_counter!(
        names::OBJECT_INTEGRITY_FAILURES,
        "Reads of encrypted objects refused or aborted because the stored bytes did not authenticate"
    );
    describe_histogram!(names::RESOLVE_PLACEHOLDERS, "Distinct media IDs per resolve call");
    describe_counter!(names::RESOLVE_REJECTIONS, "Resolve calls refused before their lookup, by reason");
    describe_counter!(names::BLOB_ERRORS, "Blob store failures by operation");
    describe_counter!(names::DB_ERRORS, "Database failures answered as errors");
    describe_counter!(names::AUDIT_APPEND_FAILURES, "Audit events that could not be appended");
    describe_counter!(names::PANICS, "Request handlers that panicked (answered 500 internal); any is a bug");
    describe_gauge!(
        names::ROTATION_PENDING,
        "Rows encrypted under a DEK version that is not their tenant's active one"
    );
    describe_gauge!(
        names::ROTATION_OBJECTS_PENDING,
        "Rows whose object is sealed under a DEK version older than their tenant's active one"
    );
    describe_gauge!(names::PLAIN_OBJECT_ROWS, "Ready rows whose object is stored in the clear");
    describe_gauge!(names::KEY_TENANTS, "Tenants with keys");
    describe_gauge!(names::DB_POOL, "Database connections by state");
    describe_gauge!(names::DB_POOL_MAX, "Largest database pool size");
    describe_gauge!(names::DB_READ_LANE, "Read lane connections by state (presign, resolve, download reads)");
    describe_gauge!(names::DB_READ_LANE_MAX, "Read lane size");
    describe_counter!(
        names::DB_READ_LANE_STATEMENTS,
        "Statements the read lane ran for rows by id, by result (ok, failed)"
    );
    describe_counter!(names::DB_READ_LANE_READS, "Rows by id the read lane's statements answered (coalesced)");
    describe_counter!(names::TLS_RELOADS, "TLS certificate reloads by result");
    describe_gauge!(names::CACHE_LISTENING, "1 while other processes' cache invalidations are heard (Postgres)");
    describe_counter!(names::LIMITS_FALLBACK, "Limit checks answered locally because Redis did not answer, by check");
    describe_gauge!(
        names::LIMITS_SHARED,
        "1 while limits are shared through Redis, 0 while falling back to local ones"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// The upkeep runs once per period on its own, with no scrape: samples are held for one period
    /// at most.
    #[tokio::test(start_paused = true)]
    async fn upkeep_runs_once_per_period_without_a_scrape() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let task = tokio::spawn(every(UPKEEP_PERIOD, move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }));
        tokio::time::sleep(UPKEEP_PERIOD / 2).await;
        assert_eq!(runs.load(Ordering::SeqCst), 0, "not before the first period has passed");
        tokio::time::sleep(UPKEEP_PERIOD * 3).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "once per period");
        task.abort();
    }
}
