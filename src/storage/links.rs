//! Signed links to the service's own `/v1/blobs/…` route: the filesystem backend's stand-in for S3
//! presigned URLs, and the links of encrypted objects on any backend (DESIGN §9: a presigned URL
//! cannot decrypt, so those are served by the service).
//!
//! A link is `{public base}/v1/blobs/{key}?X-Media-Expires=…&…&X-Media-Signature=…`. The signature is
//! HMAC-SHA256 over the method, key, expiry and every forced or bound parameter, each length-prefixed
//! so no two different links share a signing input. Checks are constant-time (`hmac`'s
//! `verify_slice`), and an expired link is refused even when its signature is right.
//!
//! A link to an encrypted object also carries `X-Media-Object`: what opening it takes (the tenant,
//! the DEK version, the plaintext size — [`LinkedObject`]) sealed in a box under a key derived from
//! the link key and bound to the object key, so the URL handed to a client or a model provider names
//! no tenant. It is signed like every other parameter.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use url::Url;

use super::PresignedRequest;
use crate::crypto::sealed_box::BoxKey;
pub use crate::domain::link_key::LinkKey;

type HmacSha256 = Hmac<Sha256>;

/// Query parameter carrying the expiry (Unix seconds).
pub const EXPIRES_PARAM: &str = "X-Media-Expires";
/// Query parameter carrying the hex signature.
pub const SIGNATURE_PARAM: &str = "X-Media-Signature";
/// Query parameter carrying the sealed [`LinkedObject`] of an encrypted object's link.
pub const OBJECT_PARAM: &str = "X-Media-Object";
/// Purpose of the box key derived from the link key.
const OBJECT_BOX: &[u8] = b"media-api link object v1";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The expiry has passed.
    #[error("this link has expired")]
    Expired,
    /// The signature does not match the link (tampered, or signed by another key).
    #[error("this link's signature is not valid")]
    BadSignature,
}

/// The signed query parameters of a link, as they arrive on the blob route.
#[derive(Debug, Clone, Deserialize)]
pub struct LinkQuery {
    /// Expiry, Unix seconds.
    #[serde(rename = "X-Media-Expires")]
    pub expires: i64,
    /// Forced response type (GET) or required request type (PUT).
    #[serde(rename = "response-content-type", alias = "content-type")]
    pub content_type: String,
    /// Forced response disposition (GET only).
    #[serde(rename = "response-content-disposition", default)]
    pub content_disposition: Option<String>,
    /// Required body length (PUT only).
    #[serde(rename = "content-length", default)]
    pub content_length: Option<u64>,
    /// The sealed [`LinkedObject`] (links to encrypted objects only).
    #[serde(rename = "X-Media-Object", default)]
    pub object: Option<String>,
    /// Hex HMAC.
    #[serde(rename = "X-Media-Signature")]
    pub signature: String,
}

/// What serving an encrypted object through a link takes, named by the link itself (there is no row
/// lookup on the blob route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedObject {
    /// The tenant whose keys sealed the object.
    pub tenant: String,
    /// The DEK version it is sealed under.
    pub dek_version: u32,
    /// Its plaintext size.
    pub size: u64,
}

impl LinkedObject {
    fn to_bytes(&self) -> Vec<u8> {
        [&self.dek_version.to_be_bytes()[..], &self.size.to_be_bytes(), self.tenant.as_bytes()].concat()
    }

    fn parse(bytes: &[u8]) -> Option<Self> {
        let dek_version = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
        let size = u64::from_be_bytes(bytes.get(4..12)?.try_into().ok()?);
        let tenant = String::from_utf8(bytes[12..].to_vec()).ok()?;
        Some(Self { tenant, dek_version, size })
    }
}

/// Signs and verifies links to `{base}/v1/blobs/{key}`.
#[derive(Debug)]
pub struct LinkSigner {
    key: LinkKey,
    boxes: BoxKey,
    base: Url,
}

impl LinkSigner {
    /// A signer for links under `base` (the service's public URL).
    pub fn new(key: LinkKey, base: Url) -> Self {
        let boxes = BoxKey::derive(key.bytes(), OBJECT_BOX);
        Self { key, boxes, base }
    }

    /// A download link forcing the response's type and disposition.
    pub fn sign_get(&self, key: &str, ttl: Duration, content_type: &str, disposition: &str) -> PresignedRequest {
        self.sign_download(key, ttl, content_type, disposition, None)
    }

