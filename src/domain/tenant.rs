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

/// Which tenants an issuer may assert (`AUTH_ISSUER_TENANTS`): one tenant id, every tenant id
/// starting with a prefix (`beta-*`), or any tenant (`*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantPattern {
    /// Exactly this tenant id.
    Exact(String),
    /// Every tenant id that starts with this (non-empty) prefix.
    Prefix(String),
    /// Any tenant id.
    Any,
}

impl TenantPattern {
    /// Parses `acme`, `beta-*` or `*`; the error says what is wrong, in a sentence.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::Any);
        }
        let (body, prefix) = match text.strip_suffix('*') {
            Some(body) => (body, true),
            None => (text, false),
        };
        // A prefix is checked like a tenant id (`beta-` as much as `beta-1`); `*` only at the end.
        if !is_valid_tenant(body) {
            return Err(format!("{text:?} is not a tenant id, a prefix ending in `*` or `*` alone ({TENANT_RULE})"));
        }
        Ok(if prefix { Self::Prefix(body.to_owned()) } else { Self::Exact(body.to_owned()) })
    }

    /// Whether `tenant` matches.
    pub fn matches(&self, tenant: &str) -> bool {
        match self {
            Self::Exact(id) => id == tenant,
            Self::Prefix(prefix) => tenant.starts_with(prefix.as_str()),
            Self::Any => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_ids_prefixes_or_anything() {
        let exact = TenantPattern::parse("acme").unwrap();
        assert!(exact.matches("acme") && !exact.matches("acme-2") && !exact.matches("acm"));
        let prefix = TenantPattern::parse("beta-*").unwrap();
        assert!(
            prefix.matches("beta-1")
                && prefix.matches("beta-")
                && !prefix.matches("beta")
                && !prefix.matches("xbeta-1")
        );
        assert!(TenantPattern::parse("*").unwrap().matches("anything"));
        for bad in ["", "**", "a*b", "*a", "a b", "-x", "a/b*", "a=b"] {
            assert!(TenantPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
