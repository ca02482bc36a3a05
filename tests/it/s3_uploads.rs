//! How S3 uploads use their requests, seen through a recording proxy in front of Garage
//! (`support::s3_proxy`): a transient error on a part, parts sent while they fill, the last part
//! cut short and sent whole, a part S3 never answers, a client pausing mid-upload, and a streamed
//! `PutObject` S3 stops reading or never answers; failed uploads' deletes on a store whose deletes
//! hang (at most 64 at once, the rest left to the sweeper); and what `/metrics` says of those requests.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use media_api::config::{MIB, S3_MIN_PART_SIZE};
use media_api::storage::{ByteStream, StorageError};

use crate::support::app::{chunked, collect, payload, random_hex, sha256_hex, spawn_app_with, Stack, TestApp};
use crate::support::connections::metrics_text;
use crate::support::limits::metric;
use crate::support::s3_proxy::{Answer, Fault, S3Proxy};

const PART: usize = S3_MIN_PART_SIZE as usize;

/// An app whose S3 requests go through a proxy answering the first `times` requests that
/// `matches` accepts with `503 SlowDown` (or never, with `hang`), and S3's `MEDIA_S3_READ_TIMEOUT`.
async fn app_behind_proxy_waiting(fault: Fault, read_timeout: &str) -> (TestApp, S3Proxy) {
    let proxy = S3Proxy::start(fault).await;
    let overrides = [("MEDIA_S3_ENDPOINT", proxy.endpoint.as_str()), ("MEDIA_S3_READ_TIMEOUT", read_timeout)];
    let app = spawn_app_with(Stack::PostgresS3, &overrides).await;
    (app, proxy)
}

/// The same with the default read timeout.
async fn app_behind_proxy(fault: Fault) -> (TestApp, S3Proxy) {
    app_behind_proxy_waiting(fault, "60s").await
}

/// The attempts `/metrics` has timed for S3 `operation` with `outcome`, over every app of the test
/// process (the recorder is shared: compare before and after).
async fn s3_attempts(app: &TestApp, operation: &str, outcome: &str) -> f64 {
    let text = metrics_text(&app.http, &app.address).await;
    metric(&text, "media_s3_request_duration_seconds_count", &[("operation", operation), ("outcome", outcome)])
}

const NO_FAULT: Fault = Fault { matches: |_, _| false, times: 0, answer: Answer::SlowDown };

/// The S3 part number of an `UploadPart` request (`PUT …?partNumber=n&…`).
fn part_number(target: &str) -> Option<usize> {
    target.split(['?', '&']).find_map(|p| p.strip_prefix("partNumber=")).and_then(|n| n.parse().ok())
}

/// Whether `target` sends part `n` (from 1) of a multipart upload: part `n` owns S3 part numbers
/// `2n - 1` (its first request) and `2n` (sent whole after a live request).
fn is_part(target: &str, n: usize) -> bool {
    part_number(target).is_some_and(|number| number.div_ceil(2) == n)
}

/// Requests the proxy saw for part `n` of a multipart upload.
fn part_requests(proxy: &S3Proxy, n: usize) -> usize {
    proxy.seen().iter().filter(|r| r.starts_with("PUT ") && is_part(r, n)).count()
}

/// Requests the proxy saw under S3 part number `number`.
fn numbered_requests(proxy: &S3Proxy, number: usize) -> usize {
    proxy.seen().iter().filter(|r| r.starts_with("PUT ") && part_number(r) == Some(number)).count()
}

/// `data` as a chunked body that stops at each of `stops` until its sender is told to go on.
fn gated(data: &Bytes, stops: &[usize]) -> (ByteStream, Vec<tokio::sync::oneshot::Sender<()>>) {
    let mut body: ByteStream = futures::stream::empty().boxed();
    let mut senders = Vec::new();
    let mut from = 0;
    for &stop in stops.iter().chain([&data.len()]) {
        let piece = chunked(data.slice(from..stop));
        body = if from == 0 {
            piece
        } else {
            let (go_on, gate) = tokio::sync::oneshot::channel::<()>();
            senders.push(go_on);
            body.chain(futures::stream::once(async move { gate.await.map(|()| piece).expect("gate") }).flatten())
                .boxed()
        };
        from = stop;
    }
    (body, senders)
}

