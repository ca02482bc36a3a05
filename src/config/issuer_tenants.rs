//! `AUTH_ISSUER_TENANTS`: which tenants each trusted issuer may assert.
//!
//! Syntax: entries separated by `;`, each `<issuer>=<pattern>[,<pattern>…]`, where a pattern is a
//! tenant id (`acme`), a prefix ending in `*` (`beta-*`) or `*` alone (any tenant):
//!
//! ```text
//! AUTH_ISSUER_TENANTS="https://a.example=acme,beta-*;https://b.example=globex"
//! ```
//!
//! The issuer is everything before the entry's **last** `=`: tenant ids never contain `=`, `,`, `;`
//! or spaces, so an issuer URL with a query (`https://id.example/?realm=x`) still reads right. An
//! entry must name an `AUTH_ISSUER` issuer exactly (or `media-api-dev` when the dev issuer is
//! trusted), once; once the setting is given, every `AUTH_ISSUER` issuer needs an entry (write
//! `<issuer>=*` for one that may assert any tenant), so a typo cannot leave an issuer unbound, and
//! the dev issuer without an entry may assert no tenant.

use super::ConfigError;
use crate::config::DEV_ISSUER;
use crate::domain::tenant::TenantPattern;

/// The variable this module parses.
pub const VAR: &str = "AUTH_ISSUER_TENANTS";

/// The tenants each issuer may assert.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssuerTenants {
    entries: Vec<(String, Vec<TenantPattern>)>,
}

impl IssuerTenants {
    /// Parses the setting against the trusted issuers (`issuers` from `AUTH_ISSUER`; `dev_issuer`
    /// when the local dev issuer is trusted too).
    pub fn parse(value: &str, issuers: &[String], dev_issuer: bool) -> Result<Self, ConfigError> {
        let error = |reason: String| ConfigError::new(VAR, reason);
        let mut entries: Vec<(String, Vec<TenantPattern>)> = Vec::new();
        for entry in value.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((issuer, patterns)) = entry.rsplit_once('=') else {
                return Err(error(format!(
                    "entry {entry:?} has no `=`: write <issuer>=<tenant>[,<tenant>…], entries separated by `;`"
                )));
            };
            let issuer = issuer.trim();
            let trusted = issuers.iter().any(|i| i == issuer) || (dev_issuer && issuer == DEV_ISSUER);
            if !trusted {
                return Err(error(format!("{issuer:?} is not one of the issuers in AUTH_ISSUER")));
            }
            if entries.iter().any(|(seen, _)| seen == issuer) {
                return Err(error(format!("{issuer:?} has two entries: list all its tenants in one")));
            }
            let patterns = patterns
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| TenantPattern::parse(p).map_err(|reason| error(format!("{issuer:?}: {reason}"))))
                .collect::<Result<Vec<_>, _>>()?;
            if patterns.is_empty() {
                return Err(error(format!("{issuer:?} lists no tenant (use `*` for any tenant)")));
            }
            entries.push((issuer.to_owned(), patterns));
        }
        if entries.is_empty() {
            return Err(error("is set but has no entry".into()));
        }
        if let Some(unbound) = issuers.iter().find(|i| !entries.iter().any(|(issuer, _)| issuer == *i)) {
            return Err(error(format!(
                "{unbound:?} (in AUTH_ISSUER) has no entry: bind every issuer, with `{unbound}=*` for one that may \
                 assert any tenant"
            )));
        }
        Ok(Self { entries })
    }

    /// Whether `issuer` may assert `tenant`. Without the setting every issuer may; with it, an
    /// issuer without an entry (only the dev issuer can be one) may assert none, so a dev issuer
    /// trusted beside real ones cannot sign for their tenants unless bound (`media-api-dev=…`).
    pub fn allows(&self, issuer: &str, tenant: &str) -> bool {
        match self.entries.iter().find(|(name, _)| name == issuer) {
            Some((_, patterns)) => patterns.iter().any(|p| p.matches(tenant)),
            None => self.entries.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuers(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn entries_bind_issuers_to_exact_tenants_prefixes_or_any() {
        let trusted = issuers(&["https://a.example", "https://b.example/?realm=x", "https://c.example"]);
        let value = " https://a.example = acme, beta-* ; https://b.example/?realm=x=globex;https://c.example=*;";
        let binding = IssuerTenants::parse(value, &trusted, false).unwrap();
        assert!(binding.allows("https://a.example", "acme"));
        assert!(binding.allows("https://a.example", "beta-7"));
        assert!(!binding.allows("https://a.example", "globex"), "a's tenants only");
        assert!(!binding.allows("https://a.example", "acme2"), "exact names are exact");
        assert!(binding.allows("https://b.example/?realm=x", "globex"), "the last `=` splits, so a query is kept");
        assert!(!binding.allows("https://b.example/?realm=x", "acme"));
        assert!(binding.allows("https://c.example", "anyone"));
        assert!(
            !binding.allows(DEV_ISSUER, "anyone"),
            "with the setting, an issuer without an entry (dev) may assert none"
        );
        assert!(IssuerTenants::default().allows(DEV_ISSUER, "anyone"), "without it, every issuer may");
        let dev = IssuerTenants::parse("media-api-dev=dev-*;https://a.example=acme", &trusted[..1], true).unwrap();
        assert!(dev.allows(DEV_ISSUER, "dev-1") && !dev.allows(DEV_ISSUER, "acme"));
    }

    #[test]
    fn bad_syntax_is_refused_naming_the_variable_and_the_problem() {
        let trusted = issuers(&["https://a.example", "https://b.example"]);
        for (value, says) in [
            ("https://a.example", "no `=`"),
            ("https://a.example=acme;https://b.example", "no `=`"),
            ("https://a.example=;https://b.example=x", "lists no tenant"),
            ("https://a.example=ac me;https://b.example=x", "not a tenant id"),
            ("https://a.example=a*b;https://b.example=x", "not a tenant id"),
            ("https://a.example=acme;https://a.example=beta;https://b.example=x", "two entries"),
            ("https://evil.example=acme;https://a.example=a;https://b.example=b", "not one of the issuers"),
            ("media-api-dev=acme;https://a.example=a;https://b.example=b", "not one of the issuers"),
            ("https://a.example=acme", "\"https://b.example\" (in AUTH_ISSUER) has no entry"),
            (" ; ", "no entry"),
        ] {
            let err = IssuerTenants::parse(value, &trusted, false).unwrap_err();
            assert_eq!(err.var, VAR, "{value}");
            assert!(err.to_string().contains(says), "{value}: {err}");
        }
    }
}
