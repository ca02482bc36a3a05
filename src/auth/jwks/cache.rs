//! The per-issuer [`JwksCache`]: fetched at start, refreshed on a timer and on unknown kids (at
//! most once per [`ON_DEMAND_INTERVAL`](super::ON_DEMAND_INTERVAL)), the last good set kept when a
//! fetch fails; and the bounded fetch of JWKS and discovery documents.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jsonwebtoken::Algorithm;
use serde_json::Value;
use url::Url;

use crate::telemetry::metrics::names;

use super::super::AuthError;
use super::{KeySet, VerifyKey, FETCH_TIMEOUT, MAX_DOCUMENT_BYTES, MAX_UNKNOWN_KIDS, ON_DEMAND_INTERVAL};

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
