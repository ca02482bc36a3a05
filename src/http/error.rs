//! The HTTP layer's one error type, [`ApiError`], and how it becomes a response.
//!
//! Every error body is `{"error": "<sentence>", "code": "<stable_snake_case>", "request_id": "…"}`.
//! Handlers return `ApiError`; its `IntoResponse` writes the status, the sentence and the code and
//! marks the response with [`ErrorInfo`], and the [`attach_request_id`] middleware adds the request
//! ID to the body, so errors raised anywhere (handlers, extractors, fallbacks) carry it.
//! Database and storage failures are logged with their details and shown only as a generic sentence.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::db::DbError;
use crate::media::error::{is_timeout, MediaError};
use crate::storage::StorageError;
use crate::telemetry::metrics::names;

/// The request ID header (set or accepted by the request-ID layer, echoed on every response).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Errors a handler can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed.
    #[error("{message}")]
    BadRequest {
        /// Stable code.
        code: &'static str,
        /// What is wrong, for a person.
        message: String,
    },
    /// Nothing here, or nothing this caller may know about: both answer the same.
    #[error("not found")]
    NotFound,
    /// A media ID named in a request (resolve) that the caller's tenant does not have.
    #[error("media {id} was not found")]
    MediaNotFound {
        /// The ID as the caller sent it.
        id: String,
    },
    /// No route for this path.
    #[error("no such endpoint")]
    NoRoute,
    /// The route exists but not with this method.
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// The caller may not do this (signed links that do not verify, missing permission).
    #[error("{message}")]
    Forbidden {
        /// Stable code.
        code: &'static str,
        /// What is wrong, for a person.
        message: String,
    },
    /// The body is larger than allowed.
    #[error("the body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// Too much of a multipart body came before its `file` part (see [`super::form`]).
    #[error(
        "more than {limit} bytes of the multipart body came before its `file` part: the preamble, the part headers \
         and the text parts are limited (the file itself is not); send the file part sooner"
    )]
    FormPrefixTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// A dependency is down or overloaded; retrying later may work.
    #[error("{message}")]
    Unavailable {
        /// Stable code.
        code: &'static str,
        /// What is down, for a person.
        message: String,
    },
    /// The content's type is not accepted, or disagrees with what was declared.
    #[error("{message}")]
    UnsupportedMedia {
        /// Stable code.
        code: &'static str,
        /// What is wrong, for a person.
        message: String,
    },
    /// The request conflicts with the resource's state.
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// What is wrong, for a person.
        message: String,
    },
    /// An upstream server (a `remote_url`) failed.
    #[error("{message}")]
    BadGateway {
        /// Stable code.
        code: &'static str,
        /// What failed, for a person.
        message: String,
    },
    /// The caller (or its IP) sent more requests than its rate limit allows.
    #[error("too many requests; retry in {retry_after} s")]
    RateLimited {
        /// Seconds until a request would be admitted.
        retry_after: u64,
    },
    /// The caller already runs as many uploads as it may (`MEDIA_MAX_UPLOADS_PER_CALLER`).
    #[error("you already have {limit} uploads running; retry when one finishes")]
    TooManyUploads {
        /// The per-caller limit.
        limit: u32,
    },
    /// Every upload slot is taken (`MEDIA_MAX_CONCURRENT_UPLOADS`).
    #[error("the service is busy with other uploads; retry shortly")]
    Busy,
    /// The upload body did not arrive within `MEDIA_UPLOAD_TIMEOUT`.
    #[error("{message}")]
    UploadTimeout {
        /// What happened, for a person.
        message: String,
    },
    /// The request ran past its deadline (`MEDIA_REQUEST_TIMEOUT`).
    #[error("the request took longer than {seconds} s and was stopped")]
    Timeout {
        /// The deadline in seconds.
        seconds: u64,
    },
    /// Stored data failed its integrity check (an encrypted object); nothing of it was served.
    #[error("{message}")]
    Integrity {
        /// What failed, for a person.
        message: String,
    },
    /// Refused by the auth layer (401 with a challenge, 403, or 503).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A storage failure.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A database failure.
    #[error(transparent)]
    Database(#[from] DbError),
}

