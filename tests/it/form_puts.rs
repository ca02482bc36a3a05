//! A multipart form with a `Content-Length` (what curl, browsers and the usual libraries send): its
//! file goes up to S3 as one streamed `PutObject` of a length guessed from the form's length, not
//! as a multipart upload (nor a chunked `PutObject`), seen through the recording S3 proxy
//! (`support::s3_proxy`). A form the guess misses — a part or an epilogue after the file, a closing delimiter without its line break —
//! is stored as exactly its file, plain or sealed; a client that stops sending after its file stores
//! nothing.

use bytes::Bytes;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::app::{sha256_hex, Stack};
use crate::support::connections::metrics_text;
use crate::support::limits::{channel_body, metric};
use crate::support::media::{json_of, media_app, png, MediaApp};
use crate::support::s3_proxy::{Answer, Fault, S3Proxy};

const BOUNDARY: &str = "guess-boundary-7f3a";
/// Past two parts of 5 MiB: without the guess, a multipart upload.
const FILE: usize = 12 << 20;
const NO_FAULT: Fault = Fault { matches: |_, _| false, times: 0, answer: Answer::SlowDown };

/// An app (Postgres, Garage) whose S3 requests go through a recording proxy.
async fn app_behind_proxy(extra: &[(&str, &str)]) -> (MediaApp, S3Proxy) {
    let proxy = S3Proxy::start(NO_FAULT).await;
    let mut vars = vec![("MEDIA_S3_ENDPOINT", proxy.endpoint.as_str())];
    vars.extend_from_slice(extra);
    (media_app(Stack::PostgresS3, &vars).await, proxy)
}

/// A form: a `user_id` part, the `file` part holding `file`, then `tail` as it is.
fn form(file: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"user_id\"\r\n\r\nu-1\r\n--{BOUNDARY}\r\n\
         Content-Disposition: form-data; name=\"file\"; filename=\"f.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(tail);
    body
}

/// The closing delimiter as curl and browsers send it.
fn closed() -> String {
    format!("\r\n--{BOUNDARY}--\r\n")
}

/// A text part named `note` of `len` bytes, then the usual close.
fn note_after(len: usize) -> String {
    format!("\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n{}{}", "n".repeat(len), closed())
}

async fn post_form(m: &MediaApp, body: reqwest::Body) -> reqwest::Result<reqwest::Response> {
    let request = m.http().post(m.url("/v1/media/upload")).bearer_auth(m.alice());
    request.header("content-type", format!("multipart/form-data; boundary={BOUNDARY}")).body(body).send().await
}

