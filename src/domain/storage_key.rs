//! Object keys: the shape every key the service creates or accepts has, so that a key can never
//! name a path outside the store (filesystem backend) or smuggle a query (S3).

/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 512;

/// Accepts keys made of `/`-separated segments of `[A-Za-z0-9._-]`, with no empty, `.` or `..`
/// segment and no leading `/`, so a key can never name a path outside the store.
pub fn check_storage_key(key: &str) -> Result<(), &'static str> {
    let invalid = |why: &'static str| Err(why);
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return invalid("length must be 1 to 512 bytes");
    }
    if key.starts_with('/') {
        return invalid("must be relative");
    }
    for segment in key.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return invalid("empty, `.` and `..` segments are not allowed");
        }
        if !segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return invalid("only letters, digits, `.`, `_`, `-` and `/` are allowed");
        }
    }
    Ok(())
}
