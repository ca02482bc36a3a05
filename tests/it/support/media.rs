//! The media API as a test drives it: an app with its own storage prefix and a dev token issuer
//! ([`MediaApp`]), counts of what is stored, PNG and data-URL fixtures, JSON answers.

use std::path::Path;
use std::time::Duration;

use media_api::auth::dev_issuer::{DevIssuer, TokenRequest};
use media_api::db::Database;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::app::{payload, random_hex, s3_client, s3_env, spawn_app_with, Stack, TestApp};

/// A multipart body: `prefix` as it is (a preamble, or parts each starting with `\r\n--boundary`),
/// then a `file` part holding `file` (as `f.png`, `image/png`) and the closing boundary.
pub fn form_with_file(boundary: &str, prefix: &[u8], file: &[u8]) -> Vec<u8> {
    let mut body = prefix.to_vec();
    body.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
    body.extend_from_slice(b"Content-Disposition: form-data; name=\"file\"; filename=\"f.png\"\r\n");
    body.extend_from_slice(b"Content-Type: image/png\r\n\r\n");
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// The signature of a PNG plus arbitrary bytes: sniffed as PNG (the service checks the type, not
/// that the image decodes).
pub fn png(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes =
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00".to_vec();
    bytes.extend_from_slice(&payload(len.saturating_sub(bytes.len()), seed));
    bytes.truncate(len);
    bytes
}

pub fn data_url(mime: &str, bytes: &[u8]) -> String {
    use base64::Engine;
    format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

pub struct MediaApp {
    pub app: TestApp,
    pub stack: Stack,
    pub prefix: String,
    issuer: DevIssuer,
}

pub async fn media_app(stack: Stack, extra: &[(&str, &str)]) -> MediaApp {
    let prefix = format!("t{}", random_hex(6));
    let mut vars = vec![("MEDIA_STORAGE_PREFIX", prefix.as_str()), ("AUTH_ADMIN_ROLES", "media-admin")];
    vars.extend_from_slice(extra);
    let app = spawn_app_with(stack, &vars).await;
    let issuer = DevIssuer::load_or_create(&app.dir.path().join("keys")).unwrap();
    MediaApp { app, stack, prefix, issuer }
}

impl MediaApp {
    pub fn token(&self, tenant: &str, subject: &str, roles: &[&str]) -> String {
        self.token_with_scopes(tenant, subject, roles, &[])
    }

    /// A dev-issuer token carrying these roles and these scopes (`scope`, space separated).
    pub fn token_with_scopes(&self, tenant: &str, subject: &str, roles: &[&str], scopes: &[&str]) -> String {
        let owned = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<String>>();
        let (roles, scopes) = (owned(roles), owned(scopes));
        let request = TokenRequest { subject, tenant, roles: &roles, scopes: &scopes, ttl: Duration::from_secs(600) };
        self.issuer.mint(&self.app.state.config.auth, &request).unwrap()
    }

    pub fn alice(&self) -> String {
        self.token("tenant-a", "alice", &[])
    }

    pub fn url(&self, path: &str) -> String {
        self.app.url(path)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.app.http
    }

    pub async fn upload_raw(&self, token: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
        self.http()
            .post(self.url("/v1/media"))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn upload_data_url(&self, token: &str, url: &str) -> reqwest::Response {
        let body = json!({"source": {"type": "data_url", "data_url": url}, "filename": "pic.png", "user_id": "u-hint"});
        self.http().post(self.url("/v1/media")).bearer_auth(token).json(&body).send().await.unwrap()
    }

    /// A raw upload named `filename` (`X-Filename`).
    pub async fn upload_named(&self, token: &str, filename: &str, body: Vec<u8>) -> reqwest::Response {
        let request = self.http().post(self.url("/v1/media")).bearer_auth(token);
        let request = request.header("content-type", "image/png").header("x-filename", filename);
        request.body(body).send().await.unwrap()
    }

    /// A direct upload up to its PUT: `prepare-upload` (PNG, `body`'s length), then the PUT to the
    /// URL it answered; the prepared answer (its `id` is pending until completed or read).
    pub async fn prepare_and_put(&self, token: &str, filename: &str, body: Vec<u8>) -> Value {
        let request = json!({"mime_type": "image/png", "bytes": body.len(), "filename": filename});
        let prepare = self.http().post(self.url("/v1/media/prepare-upload")).bearer_auth(token).json(&request);
        let (status, prepared) = json_of(prepare.send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{prepared}");
        let mut put = self.http().put(prepared["upload_url"].as_str().unwrap()).body(body);
        for (name, value) in prepared["headers"].as_object().unwrap() {
            put = put.header(name.as_str(), value.as_str().unwrap());
        }
        assert!(put.send().await.unwrap().status().is_success(), "the PUT to the upload URL failed");
        prepared
    }

    /// `POST /v1/media/{id}/complete`.
    pub async fn complete(&self, token: &str, id: &str) -> (StatusCode, Value) {
        let request = self.http().post(self.url(&format!("/v1/media/{id}/complete"))).bearer_auth(token);
        json_of(request.send().await.unwrap()).await
    }

    /// `DELETE /v1/media/{id}`: its status and body (empty on success).
    pub async fn delete(&self, token: &str, id: &str) -> (StatusCode, Value) {
        json_of(self.http().delete(self.url(&format!("/v1/media/{id}"))).bearer_auth(token).send().await.unwrap()).await
    }

    /// Entries in the blob journal (objects being written, or whose delete is still to come).
    pub async fn journaled(&self) -> i64 {
        let sql = "SELECT COUNT(*) FROM blob_journal";
        media_api::with_pool!(&self.app.state.db, |pool| sqlx::query_scalar(sql).fetch_one(pool).await).unwrap()
    }

    /// A sweeper pass that takes everything abandoned, whatever its age.
    pub async fn sweep_all(&self) -> media_api::jobs::sweep::SweepReport {
        let ages = media_api::jobs::sweep::SweepAges { presign_ttl: Duration::ZERO, abandoned_after: Duration::ZERO };
        media_api::jobs::sweep::sweep_once(self.app.state.pipeline.removal(), ages).await.unwrap()
    }

    /// An authenticated GET of a service path.
    pub fn get(&self, token: &str, path: &str) -> reqwest::RequestBuilder {
        self.http().get(self.url(path)).bearer_auth(token)
    }

    pub async fn resolve(&self, token: &str, body: &Value) -> (StatusCode, Value) {
        json_of(self.http().post(self.url("/v1/media/resolve")).bearer_auth(token).json(body).send().await.unwrap())
            .await
    }

    /// Media rows in the database, and objects (plus open multipart uploads or temp files) in the store.
    pub async fn counts(&self) -> (i64, usize) {
        let sql = "SELECT COUNT(*) FROM media_objects";
        let rows: i64 = match &self.app.state.db {
            Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
            Database::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        };
        let objects = match self.stack {
            Stack::PostgresS3 => {
                let client = s3_client().await;
                let bucket = s3_env().bucket;
                let listed = client.list_objects_v2().bucket(&bucket).prefix(&self.prefix).send().await.unwrap();
                let uploads =
                    client.list_multipart_uploads().bucket(&bucket).prefix(&self.prefix).send().await.unwrap();
                listed.contents().len() + uploads.uploads().len()
            }
            Stack::SqliteFs => {
                let root = self.app.dir.path().join("data/blobs");
                count_files(&root.join(&self.prefix)) + count_files(&root.join(".tmp"))
            }
        };
        (rows, objects)
    }
}

impl MediaApp {
    /// Every object under the app's prefix as the store holds it, read directly (the S3 API, or the
    /// blob directory and its temporary files): key and bytes.
    pub async fn stored_objects(&self) -> Vec<(String, Vec<u8>)> {
        match self.stack {
            Stack::PostgresS3 => super::fleet::bucket_objects(&self.prefix).await,
            Stack::SqliteFs => {
                let root = self.app.dir.path().join("data/blobs");
                let mut out = Vec::new();
                for dir in [root.join(&self.prefix), root.join(".tmp")] {
                    read_files(&dir, &mut out);
                }
                out
            }
        }
    }
}

fn read_files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            read_files(&path, out);
        } else if !entry.file_name().to_string_lossy().starts_with("ready-") {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                count_files(&e.path())
            } else {
                usize::from(!e.file_name().to_string_lossy().starts_with("ready-"))
            }
        })
        .sum()
}

pub async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A PNG of `len` bytes with `marker` written every 10,000 bytes (so it also straddles segment
/// boundaries) — what must never be found in the store.
pub fn marked(len: usize, seed: u64, marker: &str) -> Vec<u8> {
    let mut image = png(len, seed);
    for at in (100..len.saturating_sub(marker.len())).step_by(10_000) {
        image[at..at + marker.len()].copy_from_slice(marker.as_bytes());
    }
    image
}

/// Whether `needle` occurs in `haystack`.
pub fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}
