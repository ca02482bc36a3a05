//! Presigned S3 GET URLs: SigV4 query signing written out for the one request shape the service
//! presigns (GET, host the only signed header, `UNSIGNED-PAYLOAD`), with the day's signing key
//! derived once and kept.
//!
//! A presign is on the hot path of `/presign` and resolve, where the general signer cost most of
//! the service's CPU per request (profiled in docs/performance.md: `aws-sigv4` 51 % of the
//! instructions, a third of it the four HMACs deriving the signing key, the same all day). Here a
//! URL costs one SHA-256 of a short canonical request and one HMAC, and a URL asked for again
//! within the same second is the one already signed ([`memo`]). The URL is identical to the one
//! `aws-sigv4` builds for the same inputs and time: the `oracle` test module signs with it and
//! compares.
//!
//! The URL is built from the public endpoint (`MEDIA_S3_PUBLIC_ENDPOINT`, else `MEDIA_S3_ENDPOINT`,
//! else AWS's regional endpoint), path-style or virtual-hosted like the SDK client, with the key
//! encoded as the SDK encodes S3 keys and the forced `response-content-type` and
//! `response-content-disposition` in the signed query. Credentials come from the same provider the
//! SDK uses and are reused until five minutes before they expire. A URL stops working when the
//! credentials that signed it expire, whatever its `X-Amz-Expires` says, so a URL's lifetime is cut
//! to what they have left ([`within_lifetime`]) and the caller is told the lifetime it really has.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_smithy_http::label::{fmt_string as fmt_label, EncodingStrategy};
use aws_smithy_http::query::fmt_string as fmt_query;
use chrono::{DateTime, Datelike, Timelike, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use url::Url;
use zeroize::Zeroizing;

use super::StorageError;

mod memo;
#[cfg(test)]
mod oracle;

/// Credentials are refreshed this long before they expire.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// After a refresh that left credentials inside [`REFRESH_BEFORE`] (a provider that hands out the
/// same short-lived ones until they are nearly gone, or one that failed), the next is tried no
/// sooner than this: presigns in between sign with what is there instead of each asking the
/// provider again, one at a time.
const RETRY_REFRESH_AFTER: Duration = Duration::from_secs(10);
/// The shortest lifetime a URL is handed out with: credentials with less left (a refresh failed)
/// sign nothing rather than a URL that is dead before the client can use it.
const MIN_LIFETIME: Duration = Duration::from_secs(10);

/// Credentials in use and the signing key of one day derived from them.
struct Signing {
    credentials: Credentials,
    /// Counts the credentials a signer has had (the memo tells URLs of different ones apart).
    generation: u64,
    /// `YYYYMMDD` the key was derived for.
    day: String,
    key: Zeroizing<[u8; 32]>,
}

/// What a URL is signed with: the credentials, their generation and the day's key.
struct Current {
    credentials: Credentials,
    generation: u64,
    key: Zeroizing<[u8; 32]>,
}

/// Signs GET URLs for one bucket.
pub struct GetSigner {
    /// `https://host[:port]/[path/]bucket/` (path-style) or `https://bucket.host[:port]/[path/]`.
    base: String,
    /// The `host` header the URL is fetched with: host, and the port unless it is the default.
    host: String,
    /// The URL's path up to the key (what follows the authority in `base`).
    path: String,
    region: String,
    provider: SharedCredentialsProvider,
    signing: Mutex<Option<Signing>>,
    /// URLs signed this second, handed out again for the same inputs.
    memo: memo::Memo,
    /// Held while the provider is asked for new credentials; when it was last asked.
    refresh: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl std::fmt::Debug for GetSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetSigner").field("base", &self.base).field("region", &self.region).finish_non_exhaustive()
    }
}

