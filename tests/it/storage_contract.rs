//! The blob-store contract, run against both backends: S3 on Garage and the local filesystem.
//! Each case runs on a real app (the filesystem backend's presigned URLs are served by it).

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use media_api::config::MIB;
use media_api::storage::{content_disposition, ByteRange, ByteStream, PresignGet, PresignPut, StorageError};

use crate::support::app::{
    chunked, collect, payload, random_hex, s3_client, s3_env, sha256_hex, spawn_app, Stack, TestApp, STACKS,
};

fn key(prefix: &str) -> String {
    format!("{prefix}/{}", random_hex(8))
}

/// Multipart uploads still open under `prefix` (S3), or temporary files left (filesystem).
async fn leftovers(app: &TestApp, stack: Stack, prefix: &str) -> usize {
    match stack {
        Stack::PostgresS3 => {
            let env = s3_env();
            let listed = s3_client()
                .await
                .list_multipart_uploads()
                .bucket(env.bucket)
                .prefix(prefix)
                .send()
                .await
                .expect("list multipart uploads");
            listed.uploads().len()
        }
        Stack::SqliteFs => {
            let tmp = app.dir.path().join("data/blobs/.tmp");
            std::fs::read_dir(tmp).expect("tmp dir exists").count()
        }
    }
}

/// A stream that yields `good` bytes and then fails, as a client that goes away would.
fn failing_after(good: usize) -> ByteStream {
    let head = chunked(payload(good, 9));
    let failure = futures::stream::once(async {
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "client went away"))
    });
    head.chain(failure).boxed()
}

#[tokio::test]
async fn round_trips_are_byte_for_byte_at_part_boundaries() {
    for stack in STACKS {
        let app = spawn_app(stack).await;
        let blobs = &app.state.blobs;
        let part = media_api::config::S3_MIN_PART_SIZE as usize; // the default part size
        for (i, size) in [0, 1, part - 1, part, part + 1, 50 * MIB as usize].into_iter().enumerate() {
            let data = payload(size, i as u64);
            let key = key("roundtrip");
            let written = blobs.put(&key, "application/octet-stream", chunked(data.clone())).await.expect("put");
            assert_eq!(written, size as u64, "{stack:?} size {size}");
            assert_eq!(blobs.head(&key).await.expect("head").size, size as u64);
            let object = blobs.get(&key, None).await.expect("get");
            assert_eq!((object.content_length, object.total_size, object.range), (size as u64, size as u64, None));
            let read = collect(object.body).await;
            assert_eq!(read.len(), size, "{stack:?} size {size}");
            assert_eq!(sha256_hex(&read), sha256_hex(&data), "{stack:?} size {size}: bytes differ");
            blobs.delete(&key).await.expect("delete");
        }
    }
}

#[tokio::test]
async fn ranges_head_and_delete_behave_alike() {
    for stack in STACKS {
        let app = spawn_app(stack).await;
        let blobs = &app.state.blobs;
        let data = payload(1000, 3);
        let key = key("range");
        blobs.put(&key, "image/png", chunked(data.clone())).await.expect("put");

        let middle = blobs.get(&key, Some(ByteRange { start: 10, end: Some(19) })).await.expect("range");
        assert_eq!((middle.content_length, middle.total_size, middle.range), (10, 1000, Some((10, 19))));
        assert_eq!(collect(middle.body).await, data[10..20].to_vec(), "{stack:?}");
        let tail = blobs.get(&key, Some(ByteRange { start: 990, end: None })).await.expect("tail");
        assert_eq!(collect(tail.body).await, data[990..].to_vec(), "{stack:?}");
        let beyond = blobs.get(&key, Some(ByteRange { start: 1000, end: None })).await;
        assert!(matches!(beyond, Err(StorageError::InvalidRange { size: 1000 })), "{stack:?}: {beyond:?}");

        let prefix = key.rsplit_once('/').expect("prefixed key").0;
        assert!(
            matches!(blobs.get(prefix, None).await, Err(StorageError::NotFound)),
            "{stack:?}: a prefix is no object"
        );
        assert!(matches!(blobs.head(prefix).await, Err(StorageError::NotFound)), "{stack:?}");

        blobs.delete(&key).await.expect("delete");
        assert!(matches!(blobs.head(&key).await, Err(StorageError::NotFound)), "{stack:?}");
        assert!(matches!(blobs.get(&key, None).await, Err(StorageError::NotFound)), "{stack:?}");
        blobs.delete(&key).await.expect("deleting a missing object is not an error");
    }
}

