//! Hostile request bodies (issue 15 items 1, 2 and 4): multipart forms past their part, text and
//! whole-body bounds, uploads that stall, and resolve payloads past the in-flight budget. Each test
//! checks the clear answer (status, stable code, sentence) and that nothing was stored.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::app::STACKS;
use crate::support::limits::{channel_body, stalled_json_upload};
use crate::support::media::{data_url, form_with_file, json_of, media_app, png, MediaApp};

const BOUNDARY: &str = "bodies-boundary-51c2";

/// One form part named `name` holding `value`.
fn part(name: &str, value: &[u8]) -> Vec<u8> {
    let mut part = format!("\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n").into_bytes();
    part.extend_from_slice(value);
    part
}

/// A form: `parts`, then a `file` part holding `file`.
fn form(parts: &[Vec<u8>], file: &[u8]) -> Vec<u8> {
    form_with_file(BOUNDARY, &parts.concat(), file)
}

async fn post_form(m: &MediaApp, token: &str, body: Vec<u8>) -> (StatusCode, serde_json::Value) {
    let request = m.http().post(m.url("/v1/media/upload")).bearer_auth(token);
    let request = request.header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"));
    json_of(request.body(body).send().await.unwrap()).await
}

#[tokio::test]
async fn a_form_is_bounded_in_parts_text_and_whole_size() {
    for stack in STACKS {
        let m = media_app(stack, &[("MEDIA_MAX_BYTES", "1MiB")]).await;
        let alice = m.alice();
        let before = m.counts().await;

        let many: Vec<Vec<u8>> = (0..17).map(|i| part("note", format!("{i}").as_bytes())).collect();
        let (status, body) = post_form(&m, &alice, form(&many, &png(800, 1))).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("too_many_parts")), "{body}");
        assert!(body["error"].as_str().unwrap().contains("more than 16 parts"), "{body}");

        let long_hint = part("user_id", &[b'u'; 2000]);
        let (status, body) = post_form(&m, &alice, form(&[long_hint], &png(800, 2))).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_multipart")), "{body}");
        assert!(body["error"].as_str().unwrap().contains("text part is longer than 1024 bytes"), "{body}");

        // A declared length past the file limit plus the form's overhead: refused before reading.
        let (status, body) = post_form(&m, &alice, form(&[], &png(3 << 20, 3))).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")), "{body}");
        assert_eq!(m.counts().await, before, "{stack:?}: something was stored");

        // Sixteen short parts and a hint within bounds still upload.
        let mut fine: Vec<Vec<u8>> = (0..15).map(|i| part("note", format!("{i}").as_bytes())).collect();
        fine.push(part("user_id", b"hint"));
        let (status, body) = post_form(&m, &alice, form(&fine, &png(800, 4))).await;
        assert_eq!(status, StatusCode::OK, "{stack:?}: {body}");
    }
}

