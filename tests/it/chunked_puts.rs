//! An upload of unknown length above one part — a chunked raw body, a form without a
//! `Content-Length` — goes up to a store that takes it (Garage) as one chunked `PutObject`, the
//! store asked once with a one-byte request (`MEDIA_S3_CHUNKED_PUT=auto`); to a store that refuses
//! it (411, as AWS S3 and MinIO do; the recording proxy stands in for them) as a multipart upload,
//! asked once too. A chunked `PutObject` cut by its client, its limit or a stalled store leaves
//! nothing. Seen through the recording S3 proxy (`support::s3_proxy`).

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::app::{chunked, sha256_hex, Stack};
use crate::support::limits::channel_body;
use crate::support::media::{json_of, media_app, png, MediaApp};
use crate::support::s3_proxy::{Answer, Fault, S3Proxy};
use media_api::storage::StorageError;

/// Past two parts of 5 MiB.
const FILE: usize = 12 << 20;
const NO_FAULT: Fault = Fault { matches: |_, _| false, times: 0, answer: Answer::SlowDown };
const BOUNDARY: &str = "chunked-boundary-41c2";

async fn app_behind(proxy: &S3Proxy, extra: &[(&str, &str)]) -> MediaApp {
    let mut vars = vec![("MEDIA_S3_ENDPOINT", proxy.endpoint.as_str())];
    vars.extend_from_slice(extra);
    media_app(Stack::PostgresS3, &vars).await
}

/// `bytes` as a request body of unknown length (chunked), in 64 KiB chunks.
fn no_length(bytes: &[u8]) -> reqwest::Body {
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        bytes.chunks(64 * 1024).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    reqwest::Body::wrap_stream(futures::stream::iter(chunks))
}

/// Uploads `file` without a length, raw or as a form; checks it downloads whole; its id.
async fn upload_unsized(m: &MediaApp, file: &[u8], as_form: bool) -> String {
    let request = match as_form {
        false => m.http().post(m.url("/v1/media")).header("content-type", "image/png"),
        true => m
            .http()
            .post(m.url("/v1/media/upload"))
            .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}")),
    };
    let body = match as_form {
        false => file.to_vec(),
        true => crate::support::media::form_with_file(BOUNDARY, b"", file),
    };
    let response = request.bearer_auth(m.alice()).body(no_length(&body)).send().await.unwrap();
    let (status, answer): (StatusCode, Value) = json_of(response).await;
    assert_eq!((status, answer["bytes"].as_u64()), (StatusCode::OK, Some(file.len() as u64)), "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    let downloaded = m.get(&m.alice(), &format!("/v1/media/{id}")).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(sha256_hex(&downloaded), sha256_hex(file), "the file, exactly");
    id
}

fn multipart_requests(proxy: &S3Proxy) -> usize {
    ["CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"].iter().map(|op| proxy.requests(op)).sum()
}

#[tokio::test]
async fn an_upload_of_unknown_length_goes_up_as_one_chunked_put_object_the_store_asked_once() {
    for encryption in ["off", "on"] {
        let proxy = S3Proxy::start(NO_FAULT).await;
        let m = app_behind(&proxy, &[("MEDIA_OBJECT_ENCRYPTION", encryption)]).await;
        let files = [png(FILE, 1), png(FILE + 7, 2), png(FILE - 3, 3), png(1 << 20, 4)];
        upload_unsized(&m, &files[0], false).await;
        // The question (one byte, to a key beside the upload's, deleted), then the upload: two PutObjects.
        assert_eq!(proxy.requests("PutObject"), 2, "{encryption}: {:?}", proxy.seen());
        upload_unsized(&m, &files[1], false).await;
        upload_unsized(&m, &files[2], true).await;
        assert_eq!(proxy.requests("PutObject"), 4, "{encryption}: asked once: {:?}", proxy.seen());
        // A body ending within its first part goes up as one PutObject of its length, as before.
        upload_unsized(&m, &files[3], false).await;
        assert_eq!(proxy.requests("PutObject"), 5, "{encryption}: {:?}", proxy.seen());
        assert_eq!(multipart_requests(&proxy), 0, "{encryption}: no part: {:?}", proxy.seen());
        // One object of the exact (sealed) size per upload: nothing is left of the question.
        assert_eq!(m.counts().await, (4, 4), "{encryption}");
        let mut sizes: Vec<u64> = m.stored_objects().await.iter().map(|(_, bytes)| bytes.len() as u64).collect();
        sizes.sort_unstable();
        let mut wanted: Vec<u64> = files
            .iter()
            .map(|file| match encryption {
                "off" => file.len() as u64,
                _ => media_api::crypto::object::sealed_len(file.len() as u64),
            })
            .collect();
        wanted.sort_unstable();
        assert_eq!(sizes, wanted, "{encryption}: the stored objects' sizes");
    }
}

