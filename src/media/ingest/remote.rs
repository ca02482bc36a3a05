//! `remote_url` uploads, fetched without becoming an SSRF hole.
//!
//! Every address the service would connect to is checked after DNS resolution (so DNS rebinding does
//! not help) and refused unless it is public: loopback, RFC 1918, link-local (169.254.169.254
//! included), CGNAT, ULA, multicast, unspecified, documentation ranges and IPv4-mapped or -embedding
//! IPv6 are all refused. Literal-IP URLs are checked the same way, every redirect hop (at most 3) is
//! re-checked, proxy variables are ignored, and the whole fetch is bounded by
//! `MEDIA_REMOTE_FETCH_TIMEOUT`. `MEDIA_REMOTE_FETCH_ALLOW_HOSTS` (`host` or `host:port`) opens
//! specific hosts — tests use it for a server on loopback. The body streams through the same
//! pipeline as every other upload.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use url::Url;

use super::ByteStream;
use crate::media::error::MediaError;

/// Most redirects followed.
const MAX_REDIRECTS: usize = 3;

/// A host (optionally with a port) exempt from the address checks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedHost {
    host: String,
    port: Option<u16>,
}

#[derive(Debug, Clone, Default)]
struct Allowlist(Vec<AllowedHost>);

impl Allowlist {
    fn parse(entries: &[String]) -> Self {
        Self(
            entries
                .iter()
                .map(|entry| {
                    // `host`, `host:port`, `[v6]` or `[v6]:port` (a bare IPv6 address has no port).
                    let entry = entry.trim().to_ascii_lowercase();
                    let (host, port) = match entry.rsplit_once(':') {
                        Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                            (host.to_owned(), port.parse::<u16>().ok())
                        }
                        _ => (entry.clone(), None),
                    };
                    AllowedHost { host: host.trim_matches(['[', ']']).to_owned(), port }
                })
                .collect(),
        )
    }

    fn allows(&self, host: &str, port: Option<u16>) -> bool {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        self.0.iter().any(|a| a.host == host && (a.port.is_none() || a.port == port))
    }

    fn allows_any_port(&self, host: &str) -> bool {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        self.0.iter().any(|a| a.host == host)
    }
}

/// A refusal raised inside reqwest (resolver or redirect policy), recognised by [`blocked`].
#[derive(Debug, thiserror::Error)]
#[error("{MARKER}{0}")]
struct Blocked(String);

/// Marks a [`Blocked`] refusal in error text, for when a wrapper hides the type from downcasting.
const MARKER: &str = "[remote fetch refused] ";

/// Whether connecting to `ip` could reach only the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b)))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    let embeds_v4 = ip.to_ipv4_mapped().is_some()
        || (segments[..6] == [0; 6]) // IPv4-compatible and ::, ::1
        || segments[0] == 0x2002 // 6to4
        || (segments[0] == 0x64 && segments[1] == 0xff9b) // NAT64
        || (segments[0] == 0x2001 && segments[1] == 0); // Teredo
    !(embeds_v4
        || ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local
        || (segments[0] & 0xffc0) == 0xfe80 // link-local
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (segments[..4] == [0; 4] && segments[4] == 0xffff && segments[5] == 0) // IPv4-translated
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)) // documentation
}

/// Refuses a URL that is not http(s), or whose literal IP host is not public (unless allowed).
fn check_target(url: &Url, allow: &Allowlist) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("only http and https URLs can be fetched, not {}", url.scheme()));
    }
    let host = url.host_str().ok_or("the URL has no host")?;
    if allow.allows(host, url.port_or_known_default()) {
        return Ok(());
    }
    if allow.allows_any_port(host) {
        // The host is open only on the ports its entries name; the resolver would let its
        // private addresses through, so other ports are refused here.
        return Err(format!("{host} is allowed only on the ports MEDIA_REMOTE_FETCH_ALLOW_HOSTS names"));
    }
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        if !is_public(ip) {
            return Err(format!("{ip} is not a public address"));
        }
    }
    Ok(())
}

/// DNS resolution that drops every non-public address (an allowed host resolves unfiltered).
struct PublicResolver {
    allow: Arc<Allowlist>,
}

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if allow.allows_any_port(&host) {
                return Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs);
            }
            let public: Vec<SocketAddr> = addrs.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(Box::new(Blocked(format!("{host} resolves to no public address")))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The refusal inside a reqwest error, if that is what it is.
fn blocked(err: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(blocked) = current.downcast_ref::<Blocked>() {
            return Some(blocked.0.clone());
        }
        if let Some((_, why)) = current.to_string().split_once(MARKER) {
            return Some(why.to_owned());
        }
        source = current.source();
    }
    None
}

