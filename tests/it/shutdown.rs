//! Graceful shutdown: a stop signal lets in-flight requests finish, and `SHUTDOWN_TIMEOUT` bounds
//! how long a request that never ends can hold the process.

use std::time::Duration;

use bytes::Bytes;
use media_api::storage::PresignPut;
use tokio::sync::mpsc;

use crate::support::app::{payload, spawn_app, spawn_app_with, Stack};

async fn upload_link(app: &crate::support::app::TestApp, key: &str) -> String {
    let options = PresignPut { ttl: Duration::from_secs(60), content_type: "image/png".into(), content_length: None };
    app.state.blobs.presign_put(key, &options).await.expect("presign").url
}

fn channel_body() -> (mpsc::Sender<Result<Bytes, std::io::Error>>, reqwest::Body) {
    let (tx, rx) = mpsc::channel(4);
    (tx, reqwest::Body::wrap_stream(tokio_stream_from(rx)))
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn an_upload_in_flight_when_the_stop_signal_arrives_completes() {
    let mut app = spawn_app(Stack::SqliteFs).await;
    let url = upload_link(&app, "shutdown/in-flight").await;
    let (tx, body) = channel_body();
    let request = app.http.put(&url).header("content-type", "image/png").body(body).send();
    let request = tokio::spawn(request);
    tx.send(Ok(payload(1000, 1))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    app.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.send(Ok(payload(1000, 2))).await.unwrap();
    drop(tx);

    let response = request.await.unwrap().expect("the in-flight request is answered");
    assert_eq!(response.status(), 200);
    assert_eq!(app.state.blobs.head("shutdown/in-flight").await.expect("stored").size, 2000);
    app.server.await.unwrap().expect("server stopped cleanly");
    let refused = reqwest::Client::new().get(format!("http://127.0.0.1:{}/healthz", app.port)).send().await;
    assert!(refused.is_err(), "no new connections after shutdown");
}

/// The stuck connection is dropped at the timeout: its request ends with an error and the server
/// stops.
#[tokio::test]
async fn a_request_that_never_ends_is_cut_at_the_shutdown_timeout() {
    let mut app = spawn_app_with(Stack::SqliteFs, &[("SHUTDOWN_TIMEOUT", "1s")]).await;
    let url = upload_link(&app, "shutdown/stuck").await;
    let (tx, body) = channel_body();
    let request = tokio::spawn(app.http.put(&url).header("content-type", "image/png").body(body).send());
    tx.send(Ok(payload(1000, 1))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    app.begin_shutdown();
    let stopped = tokio::time::timeout(Duration::from_secs(30), &mut app.server).await;
    assert!(stopped.is_ok(), "the server kept waiting for a request that never ends");
    let answered = tokio::time::timeout(Duration::from_secs(5), request).await.expect("the client is released");
    assert!(answered.unwrap().is_err(), "the dropped connection does not answer 200");
    drop(tx);
}

/// An upload cut by the shutdown timeout after its multipart upload began leaves no multipart
/// upload, no object and no row: the connection is dropped, the pipeline sees the body fail and
/// aborts, and the server waits for that before it returns.
#[tokio::test]
async fn an_upload_cut_at_the_shutdown_timeout_leaves_no_multipart_upload_or_row() {
    let mut m = crate::support::media::media_app(
        Stack::PostgresS3,
        // Chunked PutObjects off: this body of unknown length goes up as a multipart upload.
        &[("SHUTDOWN_TIMEOUT", "1s"), ("MEDIA_S3_PART_SIZE", "5MiB"), ("MEDIA_S3_CHUNKED_PUT", "false")],
    )
    .await;
    let image = crate::support::media::png(12 * 1024 * 1024, 77);
    let (tx, body) = channel_body();
    let request = m.http().post(m.url("/v1/media")).bearer_auth(m.alice()).header("content-type", "image/png");
    let request = tokio::spawn(request.body(body).send());
    tx.send(Ok(Bytes::copy_from_slice(&image[..6 * 1024 * 1024]))).await.unwrap();
    let client = crate::support::app::s3_client().await;
    let bucket = crate::support::app::s3_env().bucket;
    let mut started = false;
    for _ in 0..100 {
        let uploads = client.list_multipart_uploads().bucket(&bucket).prefix(&m.prefix).send().await.unwrap();
        if !uploads.uploads().is_empty() {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started, "the multipart upload began");

    m.app.begin_shutdown();
    let stopped = tokio::time::timeout(Duration::from_secs(30), &mut m.app.server).await;
    assert!(stopped.is_ok(), "the server stopped");
    drop(tx);
    let _ = request.await;
    let uploads = client.list_multipart_uploads().bucket(&bucket).prefix(&m.prefix).send().await.unwrap();
    assert!(uploads.uploads().is_empty(), "the multipart upload was aborted");
    let objects = client.list_objects_v2().bucket(&bucket).prefix(&m.prefix).send().await.unwrap();
    assert!(objects.contents().is_empty(), "no object");
    // The service closed its pool: count rows through a new one.
    let db = media_api::db::Database::connect(&m.app.state.config.database).await.unwrap();
    let media_api::db::Database::Postgres(pool) = &db else { panic!("postgres stack") };
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM media_objects").fetch_one(pool).await.unwrap();
    assert_eq!(rows, 0, "no row");
}