/// The bytes the media `id` downloads.
async fn downloaded(m: &MediaApp, id: &str) -> Vec<u8> {
    let response = m.get(&m.alice(), &format!("/v1/media/{id}")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.bytes().await.unwrap().to_vec()
}

/// Uploads `body` as a form (with its length, or chunked): the answer's id, after checking it
/// stored `file`, whole and in order.
async fn upload(m: &MediaApp, body: Vec<u8>, with_length: bool, file: &[u8]) -> String {
    let body = match with_length {
        true => reqwest::Body::from(body),
        false => {
            let chunks: Vec<Result<Bytes, std::io::Error>> =
                body.chunks(64 * 1024).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            reqwest::Body::wrap_stream(futures::stream::iter(chunks))
        }
    };
    let (status, answer): (StatusCode, Value) = json_of(post_form(m, body).await.unwrap()).await;
    assert_eq!((status, answer["bytes"].as_u64()), (StatusCode::OK, Some(file.len() as u64)), "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    assert_eq!(sha256_hex(&downloaded(m, &id).await), sha256_hex(file), "the file, exactly");
    id
}

#[tokio::test]
async fn a_form_with_a_length_goes_up_as_one_put_object_and_one_without_as_a_multipart_upload() {
    // Chunked PutObjects off: a form without a length then goes up in parts (`chunked_puts` has
    // the same form as one chunked PutObject).
    let (m, proxy) = app_behind_proxy(&[("MEDIA_S3_CHUNKED_PUT", "false")]).await;
    let file = png(FILE, 1);
    upload(&m, form(&file, closed().as_bytes()), true, &file).await;
    let seen = proxy.seen();
    assert_eq!(proxy.requests("PutObject"), 1, "one PutObject: {seen:?}");
    let multipart = ["CreateMultipartUpload", "UploadPart", "UploadPartCopy", "CompleteMultipartUpload"];
    assert!(multipart.iter().all(|op| proxy.requests(op) == 0), "no multipart upload: {seen:?}");

    // The same form without a length cannot be guessed: parts.
    let other = png(FILE, 2);
    upload(&m, form(&other, closed().as_bytes()), false, &other).await;
    assert_eq!(proxy.requests("PutObject"), 1, "{:?}", proxy.seen());
    assert_eq!(proxy.requests("CreateMultipartUpload"), 1, "{:?}", proxy.seen());
    assert_eq!(proxy.requests("CompleteMultipartUpload"), 1, "{:?}", proxy.seen());
    assert!(proxy.requests("UploadPart") >= 3, "three parts: {:?}", proxy.seen());
    assert_eq!(m.counts().await, (2, 2), "two rows, two objects, no upload left open");
}

#[tokio::test]
async fn a_form_the_guess_misses_is_stored_as_exactly_its_file_plain_or_sealed() {
    // What follows the file, and whether it makes the file shorter than guessed (rebuilt from a
    // copy of its first bytes) or longer (the rest appended).
    let shapes = [
        ("a text part after the file", note_after(100), "short"),
        ("six MiB of a part after the file", note_after(6 << 20), "short"),
        ("an epilogue after the close", format!("{}an epilogue\r\n", closed()), "short"),
        ("a close without its line break", format!("\r\n--{BOUNDARY}--"), "long"),
    ];
    for encryption in ["off", "on"] {
        let (m, proxy) = app_behind_proxy(&[("MEDIA_OBJECT_ENCRYPTION", encryption)]).await;
        let rebuilt = |reason: &str, text: &str| metric(text, "media_s3_put_rebuilds_total", &[("reason", reason)]);
        let before = metrics_text(&m.app.http, &m.app.address).await;
        for (i, (what, tail, _)) in shapes.iter().enumerate() {
            let file = png(FILE + i, 10 + i as u64);
            upload(&m, form(&file, tail.as_bytes()), true, &file).await;
            let seen = proxy.seen();
            // One PutObject announcing the guess, then one copy of its first bytes into part 1.
            assert_eq!(proxy.requests("PutObject"), i + 1, "{what}, encryption {encryption}: {seen:?}");
            assert_eq!(proxy.requests("UploadPartCopy"), i + 1, "{what}, encryption {encryption}: {seen:?}");
            let tails = shapes[..=i].iter().filter(|shape| shape.2 == "long").count();
            assert_eq!(proxy.requests("UploadPart"), tails, "{what}: the tail is a second part: {seen:?}");
        }
        let after = metrics_text(&m.app.http, &m.app.address).await;
        assert!(rebuilt("short", &after) >= rebuilt("short", &before) + 3.0, "{encryption}");
        assert!(rebuilt("long", &after) >= rebuilt("long", &before) + 1.0, "{encryption}");
        // Exactly one object per upload (no padded copy, no open upload), plain ones as sent.
        assert_eq!(m.counts().await, (shapes.len() as i64, shapes.len()), "{encryption}");
        let stored = m.stored_objects().await;
        let sizes: Vec<u64> = stored.iter().map(|(_, bytes)| bytes.len() as u64).collect();
        let wanted: Vec<u64> = (0..shapes.len() as u64)
            .map(|i| match encryption {
                "off" => FILE as u64 + i,
                _ => media_api::crypto::object::sealed_len(FILE as u64 + i),
            })
            .collect();
        let mut sorted = sizes.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, wanted, "{encryption}: the stored objects' sizes");
    }
}

#[tokio::test]
async fn a_client_that_stops_sending_after_its_file_stores_nothing() {
    let (m, proxy) = app_behind_proxy(&[]).await;
    let before = m.counts().await;
    let file = png(FILE, 40);
    // The form announces a 4 MiB part after the file; the client sends 1 MiB of it and stops (its
    // request is shorter than its Content-Length).
    let whole = form(&file, note_after(4 << 20).as_bytes());
    let sent = whole.len() - (3 << 20);
    let (tx, body) = channel_body();
    let request = m.http().post(m.url("/v1/media/upload")).bearer_auth(m.alice());
    let request = request
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .header("content-length", whole.len().to_string());
    let answer = tokio::spawn(request.body(body).send());
    for chunk in whole[..sent].chunks(256 * 1024) {
        tx.send(Ok(Bytes::copy_from_slice(chunk))).await.unwrap();
    }
    // The file's guessed PutObject has started and waits for the rest.
    let mut waited = 0;
    while proxy.requests("PutObject") == 0 {
        assert!(waited < 3000, "no PutObject started: {:?}", proxy.seen());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        waited += 1;
    }
    drop(tx);
    let answer = answer.await.unwrap();
    assert!(answer.is_err() || !answer.unwrap().status().is_success(), "an unfinished form was accepted");
    // The failed upload's key is deleted, then its journal entry closed: that is its end.
    let mut waited = 0;
    while m.journaled().await != 0 || !proxy.seen().iter().any(|r| r.starts_with("DELETE ")) {
        assert!(waited < 3000, "the failed upload was never cleaned up: {:?}", proxy.seen());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        waited += 1;
    }
    assert_eq!(m.counts().await, before, "nothing stored, no upload left open");
    assert_eq!(proxy.requests("UploadPartCopy"), 0, "nothing was rebuilt: {:?}", proxy.seen());
}