impl ApiError {
    /// A 400 with a code and a sentence.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest { code, message: message.into() }
    }

    /// A 403 with a code and a sentence.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::Forbidden { code, message: message.into() }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound | Self::NoRoute | Self::MediaNotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::TooLarge { .. } | Self::FormPrefixTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UnsupportedMedia { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            Self::RateLimited { .. } | Self::TooManyUploads { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Busy | Self::Timeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UploadTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Integrity { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Auth(err) => StatusCode::from_u16(err.status()).unwrap_or(StatusCode::UNAUTHORIZED),
            Self::Storage(err) => match err {
                StorageError::NotFound | StorageError::InvalidKey(_) => StatusCode::NOT_FOUND,
                StorageError::InvalidRange { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
                StorageError::Source(_) => StatusCode::BAD_REQUEST,
                StorageError::Backend { .. } => StatusCode::SERVICE_UNAVAILABLE,
            },
            Self::Database(DbError::TenantShredding) => StatusCode::CONFLICT,
            Self::Database(DbError::KeyChanged) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(err) if err.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::Forbidden { code, .. }
            | Self::Unavailable { code, .. }
            | Self::UnsupportedMedia { code, .. }
            | Self::Conflict { code, .. }
            | Self::BadGateway { code, .. } => code,
            Self::NotFound | Self::NoRoute | Self::MediaNotFound { .. } => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TooLarge { .. } => "too_large",
            Self::FormPrefixTooLarge { .. } => "multipart_prefix_too_large",
            Self::RateLimited { .. } => "rate_limited",
            Self::TooManyUploads { .. } => "too_many_uploads",
            Self::Busy => "busy",
            Self::Timeout { .. } => "timeout",
            Self::UploadTimeout { .. } => "upload_timeout",
            Self::Integrity { .. } => "data_integrity",
            Self::Auth(err) => err.code(),
            Self::Storage(err) => err.code(),
            Self::Database(err) => err.code(),
        }
    }

    /// The sentence shown to the caller (never backend details).
    fn public_message(&self) -> String {
        match self {
            Self::Storage(StorageError::NotFound | StorageError::InvalidKey(_)) => "not found".into(),
            Self::Storage(StorageError::Source(_)) => "the upload body could not be read to its end".into(),
            Self::Storage(StorageError::Backend { .. }) => "the blob store is unavailable; try again later".into(),
            Self::Database(err @ (DbError::TenantShredding | DbError::KeyChanged)) => err.to_string(),
            Self::Database(_) if self.status() == StatusCode::SERVICE_UNAVAILABLE => {
                "the database is unavailable; try again later".into()
            }
            Self::Database(DbError::Crypto(_) | DbError::MissingKey { .. }) => {
                "a stored record failed its integrity check and was not returned".into()
            }
            Self::Database(_) => "an internal error occurred".into(),
            other => other.to_string(),
        }
    }
}

impl ApiError {
    /// The `Retry-After` header: the limiter's wait for 429, a short pause for every 503.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after } => Some(*retry_after),
            Self::Busy | Self::TooManyUploads { .. } | Self::Unavailable { code: "busy", .. } => Some(1),
            _ if self.status() == StatusCode::SERVICE_UNAVAILABLE => Some(5),
            _ => None,
        }
    }

    /// The `WWW-Authenticate` header of an auth refusal.
    fn challenge(&self) -> Option<HeaderValue> {
        match self {
            Self::Auth(err) => err.challenge().and_then(|c| HeaderValue::from_str(&c).ok()),
            _ => None,
        }
    }
}

