//! The multipart reference of `media_load direct-parts`: the bytes an upload sends, straight to S3
//! (Garage) as a multipart upload by the plain SDK, the way a client that knows S3 sends a body
//! whose length it does not know: parts of `MEDIA_LOAD_PART_MIB` MiB (default 5, the service's
//! `MEDIA_S3_PART_SIZE`), at most `MEDIA_LOAD_PARTS_IN_FLIGHT` requests at once (default 2, the
//! service's `MEDIA_S3_UPLOAD_CONCURRENCY`), each part generated while the one before is sent,
//! unsigned payloads and no extra checksums, as the service sends them.
//!
//! What the service's chunked and multipart-form uploads do to S3 is such a multipart upload; this
//! is the same requests without the service, so its ratio to the direct `PutObject` is what
//! multipart itself costs the store, and a form's ratio to it is what the service costs.
//!
//! `put_chunked` is the other reference for a body of unknown length: one `PutObject` whose body is
//! sent with `Transfer-Encoding: chunked` in chunks of 1 MiB and no `Content-Length` (unsigned
//! payload), as the service sends one; Garage takes it and AWS refuses it (411).
//!
//! S3 is found from `MEDIA_TEST_S3_ENDPOINT`, `_REGION`, `_BUCKET`, `_ACCESS_KEY` and
//! `_SECRET_KEY` (`scripts/lib/services.sh` exports them when it starts Garage).

use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::StreamExt;
use tokio::task::JoinSet;

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).map_err(|_| anyhow::anyhow!("{name} is not set (scripts/lib/services.sh start_garage sets it)"))
}

fn env_number(name: &str, default: usize) -> anyhow::Result<usize> {
    std::env::var(name).map_or(Ok(default), |value| Ok(value.parse()?))
}

/// A client of the S3 the environment names, configured as the service configures its own.
pub fn client() -> anyhow::Result<(aws_sdk_s3::Client, String)> {
    use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
    let credentials =
        Credentials::new(env("MEDIA_TEST_S3_ACCESS_KEY")?, env("MEDIA_TEST_S3_SECRET_KEY")?, None, None, "bench");
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(Region::new(env("MEDIA_TEST_S3_REGION")?))
        .endpoint_url(env("MEDIA_TEST_S3_ENDPOINT")?)
        .force_path_style(true)
        .credentials_provider(credentials)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Ok((aws_sdk_s3::Client::from_conf(config), env("MEDIA_TEST_S3_BUCKET")?))
}

/// Uploads `body` (`len` bytes) to `key` as a multipart upload (see the module docs); the number
/// of parts.
pub async fn upload(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    mut body: futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
) -> anyhow::Result<usize> {
    let part_size = env_number("MEDIA_LOAD_PART_MIB", 5)? << 20;
    let in_flight_max = env_number("MEDIA_LOAD_PARTS_IN_FLIGHT", 2)?.max(1);
    let created = client.create_multipart_upload().bucket(bucket).key(key).send().await?;
    let upload_id = created.upload_id().ok_or_else(|| anyhow::anyhow!("no upload id"))?.to_owned();
    let (mut in_flight, mut completed) = (JoinSet::new(), Vec::new());
    let (mut number, mut carry, mut ended) = (0, bytes::BytesMut::new(), false);
    while !ended {
        // The next part, generated while the parts in flight are sent.
        while carry.len() < part_size {
            match body.next().await {
                Some(chunk) => {
                    carry.extend_from_slice(&chunk?);
                    // The generator is always ready: let the parts in flight write (one thread).
                    tokio::task::yield_now().await;
                }
                None => {
                    ended = true;
                    break;
                }
            }
        }
        let part = carry.split_to(part_size.min(carry.len())).freeze();
        ended = ended && carry.is_empty();
        if part.is_empty() {
            break;
        }
        while in_flight.len() >= in_flight_max {
            completed.push(in_flight.join_next().await.expect("a part in flight")??);
        }
        number += 1;
        let request = client.upload_part().bucket(bucket).key(key).upload_id(&upload_id).part_number(number);
        let request = request.content_length(part.len() as i64).body(S3Body::from(part));
        in_flight.spawn(async move {
            let sent = request.customize().disable_payload_signing().send().await?;
            anyhow::Ok(CompletedPart::builder().set_e_tag(sent.e_tag().map(str::to_owned)).part_number(number).build())
        });
    }
    while let Some(part) = in_flight.join_next().await {
        completed.push(part??);
    }
    completed.sort_by_key(|part| part.part_number());
    let parts = completed.len();
    let done = CompletedMultipartUpload::builder().set_parts(Some(completed)).build();
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(done)
        .send()
        .await?;
    Ok(parts)
}

/// Uploads `body` to `key` as one `PutObject` of unknown length (see the module docs).
pub async fn put_chunked(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    body: futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
) -> anyhow::Result<()> {
    // In chunks of 1 MiB, as the service sends them (16 of the generator's 64 KiB).
    let frames = body.ready_chunks(16).map(|chunks| {
        let chunks: std::io::Result<Vec<bytes::Bytes>> = chunks.into_iter().collect();
        chunks.map(|chunks| bytes::Bytes::from(chunks.concat()))
    });
    let body = S3Body::from_body_1_x(Unsized(std::sync::Mutex::new(frames.boxed())));
    let request = client.put_object().bucket(bucket).key(key).body(body);
    request.customize().disable_payload_signing().send().await?;
    Ok(())
}

/// A stream as a request body of unknown length (`Sync`, as the SDK wants, through a mutex only
/// reached through `&mut`).
struct Unsized(std::sync::Mutex<futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>>);

impl http_body::Body for Unsized {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let stream = self.get_mut().0.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        stream.poll_next_unpin(cx).map(|chunk| chunk.map(|chunk| chunk.map(http_body::Frame::data)))
    }
}
