//! Reading variables: [`Env`] gives typed access (empty counts as unset) and every parse error names
//! the variable; the parsers (Go-style durations, human sizes, booleans) are also what the CLI and
//! the HTTP layer use for the same kinds of value.

use std::collections::HashMap;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::ConfigError;

/// One MiB, the unit most size settings are written in.
pub const MIB: u64 = 1024 * 1024;

/// Typed access to the variables; empty values count as unset.
pub(super) struct Env<'a> {
    pub(super) vars: &'a HashMap<String, String>,
}

impl Env<'_> {
    pub(super) fn get(&self, name: &str) -> Option<String> {
        self.vars.get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    pub(super) fn secret(&self, name: &str) -> Option<SecretString> {
        self.get(name).map(SecretString::from)
    }

    pub(super) fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    }

    pub(super) fn parse<T: std::str::FromStr>(&self, name: &str, expected: &str) -> Result<Option<T>, ConfigError> {
        self.get(name)
            .map(|v| v.parse::<T>().map_err(|_| ConfigError::new(name, format!("expected {expected}, got {v:?}"))))
            .transpose()
    }

    pub(super) fn bool(&self, name: &str) -> Result<Option<bool>, ConfigError> {
        self.get(name)
            .map(|v| parse_bool(&v).ok_or_else(|| ConfigError::new(name, format!("expected true or false, got {v:?}"))))
            .transpose()
    }

    pub(super) fn duration(&self, name: &str) -> Result<Option<Duration>, ConfigError> {
        self.get(name)
            .map(|v| {
                parse_duration(&v).ok_or_else(|| {
                    ConfigError::new(name, format!("expected a duration such as 30s, 5m or 1h30m, got {v:?}"))
                })
            })
            .transpose()
    }

    pub(super) fn size(&self, name: &str) -> Result<Option<u64>, ConfigError> {
        self.get(name)
            .map(|v| {
                parse_size(&v).ok_or_else(|| {
                    ConfigError::new(name, format!("expected a size in bytes such as 20971520 or 20MiB, got {v:?}"))
                })
            })
            .transpose()
    }

    pub(super) fn url(&self, name: &str) -> Result<Option<Url>, ConfigError> {
        self.get(name).map(|v| parse_http_url(name, &v)).transpose()
    }
}

pub(super) fn parse_http_url(name: &str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value)
        .map_err(|e| ConfigError::new(name, format!("expected an http(s) URL, got {value:?} ({e})")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(ConfigError::new(name, format!("expected an http(s) URL, got {value:?}")));
    }
    Ok(url)
}

/// `true/false`, `1/0`, `yes/no`, `on/off`, any case.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Go-style durations (`300ms`, `15s`, `5m`, `1h30m`) or a bare number of seconds.
pub fn parse_duration(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = value;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.checked_mul(60)?),
            "h" => Duration::from_secs(number.checked_mul(3600)?),
            "d" => Duration::from_secs(number.checked_mul(86400)?),
            _ => return None,
        };
        total = total.checked_add(unit)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// A byte count: a bare number, or a number with `KB`, `MB`, `GB` (powers of 1000) or `KiB`, `MiB`,
/// `GiB` (powers of 1024).
pub fn parse_size(value: &str) -> Option<u64> {
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    if split == 0 {
        return None;
    }
    let number: u64 = value[..split].parse().ok()?;
    let factor: u64 = match value[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1000,
        "mb" | "m" => 1000 * 1000,
        "gb" | "g" => 1000 * 1000 * 1000,
        "kib" => 1024,
        "mib" => MIB,
        "gib" => 1024 * MIB,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// Removes user info (passwords) and query strings from a URL for logging.
pub fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) => {
            if !url.username().is_empty() || url.password().is_some() {
                let _ = url.set_username("");
                let _ = url.set_password(None);
            }
            url.set_query(None);
            url.to_string()
        }
        Err(_) => raw.split('?').next().unwrap_or_default().to_owned(),
    }
}