#[tokio::test]
async fn a_store_refusing_chunked_put_objects_is_asked_once_and_gets_multipart_uploads() {
    // Every PutObject without a Content-Length is answered 411 at once, as AWS S3 answers it.
    let proxy = S3Proxy::start(Fault {
        matches: |method, target| method == "PUT" && target.contains("x-id=PutObject"),
        times: usize::MAX,
        answer: Answer::LengthRequired,
    })
    .await;
    let m = app_behind(&proxy, &[]).await;
    let files = [png(FILE, 11), png(FILE + 1, 12)];
    upload_unsized(&m, &files[0], false).await;
    upload_unsized(&m, &files[1], true).await;
    assert_eq!(proxy.failed(), 1, "asked once, refused once: {:?}", proxy.seen());
    assert_eq!(proxy.requests("PutObject"), 1, "only the question: {:?}", proxy.seen());
    assert_eq!(proxy.requests("CreateMultipartUpload"), 2, "{:?}", proxy.seen());
    assert_eq!(proxy.requests("CompleteMultipartUpload"), 2, "{:?}", proxy.seen());
    assert_eq!(m.counts().await, (2, 2), "two rows, two objects, no upload left open");

    // Told it is on, the service sends one anyway: the refusal is the client's 503, nothing is kept.
    let m = app_behind(&proxy, &[("MEDIA_S3_CHUNKED_PUT", "true")]).await;
    let response = m
        .http()
        .post(m.url("/v1/media"))
        .header("content-type", "image/png")
        .bearer_auth(m.alice())
        .body(no_length(&files[0]))
        .send()
        .await
        .unwrap();
    let (status, answer) = json_of(response).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("storage_unavailable")));
    assert_eq!(proxy.failed(), 2, "{:?}", proxy.seen());
    assert_eq!(m.counts().await, (0, 0));
}

#[tokio::test]
async fn a_question_the_store_leaves_undecided_sends_uploads_in_parts_and_is_not_asked_by_every_upload() {
    // Every question is answered 503 SlowDown (a store under load, or down): no verdict.
    let proxy = S3Proxy::start(Fault {
        matches: |method, target| method == "PUT" && target.contains(".chunked-put-probe"),
        times: usize::MAX,
        answer: Answer::SlowDown,
    })
    .await;
    let m = app_behind(&proxy, &[]).await;
    let questions = |answer| {
        let app = &m.app;
        async move {
            let text = crate::support::connections::metrics_text(&app.http, &app.address).await;
            crate::support::limits::metric(&text, "media_s3_chunked_put_questions_total", &[("answer", answer)])
        }
    };
    let undecided = questions("undecided").await;
    upload_unsized(&m, &png(FILE, 41), false).await;
    upload_unsized(&m, &png(FILE + 5, 42), true).await;
    // The SDK does not send a streamed body again: one request per question.
    assert_eq!((proxy.failed(), proxy.requests("PutObject")), (1, 1), "asked once: {:?}", proxy.seen());
    assert!(questions("undecided").await > undecided, "counted as undecided");
    assert_eq!(proxy.requests("CompleteMultipartUpload"), 2, "both went up in parts: {:?}", proxy.seen());
    assert_eq!(m.counts().await, (2, 2), "two rows, two objects, nothing of the question");
}

/// An app behind a proxy answering the uploads' own `PutObject`s (not the question's) with
/// `answer`, `times` times, and the answer to a first chunked upload (seed `seed`) through it.
async fn first_put_object_answered(times: usize, answer: Answer, seed: u64) -> (S3Proxy, MediaApp, StatusCode, Value) {
    let matches =
        |method: &str, target: &str| method == "PUT" && target.contains("x-id=PutObject") && !target.contains("-probe");
    let proxy = S3Proxy::start(Fault { matches, times, answer }).await;
    let m = app_behind(&proxy, &[]).await;
    let request = m.http().post(m.url("/v1/media")).header("content-type", "image/png").bearer_auth(m.alice());
    let (status, answer) = json_of(request.body(no_length(&png(FILE, seed))).send().await.unwrap()).await;
    (proxy, m, status, answer)
}

#[tokio::test]
async fn a_chunked_put_object_refused_after_the_question_said_yes_sends_later_uploads_in_parts() {
    // The question goes through; the uploads' own chunked PutObjects are answered 411 (a store
    // changed behind a running fleet, or a proxy in front of it that refuses them).
    let (proxy, m, status, answer) = first_put_object_answered(usize::MAX, Answer::LengthRequired, 51).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("storage_unavailable")));
    assert_eq!((proxy.requests("PutObject"), proxy.failed()), (2, 1), "asked, then refused: {:?}", proxy.seen());
    // From then on: in parts, no question, no chunked PutObject.
    upload_unsized(&m, &png(FILE, 52), false).await;
    upload_unsized(&m, &png(FILE, 53), true).await;
    assert_eq!(proxy.requests("PutObject"), 2, "{:?}", proxy.seen());
    assert_eq!(proxy.requests("CompleteMultipartUpload"), 2, "{:?}", proxy.seen());
    assert_eq!(m.counts().await, (2, 2), "the refused upload left nothing");
}

