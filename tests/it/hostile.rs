//! Hostile clients (issue 15), one bound at a time: each test sends past a bound and checks the
//! clear answer (status, stable code) and that nothing was stored.

use bytes::Bytes;
use reqwest::StatusCode;

use crate::support::app::STACKS;
use crate::support::media::{form_with_file, json_of, media_app, png, MediaApp};

const BOUNDARY: &str = "hostile-boundary-7f3a";

/// Posts `body` as a chunked multipart upload in chunks of `chunk` bytes.
async fn post_form(m: &MediaApp, token: &str, body: Vec<u8>, chunk: usize) -> (StatusCode, serde_json::Value) {
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        body.chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let response = m
        .http()
        .post(m.url("/v1/media"))
        .bearer_auth(token)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    json_of(response).await
}

/// A form whose `file` part (a PNG) comes after `preamble`.
fn form_after(preamble: &[u8], file: &[u8]) -> Vec<u8> {
    form_with_file(BOUNDARY, preamble, file)
}

#[tokio::test]
async fn a_multipart_body_holds_little_before_its_file_part_and_nothing_is_stored_past_it() {
    for stack in STACKS {
        let m = media_app(stack, &[]).await;
        let alice = m.alice();
        let before = m.counts().await;

        // The boundary never comes: a parser looking for it would buffer all of this.
        let (status, body) = post_form(&m, &alice, vec![b'x'; 2 << 20], 16 * 1024).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{stack:?}: {body}");
        assert_eq!(body["code"], "multipart_prefix_too_large", "{stack:?}: {body}");
        assert!(body["error"].as_str().unwrap().contains("before its `file` part"), "{body}");

        // A part's headers never end.
        let mut endless =
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"\r\nX-Pad: ").into_bytes();
        endless.extend(std::iter::repeat_n(b'a', 1 << 20));
        let (status, body) = post_form(&m, &alice, endless, 16 * 1024).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_multipart")), "{body}");
        assert!(body["error"].as_str().unwrap().contains("headers are longer than 8 KiB"), "{body}");

        // Text parts before the file, past the bound.
        let mut chatty = Vec::new();
        for _ in 0..10 {
            chatty.extend_from_slice(
                format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n").as_bytes(),
            );
            chatty.extend(std::iter::repeat_n(b'n', 10_000));
            chatty.extend_from_slice(b"\r\n");
        }
        let (status, body) = post_form(&m, &alice, form_after(&chatty, &png(2000, 1)), 4096).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("multipart_prefix_too_large"))
        );
        assert_eq!(m.counts().await, before, "{stack:?}: something was stored");

        // Within the bound — a 60 KB preamble, then the file in one chunk with its headers — it uploads.
        let image = png(50_000, 2);
        let (status, body) = post_form(&m, &alice, form_after(&vec![b'p'; 60_000], &image), 60_000).await;
        assert_eq!(status, StatusCode::OK, "{stack:?}: {body}");
        assert_eq!(body["bytes"], image.len(), "{stack:?}");
    }
}

#[tokio::test]
async fn a_direct_upload_to_s3_must_name_its_size() {
    for stack in STACKS {
        let m = media_app(stack, &[]).await;
        let before = m.counts().await;
        let request = m.http().post(m.url("/v1/media/prepare-upload")).bearer_auth(m.alice());
        let (status, body) =
            json_of(request.json(&serde_json::json!({"mime_type": "image/png"})).send().await.unwrap()).await;
        match stack {
            // Without a length an S3 PUT URL takes up to 5 GiB until it expires.
            crate::support::app::Stack::PostgresS3 => {
                assert_eq!(
                    (status, body["code"].as_str()),
                    (StatusCode::BAD_REQUEST, Some("bytes_required")),
                    "{body}"
                );
                assert!(body["error"].as_str().unwrap().contains("bytes is required"), "{body}");
                assert_eq!(m.counts().await, before, "a row was written");
            }
            // The service's own upload links enforce MEDIA_MAX_BYTES themselves.
            crate::support::app::Stack::SqliteFs => assert_eq!(status, StatusCode::OK, "{body}"),
        }
    }
}

#[tokio::test]
async fn with_no_admin_role_configured_nobody_deletes_another_users_media() {
    let m = media_app(crate::support::app::Stack::SqliteFs, &[("AUTH_ADMIN_ROLES", "")]).await;
    let (alice, bob) = (m.token("tenant-a", "alice", &[]), m.token("tenant-a", "bob", &["media-admin"]));
    let (status, body) = json_of(m.upload_raw(&alice, "image/png", png(800, 3)).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let path = format!("/v1/media/{}", body["id"].as_str().unwrap());
    // Bob's token even carries the role other deployments use for admins: unset, it grants nothing.
    let (status, refused) = json_of(m.http().delete(m.url(&path)).bearer_auth(&bob).send().await.unwrap()).await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::FORBIDDEN, Some("not_owner")), "{refused}");
    assert_eq!(m.get(&alice, &path).send().await.unwrap().status(), StatusCode::OK, "alice's media is still there");
    let own = m.http().delete(m.url(&path)).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(own.status(), StatusCode::NO_CONTENT, "the uploader deletes her own");
}