#[tokio::test]
async fn a_source_failing_mid_upload_leaves_no_object_and_no_multipart_upload() {
    for stack in STACKS {
        let app = spawn_app(stack).await;
        let blobs = &app.state.blobs;
        for good in [1000, 9 * MIB as usize, 17 * MIB as usize] {
            let prefix = format!("failing-{}", random_hex(6));
            let key = format!("{prefix}/obj");
            let result = blobs.put(&key, "image/png", failing_after(good)).await;
            assert!(matches!(result, Err(StorageError::Source(_))), "{stack:?} after {good} bytes: {result:?}");
            assert!(matches!(blobs.head(&key).await, Err(StorageError::NotFound)), "{stack:?}: object left behind");
            assert_eq!(leftovers(&app, stack, &prefix).await, 0, "{stack:?}: upload left behind after {good} bytes");
        }
    }
}

#[tokio::test]
async fn sized_uploads_round_trip_and_a_body_short_long_or_failing_leaves_nothing() {
    for stack in STACKS {
        let app = spawn_app(stack).await;
        let blobs = &app.state.blobs;
        let size = 12 * MIB as usize; // above one part: S3 streams it as one PutObject
        let data = payload(size, 77);
        let key = key("sized");
        let written = blobs.put_sized(&key, "image/png", size as u64, chunked(data.clone())).await.expect("put");
        assert_eq!(written, size as u64, "{stack:?}");
        assert_eq!(sha256_hex(&collect(blobs.get(&key, None).await.unwrap().body).await), sha256_hex(&data));
        blobs.delete(&key).await.unwrap();
        let prefix = format!("sized-bad-{}", random_hex(6));
        for (announced, body) in [
            (size as u64 + 1, chunked(data.clone())),
            (size as u64 - 1, chunked(data.clone())),
            (size as u64, failing_after(7 * MIB as usize)),
        ] {
            let key = format!("{prefix}/{announced}");
            let result = blobs.put_sized(&key, "image/png", announced, body).await;
            assert!(matches!(result, Err(StorageError::Source(_))), "{stack:?} {announced}: {result:?}");
            assert!(matches!(blobs.head(&key).await, Err(StorageError::NotFound)), "{stack:?}: {announced}");
        }
        assert_eq!(leftovers(&app, stack, &prefix).await, 0, "{stack:?}");
    }
}

