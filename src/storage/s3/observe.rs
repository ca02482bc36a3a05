//! What every S3 request took: an SDK interceptor that times each attempt (a retried request counts
//! once per attempt) and records it in `media_s3_request_duration_seconds` by `operation` (the S3
//! API name: `PutObject`, `UploadPart`, `GetObject`, …) and `outcome`, so an operator can tell a
//! slow or failing store from a slow service.
//!
//! An attempt runs from just before it is signed to its answer being read (for a `GetObject`, the
//! answer's head; the body streams afterwards), so a request whose body comes from a client — a
//! streamed `PutObject`, a part sent while it fills — includes the client's sending time. An attempt
//! that never reached the network is not recorded: a presigned URL is signed by the same pipeline,
//! which stops before sending. A request dropped before its answer (a live part sent again whole,
//! an upload cancelled) is not recorded either.

use std::time::Instant;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};

use crate::telemetry::metrics::names;

/// Records each attempt's duration (see the module docs).
#[derive(Debug, Default)]
pub(super) struct RequestMetrics;

/// When the current attempt started, kept in the attempt's config bag.
#[derive(Debug, Clone)]
struct AttemptStarted(Instant);

impl Storable for AttemptStarted {
    type Storer = StoreReplace<Self>;
}

/// The `outcome` label of an attempt answered with `status` (`None`: no answer — a timeout, a
/// refused or reset connection).
pub(super) fn outcome(status: Option<u16>) -> &'static str {
    match status {
        Some(200..=399) => "ok",
        Some(400..=499) => "client_error",
        Some(_) => "server_error",
        None => "no_answer",
    }
}

impl Intercept for RequestMetrics {
    fn name(&self) -> &'static str {
        "media-api S3 request metrics"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().store_put(AttemptStarted(Instant::now()));
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // The request is still in the context only when it was never handed to the connection.
        if context.request().is_some() {
            return Ok(());
        }
        let Some(AttemptStarted(started)) = cfg.load::<AttemptStarted>() else { return Ok(()) };
        let operation = cfg.load::<Metadata>().map_or_else(|| "unknown".to_owned(), |m| m.name().to_owned());
        let outcome = outcome(context.response().map(|r| r.status().as_u16()));
        metrics::histogram!(names::S3_REQUEST_DURATION, "operation" => operation, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::outcome;

    #[test]
    fn answers_are_told_apart_by_class_and_no_answer_is_its_own() {
        assert_eq!(outcome(Some(200)), "ok");
        assert_eq!(outcome(Some(206)), "ok");
        assert_eq!(outcome(Some(304)), "ok");
        assert_eq!(outcome(Some(404)), "client_error");
        assert_eq!(outcome(Some(503)), "server_error");
        assert_eq!(outcome(None), "no_answer");
    }
}
