//! Which IP addresses are public: the only ones a sandbox may reach, unless
//! the operator opened more ([`openings`](super::openings)).
//!
//! The threat is a sandbox that reaches what the host can reach: the cloud
//! metadata endpoint (169.254.169.254), services on the host's loopback,
//! the operator's private network. So every address the proxy is about to
//! connect to is classified first, and only a public one passes. The
//! classification is a table of the IANA special-purpose ranges, IPv4 and
//! IPv6, and it looks inside the IPv6 forms that carry an IPv4 address
//! (`::ffff:127.0.0.1`, 6to4, NAT64), so a private IPv4 address cannot be
//! smuggled in IPv6 clothing. For IPv6 the rule is narrower still: only
//! global unicast (`2000::/3`) is public, so a range IANA assigns tomorrow
//! is refused until this table learns about it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not public: the kind of address and its range, and
/// the IPv6 form it was wrapped in when it is an embedded IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Special {
    /// What the range is for, e.g. `private address`.
    pub(crate) kind: &'static str,
    /// The range, e.g. `10.0.0.0/8`.
    pub(crate) range: &'static str,
    /// The IPv6 form that carried this IPv4 address and its range, e.g.
    /// `("6to4", "2002::/16")`.
    pub(crate) inside: Option<(&'static str, &'static str)>,
}

impl fmt::Display for Special {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.kind, self.range)?;
        if let Some((form, range)) = self.inside {
            write!(f, " in {form} form ({range})")?;
        }
        Ok(())
    }
}

/// One special-purpose IPv4 range.
struct V4Range {
    net: Ipv4Addr,
    len: u8,
    kind: &'static str,
    range: &'static str,
}

const fn v4(net: Ipv4Addr, len: u8, kind: &'static str, range: &'static str) -> V4Range {
    V4Range {
        net,
        len,
        kind,
        range,
    }
}

/// IPv4 ranges that are not public, first match wins (IANA's IPv4
/// special-purpose registry, without the few entries that are globally
/// reachable anycast services).
const V4_SPECIAL: &[V4Range] = &[
    v4(
        Ipv4Addr::UNSPECIFIED,
        32,
        "unspecified address",
        "0.0.0.0/32",
    ),
    v4(
        Ipv4Addr::new(0, 0, 0, 0),
        8,
        "this-network address",
        "0.0.0.0/8",
    ),
    v4(
        Ipv4Addr::new(10, 0, 0, 0),
        8,
        "private address",
        "10.0.0.0/8",
    ),
    v4(
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "carrier-grade NAT address",
        "100.64.0.0/10",
    ),
    v4(
        Ipv4Addr::new(127, 0, 0, 0),
        8,
        "loopback address",
        "127.0.0.0/8",
    ),
    v4(
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "link-local address (cloud metadata lives here)",
        "169.254.0.0/16",
    ),
    v4(
        Ipv4Addr::new(172, 16, 0, 0),
        12,
        "private address",
        "172.16.0.0/12",
    ),
    v4(
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "IETF protocol assignment",
        "192.0.0.0/24",
    ),
    v4(
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        "documentation address",
        "192.0.2.0/24",
    ),
    v4(
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "deprecated 6to4 relay address",
        "192.88.99.0/24",
    ),
    v4(
        Ipv4Addr::new(192, 168, 0, 0),
        16,
        "private address",
        "192.168.0.0/16",
    ),
    v4(
        Ipv4Addr::new(198, 18, 0, 0),
        15,
        "benchmarking address",
        "198.18.0.0/15",
    ),
    v4(
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation address",
        "198.51.100.0/24",
    ),
    v4(
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "documentation address",
        "203.0.113.0/24",
    ),
    v4(
        Ipv4Addr::new(224, 0, 0, 0),
        4,
        "multicast address",
        "224.0.0.0/4",
    ),
    v4(
        Ipv4Addr::BROADCAST,
        32,
        "broadcast address",
        "255.255.255.255/32",
    ),
    v4(
        Ipv4Addr::new(240, 0, 0, 0),
        4,
        "reserved address",
        "240.0.0.0/4",
    ),
];

