//! Tenant ids: the one rule every tenant id follows, checked before one reaches a query, a key
//! slot or an audit chain (from a token claim, `MEDIA_DEFAULT_TENANT` or an admin command).

/// The rule tenant ids follow, as a sentence for error messages.
pub const TENANT_RULE: &str =
    "a tenant id is 1 to 128 characters of letters, digits, `-`, `_`, `.`, `:` or `@`, starting with a letter or digit";

/// Whether `tenant` is an acceptable tenant id (checked before it reaches a query or a key slot).
pub fn is_valid_tenant(tenant: &str) -> bool {
    let bytes = tenant.as_bytes();
    (1..=128).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
}
