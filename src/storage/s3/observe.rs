//! What every S3 request took: an SDK interceptor that times each attempt (a retried request counts
//! once per attempt) and records it in `media_s3_request_duration_seconds` by `operation` (the S3
//! API name: `PutObject`, `UploadPart`, `GetObject`, …) and `outcome`, so an operator can tell a
//! slow or failing store from a slow service.
//!
//! An attempt runs from just before it is sent (signed, its connection not yet open) to its answer
//! being read (for a `GetObject`, the answer's head; the body streams afterwards), so a request
//! whose body comes from a client — a streamed `PutObject`, a part sent while it fills — includes
//! the client's sending time. An attempt
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
/// refused or reset connection), `refused` when the answer was an error despite a 2xx status (S3
/// can answer `CompleteMultipartUpload` with `200` and an `<Error>` body; a body that does not
/// parse). A redirect is the client's error: S3 sends one for a wrong region or endpoint.
pub(super) fn outcome(status: Option<u16>, refused: bool) -> &'static str {
    match status {
        Some(200..=299) if !refused => "ok",
        Some(200..=299) | Some(500..) => "server_error",
        Some(_) => "client_error",
        None => "no_answer",
    }
}

impl Intercept for RequestMetrics {
    fn name(&self) -> &'static str {
        "media-api S3 request metrics"
    }

    fn read_before_transmit(
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
        let refused = matches!(context.output_or_error(), Some(Err(_)));
        let outcome = outcome(context.response().map(|r| r.status().as_u16()), refused);
        metrics::histogram!(names::S3_REQUEST_DURATION, "operation" => operation, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_s3::presigning::PresigningConfig;
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    #[test]
    fn answers_are_told_apart_by_class_and_no_answer_is_its_own() {
        assert_eq!(outcome(Some(200), false), "ok");
        assert_eq!(outcome(Some(206), false), "ok");
        assert_eq!(outcome(Some(200), true), "server_error", "a 200 carrying an <Error>");
        assert_eq!(outcome(Some(301), false), "client_error", "a redirect: wrong region or endpoint");
        assert_eq!(outcome(Some(404), true), "client_error");
        assert_eq!(outcome(Some(503), true), "server_error");
        assert_eq!(outcome(None, true), "no_answer");
    }

    /// A client for an endpoint nothing listens on, with the interceptor and no retries.
    async fn client_of_a_closed_port() -> aws_sdk_s3::Client {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        drop(listener);
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("id", "secret", None, None, "test"))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .interceptor(RequestMetrics)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// Attempts recorded for `operation` with `outcome` in Prometheus text.
    fn attempts(text: &str, operation: &str, outcome: &str) -> usize {
        let series =
            format!("{}_count{{operation=\"{operation}\",outcome=\"{outcome}\"}} ", names::S3_REQUEST_DURATION);
        text.lines().find_map(|line| line.strip_prefix(series.as_str())).map_or(0, |n| n.parse().expect("a count"))
    }

    // The test's recorder is this thread's: the current-thread runtime polls everything here.
    #[tokio::test]
    async fn a_presign_records_nothing_and_a_request_without_an_answer_records_no_answer() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let _local = metrics::set_default_local_recorder(&recorder);
        let client = client_of_a_closed_port().await;
        let presign = PresigningConfig::expires_in(Duration::from_secs(60)).expect("a ttl");
        for _ in 0..3 {
            client.put_object().bucket("b").key("k").presigned(presign.clone()).await.expect("signed");
        }
        assert!(
            !handle.render().contains(names::S3_REQUEST_DURATION),
            "a presign never reaches the network and is not an S3 request: {}",
            handle.render()
        );
        client.head_object().bucket("b").key("k").send().await.expect_err("nothing listens");
        assert_eq!(attempts(&handle.render(), "HeadObject", "no_answer"), 1, "{}", handle.render());
        assert_eq!(attempts(&handle.render(), "PutObject", "no_answer"), 0, "{}", handle.render());
    }
}