/// A fetched body, ready for the pipeline.
pub struct Fetched {
    /// The server's `Content-Type`.
    pub content_type: Option<String>,
    /// The server's `Content-Length`.
    pub content_length: Option<u64>,
    /// The body.
    pub body: ByteStream,
    /// The last path segment of the final URL, as a filename hint.
    pub filename: Option<String>,
}

/// Fetches `remote_url`s (see the module docs).
#[derive(Clone)]
pub struct RemoteFetcher {
    client: reqwest::Client,
    allow: Arc<Allowlist>,
}

impl RemoteFetcher {
    /// A fetcher with this timeout and allowlist (`host` or `host:port` entries), trusting `ca`
    /// on top of the built-in roots.
    pub fn new(timeout: Duration, allow_hosts: &[String], ca: Option<&crate::config::CaBundle>) -> Self {
        let allow = Arc::new(Allowlist::parse(allow_hosts));
        let policy_allow = allow.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(Blocked(format!("more than {MAX_REDIRECTS} redirects")));
            }
            match check_target(attempt.url(), &policy_allow) {
                Ok(()) => attempt.follow(),
                Err(why) => attempt.error(Blocked(format!("a redirect was refused: {why}"))),
            }
        });
        let client = crate::config::CaBundle::trust_in(ca, reqwest::Client::builder())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(policy)
            .dns_resolver(Arc::new(PublicResolver { allow: allow.clone() }))
            .user_agent(concat!("media-api/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Self { client, allow }
    }

    /// Starts the fetch; the body is streamed by the caller.
    pub async fn fetch(&self, url: &str) -> Result<Fetched, MediaError> {
        let url = Url::parse(url.trim())
            .map_err(|e| MediaError::invalid("invalid_remote_url", format!("the remote URL is not a URL: {e}")))?;
        check_target(&url, &self.allow)
            .map_err(|why| MediaError::RemoteBlocked(format!("remote fetch refused: {why}")))?;
        let response = self.client.get(url).send().await.map_err(|err| match blocked(&err) {
            Some(why) => MediaError::RemoteBlocked(format!("remote fetch refused: {why}")),
            None => MediaError::RemoteFailed(format!("the remote server could not be fetched: {}", describe(&err))),
        })?;
        if !response.status().is_success() {
            return Err(MediaError::RemoteFailed(format!("the remote server answered {}", response.status())));
        }
        let content_type =
            response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let filename = response.url().path_segments().and_then(|mut s| s.next_back()).map(str::to_owned);
        Ok(Fetched {
            content_type,
            content_length: response.content_length(),
            filename: filename.and_then(|f| super::sources::clean_filename(&f)),
            body: response.bytes_stream().map_err(std::io::Error::other).boxed(),
        })
    }
}

fn describe(err: &reqwest::Error) -> &'static str {
    if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else {
        "request failed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass() {
        for blocked in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "2001:db8::1",
            "::127.0.0.1",
        ] {
            assert!(!is_public(blocked.parse().unwrap()), "{blocked} passed");
        }
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001::200e"] {
            assert!(is_public(public.parse().unwrap()), "{public} refused");
        }
    }

    #[test]
    fn literal_targets_are_checked_and_the_allowlist_is_port_precise() {
        let allow = Allowlist::parse(&["127.0.0.1:8080".into(), "files.internal".into()]);
        let url = |u: &str| Url::parse(u).unwrap();
        assert!(check_target(&url("http://127.0.0.1:8080/a.png"), &allow).is_ok());
        assert!(check_target(&url("http://127.0.0.1:9090/a.png"), &allow).is_err());
        assert!(check_target(&url("http://[::1]/"), &allow).is_err());
        assert!(check_target(&url("file:///etc/passwd"), &allow).is_err());
        assert!(check_target(&url("http://files.internal:1234/x"), &allow).is_ok());
        assert!(allow.allows_any_port("files.internal") && !allow.allows_any_port("evil.example"));
        let ports = Allowlist::parse(&["files.internal:8080".into(), "[::1]:9000".into(), "::1".into()]);
        assert!(check_target(&url("http://files.internal:8080/x"), &ports).is_ok());
        assert!(check_target(&url("http://files.internal:6379/x"), &ports).is_err(), "other ports stay closed");
        assert!(ports.allows("[::1]", Some(9000)) && ports.allows("::1", Some(1)), "bracketed and bare IPv6 entries");
    }
}
