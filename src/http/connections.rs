//! The per-client connection cap (`MEDIA_MAX_CONNECTIONS_PER_IP`): how many connections each client
//! network (an IPv4 address, an IPv6 /64 — [`client_network`]) holds open in this process.
//!
//! The accept loop asks [`PerIpConnections::open`] for every accepted connection; past the cap it
//! gets `None` and closes the connection at once, before any TLS handshake or task, so one client's
//! idle connections cannot take every `MEDIA_MAX_CONNECTIONS` slot and starve the others (health
//! probes included). The count is keyed by the TCP peer: behind a proxy every connection has the
//! proxy's address, so there the cap is raised or turned off and the proxy caps per client.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use crate::domain::network::client_network;

/// Open connections per client network; `limit` 0 counts nothing and refuses nothing.
#[derive(Clone)]
pub struct PerIpConnections {
    limit: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIpConnections {
    /// A cap of `limit` connections per client network (0: no cap).
    pub fn new(limit: usize) -> Self {
        Self { limit, open: Arc::default() }
    }

    /// Counts one more connection from `peer`, or `None` when its network holds `limit` already.
    /// The connection counts until the returned guard is dropped.
    pub fn open(&self, peer: IpAddr) -> Option<ConnectionCount> {
        if self.limit == 0 {
            return Some(ConnectionCount { network: None, open: self.open.clone() });
        }
        let network = client_network(peer);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(network).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(ConnectionCount { network: Some(network), open: self.open.clone() })
    }

    /// Connections `peer`'s network holds now.
    pub fn count(&self, peer: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&client_network(peer)).copied().unwrap_or(0)
    }

    /// Client networks holding a connection now (the map's size: it never keeps empty entries).
    pub fn networks(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// One open connection of a client network; counted down when dropped.
pub struct ConnectionCount {
    network: Option<IpAddr>,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        let Some(network) = self.network else { return };
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&network) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&network);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn a_network_gets_its_cap_and_no_more_while_others_are_unaffected() {
        let caps = PerIpConnections::new(3);
        let held: Vec<_> = (0..3).map(|_| caps.open(ip("192.0.2.1")).expect("under the cap")).collect();
        assert!(caps.open(ip("192.0.2.1")).is_none(), "the fourth is refused");
        assert_eq!(caps.count(ip("192.0.2.1")), 3, "a refusal is not counted");
        let other = caps.open(ip("192.0.2.2")).expect("another address has its own count");
        assert_eq!(caps.count(ip("192.0.2.2")), 1);
        drop(other);
        drop(held);
    }

    #[test]
    fn closing_a_connection_frees_its_place_and_empty_entries_go() {
        let caps = PerIpConnections::new(2);
        let first = caps.open(ip("192.0.2.1")).expect("first");
        let second = caps.open(ip("192.0.2.1")).expect("second");
        assert!(caps.open(ip("192.0.2.1")).is_none());
        drop(first);
        let third = caps.open(ip("192.0.2.1")).expect("a closed connection's place is free again");
        drop(second);
        drop(third);
        assert_eq!(caps.count(ip("192.0.2.1")), 0);
        assert_eq!(caps.networks(), 0, "no entry is kept for a network without connections");
    }

    #[test]
    fn ipv6_addresses_of_one_slash_64_share_a_cap_and_mapped_ipv4_counts_as_ipv4() {
        let caps = PerIpConnections::new(2);
        let _a = caps.open(ip("2001:db8:1:2::1")).expect("first");
        let _b = caps.open(ip("2001:db8:1:2:ffff:ffff:ffff:fffe")).expect("second, same /64");
        assert!(caps.open(ip("2001:db8:1:2::99")).is_none(), "a third address of the /64 is refused");
        let _c = caps.open(ip("2001:db8:1:3::1")).expect("the next /64 is another client");
        let _d = caps.open(ip("192.0.2.7")).expect("ipv4");
        let _e = caps.open(ip("::ffff:192.0.2.7")).expect("mapped: the same client, second place");
        assert!(caps.open(ip("192.0.2.7")).is_none(), "the mapped address counted against the IPv4 one");
    }

    #[test]
    fn a_cap_of_zero_refuses_nothing_and_keeps_no_entries() {
        let caps = PerIpConnections::new(0);
        let held: Vec<_> = (0..1000).map(|_| caps.open(ip("192.0.2.1")).expect("no cap")).collect();
        assert_eq!(caps.networks(), 0);
        drop(held);
    }

    #[test]
    fn counts_stay_exact_under_concurrent_opens_and_closes() {
        let caps = PerIpConnections::new(8);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        let held = caps.open(ip("192.0.2.1"));
                        assert!(caps.count(ip("192.0.2.1")) <= 8);
                        drop(held);
                    }
                });
            }
        });
        assert_eq!(caps.count(ip("192.0.2.1")), 0);
        assert_eq!(caps.networks(), 0);
    }
}
