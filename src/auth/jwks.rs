//! Signing keys: a parsed, filtered [`KeySet`] and the per-issuer [`JwksCache`] that keeps one fresh.
//!
//! Parsing drops what must never verify a token: symmetric (`oct`) keys, keys whose `use` is not
//! `sig`, and keys this crate cannot read. Lookup checks that the key's type (and `alg`, when the
//! JWK has one) fits the token's algorithm, so an RS256 header cannot be checked against an EC key.
//!
//! The cache is fetched at start, refreshed every `AUTH_JWKS_REFRESH`, and refreshed when a token
//! names an unknown `kid` — at most once per [`ON_DEMAND_INTERVAL`], by one fetch that concurrent
//! requests wait for (bounded by the fetch timeout). Unknown kids are remembered for that interval,
//! so a flood of made-up kids costs a map lookup each. A failed fetch keeps the last good set.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};
use url::Url;

use crate::telemetry::metrics::names;

use super::AuthError;

/// Shortest time between two refreshes caused by unknown kids.
pub const ON_DEMAND_INTERVAL: Duration = Duration::from_secs(30);
/// Timeout of one JWKS or discovery fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS or discovery document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;
/// Most unknown kids remembered per issuer (the memory is cleared when full).
const MAX_UNKNOWN_KIDS: usize = 4096;

/// The kind of public key, which decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA: RS* and PS*.
    Rsa,
    /// EC on P-256: ES256.
    P256,
    /// EC on P-384: ES384.
    P384,
    /// Ed25519: EdDSA.
    Ed25519,
}

impl KeyKind {
    fn of(jwk: &Jwk) -> Option<Self> {
        match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Some(Self::Rsa),
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => Some(Self::P256),
                EllipticCurve::P384 => Some(Self::P384),
                _ => None,
            },
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => Some(Self::Ed25519),
            _ => None,
        }
    }

    /// Whether a key of this kind may verify `alg`.
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Self::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Self::P256 => alg == ES256,
            Self::P384 => alg == ES384,
            Self::Ed25519 => alg == EdDSA,
        }
    }
}

/// One usable verification key.
pub struct VerifyKey {
    /// Its `kid`, if it has one.
    pub kid: Option<String>,
    /// Its type.
    pub kind: KeyKind,
    /// Its `alg`, when the JWK pins one.
    pub alg: Option<String>,
    /// The key itself.
    pub decoding: DecodingKey,
}

impl VerifyKey {
    fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.as_deref().is_none_or(|pinned| pinned == format!("{alg:?}"))
    }
}