fn failure(message: String) -> StorageError {
    StorageError::Backend { backend: "s3", operation: "presign", message }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Lower-case hex of a SHA-256 output, on the stack (`hex::encode` builds a `String` char by char).
fn hex_of(digest: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    hex::encode_to_slice(digest, &mut out).expect("64 bytes hold 32 in hex");
    out
}

/// SigV4's date of `now`: `YYYYMMDD`. Digit by digit (it is found before every presign, memoised or
/// not); a year outside 0–9999 is left to `format!`.
fn sigv4_day(now: &DateTime<Utc>) -> String {
    let year = now.year();
    if !(0..=9999).contains(&year) {
        return format!("{:04}{:02}{:02}", year, now.month(), now.day());
    }
    let mut day = String::with_capacity(8);
    for n in [year as u32 / 100, year as u32 % 100, now.month(), now.day()] {
        day.push(char::from(b'0' + (n / 10) as u8));
        day.push(char::from(b'0' + (n % 10) as u8));
    }
    day
}

/// The SigV4 signing key of `day` (`YYYYMMDD`) for S3 in `region`.
fn signing_key(secret: &str, day: &str, region: &str) -> Zeroizing<[u8; 32]> {
    let mut prefixed = Zeroizing::new(String::with_capacity(4 + secret.len()));
    prefixed.push_str("AWS4");
    prefixed.push_str(secret);
    let secret = prefixed;
    let key = Zeroizing::new(hmac(secret.as_bytes(), day.as_bytes()));
    let key = Zeroizing::new(hmac(&*key, region.as_bytes()));
    let key = Zeroizing::new(hmac(&*key, b"s3"));
    Zeroizing::new(hmac(&*key, b"aws4_request"))
}

impl GetSigner {
    /// A signer for `bucket` at `endpoint` (AWS's regional endpoint when `None`).
    pub fn new(
        endpoint: Option<&Url>,
        bucket: &str,
        region: &str,
        path_style: bool,
        provider: SharedCredentialsProvider,
    ) -> Result<Self, StorageError> {
        let endpoint = match endpoint {
            Some(url) => url.clone(),
            None => Url::parse(&format!("https://s3.{region}.amazonaws.com/"))
                .map_err(|e| failure(format!("no usable S3 endpoint for region {region}: {e}")))?,
        };
        let host = endpoint.host_str().ok_or_else(|| failure("the S3 endpoint has no host".into()))?;
        // `Url` drops a scheme's default port, as the signer's `host` header must.
        let port = endpoint.port().map(|p| format!(":{p}")).unwrap_or_default();
        let prefix = endpoint.path().trim_end_matches('/');
        let bucket_label = fmt_label(bucket, EncodingStrategy::Default);
        let (host, path) = if path_style {
            (format!("{host}{port}"), format!("{prefix}/{bucket_label}/"))
        } else {
            (format!("{bucket_label}.{host}{port}"), format!("{prefix}/"))
        };
        let base = format!("{}://{host}{path}", endpoint.scheme());
        let (signing, refresh) = (Mutex::new(None), tokio::sync::Mutex::new(None));
        let memo = memo::Memo::default();
        Ok(Self { base, host, path, region: region.to_owned(), provider, signing, memo, refresh })
    }

    /// The credentials to sign with and the signing key of `day`, deriving it when the day or the
    /// credentials changed. One refresh runs at a time (the others wait for its result rather than
    /// asking the provider too), at most one per [`RETRY_REFRESH_AFTER`] while the credentials it
    /// gave are still usable, and credentials not yet expired keep serving when a refresh fails.
    async fn signing(&self, day: &str) -> Result<Current, StorageError> {
        let fresh = |c: &Credentials| c.expiry().is_none_or(|at| at > SystemTime::now() + REFRESH_BEFORE);
        let usable = |c: &Credentials| c.expiry().is_none_or(|at| at > SystemTime::now());
        if let Some(found) = self.cached(day, fresh) {
            return Ok(found);
        }
        let mut last_refresh = self.refresh.lock().await;
        if let Some(found) = self.cached(day, fresh) {
            return Ok(found);
        }
        if last_refresh.is_some_and(|at| at.elapsed() < RETRY_REFRESH_AFTER) {
            if let Some(found) = self.cached(day, usable) {
                return Ok(found);
            }
        }
        *last_refresh = Some(tokio::time::Instant::now());
        let credentials = match self.provider.provide_credentials().await {
            Ok(credentials) => credentials,
            Err(err) => {
                let message = aws_smithy_types::error::display::DisplayErrorContext(&err).to_string();
                if let Some(found) = self.cached(day, usable) {
                    tracing::warn!(error = %message, "S3 credentials could not be refreshed; signing with the current ones until they expire");
                    return Ok(found);
                }
                return Err(failure(format!("no S3 credentials: {message}")));
            }
        };
        let key = signing_key(credentials.secret_access_key(), day, &self.region);
        let mut guard = self.signing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let generation = guard.as_ref().map_or(0, |s| s.generation + 1);
        *guard = Some(Signing { credentials: credentials.clone(), generation, day: day.to_owned(), key: key.clone() });
        Ok(Current { credentials, generation, key })
    }

    /// The cached credentials if `accept` takes them, with the signing key of `day`.
    fn cached(&self, day: &str, accept: impl Fn(&Credentials) -> bool) -> Option<Current> {
        let mut guard = self.signing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let signing = guard.as_mut().filter(|s| accept(&s.credentials))?;
        if signing.day != day {
            signing.key = signing_key(signing.credentials.secret_access_key(), day, &self.region);
            day.clone_into(&mut signing.day);
        }
        Some(Current {
            credentials: signing.credentials.clone(),
            generation: signing.generation,
            key: signing.key.clone(),
        })
    }

    /// A URL that GETs `key` until `ttl` has passed (or the signing credentials expire, if that
    /// comes first), answering with these forced headers.
    pub async fn get_url(
        &self,
        key: &str,
        content_type: &str,
        content_disposition: &str,
        ttl: Duration,
    ) -> Result<SignedUrl, StorageError> {
        self.get_url_at(key, content_type, content_disposition, ttl, Utc::now()).await
    }

    async fn get_url_at(
        &self,
        key: &str,
        content_type: &str,
        content_disposition: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<SignedUrl, StorageError> {
        let day = sigv4_day(&now);
        let Current { credentials, generation, key: signing_key } = self.signing(&day).await?;
        let asked = memo::Inputs { second: now.timestamp(), generation, key, content_type, content_disposition, ttl };
        // Before the memo: credentials too close to their end sign nothing, memoised or not.
        let ttl = within_lifetime(ttl, &credentials, now.into())?;
        let slot = self.memo.slot(&asked);
        if let Some(signed) = self.memo.get(slot, &asked) {
            return Ok(signed);
        }
        let stamp = format!("{day}T{:02}{:02}{:02}Z", now.hour(), now.minute(), now.second());
        let key = fmt_label(key, EncodingStrategy::Greedy);

        // The URL up to its signature: the base, the key and every query parameter encoded, in the
        // canonical (sorted) order the signature covers. Written once into a string sized for the
        // whole URL; the canonical request is hashed from its pieces.
        let token = credentials.session_token().map(fmt_query);
        let access_key = fmt_query(credentials.access_key_id());
        let (disposition, content_type) = (fmt_query(content_disposition), fmt_query(content_type));
        let expires = ttl.as_secs();
        let mut url = String::with_capacity(
            self.base.len()
                + key.len()
                + 320
                + access_key.len()
                + disposition.len()
                + content_type.len()
                + token.as_ref().map_or(0, |t| "&X-Amz-Security-Token=".len() + t.len()),
        );
        url.push_str(&self.base);
        url.push_str(&key);
        url.push('?');
        let query_start = url.len();
        // Names in byte order: `X-Amz-Security-Token` sorts before `X-Amz-SignedHeaders`, and
        // upper case before lower (`X…` < `response-…` < `x-id`).
        let _ = write!(
            url,
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={access_key}%2F{day}%2F{region}%2Fs3%2Faws4_request\
             &X-Amz-Date={stamp}&X-Amz-Expires={expires}",
            region = fmt_query(&self.region),
        );
        if let Some(token) = &token {
            let _ = write!(url, "&X-Amz-Security-Token={token}");
        }
        let _ = write!(
            url,
            "&X-Amz-SignedHeaders=host&response-content-disposition={disposition}\
             &response-content-type={content_type}&x-id=GetObject"
        );

        let mut canonical = Sha256::new();
        for piece in ["GET\n", &self.path, &key, "\n", &url[query_start..], "\nhost:", &self.host] {
            canonical.update(piece.as_bytes());
        }
        canonical.update(b"\n\nhost\nUNSIGNED-PAYLOAD");
        let mut to_sign = <Hmac<Sha256> as Mac>::new_from_slice(&*signing_key).expect("HMAC takes keys of any length");
        for piece in ["AWS4-HMAC-SHA256\n", &stamp, "\n", &day, "/", &self.region, "/s3/aws4_request\n"] {
            to_sign.update(piece.as_bytes());
        }
        to_sign.update(&hex_of(&canonical.finalize().into()));
        url.push_str("&X-Amz-Signature=");
        url.push_str(std::str::from_utf8(&hex_of(&to_sign.finalize().into_bytes().into())).expect("hex is ASCII"));
        // The URL's own end: its signing time (whole seconds, as `X-Amz-Date`) plus `X-Amz-Expires`.
        let signed_at = now.with_nanosecond(0).unwrap_or(now);
        let expires_at = signed_at + chrono::Duration::seconds(ttl.as_secs() as i64);
        let signed = SignedUrl { url, ttl, expires_at };
        self.memo.put(slot, &asked, &signed);
        Ok(signed)
    }

    /// The credentials presigned URLs are signed with now and `ttl` cut to what they have left (see
    /// [`within_lifetime`]): for URLs another signer (the SDK's, for PUT) makes, which must sign
    /// with exactly these credentials for the cut to hold.
    pub async fn credentials_for(&self, ttl: Duration) -> Result<(Credentials, Duration), StorageError> {
        let now = Utc::now();
        let day = sigv4_day(&now);
        let Current { credentials, .. } = self.signing(&day).await?;
        let ttl = within_lifetime(ttl, &credentials, now.into())?;
        Ok((credentials, ttl))
    }
}

/// A presigned URL and how long it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedUrl {
    /// The URL, signature included.
    pub url: String,
    /// Its lifetime from the signing time: the `X-Amz-Expires` it carries.
    pub ttl: Duration,
    /// When it stops working (the signing time in whole seconds plus `ttl`).
    pub expires_at: DateTime<Utc>,
}

/// `ttl`, cut to the whole seconds the signing `credentials` have left at `now`: temporary
/// credentials (STS, an instance role) sign URLs that stop working when they expire, so a longer
/// lifetime would be a promise the URL cannot keep. Credentials without an expiry leave `ttl` as it
/// is. Less than [`MIN_LIFETIME`] left (a refresh failed) is an error: no URL is better than one that
/// dies on the way to the client.
fn within_lifetime(ttl: Duration, credentials: &Credentials, now: SystemTime) -> Result<Duration, StorageError> {
    let Some(expiry) = credentials.expiry() else {
        return Ok(ttl);
    };
    let left = Duration::from_secs(expiry.duration_since(now).unwrap_or_default().as_secs());
    if left < MIN_LIFETIME.min(ttl) {
        return Err(failure(format!("the S3 credentials have {}s left; no URL is signed with them", left.as_secs())));
    }
    Ok(ttl.min(left))
}

#[cfg(test)]
mod tests;
