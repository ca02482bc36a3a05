//! Encrypted objects (`MEDIA_OBJECT_ENCRYPTION=on`, DESIGN §9) on both stacks: no upload path
//! leaves plaintext in the store, downloads and signed links behave as for plain objects (ranges,
//! ETag, forced headers), a tampered object answers an error and never wrong bytes, and turning
//! encryption on for an existing deployment keeps its plain objects readable and deduplicated.

use bytes::Bytes;
use futures::StreamExt;
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::support::app::{random_hex, sha256_hex, Stack, STACKS};
use crate::support::media::{data_url, holds, json_of, marked, media_app, png, MediaApp};

const ON: (&str, &str) = ("MEDIA_OBJECT_ENCRYPTION", "on");
const OFF: (&str, &str) = ("MEDIA_OBJECT_ENCRYPTION", "off");
const SEG: usize = 64 * 1024;

/// Serves `image` at `/pic.png` on a local port; returns the port.
async fn serve_image(image: Vec<u8>) -> u16 {
    let router = axum::Router::new().route(
        "/pic.png",
        axum::routing::get(move || {
            let image = image.clone();
            async move { ([("content-type", "image/png")], image) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    port
}

/// Uploads `image` through one of the upload paths; the answer's id.
async fn upload_by(m: &MediaApp, token: &str, path: &str, image: &[u8], remote_port: u16) -> String {
    let post = || m.http().post(m.url("/v1/media")).bearer_auth(token);
    let part = || reqwest::multipart::Part::bytes(image.to_vec()).file_name("f.png").mime_str("image/png").unwrap();
    let response = match path {
        "raw" => m.upload_raw(token, "image/png", image.to_vec()).await,
        "chunked" => {
            let chunks: Vec<Result<Bytes, std::io::Error>> =
                image.chunks(10_000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
            post().header("content-type", "image/png").body(body).send().await.unwrap()
        }
        "multipart" => post().multipart(reqwest::multipart::Form::new().part("file", part())).send().await.unwrap(),
        "jan_v2" => {
            let form = reqwest::multipart::Form::new().text("user_id", "u").part("file", part());
            m.http().post(m.url("/v1/media/upload")).bearer_auth(token).multipart(form).send().await.unwrap()
        }
        "data_url" => m.upload_data_url(token, &data_url("image/png", image)).await,
        "remote" => {
            let url = format!("http://127.0.0.1:{remote_port}/pic.png");
            post().json(&json!({"source": {"type": "remote_url", "url": url}})).send().await.unwrap()
        }
        "direct_complete" | "direct_read" => {
            let prepared = m.prepare_and_put(token, "d.png", image.to_vec()).await;
            let id = prepared["id"].as_str().unwrap().to_owned();
            if path == "direct_complete" {
                let (status, body) = m.complete(token, &id).await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
            return id;
        }
        other => panic!("no upload path {other}"),
    };
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body["id"].as_str().unwrap().to_owned()
}

const PATHS: [&str; 8] =
    ["raw", "chunked", "multipart", "jan_v2", "data_url", "remote", "direct_complete", "direct_read"];

#[tokio::test]
async fn with_encryption_on_no_upload_path_leaves_plaintext_in_the_store() {
    for stack in STACKS {
        let marker = format!("PLAINTEXT-MARKER-{}", random_hex(8));
        let remote_image = marked(3 * SEG + 7, 1000, &marker);
        let port = serve_image(remote_image.clone()).await;
        let allow = format!("127.0.0.1:{port}");
        let m = media_app(stack, &[ON, ("MEDIA_REMOTE_FETCH_ALLOW_HOSTS", allow.as_str())]).await;
        let alice = m.alice();
        let mut uploaded = Vec::new();
        for (seed, path) in PATHS.iter().enumerate() {
            let image = match *path {
                "remote" => remote_image.clone(),
                _ => marked([3000, 3 * SEG + 7][seed % 2], seed as u64, &marker),
            };
            assert!(holds(&image, marker.as_bytes()));
            uploaded.push((*path, upload_by(&m, &alice, path, &image, port).await, image));
        }
        // Every upload reads back as it was sent, through the service and through its link.
        for (path, id, image) in &uploaded {
            let download = m.get(&alice, &format!("/v1/media/{id}")).send().await.unwrap();
            assert_eq!(download.status(), StatusCode::OK, "{stack:?} {path}");
            assert_eq!(download.bytes().await.unwrap(), Bytes::from(image.clone()), "{stack:?} {path}");
            let row = m.app.state.media.get("tenant-a", id).await.unwrap().unwrap().record;
            assert!(row.object_dek_version.is_some(), "{stack:?} {path}: the row records a plain object");
            assert_eq!(row.size, image.len() as u64, "{stack:?} {path}: the row keeps the plaintext size");
        }
        // What the store holds: one sealed object per upload (no staging copy), none of the marker.
        let stored = m.stored_objects().await;
        assert_eq!(stored.len(), PATHS.len(), "{stack:?}: {:?}", stored.iter().map(|(k, _)| k).collect::<Vec<_>>());
        for (key, bytes) in &stored {
            assert!(bytes.starts_with(b"JMO\x01"), "{stack:?}: {key} is not a sealed object");
            assert!(!holds(bytes, marker.as_bytes()), "{stack:?}: {key} holds plaintext");
        }
        // The same bytes again, by another user: deduplicated into the one sealed object.
        let bob = m.token("tenant-a", "bob", &[]);
        let (_, first_id, first) = &uploaded[0];
        let again = upload_by(&m, &bob, "raw", first, port).await;
        assert_ne!(&again, first_id);
        assert_eq!(m.stored_objects().await.len(), PATHS.len(), "{stack:?}: identical bytes share one object");
        let download = m.get(&bob, &format!("/v1/media/{again}")).send().await.unwrap();
        assert_eq!(download.bytes().await.unwrap(), Bytes::from(first.clone()));
    }
}

#[tokio::test]
async fn with_encryption_off_objects_are_stored_as_sent() {
    for stack in STACKS {
        let m = media_app(stack, &[OFF]).await;
        let marker = format!("PLAINTEXT-MARKER-{}", random_hex(8));
        let image = marked(3000, 1, &marker);
        let id = upload_by(&m, &m.alice(), "raw", &image, 0).await;
        let stored = m.stored_objects().await;
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].1, image, "{stack:?}: stored as sent");
        let row = m.app.state.media.get("tenant-a", &id).await.unwrap().unwrap().record;
        assert_eq!(row.object_dek_version, None);
    }
}

/// Headers of a response as text.
fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

#[tokio::test]
async fn encrypted_objects_keep_ranges_etags_forced_headers_and_links() {
    for stack in STACKS {
        let m = media_app(stack, &[ON]).await;
        let alice = m.alice();
        let image = png(3 * SEG + 3392, 5);
        let id = upload_by(&m, &alice, "raw", &image, 0).await;
        let path = format!("/v1/media/{id}");

        let full = m.get(&alice, &path).send().await.unwrap();
        let etag = format!("\"{}\"", sha256_hex(&image));
        assert_eq!(full.status(), StatusCode::OK);
        assert_eq!(header(&full, "content-length"), image.len().to_string(), "{stack:?}: the plaintext length");
        assert_eq!((header(&full, "etag"), header(&full, "x-content-type-options")), (etag.clone(), "nosniff".into()));
        assert_eq!(header(&full, "content-type"), "image/png");
        assert!(header(&full, "content-disposition").starts_with("inline; filename="));
        assert_eq!(full.bytes().await.unwrap(), Bytes::from(image.clone()));
        let cached = m.get(&alice, &path).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);

        let len = image.len();
        let ranges = [(0, 0), (SEG - 5, SEG + 10), (2 * SEG, len - 1), (len - 10, len - 1), (100, 3 * SEG + 1)];
        for (first, last) in ranges {
            let part = m.get(&alice, &path).header("range", format!("bytes={first}-{last}")).send().await.unwrap();
            assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT, "{stack:?} {first}-{last}");
            assert_eq!(header(&part, "content-range"), format!("bytes {first}-{last}/{len}"));
            assert_eq!(header(&part, "content-length"), (last - first + 1).to_string());
            assert_eq!(part.bytes().await.unwrap(), Bytes::from(image[first..=last].to_vec()), "{first}-{last}");
        }
        let open_end = m.get(&alice, &path).header("range", format!("bytes={}-", len - 5)).send().await.unwrap();
        assert_eq!(open_end.bytes().await.unwrap(), Bytes::from(image[len - 5..].to_vec()));
        let beyond = m.get(&alice, &path).header("range", format!("bytes={len}-")).send().await.unwrap();
        assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{stack:?}");

        // Presign, resolve and the JSON form all give the service's own link, naming no tenant.
        let (_, presigned) = json_of(m.get(&alice, &format!("{path}/presign")).send().await.unwrap()).await;
        let link = presigned["url"].as_str().unwrap().to_owned();
        assert!(link.starts_with(&m.url("/v1/blobs/")) && !link.contains("tenant-a"), "{stack:?}: {link}");
        let (_, resolved) = m.resolve(&alice, &json!({"ids": [id]})).await;
        assert!(resolved["media"][0]["url"].as_str().unwrap().starts_with(&m.url("/v1/blobs/")), "{resolved}");
        let fetched = m.http().get(&link).send().await.unwrap();
        assert_eq!(fetched.status(), StatusCode::OK);
        assert_eq!(
            (header(&fetched, "content-type"), header(&fetched, "x-content-type-options")),
            ("image/png".into(), "nosniff".into())
        );
        assert!(header(&fetched, "content-disposition").starts_with("inline; filename="), "{stack:?}");
        assert_eq!(header(&fetched, "content-length"), len.to_string());
        assert_eq!(fetched.bytes().await.unwrap(), Bytes::from(image.clone()));
        let part = m.http().get(&link).header("range", format!("bytes={}-{}", SEG - 1, SEG)).send().await.unwrap();
        assert_eq!(
            (part.status(), header(&part, "content-range")),
            (StatusCode::PARTIAL_CONTENT, format!("bytes {}-{}/{len}", SEG - 1, SEG))
        );
        assert_eq!(part.bytes().await.unwrap(), Bytes::from(image[SEG - 1..=SEG].to_vec()));
        // Any change to the link breaks its signature.
        for (from, to) in [("X-Media-Object=", "X-Media-Object=A"), ("X-Media-Signature=", "X-Media-Signature=0")] {
            let forged = m.http().get(link.replace(from, to)).send().await.unwrap();
            assert_eq!(forged.status(), StatusCode::FORBIDDEN, "{stack:?}: {from}");
        }
        let (status, meta) =
            json_of(m.get(&alice, &path).header("accept", "application/json").send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(meta["url"].as_str().unwrap().starts_with(&m.url("/v1/blobs/")), "{meta}");
    }
}

#[tokio::test]
async fn an_encrypted_link_stops_working_after_its_ttl() {
    for stack in STACKS {
        // 5 s: the first read comes right after the upload even on a busy machine (1 s did not
        // always); the sleep is never shorter than asked, so the second read is past the TTL.
        let m = media_app(stack, &[ON, ("MEDIA_S3_PRESIGN_TTL", "5s")]).await;
        let (_, uploaded) = json_of(m.upload_raw(&m.alice(), "image/png", png(800, 14)).await).await;
        let url = uploaded["url"].as_str().unwrap().to_owned();
        assert_eq!(m.http().get(&url).send().await.unwrap().status(), StatusCode::OK, "{stack:?}");
        tokio::time::sleep(std::time::Duration::from_millis(6500)).await;
        let (status, body) = json_of(m.http().get(&url).send().await.unwrap()).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::FORBIDDEN, Some("link_expired")), "{stack:?}");
    }
}

/// What a GET answered: its status, and the body bytes that arrived before it ended or failed.
async fn fetch(request: reqwest::RequestBuilder) -> (StatusCode, Vec<u8>, bool) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let mut stream = response.bytes_stream();
    let (mut body, mut failed) = (Vec::new(), false);
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    (status, body, failed)
}