impl From<MediaError> for ApiError {
    fn from(err: MediaError) -> Self {
        let code = err.code();
        let message = err.to_string();
        match err {
            MediaError::TooLarge { limit } => Self::TooLarge { limit },
            MediaError::Type(_) | MediaError::UnacceptedType { .. } => Self::UnsupportedMedia { code, message },
            MediaError::Invalid { code: "not_uploaded", .. } | MediaError::Conflict { .. } => {
                Self::Conflict { code, message }
            }
            MediaError::Interrupted(err) if is_timeout(&err) => Self::UploadTimeout { message: innermost_text(&err) },
            MediaError::Empty
            | MediaError::Invalid { .. }
            | MediaError::Interrupted(_)
            | MediaError::RemoteBlocked(_) => Self::BadRequest { code, message },
            MediaError::RemoteFailed(_) => Self::BadGateway { code, message },
            MediaError::NotFound => Self::NotFound,
            MediaError::MediaNotFound { id } => Self::MediaNotFound { id },
            MediaError::Forbidden { code, message } => Self::Forbidden { code, message },
            MediaError::ObjectIntegrity => Self::Integrity { message },
            MediaError::NoLinks => Self::Unavailable { code, message },
            MediaError::Storage(err) => Self::Storage(err),
            MediaError::Database(err) => Self::Database(err),
        }
    }
}

/// The innermost message of an error chain (the deadline's own sentence).
/// The sentence of the innermost error of a chain (the one that says what happened).
pub(crate) fn innermost_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// What an error response was made of; the request-ID middleware rebuilds the body from it.
#[derive(Debug, Clone)]
pub struct ErrorInfo {
    /// Stable code.
    pub code: &'static str,
    /// Sentence for a person.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, code = self.code(), "request failed");
        }
        match &self {
            Self::Storage(StorageError::Backend { operation, .. }) => {
                metrics::counter!(names::BLOB_ERRORS, "op" => *operation).increment(1);
            }
            Self::Database(DbError::Sqlx(_)) => metrics::counter!(names::DB_ERRORS).increment(1),
            _ => {}
        }
        let info = ErrorInfo { code: self.code(), message: self.public_message() };
        let mut response = (status, error_body(&info, None)).into_response();
        if let Some(challenge) = self.challenge() {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        }
        if let Some(seconds) = self.retry_after() {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response.extensions_mut().insert(info);
        response
    }
}

/// The answer when a handler panicked (a bug): a 500 with a stable code instead of a dropped
/// connection; the panic message goes to the log, never to the client.
pub fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = detail, "a request handler panicked");
    metrics::counter!(names::PANICS).increment(1);
    let info = ErrorInfo { code: "internal", message: "the service failed on this request; it has been logged".into() };
    let mut response = (StatusCode::INTERNAL_SERVER_ERROR, error_body(&info, None)).into_response();
    response.extensions_mut().insert(info);
    response
}

fn error_body(info: &ErrorInfo, request_id: Option<&str>) -> axum::Json<serde_json::Value> {
    axum::Json(json!({ "error": info.message, "code": info.code, "request_id": request_id }))
}

/// Adds the request's ID to every error body made by [`ApiError`].
pub async fn attach_request_id(request: Request, next: Next) -> Response {
    let request_id = request.headers().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let response = next.run(request).await;
    let Some(info) = response.extensions().get::<ErrorInfo>().cloned() else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    let body = serde_json::to_vec(&error_body(&info, request_id.as_deref()).0).unwrap_or_default();
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Response::from_parts(parts, Body::from(body))
}

/// Fallback for unknown paths.
pub async fn no_route() -> ApiError {
    ApiError::NoRoute
}

/// Fallback for known paths with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// `Query<T>` whose rejection is an [`ApiError`] (400 `invalid_query`, JSON like every error).
pub struct ApiQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))
    }
}

/// The `{id}` of a media route; a segment that does not even decode is simply not found (404).
pub struct MediaIdPath(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for MediaIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(id)| Self(id))
            .map_err(|_| ApiError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_a_500_with_a_stable_code_and_no_detail() {
        let response = panicked(Box::new("index 70 is not a char boundary in secret-ish text"));
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "internal");
        assert!(!body.to_string().contains("char boundary"), "{body}");
    }
}