    /// A download link of an encrypted object (see the module docs), forcing the response's type
    /// and disposition like [`LinkSigner::sign_get`].
    pub fn sign_sealed_get(
        &self,
        key: &str,
        ttl: Duration,
        content_type: &str,
        disposition: &str,
        object: &LinkedObject,
    ) -> PresignedRequest {
        let sealed = B64.encode(self.boxes.seal(key.as_bytes(), &object.to_bytes()));
        self.sign_download(key, ttl, content_type, disposition, Some(sealed))
    }

    fn sign_download(
        &self,
        key: &str,
        ttl: Duration,
        content_type: &str,
        disposition: &str,
        object: Option<String>,
    ) -> PresignedRequest {
        let expires = expiry(ttl);
        let mut query = vec![
            ("response-content-type", content_type.to_owned()),
            ("response-content-disposition", disposition.to_owned()),
        ];
        query.extend(object.map(|object| (OBJECT_PARAM, object)));
        self.finish("GET", key, expires, &mut query, Vec::new())
    }

    /// The object a verified link to `key` names, when it is a link to an encrypted object.
    pub fn linked_object(&self, key: &str, query: &LinkQuery) -> Result<Option<LinkedObject>, LinkError> {
        let Some(sealed) = &query.object else { return Ok(None) };
        let sealed = B64.decode(sealed).map_err(|_| LinkError::BadSignature)?;
        let plain = self.boxes.open(key.as_bytes(), &sealed).map_err(|_| LinkError::BadSignature)?;
        LinkedObject::parse(&plain).map(Some).ok_or(LinkError::BadSignature)
    }

    /// An upload link binding the content type and, when given, the exact length.
    pub fn sign_put(&self, key: &str, ttl: Duration, content_type: &str, length: Option<u64>) -> PresignedRequest {
        let expires = expiry(ttl);
        let mut query = vec![("content-type", content_type.to_owned())];
        let mut headers = vec![("content-type".to_owned(), content_type.to_owned())];
        if let Some(length) = length {
            query.push(("content-length", length.to_string()));
            headers.push(("content-length".to_owned(), length.to_string()));
        }
        self.finish("PUT", key, expires, &mut query, headers)
    }

    /// Checks a link's signature (constant time) and then its expiry.
    pub fn verify(&self, method: &str, key: &str, query: &LinkQuery, now: DateTime<Utc>) -> Result<(), LinkError> {
        let signature = hex::decode(&query.signature).map_err(|_| LinkError::BadSignature)?;
        let bound = match method {
            "GET" => query.content_disposition.clone().unwrap_or_default(),
            _ => query.content_length.map(|l| l.to_string()).unwrap_or_default(),
        };
        self.mac(method, key, query.expires, &query.content_type, &bound, query.object.as_deref())
            .verify_slice(&signature)
            .map_err(|_| LinkError::BadSignature)?;
        if now.timestamp() >= query.expires {
            return Err(LinkError::Expired);
        }
        Ok(())
    }

    fn finish(
        &self,
        method: &'static str,
        key: &str,
        expires: DateTime<Utc>,
        query: &mut Vec<(&'static str, String)>,
        headers: Vec<(String, String)>,
    ) -> PresignedRequest {
        let content_type = query[0].1.clone();
        let bound = query.get(1).map(|(_, v)| v.clone()).unwrap_or_default();
        let object = query.iter().find(|(name, _)| *name == OBJECT_PARAM).map(|(_, v)| v.as_str());
        let mac = self.mac(method, key, expires.timestamp(), &content_type, &bound, object);
        let signature = hex::encode(mac.finalize().into_bytes());
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push("v1").push("blobs").extend(key.split('/'));
        }
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair(EXPIRES_PARAM, &expires.timestamp().to_string());
            for (name, value) in query.iter() {
                pairs.append_pair(name, value);
            }
            pairs.append_pair(SIGNATURE_PARAM, &signature);
        }
        PresignedRequest { url: url.to_string(), method, headers, expires_at: expires }
    }

    /// The HMAC of a link's parts, each length-prefixed; an encrypted object's box is a sixth part
    /// (so plain links sign exactly as they always did, and no plain link shares a signing input
    /// with a sealed one).
    fn mac(
        &self,
        method: &str,
        key: &str,
        expires: i64,
        content_type: &str,
        bound: &str,
        object: Option<&str>,
    ) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(self.key.bytes()).expect("HMAC takes any key length");
        let expires = expires.to_string();
        for part in [method, key, expires.as_str(), content_type, bound].into_iter().chain(object) {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac
    }
}