#[tokio::test]
async fn an_upload_abandoned_mid_stream_is_cleaned_up() {
    for stack in STACKS {
        let app = spawn_app(stack).await;
        let blobs = app.state.blobs.clone();
        let prefix = format!("abandoned-{}", random_hex(6));
        let key = format!("{prefix}/obj");
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let body = chunked(payload(9 * MIB as usize, 4))
            .chain(futures::stream::once(async move {
                let _ = started_tx.send(());
                Ok(Bytes::new())
            }))
            .chain(futures::stream::pending())
            .boxed();
        let task = tokio::spawn(async move { blobs.put(&key, "image/png", body).await });
        started_rx.await.expect("the body was read past the first part");
        tokio::time::sleep(Duration::from_millis(300)).await;
        task.abort();
        let mut remaining = usize::MAX;
        for _ in 0..50 {
            remaining = leftovers(&app, stack, &prefix).await;
            if remaining == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(remaining, 0, "{stack:?}: an abandoned upload stayed");
    }
}

#[tokio::test]
async fn presigned_get_serves_the_bytes_with_forced_headers_over_plain_http() {
    for stack in STACKS {
        let app = spawn_app(stack).await;
        let data = payload(4096, 5);
        let key = key("presign");
        app.state.blobs.put(&key, "application/octet-stream", chunked(data.clone())).await.expect("put");
        let disposition = content_disposition("attachment", "photo of ü.png");
        let options = PresignGet {
            ttl: Duration::from_secs(60),
            content_type: "image/png".into(),
            content_disposition: disposition.clone(),
        };
        let link = app.state.blobs.presign_get(&key, &options).await.expect("presign");
        assert!(link.expires_at > chrono::Utc::now());
        let response = app.http.get(&link.url).send().await.expect("fetch presigned URL");
        assert_eq!(response.status(), 200, "{stack:?}: {}", link.url);
        assert_eq!(response.headers()["content-type"], "image/png", "{stack:?}");
        assert_eq!(response.headers()["content-disposition"], disposition.as_str(), "{stack:?}");
        assert_eq!(response.bytes().await.expect("body"), data, "{stack:?}");
    }
}

#[tokio::test]
async fn expired_and_tampered_presigned_urls_are_refused() {
    for stack in STACKS {
        let app = spawn_app(stack).await;
        let key = key("refused");
        app.state.blobs.put(&key, "image/png", chunked(payload(100, 6))).await.expect("put");
        let options = |ttl| PresignGet { ttl, content_type: "image/png".into(), content_disposition: "inline".into() };
        let good = app.state.blobs.presign_get(&key, &options(Duration::from_secs(60))).await.expect("presign");
        let tampered_type = good.url.replace("image%2Fpng", "text%2Fhtml");
        assert_ne!(tampered_type, good.url, "{stack:?}: the forced type is in the URL");
        let mut tampered_sig = good.url.clone();
        let last = tampered_sig.pop().expect("non-empty url");
        tampered_sig.push(if last == '0' { '1' } else { '0' });
        for url in [tampered_type, tampered_sig] {
            let status = app.http.get(&url).send().await.expect("request").status();
            assert_eq!(status, 403, "{stack:?}: tampered URL answered {status}: {url}");
        }

        let short = app.state.blobs.presign_get(&key, &options(Duration::from_secs(1))).await.expect("presign");
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let response = app.http.get(&short.url).send().await.expect("request");
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        // AWS answers 403 "Request has expired", Garage 400 "Date is too old", the service's links 403.
        assert!(status == 403 || status == 400, "{stack:?}: expired URL answered {status}: {body}");
        let body = body.to_lowercase();
        assert!(body.contains("expired") || body.contains("too old"), "{stack:?}: not refused for expiry: {body}");
    }
}

#[tokio::test]
async fn presigned_put_binds_the_content_type_and_length() {
    for stack in STACKS {
        let app = spawn_app(stack).await;
        let data = payload(2048, 7);
        let key = key("put");
        let options = PresignPut {
            ttl: Duration::from_secs(60),
            content_type: "image/png".into(),
            content_length: Some(data.len() as u64),
        };
        let link = app.state.blobs.presign_put(&key, &options).await.expect("presign put");
        let send = |content_type: &'static str, body: Bytes| {
            let mut request = app.http.put(&link.url).body(body);
            for (name, value) in &link.headers {
                if name != "content-type" && name != "content-length" {
                    request = request.header(name.as_str(), value.as_str());
                }
            }
            request.header("content-type", content_type).send()
        };
        let wrong_type = send("text/html", data.clone()).await.expect("request").status();
        assert_eq!(wrong_type, 403, "{stack:?}: a PUT with another type answered {wrong_type}");
        let wrong_length = send("image/png", payload(2049, 7)).await.expect("request").status();
        assert_eq!(wrong_length, 403, "{stack:?}: a PUT with another length answered {wrong_length}");
        assert!(matches!(app.state.blobs.head(&key).await, Err(StorageError::NotFound)), "{stack:?}");

        let response = send("image/png", data.clone()).await.expect("request");
        assert_eq!(response.status(), 200, "{stack:?}: {:?}", response.text().await);
        let stored = collect(app.state.blobs.get(&key, None).await.expect("get").body).await;
        assert_eq!(stored, data.to_vec(), "{stack:?}");
    }
}