/// The `user_id` hint is bounded on every way in (JSON, `X-Principal-Id`, `prepare-upload`), as the
/// form's text parts are: past 1024 bytes a clear 400 and nothing stored; 1024 bytes are taken.
#[tokio::test]
async fn a_user_id_hint_is_bounded_on_every_way_in() {
    for stack in STACKS {
        let m = media_app(stack, &[]).await;
        let alice = m.alice();
        let before = m.counts().await;
        let long = "u".repeat(1025);
        let refused = |status: StatusCode, body: &serde_json::Value, how: &str| {
            assert_eq!(
                (status, body["code"].as_str()),
                (StatusCode::BAD_REQUEST, Some("user_id_too_long")),
                "{stack:?} {how}: {body}"
            );
            assert!(body["error"].as_str().unwrap().contains("at most 1024"), "{stack:?} {how}: {body}");
        };

        let json =
            json!({"source": {"type": "data_url", "data_url": data_url("image/png", &png(900, 31))}, "user_id": long});
        let request = m.http().post(m.url("/v1/media")).bearer_auth(&alice).json(&json);
        let (status, body) = json_of(request.send().await.unwrap()).await;
        refused(status, &body, "JSON upload");

        let request = m.http().post(m.url("/v1/media")).bearer_auth(&alice).header("content-type", "image/png");
        let request = request.header("x-principal-id", long.as_str()).body(png(900, 32));
        let (status, body) = json_of(request.send().await.unwrap()).await;
        refused(status, &body, "raw upload");

        let prepare = json!({"mime_type": "image/png", "bytes": 900, "user_id": long});
        let request = m.http().post(m.url("/v1/media/prepare-upload")).bearer_auth(&alice).json(&prepare);
        let (status, body) = json_of(request.send().await.unwrap()).await;
        refused(status, &body, "prepare-upload");

        // The pipeline refuses it too, whoever calls it (not only the media service's routes).
        let caller = media_api::auth::Principal {
            subject: "alice".into(),
            tenant: "tenant-a".into(),
            issuer: None,
            roles: Default::default(),
            scopes: Default::default(),
            permissions: [media_api::auth::Permission::Write].into_iter().collect(),
            anonymous: false,
        };
        let upload = media_api::media::ingest::pipeline::Upload {
            declared: Vec::new(),
            filename: None,
            user_hint: Some(long.clone()),
            content_length: Some(900),
            expected: None,
        };
        let body = futures::StreamExt::boxed(futures::stream::iter([Ok(Bytes::from(png(900, 34)))]));
        let err = m.app.state.pipeline.ingest(&caller, upload, body).await.expect_err("a 1025-byte hint stored");
        assert_eq!(err.code(), "user_id_too_long", "{stack:?}: {err}");
        assert_eq!(m.counts().await, before, "{stack:?}: something was stored");

        let fits = "u".repeat(1024);
        let json =
            json!({"source": {"type": "data_url", "data_url": data_url("image/png", &png(900, 33))}, "user_id": fits});
        let request = m.http().post(m.url("/v1/media")).bearer_auth(&alice).json(&json);
        let (status, body) = json_of(request.send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{stack:?}: a 1024-byte hint: {body}");
    }
}

/// Waits until `m` has `free` upload slots free.
async fn until_free(m: &MediaApp, free: usize, why: &str) {
    let started = Instant::now();
    while m.app.state.limits.free_upload_slots() != free {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{why}: {} slots free",
            m.app.state.limits.free_upload_slots()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_stalling_caller_holds_only_its_share_of_slots_and_is_cut_off_when_idle() {
    for stack in STACKS {
        let vars = [
            ("MEDIA_MAX_CONCURRENT_UPLOADS", "16"),
            ("MEDIA_MAX_UPLOADS_PER_CALLER", "8"),
            ("MEDIA_MAX_BYTES", "20MiB"),
            ("MEDIA_UPLOAD_IDLE_TIMEOUT", "4s"),
        ];
        let m = media_app(stack, &vars).await;
        let (mallory, bob) = (m.token("tenant-m", "mallory", &[]), m.token("tenant-b", "bob", &[]));
        let before = m.counts().await;

        // A data-URL upload is held in memory whole: it weighs several slots. It sends its
        // first bytes and stalls.
        let ((tx, stalled), held) = stalled_json_upload(&m, &mallory, 16).await;
        assert!(held > 4, "{stack:?}: a JSON upload weighs more than one slot ({held})");

        // Her weight counts against her own cap: neither a second JSON upload nor a raw one fits.
        let (status, body) = json_of(m.upload_data_url(&mallory, &data_url("image/png", &png(900, 5))).await).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::TOO_MANY_REQUESTS, Some("too_many_uploads")),
            "{body}"
        );
        let (status, body) = json_of(m.upload_raw(&mallory, "image/png", png(900, 6)).await).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::TOO_MANY_REQUESTS, Some("too_many_uploads")),
            "{body}"
        );

        // Another tenant's uploads go through while she stalls, several at once.
        let uploads = (0..4).map(|i| m.upload_raw(&bob, "image/png", png(2000, 10 + i)));
        for response in futures::future::join_all(uploads).await {
            let (status, body) = json_of(response).await;
            assert_eq!(status, StatusCode::OK, "{stack:?}: bob's upload during the stall: {body}");
        }

        // No byte for MEDIA_UPLOAD_IDLE_TIMEOUT: 408, and her slots come back.
        let (status, body) = json_of(stalled.await.unwrap().unwrap()).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::REQUEST_TIMEOUT, Some("upload_timeout")), "{body}");
        assert!(body["error"].as_str().unwrap().contains("MEDIA_UPLOAD_IDLE_TIMEOUT"), "{body}");
        drop(tx);
        until_free(&m, 16, "the stalled upload's slots never came back").await;

        // A streamed upload that stalls halfway is cut off the same way, and leaves nothing.
        let image = png(200_000, 7);
        let (tx, body) = channel_body();
        let request = m.http().post(m.url("/v1/media")).bearer_auth(&mallory).header("content-type", "image/png");
        let stalled = tokio::spawn(request.body(body).send());
        tx.send(Ok(Bytes::copy_from_slice(&image[..100_000]))).await.unwrap();
        let (status, body) = json_of(stalled.await.unwrap().unwrap()).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::REQUEST_TIMEOUT, Some("upload_timeout")), "{body}");
        drop(tx);
        until_free(&m, 16, "the stalled raw upload's slot never came back").await;

        let after = m.counts().await;
        assert_eq!(after.0, before.0 + 4, "{stack:?}: rows: bob's four uploads and nothing of mallory's");
        let started = Instant::now();
        while m.counts().await.1 != before.1 + 4 {
            assert!(started.elapsed() < Duration::from_secs(30), "{stack:?}: the stalled uploads left objects behind");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_caller_trickling_bytes_is_stopped_at_the_minimum_rate_and_leaves_nothing() {
    for stack in STACKS {
        // Windows of 6 s of waiting (twice the idle timeout) must bring 6 KiB each.
        let vars = [("MEDIA_UPLOAD_IDLE_TIMEOUT", "3s"), ("MEDIA_UPLOAD_MIN_RATE", "1KiB")];
        let m = media_app(stack, &vars).await;
        let mallory = m.token("tenant-m", "mallory", &[]);
        let before = m.counts().await;
        let free = m.app.state.limits.free_upload_slots();

        // A PNG's first 2 KiB (past the sniffed prefix: storing begins), then ten bytes every
        // 100 ms: never idle for 3 s (a 30-fold margin), but under 3 KiB in the first window.
        let image = png(50_000, 3);
        let (tx, body) = channel_body();
        let request = m.http().post(m.url("/v1/media")).bearer_auth(&mallory).header("content-type", "image/png");
        let upload = tokio::spawn(request.body(body).send());
        let trickle = tokio::spawn(async move {
            tx.send(Ok(Bytes::copy_from_slice(&image[..2048]))).await.unwrap();
            for piece in image[2048..].chunks(10) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if tx.send(Ok(Bytes::copy_from_slice(piece))).await.is_err() {
                    break;
                }
            }
        });
        let (status, body) = json_of(upload.await.unwrap().unwrap()).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::REQUEST_TIMEOUT, Some("upload_timeout")), "{body}");
        let why = body["error"].as_str().unwrap();
        assert!(why.contains("slower than MEDIA_UPLOAD_MIN_RATE (1024 bytes/s)"), "{stack:?}: {why}");
        trickle.abort();
        until_free(&m, free, "the trickled upload's slot never came back").await;

        // The same bytes at once are stored: the minimum is no bar to a client that sends.
        let (status, body) = json_of(m.upload_raw(&mallory, "image/png", png(50_000, 3)).await).await;
        assert_eq!(status, StatusCode::OK, "{stack:?}: {body}");
        let started = Instant::now();
        while m.counts().await != (before.0 + 1, before.1 + 1) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{stack:?}: the trickled upload left something behind"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn resolve_calls_share_a_memory_budget_and_past_it_are_told_to_retry() {
    let vars = [("MEDIA_RESOLVE_MAX_BYTES", "1MiB"), ("MEDIA_RESOLVE_BUDGET", "2MiB")];
    let m = media_app(crate::support::app::Stack::SqliteFs, &vars).await;
    let alice = m.alice();
    let budget = || m.app.state.limits.resolve_budget.available();
    assert_eq!(budget(), 2 << 20);

    // A large payload of small values, arriving in pieces: charged twice as it comes.
    let values = vec!["1"; 400_000].join(",");
    let body = format!("{{\"payload\": [{values}]}}").into_bytes();
    let (tx, streamed) = channel_body();
    let request = m.http().post(m.url("/v1/media/resolve")).bearer_auth(&alice);
    let first = tokio::spawn(request.header("content-type", "application/json").body(streamed).send());
    tx.send(Ok(Bytes::copy_from_slice(&body[..700_000]))).await.unwrap();
    let started = Instant::now();
    while budget() > (2 << 20) - 1_400_000 {
        assert!(started.elapsed() < Duration::from_secs(30), "the first call was never charged: {}", budget());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Another call that does not fit beside it is refused at once, with a retry hint.
    let small = json!({"payload": {"text": "x".repeat(400_000)}});
    let response = m.http().post(m.url("/v1/media/resolve")).bearer_auth(&alice).json(&small).send().await.unwrap();
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, refused) = json_of(response).await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("busy")), "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("too many large payloads"), "{refused}");

    // The first one completes, byte for byte, and gives its charge back.
    tx.send(Ok(Bytes::copy_from_slice(&body[700_000..]))).await.unwrap();
    drop(tx);
    let response = first.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer = response.bytes().await.unwrap();
    assert_eq!(&answer[..], format!("{{\"payload\":[{values}]}}").as_bytes(), "the payload came back unchanged");
    let started = Instant::now();
    while budget() != 2 << 20 {
        assert!(started.elapsed() < Duration::from_secs(30), "the charge never came back: {}", budget());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = m.resolve(&alice, &small).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["payload"], small["payload"]);
}

#[tokio::test]
async fn a_client_that_never_reads_its_answer_is_dropped_and_gives_the_budget_back() {
    let m = media_app(crate::support::app::Stack::SqliteFs, &[("MEDIA_SEND_TIMEOUT", "1s")]).await;
    let full = m.app.state.limits.resolve_budget.available();
    // A 7 MB payload comes back as a 7 MB answer: more than the socket buffers hold.
    let body = format!("{{\"payload\": [{}]}}", vec!["1"; 3_500_000].join(",")).into_bytes();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(([127, 0, 0, 1], m.app.port).into()).await.unwrap();
    let head = format!(
        "POST /v1/media/resolve HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        m.alice(),
        body.len()
    );
    use tokio::io::AsyncWriteExt;
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    // It never reads: the answer stalls, and after MEDIA_SEND_TIMEOUT the service drops it.
    let started = Instant::now();
    while m.app.state.limits.resolve_budget.available() != full {
        assert!(started.elapsed() < Duration::from_secs(60), "the stalled answer kept its charge");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = m.http().get(m.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("media_send_timeouts_total 1"), "{metrics}");
    drop(stream);
}