fn expiry(ttl: Duration) -> DateTime<Utc> {
    let at = Utc::now().timestamp().saturating_add(ttl.as_secs().max(1) as i64);
    Utc.timestamp_opt(at, 0).single().unwrap_or_else(Utc::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> LinkSigner {
        LinkSigner::new(LinkKey::generate(), Url::parse("http://127.0.0.1:8285/").unwrap())
    }

    fn query_of(url: &str) -> LinkQuery {
        let url = Url::parse(url).unwrap();
        serde_urlencoded::from_str(url.query().unwrap()).unwrap()
    }

    #[test]
    fn a_signed_link_verifies_until_it_expires() {
        let signer = signer();
        let link = signer.sign_get("t/obj", Duration::from_secs(60), "image/png", "inline; filename=\"a.png\"");
        assert!(link.url.starts_with("http://127.0.0.1:8285/v1/blobs/t/obj?X-Media-Expires="));
        let query = query_of(&link.url);
        assert_eq!(signer.verify("GET", "t/obj", &query, Utc::now()), Ok(()));
        let later = Utc::now() + chrono::Duration::seconds(61);
        assert_eq!(signer.verify("GET", "t/obj", &query, later), Err(LinkError::Expired));
    }

    #[test]
    fn any_change_to_a_link_breaks_its_signature() {
        let signer = signer();
        let link = signer.sign_put("t/obj", Duration::from_secs(60), "image/png", Some(10));
        let good = query_of(&link.url);
        assert_eq!(signer.verify("PUT", "t/obj", &good, Utc::now()), Ok(()));
        let now = Utc::now();
        let variants = [
            LinkQuery { expires: good.expires + 3600, ..good.clone() },
            LinkQuery { content_type: "text/html".into(), ..good.clone() },
            LinkQuery { content_length: Some(11), ..good.clone() },
            LinkQuery { content_length: None, ..good.clone() },
            LinkQuery { signature: "zz".into(), ..good.clone() },
        ];
        for query in &variants {
            assert_eq!(signer.verify("PUT", "t/obj", query, now), Err(LinkError::BadSignature), "{query:?}");
        }
        assert_eq!(signer.verify("PUT", "t/other", &good, now), Err(LinkError::BadSignature));
        assert_eq!(signer.verify("GET", "t/obj", &good, now), Err(LinkError::BadSignature));
        let other_key = LinkSigner::new(LinkKey::generate(), Url::parse("http://127.0.0.1:8285/").unwrap());
        assert_eq!(other_key.verify("PUT", "t/obj", &good, now), Err(LinkError::BadSignature));
    }

    #[test]
    fn a_sealed_link_names_its_object_without_showing_it_and_only_for_its_key() {
        let signer = signer();
        let object = LinkedObject { tenant: "tenant-secret-name".into(), dek_version: 3, size: 70_000 };
        let link = signer.sign_sealed_get("t/obj", Duration::from_secs(60), "image/png", "inline", &object);
        assert!(!link.url.contains("tenant-secret-name"), "{}", link.url);
        let query = query_of(&link.url);
        assert_eq!(signer.verify("GET", "t/obj", &query, Utc::now()), Ok(()));
        assert_eq!(signer.linked_object("t/obj", &query), Ok(Some(object.clone())));
        // Without its box, or with another link's box, the signature no longer holds.
        let plain = LinkQuery { object: None, ..query.clone() };
        assert_eq!(signer.verify("GET", "t/obj", &plain, Utc::now()), Err(LinkError::BadSignature));
        let other = signer.sign_sealed_get("t/obj", Duration::from_secs(60), "image/png", "inline", &object);
        let swapped = LinkQuery { object: query_of(&other.url).object, ..query.clone() };
        assert_eq!(signer.verify("GET", "t/obj", &swapped, Utc::now()), Err(LinkError::BadSignature));
        // A box opens only for the key it was sealed for.
        assert_eq!(signer.linked_object("t/other", &query), Err(LinkError::BadSignature));
        let plain_link = query_of(&signer.sign_get("t/obj", Duration::from_secs(60), "image/png", "inline").url);
        assert_eq!(signer.linked_object("t/obj", &plain_link), Ok(None));
    }
}