#[tokio::test]
async fn keys_that_could_escape_are_refused_by_every_operation() {
    for stack in STACKS {
        let app = spawn_app(stack).await;
        let blobs = &app.state.blobs;
        let mut bad_keys = vec!["../outside", "/etc/passwd", "a/../../b", "nul\0byte", "a//b"];
        if stack == Stack::SqliteFs {
            bad_keys.push(".tmp/x"); // where the filesystem backend keeps unfinished writes
        }
        for bad in bad_keys {
            let put = blobs.put(bad, "image/png", chunked(payload(10, 1))).await;
            assert!(matches!(put, Err(StorageError::InvalidKey(_))), "{stack:?} put {bad:?}: {put:?}");
            assert!(matches!(blobs.get(bad, None).await, Err(StorageError::InvalidKey(_))), "{stack:?} {bad:?}");
            assert!(matches!(blobs.head(bad).await, Err(StorageError::InvalidKey(_))), "{stack:?} {bad:?}");
            assert!(matches!(blobs.delete(bad).await, Err(StorageError::InvalidKey(_))), "{stack:?} {bad:?}");
        }
        assert!(!app.dir.path().join("outside").exists());
    }
}

#[tokio::test]
async fn an_upload_link_refuses_a_body_over_the_limit_and_stores_nothing() {
    let app = crate::support::app::spawn_app_with(Stack::SqliteFs, &[("MEDIA_MAX_BYTES", "1000")]).await;
    let key = key("limit");
    let options = PresignPut { ttl: Duration::from_secs(60), content_type: "image/png".into(), content_length: None };
    let link = app.state.blobs.presign_put(&key, &options).await.expect("presign put");
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..4).map(|i| Ok(payload(400, i))).collect();
    let response = app
        .http
        .put(&link.url)
        .header("content-type", "image/png")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.expect("json error");
    assert_eq!(body["code"], "too_large");
    assert!(matches!(app.state.blobs.head(&key).await, Err(StorageError::NotFound)));
    assert_eq!(std::fs::read_dir(app.dir.path().join("data/blobs/.tmp")).expect("tmp").count(), 0);
}

/// URLs are signed for `MEDIA_S3_PUBLIC_ENDPOINT` (here the same Garage under another host name),
/// never rewritten: the URL names that host and Garage accepts its signature.
#[tokio::test]
async fn presigned_urls_are_signed_for_the_public_endpoint() {
    let internal = crate::support::app::s3_env().endpoint;
    let public = internal.replace("127.0.0.1", "localhost");
    assert_ne!(public, internal, "the test needs a different host name: {internal}");
    let app = crate::support::app::spawn_app_with(Stack::PostgresS3, &[("MEDIA_S3_PUBLIC_ENDPOINT", &public)]).await;
    let data = payload(2048, 9);
    let key = key("public");
    app.state.blobs.put(&key, "image/png", chunked(data.clone())).await.expect("put");
    let options = PresignGet {
        ttl: Duration::from_secs(60),
        content_type: "image/png".into(),
        content_disposition: content_disposition("inline", "a b.png"),
    };
    let link = app.state.blobs.presign_get(&key, &options).await.expect("presign");
    assert!(link.url.starts_with(&public), "{}", link.url);
    let response = app.http.get(&link.url).send().await.expect("fetch");
    assert_eq!(response.status(), 200, "{}", link.url);
    assert_eq!(response.bytes().await.expect("body"), data);
    let put = PresignPut { ttl: Duration::from_secs(60), content_type: "image/png".into(), content_length: Some(3) };
    let upload = app.state.blobs.presign_put(&format!("{key}-put"), &put).await.expect("presign put");
    assert!(upload.url.starts_with(&public), "{}", upload.url);
}