#[tokio::test]
async fn a_store_timing_out_one_slow_body_leaves_chunked_put_objects_on() {
    // The question goes through; the first upload's chunked PutObject is answered 400
    // RequestTimeout (S3's answer to a body left idle: a slow client's doing, not the store
    // refusing chunked bodies). That upload fails; the next ones still go up as one PutObject.
    let (proxy, m, status, answer) = first_put_object_answered(1, Answer::RequestTimeout, 54).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("storage_unavailable")));
    assert_eq!((proxy.requests("PutObject"), proxy.failed()), (2, 1), "asked, then timed out: {:?}", proxy.seen());
    upload_unsized(&m, &png(FILE, 55), false).await;
    upload_unsized(&m, &png(FILE, 56), true).await;
    assert_eq!(proxy.requests("PutObject"), 4, "still one chunked PutObject each: {:?}", proxy.seen());
    assert_eq!(multipart_requests(&proxy), 0, "nothing in parts: {:?}", proxy.seen());
    assert_eq!(m.counts().await, (2, 2), "the timed-out upload left nothing");
}

#[tokio::test]
async fn a_chunked_put_object_cut_by_its_source_leaves_no_object() {
    let proxy = S3Proxy::start(NO_FAULT).await;
    let m = app_behind(&proxy, &[]).await;
    let blobs = &m.app.state.blobs;
    let data = Bytes::from(png(FILE, 21));
    // Asked once (a first upload), so the next key holds nothing but what its own request stores.
    let first = format!("{}/cut/asked", m.prefix);
    blobs.put_at_most(&first, "image/png", 64 << 20, chunked(data.clone())).await.unwrap();
    assert_eq!(proxy.requests("PutObject"), 2);
    // A body that fails after 8 MiB, well into its chunked PutObject: the request is cut.
    let key = format!("{}/cut/failing", m.prefix);
    let failing = chunked(data.slice(..8 << 20)).chain(futures::stream::iter([Err(std::io::Error::other("gone"))]));
    let err = blobs.put_at_most(&key, "image/png", 64 << 20, failing.boxed()).await.expect_err("cut");
    assert!(matches!(err, StorageError::Source(_)), "the source's error: {err}");
    assert_eq!(proxy.requests("PutObject"), 3, "it went up as a chunked PutObject: {:?}", proxy.seen());
    assert!(matches!(blobs.head(&key).await, Err(StorageError::NotFound)), "the store kept nothing of it");
    let deleted = |r: &String| r.starts_with("DELETE ") && r.split('?').next().is_some_and(|r| r.ends_with(&key));
    assert!(!proxy.seen().iter().any(deleted), "and no delete of it was needed: {:?}", proxy.seen());
    // A body past its bound fails the same way (the pipeline's limit comes first; this is the store's).
    let key = format!("{}/cut/long", m.prefix);
    let err = blobs.put_at_most(&key, "image/png", 10 << 20, chunked(data.clone())).await.expect_err("long");
    assert!(err.to_string().contains("past its bound"), "{err}");
    assert!(matches!(blobs.head(&key).await, Err(StorageError::NotFound)), "nothing kept");
}

#[tokio::test]
async fn an_upload_cut_by_its_client_or_its_limit_mid_put_object_stores_nothing() {
    for encryption in ["off", "on"] {
        cut_mid_put_object(encryption).await;
    }
}

async fn cut_mid_put_object(encryption: &str) {
    let proxy = S3Proxy::start(NO_FAULT).await;
    let m = app_behind(&proxy, &[("MEDIA_MAX_BYTES", "10MiB"), ("MEDIA_OBJECT_ENCRYPTION", encryption)]).await;
    // A first upload asks the store.
    upload_unsized(&m, &png(6 << 20, 30), false).await;
    let puts = proxy.requests("PutObject");
    // Past the limit: 413, nothing kept.
    let over = png(FILE, 31);
    let request = m.http().post(m.url("/v1/media")).header("content-type", "image/png").bearer_auth(m.alice());
    let (status, answer) = json_of(request.body(no_length(&over)).send().await.unwrap()).await;
    assert_eq!((status, answer["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")), "{answer}");
    assert_eq!(proxy.requests("PutObject"), puts + 1, "it had begun its PutObject: {:?}", proxy.seen());

    // A client that dies after 8 MiB of a chunked body.
    let (tx, body) = channel_body();
    let request = m.http().post(m.url("/v1/media")).header("content-type", "image/png").bearer_auth(m.alice());
    let answer = tokio::spawn(request.body(body).send());
    let dying = png(9 << 20, 32);
    for chunk in dying[..8 << 20].chunks(256 * 1024) {
        tx.send(Ok(Bytes::copy_from_slice(chunk))).await.unwrap();
    }
    let started = tokio::time::Instant::now();
    while proxy.requests("PutObject") < puts + 2 {
        assert!(started.elapsed() < Duration::from_secs(30), "no PutObject began: {:?}", proxy.seen());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.send(Err(std::io::Error::other("the client dies"))).await.unwrap();
    let answer = answer.await.unwrap();
    assert!(answer.is_err() || !answer.unwrap().status().is_success(), "a cut upload was accepted");
    // Its end: the journal closed (the key deleted, to be sure).
    let started = tokio::time::Instant::now();
    while m.journaled().await != 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "the failed upload was never cleaned up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(m.counts().await, (1, 1), "only the first upload is kept");
}