/// Waits (30 s at most) until the proxy has seen `count` requests for part `n`.
async fn wait_for_part_request(proxy: &S3Proxy, n: usize, count: usize) {
    for _ in 0..3000 {
        if part_requests(proxy, n) >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("part {n}'s request #{count} never started: {:?}", proxy.seen());
}

/// Uploads `data` with the body stopping at each `(offset, part)` of `stops` until the proxy has
/// seen part `part`'s request start; returns the upload's result and its key.
async fn put_gated(
    app: &TestApp,
    proxy: &S3Proxy,
    data: &Bytes,
    stops: &[(usize, usize)],
) -> (Result<u64, StorageError>, String) {
    let offsets: Vec<usize> = stops.iter().map(|&(offset, _)| offset).collect();
    let (body, gates) = gated(data, &offsets);
    let (blobs, key) = (app.state.blobs.clone(), format!("gated/{}", random_hex(8)));
    let upload = tokio::spawn({
        let key = key.clone();
        async move { blobs.put(&key, "application/octet-stream", body).await }
    });
    for (gate, &(_, part)) in gates.into_iter().zip(stops) {
        wait_for_part_request(proxy, part, 1).await;
        gate.send(()).expect("the upload still reads its body");
    }
    (upload.await.expect("upload task"), key)
}

async fn assert_stored(app: &TestApp, key: &str, data: &[u8]) {
    let read = collect(app.state.blobs.get(key, None).await.expect("get").body).await;
    assert_eq!(sha256_hex(&read), sha256_hex(data), "the object holds every byte once, in order");
}

#[tokio::test]
async fn a_part_answered_with_a_transient_error_is_sent_again_whole_and_the_object_is_whole() {
    // The second part of every multipart upload, the first two times it is sent: `503 SlowDown`.
    // Part 2 goes live first; after the first 503 it is sent whole, and the SDK sends that again.
    let (app, proxy) = app_behind_proxy(Fault {
        matches: |method, target| method == "PUT" && is_part(target, 2),
        times: 2,
        answer: Answer::SlowDown,
    })
    .await;
    let failed_before = s3_attempts(&app, "UploadPart", "server_error").await;
    let ok_before = s3_attempts(&app, "UploadPart", "ok").await;
    let data = payload(3 * PART + 12_345, 31);
    // The body stops half-way through part 2 until part 2 has gone live (part 1 answered).
    let (written, key) = put_gated(&app, &proxy, &data, &[(PART + PART / 2, 2)]).await;
    assert_eq!(written.expect("the upload survives two transient errors"), data.len() as u64);
    assert_eq!(proxy.failed(), 2, "the faults were injected");
    assert_eq!(part_requests(&proxy, 2), 3, "part 2 was sent live, whole, and whole again: {:?}", proxy.seen());
    // Live under its first number (3), then whole under its second (4), where the SDK sends it again.
    assert_eq!((numbered_requests(&proxy, 3), numbered_requests(&proxy, 4)), (1, 2), "{:?}", proxy.seen());
    assert_stored(&app, &key, &data).await;
    // Each attempt is timed: the two 503s, and at least this upload's four answered parts.
    assert!(s3_attempts(&app, "UploadPart", "server_error").await - failed_before >= 2.0, "the 503s are in /metrics");
    assert!(s3_attempts(&app, "UploadPart", "ok").await - ok_before >= 4.0, "the parts are in /metrics");
}

/// Well past the 2 s read timeout the hang tests set, well before the default 60 s: an upload that
/// has not ended by then waited for the default.
const BEFORE_THE_DEFAULT: Duration = Duration::from_secs(40);

#[tokio::test]
async fn a_part_s3_never_answers_is_sent_again_after_the_read_timeout_and_the_object_is_whole() {
    // The first request of part 1 (always sent whole) hangs: the SDK gives up on it after
    // MEDIA_S3_READ_TIMEOUT and sends it again.
    let (app, proxy) = app_behind_proxy_waiting(
        Fault { matches: |method, target| method == "PUT" && is_part(target, 1), times: 1, answer: Answer::Never },
        "2s",
    )
    .await;
    let unanswered_before = s3_attempts(&app, "UploadPart", "no_answer").await;
    let data = payload(2 * PART + 4321, 33);
    let key = format!("hung/{}", random_hex(8));
    let written =
        tokio::time::timeout(BEFORE_THE_DEFAULT, app.state.blobs.put(&key, "image/png", chunked(data.clone())))
            .await
            .expect("the hung request was given up after MEDIA_S3_READ_TIMEOUT (2 s), not the default minute");
    assert_eq!(written.expect("the upload survives a request S3 never answers"), data.len() as u64);
    assert_eq!(proxy.failed(), 1, "the fault was injected");
    assert_eq!(part_requests(&proxy, 1), 2, "part 1 was sent twice: {:?}", proxy.seen());
    assert_stored(&app, &key, &data).await;
    assert!(
        s3_attempts(&app, "UploadPart", "no_answer").await - unanswered_before >= 1.0,
        "the timeout is in /metrics"
    );
}

#[tokio::test]
async fn a_live_part_s3_never_answers_is_sent_again_whole_after_the_read_timeout() {
    // The first request of part 2, which goes live, hangs once it has every byte of the part.
    let (app, proxy) = app_behind_proxy_waiting(
        Fault { matches: |method, target| method == "PUT" && is_part(target, 2), times: 1, answer: Answer::Never },
        "2s",
    )
    .await;
    let resent_before = metric(
        &metrics_text(&app.http, &app.address).await,
        "media_s3_part_resends_total",
        &[("reason", "unanswered")],
    );
    let data = payload(3 * PART + 999, 34);
    let (written, key) =
        tokio::time::timeout(BEFORE_THE_DEFAULT, put_gated(&app, &proxy, &data, &[(PART + PART / 2, 2)]))
            .await
            .expect("the hung live part was sent again after MEDIA_S3_READ_TIMEOUT (2 s), not the default minute");
    assert_eq!(written.expect("the upload survives a live part S3 never answers"), data.len() as u64);
    assert_eq!(proxy.failed(), 1, "the fault was injected");
    assert_eq!(part_requests(&proxy, 2), 2, "part 2 was sent live, then whole: {:?}", proxy.seen());
    assert_stored(&app, &key, &data).await;
    let resent = metric(
        &metrics_text(&app.http, &app.address).await,
        "media_s3_part_resends_total",
        &[("reason", "unanswered")],
    );
    assert!(resent - resent_before >= 1.0, "the resend is counted as unanswered");
}

#[tokio::test]
async fn a_part_is_sent_while_it_fills_and_a_body_ending_inside_one_leaves_the_object_whole() {
    let (app, proxy) = app_behind_proxy(NO_FAULT).await;
    // Parts 1–3 full, part 4 half: the body stops half-way through part 2 and again in part 4.
    let data = payload(3 * PART + PART / 2, 32);
    // Part 2's request starts before part 2 is full (the body is stopped half-way through it), and
    // part 4's too, announcing a full part, which the body will not fill.
    let (written, key) = put_gated(&app, &proxy, &data, &[(PART + PART / 2, 2), (3 * PART + PART / 4, 4)]).await;
    let written = written.expect("put");
    assert_eq!(written, data.len() as u64);
    for n in [1, 2, 3] {
        assert_eq!(part_requests(&proxy, n), 1, "full part {n} sent once: {:?}", proxy.seen());
    }
    assert_eq!(part_requests(&proxy, 4), 2, "the last part, cut short, then sent whole: {:?}", proxy.seen());
    // The whole part went under its own number: the cut request can never shadow it.
    assert_eq!((numbered_requests(&proxy, 7), numbered_requests(&proxy, 8)), (1, 1), "{:?}", proxy.seen());
    assert_stored(&app, &key, &data).await;
}

#[tokio::test]
async fn a_client_pausing_mid_upload_keeps_its_s3_requests() {
    // The SDK's stalled-stream protection fails an upload request whose body yields nothing for
    // 5 s; a client may pause longer (MEDIA_UPLOAD_IDLE_TIMEOUT, 30 s by default). The pause is
    // also longer than a stalled store is waited for (MEDIA_S3_READ_TIMEOUT 2 s + 5 s): waiting
    // for the client is not waiting for the store.
    const PAUSE: Duration = Duration::from_secs(10);
    let (app, proxy) = app_behind_proxy_waiting(NO_FAULT, "2s").await;
    let paused = |data: &Bytes, at: usize| -> ByteStream {
        let pause = futures::stream::once(async {
            tokio::time::sleep(PAUSE).await;
            Ok(Bytes::new())
        });
        chunked(data.slice(..at)).chain(pause).chain(chunked(data.slice(at..))).boxed()
    };
    // One streamed PutObject (a Content-Length above one part) and one multipart upload, paused
    // half-way through part 2, at the same time.
    let sized = payload(12 * MIB as usize, 78);
    let multipart = payload(3 * PART, 79);
    let (sized_key, multipart_key) = (format!("paused/{}", random_hex(8)), format!("paused/{}", random_hex(8)));
    let blobs = &app.state.blobs;
    let (sized_put, multipart_put) = tokio::join!(
        blobs.put_sized(&sized_key, "image/png", sized.len() as u64, paused(&sized, 7 * MIB as usize)),
        blobs.put(&multipart_key, "image/png", paused(&multipart, PART + PART / 2)),
    );
    assert_eq!(sized_put.expect("the streamed PutObject survives the pause"), sized.len() as u64);
    assert_eq!(multipart_put.expect("the multipart upload survives the pause"), multipart.len() as u64);
    assert_eq!(part_requests(&proxy, 2), 1, "part 2 was sent once, across the pause: {:?}", proxy.seen());
    assert_stored(&app, &sized_key, &sized).await;
    assert_stored(&app, &multipart_key, &multipart).await;
}

#[tokio::test]
async fn a_part_that_fails_for_good_ends_the_upload_while_the_client_is_still_sending() {
    // Every request for part 1 is answered 503: the SDK gives up after its attempts.
    let (app, proxy) = app_behind_proxy(Fault {
        matches: |method, target| method == "PUT" && is_part(target, 1),
        times: usize::MAX,
        answer: Answer::SlowDown,
    })
    .await;
    // A client that sends part 1 and half of part 2, then nothing: without being told, it would
    // wait for its upload's answer until its own timeout.
    let data = payload(PART + PART / 2, 35);
    let body = chunked(data.clone()).chain(futures::stream::pending()).boxed();
    let key = format!("doomed/{}", random_hex(8));
    let put = app.state.blobs.put(&key, "image/png", body);
    let err = tokio::time::timeout(Duration::from_secs(40), put)
        .await
        .expect("the upload ends once part 1 failed, though its body has not")
        .expect_err("part 1 was never stored");
    assert!(matches!(err, StorageError::Backend { .. }), "a storage failure: {err}");
    assert!(err.to_string().contains("SlowDown"), "the failed part's own error is reported: {err}");
    assert!(part_requests(&proxy, 1) >= 2, "the SDK tried part 1 again before giving up: {:?}", proxy.seen());
    let aborted = proxy.seen().iter().any(|r| r.starts_with("DELETE ") && r.contains("uploadId="));
    assert!(aborted, "the multipart upload was aborted: {:?}", proxy.seen());
    assert!(app.state.blobs.get(&key, None).await.is_err(), "nothing was stored");
}

/// `media_s3_put_stalls_total{stage}` so far, over every app of the test process.
async fn put_stalls(app: &TestApp, stage: &str) -> f64 {
    metric(&metrics_text(&app.http, &app.address).await, "media_s3_put_stalls_total", &[("stage", stage)])
}

/// Waits until the proxy has seen a request `wanted` accepts; panics with what it saw if none
/// came within `BEFORE_THE_DEFAULT`.
async fn wait_for_request(proxy: &S3Proxy, what: &str, wanted: impl Fn(&str) -> bool) {
    let seen = || proxy.seen().iter().any(|r| wanted(r));
    let waited = tokio::time::timeout(BEFORE_THE_DEFAULT, async {
        while !seen() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    waited.await.unwrap_or_else(|_| panic!("{what}: {:?}", proxy.seen()));
}

#[tokio::test]
async fn a_store_that_stops_reading_a_streamed_upload_gets_the_client_a_503_without_waiting_for_the_upload_timeout() {
    // S3 takes the first MiB of every PutObject (a raw upload with its Content-Length above one part
    // streams into one), then neither reads further nor answers, as Garage with a full disk did; nor
    // does it answer deletes.
    // The same for a body of unknown length, which goes up as one chunked PutObject
    // (MEDIA_S3_CHUNKED_PUT=true: no question first).
    for length_known in [true, false] {
        a_store_that_stops_reading(length_known).await;
    }
}

async fn a_store_that_stops_reading(length_known: bool) {
    use crate::support::media::{json_of, media_app, png};
    let proxy = S3Proxy::start(Fault {
        matches: |method, target| (method == "PUT" && target.contains("x-id=PutObject")) || method == "DELETE",
        times: usize::MAX,
        answer: Answer::StopReadingAfter(MIB as usize),
    })
    .await;
    let overrides = [
        ("MEDIA_S3_ENDPOINT", proxy.endpoint.as_str()),
        ("MEDIA_S3_READ_TIMEOUT", "2s"),
        ("MEDIA_MAX_BYTES", "64MiB"),
        ("MEDIA_S3_CHUNKED_PUT", "true"),
    ];
    let m = media_app(Stack::PostgresS3, &overrides).await;
    let stalls_before = put_stalls(&m.app, "body").await;
    let alice = m.alice();
    // Far more than the socket buffers between the client and the proxy hold: S3 stops mid-body.
    let file = png(48 * MIB as usize, 36);
    let request = m.http().post(m.url("/v1/media")).bearer_auth(&alice).header("content-type", "image/png");
    let upload = match length_known {
        true => request.body(file).send(),
        false => request.body(reqwest::Body::wrap_stream(chunked(Bytes::from(file)))).send(),
    };
    let answered = tokio::time::timeout(BEFORE_THE_DEFAULT, upload)
        .await
        .expect("the stalled store was given up on after 2 s + 5 s, not the 30 min a client may take to send");
    let deletes = proxy.seen().iter().filter(|r| r.starts_with("DELETE ")).count();
    let (status, answer) = json_of(answered.expect("an answer, before the body was sent")).await;
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["code"], "storage_unavailable", "{answer}");
    assert!(proxy.failed() >= 1, "the upload went to the stalled PutObject: {:?}", proxy.seen());
    assert_eq!(proxy.requests("CreateMultipartUpload"), 0, "one PutObject, not parts: {:?}", proxy.seen());
    assert_eq!(m.counts().await, (0, 0), "no row and no object are left");
    assert_eq!(put_stalls(&m.app, "body").await - stalls_before, 1.0, "the give-up is counted as stage=body");
    // The delete of the key (which the SDK tries 3 times, 2 s each, on this store) did not hold
    // the answer; it was sent and goes on in the background (the key stays journaled for the
    // sweeper, the store having failed).
    assert!(deletes < 3, "the client was answered before the delete had run its attempts: {:?}", proxy.seen());
    wait_for_request(&proxy, "a delete of the key was sent", |r| r.starts_with("DELETE ")).await;
}

#[tokio::test]
async fn a_streamed_put_s3_reads_to_its_end_and_never_answers_is_given_up_and_its_key_deleted() {
    // S3 reads every PutObject to its end, then never answers: it may still store the object.
    let (app, proxy) = app_behind_proxy_waiting(
        Fault {
            matches: |method, target| method == "PUT" && target.contains("x-id=PutObject"),
            times: usize::MAX,
            answer: Answer::Never,
        },
        "2s",
    )
    .await;
    let stalls_before = put_stalls(&app, "answer").await;
    let data = payload(3 * PART, 37);
    let key = format!("unanswered/{}", random_hex(8));
    let put = app.state.blobs.put_sized(&key, "image/png", data.len() as u64, chunked(data));
    let err = tokio::time::timeout(BEFORE_THE_DEFAULT, put)
        .await
        .expect("the unanswered PutObject was given up after 2 s + 5 s, not the 30 min a client may take to send")
        .expect_err("nothing was stored");
    assert!(err.to_string().contains("nor answered"), "the stall is the error: {err}");
    assert_eq!(put_stalls(&app, "answer").await - stalls_before, 1.0, "the give-up is counted as stage=answer");
    // The store itself deletes the key (in the background), whoever called it.
    let deleted = |r: &str| r.starts_with("DELETE ") && r.split('?').next().is_some_and(|r| r.ends_with(&key));
    wait_for_request(&proxy, "the key S3 had every byte of was deleted", deleted).await;
}

#[tokio::test]
async fn an_upload_the_store_failed_stays_journaled_for_the_sweeper_and_one_the_client_failed_does_not() {
    use crate::support::media::{json_of, media_app, png};
    // S3 answers every PutObject 503 SlowDown (deletes work).
    let proxy = S3Proxy::start(Fault {
        matches: |method, target| method == "PUT" && target.contains("x-id=PutObject"),
        times: usize::MAX,
        answer: Answer::SlowDown,
    })
    .await;
    let overrides = [("MEDIA_S3_ENDPOINT", proxy.endpoint.as_str()), ("MEDIA_MAX_BYTES", "1MiB")];
    let m = media_app(Stack::PostgresS3, &overrides).await;
    let alice = m.alice();
    // The client's failure: a body sent without a length runs past the limit mid-stream. Nothing
    // can land later: the key's delete closes its journal entry.
    let over = chunked(Bytes::from(png(2 * MIB as usize, 38)));
    let request = m.http().post(m.url("/v1/media")).bearer_auth(&alice).header("content-type", "image/png");
    let (status, answer) = json_of(request.body(reqwest::Body::wrap_stream(over)).send().await.unwrap()).await;
    assert_eq!(status, reqwest::StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(m.journaled().await, 0, "a client's failure leaves no journal entry");
    // The store's failure: a request it did not complete may still land an object after the
    // delete, so the key stays journaled and the sweeper deletes it again once the entry is old.
    let (status, answer) = json_of(m.upload_raw(&alice, "image/png", png(512 * 1024, 39)).await).await;
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["code"], "storage_unavailable", "{answer}");
    assert!(proxy.failed() >= 1, "the upload went to the failing PutObject: {:?}", proxy.seen());
    assert!(proxy.seen().iter().any(|r| r.starts_with("DELETE ")), "the key was deleted at once: {:?}", proxy.seen());
    assert_eq!(m.journaled().await, 1, "the store's failure stays journaled");
    assert_eq!(m.counts().await, (0, 0), "no row and no object are left");
    let swept = m.sweep_all().await;
    assert_eq!((swept.orphans_deleted, swept.failed), (1, 0), "{swept:?}");
    assert_eq!(m.journaled().await, 0, "the sweeper ended the entry");
}

#[tokio::test]
async fn failed_uploads_whose_deletes_hang_past_the_cap_are_left_to_the_sweeper_and_counted() {
    use media_api::jobs::removal::BACKGROUND_DISCARDS;
    // Every DeleteObject is left unanswered: a store whose deletes hang while uploads keep failing.
    let fault = Fault { matches: |method, _| method == "DELETE", times: usize::MAX, answer: Answer::Never };
    let (app, proxy) = app_behind_proxy(fault).await;
    let deferred = || async {
        metric(&metrics_text(&app.http, &app.address).await, "media_failed_upload_deletes_deferred_total", &[])
    };
    let before = deferred().await;
    let (removal, tasks) = (app.state.pipeline.removal(), tokio_util::task::TaskTracker::new());
    let keys: Vec<String> = (0..BACKGROUND_DISCARDS + 3).map(|_| app.state.pipeline.new_storage_key()).collect();
    for key in &keys {
        // Journaled before its first byte, as every upload's key is.
        media_api::db::journal::open(&app.state.db, key).await.unwrap();
        removal.discard_failed(key, true, Duration::ZERO, &tasks).await;
    }
    // The first 64 deletes reach the store and hang there; the 3 past the cap are never sent.
    let deletes = || proxy.seen().iter().filter(|r| r.starts_with("DELETE ")).count();
    let waited = tokio::time::timeout(BEFORE_THE_DEFAULT, async {
        while deletes() < BACKGROUND_DISCARDS {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    waited.await.unwrap_or_else(|_| panic!("{} of {BACKGROUND_DISCARDS} deletes sent", deletes()));
    assert_eq!(deferred().await - before, 3.0, "the three past the cap are counted");
    let sent: Vec<String> = proxy.seen().into_iter().filter(|r| r.starts_with("DELETE ")).collect();
    assert_eq!(sent.len(), BACKGROUND_DISCARDS, "nothing past the cap went to the store");
    let journaled = media_api::db::journal::keys(&app.state.db).await.unwrap();
    for key in &keys[BACKGROUND_DISCARDS..] {
        assert!(!sent.iter().any(|r| r.contains(key.as_str())), "{key} was left to the sweeper");
        assert!(journaled.contains(key), "{key} stays journaled, for the sweeper");
    }
}
