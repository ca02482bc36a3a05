//! The network a client address counts as, for every per-client limit (rate buckets, connection
//! caps, audit caps): an IPv4 address as is, an IPv6 address by its /64 (one subscriber's network;
//! a single host can use any address in it, so per-address counting would not limit it), and an
//! IPv4-mapped IPv6 address as the IPv4 address it carries.

use std::net::{IpAddr, Ipv6Addr};

/// The key per-client limits count `ip` under (see the module docs).
pub fn client_network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn ipv6_clients_share_their_slash_64_and_mapped_addresses_count_as_ipv4() {
        assert_eq!(client_network(ip("2001:db8:1:2:aaaa::1")), client_network(ip("2001:db8:1:2:ffff::9")));
        assert_eq!(client_network(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_ne!(client_network(ip("2001:db8:1:2::1")), client_network(ip("2001:db8:1:3::1")));
        assert_eq!(client_network(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_network(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(client_network(ip("192.0.2.7")), client_network(ip("192.0.2.8")));
    }
}