/// A parsed key set.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Arc<VerifyKey>>,
    by_kid: HashMap<String, Arc<VerifyKey>>,
    /// SHA-256 over every usable key (kid, type, alg and key material), in order: two sets with the
    /// same fingerprint verify exactly the same tokens.
    fingerprint: [u8; 32],
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`), dropping every key that must not or cannot verify.
    pub fn parse(document: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(document).map_err(|e| format!("not JSON: {e}"))?;
        let keys = value.get("keys").and_then(Value::as_array).ok_or("no `keys` array")?;
        Ok(Self::from_jwks(keys.iter().filter_map(usable_key)))
    }

    /// A set of already-parsed keys.
    pub fn from_jwks(jwks: impl IntoIterator<Item = Jwk>) -> Self {
        let mut set = Self::default();
        let mut fingerprint = Sha256::new();
        for jwk in jwks {
            let Some(kind) = KeyKind::of(&jwk) else { continue };
            let Ok(decoding) = DecodingKey::from_jwk(&jwk) else { continue };
            fingerprint.update(serde_json::to_vec(&jwk).unwrap_or_default());
            fingerprint.update([0]);
            let key = Arc::new(VerifyKey {
                kid: jwk.common.key_id.clone(),
                kind,
                alg: jwk.common.key_algorithm.map(|a| a.to_string()),
                decoding,
            });
            if let Some(kid) = &key.kid {
                set.by_kid.insert(kid.clone(), key.clone());
            }
            set.keys.push(key);
        }
        set.fingerprint = fingerprint.finalize().into();
        set
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is usable.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key for a token: by `kid`, or — for a token without one — the only key fitting `alg`.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<VerifyKey>, AuthError> {
        let key = match kid {
            Some(kid) => self.by_kid.get(kid).ok_or(AuthError::UnknownKey)?.clone(),
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => return Ok(key.clone()),
                    _ => return Err(AuthError::Header("the token has no kid and the issuer has several keys")),
                }
            }
        };
        if key.fits(alg) {
            Ok(key)
        } else {
            Err(AuthError::KeyMismatch)
        }
    }
}

/// A JWK from a JWKS entry, or `None` when it must not be used for signatures.
fn usable_key(value: &Value) -> Option<Jwk> {
    if value.get("kty").and_then(Value::as_str) == Some("oct") {
        return None;
    }
    let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => Some(jwk),
        Some(_) => None,
    }
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JWKS URL (`AUTH_JWKS_URL`).
    Url(Url),
    /// OIDC discovery: `<issuer>/.well-known/openid-configuration` names the JWKS URL.
    Discovery(String),
}

#[derive(Default)]
struct Freshness {
    last_on_demand: Option<Instant>,
}

/// What the readiness check and `/metrics` learn about one cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStatus {
    /// Usable keys held.
    pub keys: usize,
    /// Whether any fetch ever succeeded (or the set is static).
    pub loaded: bool,
    /// Successful fetches so far.
    pub fetches: u64,
    /// Failed fetches so far.
    pub failures: u64,
}

/// One issuer's signing keys, kept fresh (see the module docs).
pub struct JwksCache {
    name: String,
    source: Option<KeySource>,
    http: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    loaded: std::sync::atomic::AtomicBool,
    jwks_url: RwLock<Option<Url>>,
    refresh: tokio::sync::Mutex<Freshness>,
    generation: AtomicU64,
    unknown_kids: std::sync::Mutex<HashMap<String, Instant>>,
    fetches: AtomicU64,
    failures: AtomicU64,
    on_change: Box<dyn Fn() + Send + Sync>,
}

impl JwksCache {
    /// A cache fetching from `source`; `on_change` runs whenever a refresh changes the key set (any
    /// key added, removed or replaced, with or without a kid).
    pub fn remote(
        name: &str,
        source: KeySource,
        http: reqwest::Client,
        on_change: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        Self::new(name, Some(source), KeySet::default(), http, Box::new(on_change))
    }

    /// A cache over a fixed set (the dev issuer).
    pub fn fixed(name: &str, keys: KeySet, http: reqwest::Client) -> Self {
        let cache = Self::new(name, None, keys, http, Box::new(|| {}));
        cache.loaded.store(true, Ordering::Release);
        cache
    }

    fn new(
        name: &str,
        source: Option<KeySource>,
        keys: KeySet,
        http: reqwest::Client,
        on_change: Box<dyn Fn() + Send + Sync>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            source,
            http,
            keys: RwLock::new(Arc::new(keys)),
            loaded: Default::default(),
            jwks_url: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(Freshness::default()),
            generation: AtomicU64::new(0),
            unknown_kids: std::sync::Mutex::new(HashMap::new()),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            on_change,
        }
    }

    /// The issuer (or issuers) this cache serves, for logs and readiness.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counts and state for readiness and metrics.
    pub fn status(&self) -> CacheStatus {
        CacheStatus {
            keys: self.current().len(),
            loaded: self.loaded.load(Ordering::Acquire),
            fetches: self.fetches.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The key for a token, refreshing once on an unknown kid (see the module docs).
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<VerifyKey>, AuthError> {
        match self.lookup(kid, alg) {
            Err(AuthError::KeysUnavailable) => {
                self.refresh_on_demand().await;
                return self.lookup(kid, alg);
            }
            Err(AuthError::UnknownKey) => {}
            other => return other,
        }
        let Some(kid) = kid else { return Err(AuthError::UnknownKey) };
        if self.recently_unknown(kid) {
            return Err(AuthError::UnknownKey);
        }
        self.refresh_on_demand().await;
        let found = self.lookup(Some(kid), alg);
        if matches!(found, Err(AuthError::UnknownKey)) {
            self.remember_unknown(kid);
        }
        found
    }

    fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<VerifyKey>, AuthError> {
        let keys = self.current();
        if keys.is_empty() && !self.loaded.load(Ordering::Acquire) {
            return Err(AuthError::KeysUnavailable);
        }
        keys.find(kid, alg)
    }

    fn recently_unknown(&self, kid: &str) -> bool {
        let unknown = self.unknown_kids.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        unknown.get(kid).is_some_and(|at| at.elapsed() < ON_DEMAND_INTERVAL)
    }

    fn remember_unknown(&self, kid: &str) {
        let mut unknown = self.unknown_kids.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if unknown.len() >= MAX_UNKNOWN_KIDS {
            unknown.retain(|_, at| at.elapsed() < ON_DEMAND_INTERVAL);
            if unknown.len() >= MAX_UNKNOWN_KIDS {
                unknown.clear();
            }
        }
        unknown.insert(kid.to_owned(), Instant::now());
    }

    /// One shared fetch for every request that met an unknown kid, at most once per interval.
    async fn refresh_on_demand(&self) {
        if self.source.is_none() {
            return;
        }
        let seen = self.generation.load(Ordering::Acquire);
        let Ok(mut freshness) = tokio::time::timeout(FETCH_TIMEOUT * 2, self.refresh.lock()).await else {
            return;
        };
        if self.generation.load(Ordering::Acquire) != seen {
            return; // someone refreshed while this request waited
        }
        if freshness.last_on_demand.is_some_and(|at| at.elapsed() < ON_DEMAND_INTERVAL) {
            return;
        }
        freshness.last_on_demand = Some(Instant::now());
        self.fetch_and_store().await;
    }

    /// Fetches now (start, periodic refresh); failures are logged and keep the last good set.
    pub async fn refresh(&self) {
        if self.source.is_none() {
            return;
        }
        let _guard = self.refresh.lock().await;
        self.fetch_and_store().await;
    }

    async fn fetch_and_store(&self) {
        match self.fetch().await {
            Ok(set) => {
                let changed = self.current().fingerprint != set.fingerprint;
                let count = set.len();
                *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(set);
                self.loaded.store(true, Ordering::Release);
                self.fetches.fetch_add(1, Ordering::Relaxed);
                self.unknown_kids.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
                if changed {
                    (self.on_change)();
                }
                metrics::counter!(names::JWKS_REFRESHES, "issuer" => self.name.clone(), "result" => "ok").increment(1);
                metrics::gauge!(names::JWKS_KEYS, "issuer" => self.name.clone()).set(count as f64);
                tracing::debug!(issuer = %self.name, keys = count, "signing keys refreshed");
            }
            Err(reason) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(names::JWKS_REFRESHES, "issuer" => self.name.clone(), "result" => "error")
                    .increment(1);
                tracing::warn!(issuer = %self.name, error = %reason, "cannot fetch signing keys; keeping the last good set");
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let url = self.jwks_url().await?;
        let document = get_document(&self.http, &url).await?;
        let set = KeySet::parse(&document)?;
        if set.is_empty() {
            return Err(format!("{url} holds no usable signing key"));
        }
        Ok(set)
    }

    async fn jwks_url(&self) -> Result<Url, String> {
        let issuer = match &self.source {
            Some(KeySource::Url(url)) => return Ok(url.clone()),
            Some(KeySource::Discovery(issuer)) => issuer,
            None => return Err("no key source".into()),
        };
        if let Some(url) = self.jwks_url.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
            return Ok(url);
        }
        let url = discover(&self.http, issuer).await?;
        *self.jwks_url.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(url.clone());
        Ok(url)
    }

    /// Refreshes every `interval` until the cache is dropped. The first retry after a failed start
    /// comes after [`ON_DEMAND_INTERVAL`] rather than the full interval.
    pub fn spawn_refresher(self: &Arc<Self>, interval: Duration) {
        if self.source.is_none() {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let wait = match weak.upgrade() {
                    Some(cache) if !cache.loaded.load(Ordering::Acquire) => ON_DEMAND_INTERVAL.min(interval),
                    Some(_) => interval,
                    None => return,
                };
                tokio::time::sleep(wait).await;
                let Some(cache) = weak.upgrade() else { return };
                cache.refresh().await;
            }
        });
    }
}

/// `jwks_uri` from the issuer's discovery document; the document must name the same issuer.
async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Url, String> {
    let base = issuer.trim_end_matches('/');
    let url = Url::parse(&format!("{base}/.well-known/openid-configuration"))
        .map_err(|e| format!("issuer {issuer:?} is not a URL, so its keys cannot be discovered: {e}"))?;
    let document = get_document(http, &url).await?;
    let value: Value = serde_json::from_slice(&document).map_err(|e| format!("{url}: not JSON: {e}"))?;
    if value.get("issuer").and_then(Value::as_str).map(|i| i.trim_end_matches('/')) != Some(base) {
        return Err(format!("{url} names another issuer"));
    }
    let jwks = value.get("jwks_uri").and_then(Value::as_str).ok_or_else(|| format!("{url} has no jwks_uri"))?;
    let jwks = Url::parse(jwks).map_err(|e| format!("{url}: jwks_uri is not a URL: {e}"))?;
    if !matches!(jwks.scheme(), "http" | "https") {
        return Err(format!("{url}: jwks_uri is not an http(s) URL"));
    }
    Ok(jwks)
}

/// GETs a document of at most [`MAX_DOCUMENT_BYTES`].
async fn get_document(http: &reqwest::Client, url: &Url) -> Result<Vec<u8>, String> {
    let response = http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    if response.content_length().is_some_and(|len| len > MAX_DOCUMENT_BYTES as u64) {
        return Err(format!("{url}: the document is larger than {MAX_DOCUMENT_BYTES} bytes"));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("{url}: {e}"))?;
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(format!("{url}: the document is larger than {MAX_DOCUMENT_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The HTTP client for key fetches: rustls, no proxy from the environment, a 5 s timeout and at
/// most 3 redirects; `ca` adds trusted roots (`MEDIA_CA_FILE`).
pub fn http_client(ca: Option<&crate::config::CaBundle>) -> reqwest::Client {
    crate::config::CaBundle::trust_in(ca, reqwest::Client::builder())
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::limited(3))
        .user_agent(concat!("media-api/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ed_jwk(kid: &str, extra: Value) -> Value {
        let mut jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        jwk.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        jwk
    }

    #[test]
    fn symmetric_and_encryption_keys_are_dropped_and_types_must_fit() {
        let doc = json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            ed_jwk("enc", json!({"use": "enc"})),
            ed_jwk("sig", json!({"use": "sig", "alg": "EdDSA"})),
            ed_jwk("pinned-wrong", json!({"alg": "ES256"})),
            {"kty": "EC", "crv": "P-256", "kid": "broken", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "nonsense"},
        ]});
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        assert!(matches!(set.find(Some("hmac"), Algorithm::EdDSA), Err(AuthError::UnknownKey)));
        assert!(matches!(set.find(Some("enc"), Algorithm::EdDSA), Err(AuthError::UnknownKey)));
        assert!(set.find(Some("sig"), Algorithm::EdDSA).is_ok());
        assert!(matches!(set.find(Some("sig"), Algorithm::RS256), Err(AuthError::KeyMismatch)));
        assert!(matches!(set.find(Some("pinned-wrong"), Algorithm::EdDSA), Err(AuthError::KeyMismatch)));
        let only = set.find(None, Algorithm::EdDSA).unwrap();
        assert_eq!(only.kid.as_deref(), Some("sig"), "without a kid, the one fitting key is used");
        let two = json!({"keys": [ed_jwk("a", json!({})), ed_jwk("b", json!({}))]});
        let two = KeySet::parse(two.to_string().as_bytes()).unwrap();
        assert!(matches!(two.find(None, Algorithm::EdDSA), Err(AuthError::Header(_))), "two fitting keys, no kid");
        assert!(KeySet::parse(b"{}").is_err() && KeySet::parse(b"not json").is_err());
    }
}