#[tokio::test]
async fn a_tampered_object_answers_an_error_and_never_wrong_bytes() {
    for stack in STACKS {
        let m = media_app(stack, &[ON]).await;
        let alice = m.alice();
        let image = png(3 * SEG + 3392, 8);
        let id = upload_by(&m, &alice, "raw", &image, 0).await;
        let other = upload_by(&m, &alice, "raw", &png(image.len(), 9), 0).await;
        let state = &m.app.state;
        let key_of =
            |id: String| async move { state.media.get("tenant-a", &id).await.unwrap().unwrap().record.storage_key };
        let (key, other_key) = (key_of(id.clone()).await, key_of(other).await);
        let read = |key: String| async move {
            crate::support::app::collect(state.blobs.get(&key, None).await.unwrap().body).await
        };
        let (sealed, foreign) = (read(key.clone()).await, read(other_key).await);
        let (_, presigned) = json_of(m.get(&alice, &format!("/v1/media/{id}/presign")).send().await.unwrap()).await;
        let link = presigned["url"].as_str().unwrap().to_owned();

        let segment = |i: usize| 48 + i * (SEG + 16);
        let flip = |at: usize| {
            let mut bytes = sealed.clone();
            bytes[at] ^= 0x20;
            bytes
        };
        // Which segment each case damages; `None`: the whole object (header, length, key). Damage to
        // the object or to a request's first segment is found before the answer; damage to a later
        // segment once the first ones went out.
        let cases: Vec<(&str, Vec<u8>, Option<usize>)> = vec![
            ("a header byte flipped", flip(20), None),
            ("a byte of the first segment flipped", flip(segment(0) + 1000), Some(0)),
            ("a byte of the third segment flipped", flip(segment(2) + 5), Some(2)),
            ("the last tag byte flipped", flip(sealed.len() - 1), Some(3)),
            ("the second segment dropped", [&sealed[..segment(1)], &sealed[segment(2)..]].concat(), None),
            ("the tail cut", sealed[..sealed.len() - 10].to_vec(), None),
            ("the tail cut at a segment boundary", sealed[..segment(3)].to_vec(), None),
            ("bytes appended", [&sealed[..], b"more"].concat(), None),
            ("another object's bytes", foreign.clone(), None),
        ];
        let download = || m.get(&alice, &format!("/v1/media/{id}"));
        let late = 2 * SEG + 10..2 * SEG + 21;
        for (what, bytes, damaged) in cases {
            state.blobs.put(&key, "image/png", crate::support::app::chunked(Bytes::from(bytes))).await.unwrap();
            let whole = format!("bytes=0-{}", image.len() - 1);
            let requests = [
                ("download", download(), 0),
                ("link", m.http().get(&link), 0),
                ("range", download().header("range", whole), 0),
                // A range inside the third segment: only that segment is fetched.
                ("late range", download().header("range", format!("bytes={}-{}", late.start, late.end - 1)), 2),
            ];
            for (how, request, first_needed) in requests {
                let (status, body, failed) = fetch(request).await;
                let wanted = if how == "late range" { &image[late.clone()] } else { &image[..] };
                match damaged {
                    Some(segment) if segment > first_needed && how != "late range" => {
                        // Headers were sent before the bad segment came: the body is cut off, and
                        // what arrived is a true prefix of the plaintext.
                        assert!(status.is_success() && failed, "{stack:?} {how}, {what}: {status}, cut: {failed}");
                        assert!(body.len() < wanted.len() && wanted.starts_with(&body), "{stack:?} {how}, {what}");
                    }
                    Some(segment) if how == "late range" && segment != first_needed => {
                        // Damage elsewhere does not concern a range that does not need it.
                        assert_eq!((status, body.as_slice()), (StatusCode::PARTIAL_CONTENT, wanted), "{how}, {what}");
                    }
                    _ => {
                        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{stack:?} {how}, {what}");
                        let body: Value = serde_json::from_slice(&body).unwrap();
                        assert_eq!(body["code"], "data_integrity", "{stack:?} {how}, {what}");
                    }
                }
            }
        }
        let metrics = m.http().get(m.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let failures = metrics.lines().find_map(|l| l.strip_prefix("media_object_integrity_failures_total "));
        assert!(failures.and_then(|n| n.parse::<f64>().ok()).is_some_and(|n| n >= 9.0), "{stack:?}: {failures:?}");
        // Put back, the object reads as it was: the errors were the tampering's.
        state.blobs.put(&key, "image/png", crate::support::app::chunked(Bytes::from(sealed.clone()))).await.unwrap();
        let (status, body, failed) = fetch(m.get(&alice, &format!("/v1/media/{id}"))).await;
        assert_eq!((status, failed), (StatusCode::OK, false));
        assert_eq!(body, image);
    }
}

#[tokio::test]
async fn turning_encryption_on_keeps_plain_objects_readable_and_dedup_spans_both() {
    for stack in STACKS {
        let plain_app = media_app(stack, &[OFF]).await;
        let alice = plain_app.alice();
        let before = png(5000, 31);
        let old = upload_by(&plain_app, &alice, "raw", &before, 0).await;

        // The same deployment restarted with encryption on: same database, store, prefix and keys.
        let dir = plain_app.app.dir.path();
        let (data, keys) = (dir.join("data").display().to_string(), dir.join("keys").display().to_string());
        let database = plain_app.app.state.config.database.url.expose_secret().to_owned();
        let mut shared = vec![
            ON,
            ("MEDIA_DATA_DIR", data.as_str()),
            ("MEDIA_KEYS_DIR", keys.as_str()),
            ("MEDIA_STORAGE_PREFIX", plain_app.prefix.as_str()),
        ];
        if stack == Stack::PostgresS3 {
            shared.push(("MEDIA_DATABASE_URL", database.as_str()));
        }
        let sealed_app = media_app(stack, &shared).await;
        let on = |path: &str| sealed_app.url(path);
        let get = |token: &str, path: &str| sealed_app.http().get(on(path)).bearer_auth(token.to_owned());

        let read = get(&alice, &format!("/v1/media/{old}")).send().await.unwrap();
        assert_eq!(read.bytes().await.unwrap(), Bytes::from(before.clone()), "{stack:?}: an old plain object reads");
        // Identical bytes uploaded now join the plain object; new bytes are sealed.
        let bob = plain_app.token("tenant-a", "bob", &[]);
        let post = |token: &str, body: Vec<u8>| {
            sealed_app
                .http()
                .post(on("/v1/media"))
                .bearer_auth(token.to_owned())
                .header("content-type", "image/png")
                .body(body)
                .send()
        };
        let (_, joined) = json_of(post(&bob, before.clone()).await.unwrap()).await;
        let joined = joined["id"].as_str().unwrap().to_owned();
        let row = sealed_app.app.state.media.get("tenant-a", &joined).await.unwrap().unwrap().record;
        assert_eq!(row.object_dek_version, None, "{stack:?}: a row joining a plain object records it as plain");
        let after = png(5000, 32);
        let (_, fresh) = json_of(post(&bob, after.clone()).await.unwrap()).await;
        let fresh = fresh["id"].as_str().unwrap().to_owned();
        let (_, again) = json_of(post(&alice, after.clone()).await.unwrap()).await;
        let again = again["id"].as_str().unwrap().to_owned();
        let row = sealed_app.app.state.media.get("tenant-a", &again).await.unwrap().unwrap().record;
        assert!(row.object_dek_version.is_some(), "{stack:?}: a row joining a sealed object records its version");
        assert_eq!(plain_app.stored_objects().await.len(), 2, "{stack:?}: one plain and one sealed object");
        for (token, id, bytes) in [(&bob, &joined, &before), (&bob, &fresh, &after), (&alice, &again, &after)] {
            let read = get(token, &format!("/v1/media/{id}")).send().await.unwrap();
            assert_eq!(read.bytes().await.unwrap(), Bytes::from(bytes.clone()), "{stack:?} {id}");
        }

        // Turned off again, sealed objects still download through the service.
        let read = plain_app.get(&bob, &format!("/v1/media/{fresh}")).send().await.unwrap();
        assert_eq!(read.bytes().await.unwrap(), Bytes::from(after.clone()), "{stack:?}");
        let (status, presigned) =
            json_of(plain_app.get(&bob, &format!("/v1/media/{fresh}/presign")).send().await.unwrap()).await;
        match stack {
            // The filesystem store signs links anyway.
            Stack::SqliteFs => assert_eq!(status, StatusCode::OK, "{presigned}"),
            // S3 without a link key has no link to give: it says so.
            Stack::PostgresS3 => assert_eq!(
                (status, presigned["code"].as_str()),
                (StatusCode::SERVICE_UNAVAILABLE, Some("links_unavailable"))
            ),
        }
    }
}

#[tokio::test]
async fn a_range_read_fetches_only_its_segments_from_s3() {
    use crate::support::s3_proxy::{Answer, Fault, S3Proxy};
    // A proxy that fails nothing and counts the bytes S3 sends back.
    let proxy = S3Proxy::start(Fault { matches: |_, _| false, times: 0, answer: Answer::SlowDown }).await;
    let m = media_app(Stack::PostgresS3, &[ON, ("MEDIA_S3_ENDPOINT", &proxy.endpoint)]).await;
    let alice = m.alice();
    let image = png(16 << 20, 12);
    let id = upload_by(&m, &alice, "raw", &image, 0).await;
    let (first, len) = (5 * (1 << 20) + 12_345, 1 << 20);
    let before = proxy.served();
    let part = m.get(&alice, &format!("/v1/media/{id}")).header("range", format!("bytes={first}-{}", first + len - 1));
    let part = part.send().await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap(), Bytes::copy_from_slice(&image[first..first + len]));
    let fetched = proxy.served() - before;
    // The range's own bytes, at most two partial segments more (each with its tag), and the header.
    let bound = len as u64 + 2 * (SEG as u64 + 16) + 48;
    assert!(fetched <= bound, "a 1 MiB range of a 16 MiB object fetched {fetched} bytes from S3 (bound {bound})");
    assert!(fetched >= len as u64, "the range itself came from S3: {fetched}");
}
