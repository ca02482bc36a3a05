//! Parsing of the HTTP `Range` request header (one `bytes=` range; RFC 9110 §14.2).

use axum::http::{header, HeaderMap};

use super::error::ApiError;
use crate::storage::ByteRange;

/// The requested range, `None` when there is no `Range` header. Multiple ranges and suffix ranges
/// (`bytes=-500`) are not served: they answer 416 like any unsatisfiable range.
pub fn parse_range(headers: &HeaderMap) -> Result<Option<ByteRange>, ApiError> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let unsatisfiable = || ApiError::Storage(crate::storage::StorageError::InvalidRange { size: 0 });
    let value = value.to_str().map_err(|_| unsatisfiable())?;
    let spec = value.strip_prefix("bytes=").ok_or_else(unsatisfiable)?;
    let (start, end) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let start = start.trim().parse::<u64>().map_err(|_| unsatisfiable())?;
    let end = match end.trim() {
        "" => None,
        end => Some(end.parse::<u64>().map_err(|_| unsatisfiable())?),
    };
    Ok(Some(ByteRange { start, end }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn range(value: &str) -> Result<Option<ByteRange>, ApiError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(value).unwrap());
        parse_range(&headers)
    }

    #[test]
    fn single_ranges_parse_and_others_are_refused() {
        assert_eq!(range("bytes=0-9").unwrap(), Some(ByteRange { start: 0, end: Some(9) }));
        assert_eq!(range("bytes=5-").unwrap(), Some(ByteRange { start: 5, end: None }));
        for bad in ["bytes=-5", "bytes=0-1,4-5", "items=0-1", "bytes=a-b", "bytes=5"] {
            assert!(range(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(parse_range(&HeaderMap::new()).unwrap(), None);
    }
}
