//! Where a notice may go.
//!
//! A `webhook_url` comes with a request, so it is the caller's choice of a
//! place for the server to send a POST: without a rule, a way to reach
//! what only the server can (a cloud's metadata service, a private
//! network). So every address a notice's host resolves to is checked
//! before a connection is made, by the resolver the notices' client uses
//! (a name that resolves to a refused address for the check and to another
//! for the connection cannot slip past: there is one resolution), and a
//! host written as an address is checked before the request.
//!
//! - Never: link-local (`169.254.0.0/16`, where the clouds' metadata
//!   services live, and `fe80::/10`), unspecified, multicast and
//!   broadcast addresses.
//! - Only when allowed (`SANDSTORM_WEBHOOK_ALLOW_PRIVATE`): loopback and
//!   private ranges (`10/8`, `172.16/12`, `192.168/16`, `100.64/10`,
//!   `fc00::/7`). `ds serve` allows them by default (it is your own
//!   machine); the serverless doors do not.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Which addresses notices may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AddressPolicy {
    /// Loopback and private ranges too.
    pub allow_private: bool,
}

impl AddressPolicy {
    /// Why a notice may not go to `ip`, if it may not.
    pub(crate) fn refuses(self, ip: IpAddr) -> Option<&'static str> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        if never(ip) {
            return Some("a link-local, unspecified or multicast address");
        }
        if !self.allow_private && private(ip) {
            return Some(
                "a loopback or private address (SANDSTORM_WEBHOOK_ALLOW_PRIVATE=1 allows it)",
            );
        }
        None
    }

    /// The resolver the notices' client uses: the system's, less the
    /// addresses this policy refuses.
    pub(crate) fn resolver(self) -> Arc<dyn Resolve> {
        Arc::new(Guarded(self))
    }
}

fn never(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_link_local() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast() || is_unicast_link_local(v6),
    }
}

fn private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || is_shared(v4),
        IpAddr::V6(v6) => v6.is_loopback() || is_unique_local(v6),
    }
}

/// `100.64.0.0/10`, carrier-grade NAT: private in practice.
fn is_shared(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    a == 100 && (b & 0b1100_0000) == 64
}

/// `fe80::/10`.
fn is_unicast_link_local(v6: Ipv6Addr) -> bool {
    (v6.segments()[0] & 0xffc0) == 0xfe80
}

/// `fc00::/7` (AWS's IPv6 metadata address, `fd00:ec2::254`, is in it).
fn is_unique_local(v6: Ipv6Addr) -> bool {
    (v6.segments()[0] & 0xfe00) == 0xfc00
}

/// The system's resolver, filtered.
#[derive(Debug)]
struct Guarded(AddressPolicy);

impl Resolve for Guarded {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut why = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match policy.refuses(addr.ip()) {
                    Some(reason) => {
                        why = Some(reason);
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty() {
                let message = match why {
                    Some(reason) => format!("{host} resolves only to {reason}"),
                    None => format!("{host} resolves to no address"),
                };
                return Err(message.into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: AddressPolicy = AddressPolicy {
        allow_private: true,
    };
    const CLOSED: AddressPolicy = AddressPolicy {
        allow_private: false,
    };

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn metadata_services_are_refused_whatever_the_setting() {
        for never in [
            "169.254.169.254",
            "169.254.170.2",
            "fe80::1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "::ffff:169.254.169.254",
        ] {
            assert!(OPEN.refuses(ip(never)).is_some(), "{never}");
            assert!(CLOSED.refuses(ip(never)).is_some(), "{never}");
        }
    }

    #[test]
    fn private_ranges_need_the_setting() {
        for private in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(OPEN.refuses(ip(private)), None, "{private}");
            let why = CLOSED.refuses(ip(private)).expect(private);
            assert!(why.contains("SANDSTORM_WEBHOOK_ALLOW_PRIVATE"), "{why}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for public in [
            "93.184.215.14",
            "100.128.0.1",
            "2606:2800:21f:cb07::1",
            "172.32.0.1",
        ] {
            assert_eq!(CLOSED.refuses(ip(public)), None, "{public}");
        }
    }

    #[tokio::test]
    async fn the_resolver_leaves_out_what_is_refused() {
        let name = || -> Name { "localhost".parse().expect("a name") };
        let error = CLOSED
            .resolver()
            .resolve(name())
            .await
            .err()
            .expect("refused");
        assert!(
            error.to_string().contains("localhost resolves only to"),
            "{error}"
        );
        let found: Vec<SocketAddr> = OPEN
            .resolver()
            .resolve(name())
            .await
            .expect("found")
            .collect();
        assert!(found.iter().all(|a| a.ip().is_loopback()), "{found:?}");
    }
}
