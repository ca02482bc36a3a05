//! Small response helpers the routes share: JSON written into a buffer sized up front.
//!
//! `axum::Json` starts from a 128-byte buffer and grows it by doubling, so a presign answer (a
//! URL of 500–700 bytes) is copied three times on its way out. [`SizedJson`] takes the size the
//! route expects and writes the body once.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A JSON body written into a buffer of `capacity` bytes (it grows if the guess was short);
/// otherwise the same answer as `axum::Json`.
pub struct SizedJson<T>(pub T, pub usize);

impl<T: Serialize> IntoResponse for SizedJson<T> {
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(self.1);
        match serde_json::to_writer(&mut body, &self.0) {
            Ok(()) => ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response(),
            // What `axum::Json` answers when a value does not serialize.
            Err(_) => axum::Json(self.0).into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn the_body_is_the_value_as_json_whatever_the_capacity() {
        for capacity in [0, 8, 4096] {
            let response =
                SizedJson(serde_json::json!({"url": "https://x/y?a=b&c=%2F", "n": 3}), capacity).into_response();
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(value, serde_json::json!({"n": 3, "url": "https://x/y?a=b&c=%2F"}), "{capacity}");
        }
    }
}