/// What to do with an address in a special IPv6 range.
#[derive(Clone, Copy)]
enum V6Rule {
    /// Refuse it.
    Refuse,
    /// It carries an IPv4 address, which decides: the function finds it,
    /// and the name is the form's, for messages.
    Embeds(fn(Ipv6Addr) -> Ipv4Addr, &'static str),
}

/// One special-purpose IPv6 range.
struct V6Range {
    net: Ipv6Addr,
    len: u8,
    kind: &'static str,
    range: &'static str,
    rule: V6Rule,
}

const fn v6(
    net: Ipv6Addr,
    len: u8,
    kind: &'static str,
    range: &'static str,
    rule: V6Rule,
) -> V6Range {
    V6Range {
        net,
        len,
        kind,
        range,
        rule,
    }
}

/// The low 32 bits: where IPv4-mapped and NAT64 addresses keep theirs.
fn low_v4(ip: Ipv6Addr) -> Ipv4Addr {
    let [.., a, b, c, d] = ip.octets();
    Ipv4Addr::new(a, b, c, d)
}

/// Bits 16 to 48: where a 6to4 address keeps its IPv4 address.
fn six_to_four_v4(ip: Ipv6Addr) -> Ipv4Addr {
    let [_, _, a, b, c, d, ..] = ip.octets();
    Ipv4Addr::new(a, b, c, d)
}

/// IPv6 ranges inside or outside `2000::/3` that need a rule, first match
/// wins; whatever is outside `2000::/3` and not listed is refused.
///
/// Teredo (`2001::/32`) is refused whole rather than decoded: it carries a
/// server and an obfuscated client IPv4 address, and no sandbox needs it.
const V6_SPECIAL: &[V6Range] = &[
    v6(
        Ipv6Addr::UNSPECIFIED,
        128,
        "unspecified address",
        "::/128",
        V6Rule::Refuse,
    ),
    v6(
        Ipv6Addr::LOCALHOST,
        128,
        "loopback address",
        "::1/128",
        V6Rule::Refuse,
    ),
    v6(
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        "IPv4-mapped address",
        "::ffff:0:0/96",
        V6Rule::Embeds(low_v4, "IPv4-mapped"),
    ),
    v6(
        Ipv6Addr::UNSPECIFIED,
        96,
        "deprecated IPv4-compatible address",
        "::/96",
        V6Rule::Refuse,
    ),
    v6(
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        "NAT64 address",
        "64:ff9b::/96",
        V6Rule::Embeds(low_v4, "NAT64"),
    ),
    v6(
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use NAT64 address",
        "64:ff9b:1::/48",
        V6Rule::Refuse,
    ),
    v6(
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only address",
        "100::/64",
        V6Rule::Refuse,
    ),
    v6(
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        32,
        "Teredo address",
        "2001::/32",
        V6Rule::Refuse,
    ),
    v6(
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignment",
        "2001::/23",
        V6Rule::Refuse,
    ),
    v6(
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation address",
        "2001:db8::/32",
        V6Rule::Refuse,
    ),
    v6(
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        "6to4 address",
        "2002::/16",
        V6Rule::Embeds(six_to_four_v4, "6to4"),
    ),
    v6(
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation address",
        "3fff::/20",
        V6Rule::Refuse,
    ),
    v6(
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "segment-routing address",
        "5f00::/16",
        V6Rule::Refuse,
    ),
    v6(
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique local (private) address",
        "fc00::/7",
        V6Rule::Refuse,
    ),
    v6(
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        "link-local address",
        "fe80::/10",
        V6Rule::Refuse,
    ),
    v6(
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "deprecated site-local address",
        "fec0::/10",
        V6Rule::Refuse,
    ),
    v6(
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        "multicast address",
        "ff00::/8",
        V6Rule::Refuse,
    ),
];

/// IPv6 global unicast, the only IPv6 space that can be public.
const GLOBAL_UNICAST: Ipv6Addr = Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0);

/// The first `len` bits set (`len` at most 32).
fn mask_v4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

/// The first `len` bits set (`len` at most 128).
fn mask_v6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

fn v4_in(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    ip.to_bits() & mask_v4(len) == net.to_bits() & mask_v4(len)
}

fn v6_in(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    ip.to_bits() & mask_v6(len) == net.to_bits() & mask_v6(len)
}

/// Whether `ip` is in `net/len`; an IPv4 address is never in an IPv6
/// range, nor the other way round.
pub(super) fn in_range(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => v4_in(ip, net, len),
        (IpAddr::V6(ip), IpAddr::V6(net)) => v6_in(ip, net, len),
        _ => false,
    }
}

/// `ip` with every bit past the first `len` cleared.
pub(super) fn network(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(ip) => IpAddr::V4(Ipv4Addr::from_bits(ip.to_bits() & mask_v4(len))),
        IpAddr::V6(ip) => IpAddr::V6(Ipv6Addr::from_bits(ip.to_bits() & mask_v6(len))),
    }
}

/// `Ok` when `ip` is a public address; otherwise what it is.
pub(crate) fn classify(ip: IpAddr) -> Result<(), Special> {
    match ip {
        IpAddr::V4(ip) => classify_v4(ip),
        IpAddr::V6(ip) => classify_v6(ip),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Result<(), Special> {
    match V4_SPECIAL.iter().find(|r| v4_in(ip, r.net, r.len)) {
        Some(r) => Err(Special {
            kind: r.kind,
            range: r.range,
            inside: None,
        }),
        None => Ok(()),
    }
}

fn classify_v6(ip: Ipv6Addr) -> Result<(), Special> {
    let Some(r) = V6_SPECIAL.iter().find(|r| v6_in(ip, r.net, r.len)) else {
        if v6_in(ip, GLOBAL_UNICAST, 3) {
            return Ok(());
        }
        return Err(Special {
            kind: "reserved address (outside global unicast 2000::/3)",
            range: "::/0",
            inside: None,
        });
    };
    let refused = Special {
        kind: r.kind,
        range: r.range,
        inside: None,
    };
    match r.rule {
        V6Rule::Refuse => Err(refused),
        V6Rule::Embeds(embedded, form) => classify_v4(embedded(ip)).map_err(|special| Special {
            inside: Some((form, r.range)),
            ..special
        }),
    }
}

#[cfg(test)]
mod tests;
