//! The address rules, proven by classification: every special range at its
//! edges, and the IPv6 forms that carry an IPv4 address. Nothing here opens
//! a socket.

use super::*;

/// `(address, None)` for public; `(address, Some(range))` for the range
/// that refuses it.
const TABLE: &[(&str, Option<&str>)] = &[
    // Public IPv4, including neighbours of special ranges.
    ("1.1.1.1", None),
    ("8.8.8.8", None),
    ("9.255.255.255", None),
    ("11.0.0.0", None),
    ("100.63.255.255", None),
    ("100.128.0.0", None),
    ("126.255.255.255", None),
    ("128.0.0.0", None),
    ("169.253.255.255", None),
    ("169.255.0.0", None),
    ("172.15.255.255", None),
    ("172.32.0.0", None),
    ("192.0.1.0", None),
    ("192.0.3.0", None),
    ("192.167.255.255", None),
    ("192.169.0.0", None),
    ("198.17.255.255", None),
    ("198.20.0.0", None),
    ("203.0.112.255", None),
    ("203.0.114.0", None),
    ("223.255.255.255", None),
    // Unspecified and this network.
    ("0.0.0.0", Some("0.0.0.0/32")),
    ("0.1.2.3", Some("0.0.0.0/8")),
    ("0.255.255.255", Some("0.0.0.0/8")),
    // Private.
    ("10.0.0.0", Some("10.0.0.0/8")),
    ("10.0.0.5", Some("10.0.0.0/8")),
    ("10.255.255.255", Some("10.0.0.0/8")),
    ("172.16.0.0", Some("172.16.0.0/12")),
    ("172.31.255.255", Some("172.16.0.0/12")),
    ("192.168.0.0", Some("192.168.0.0/16")),
    ("192.168.1.5", Some("192.168.0.0/16")),
    ("192.168.255.255", Some("192.168.0.0/16")),
    // Carrier-grade NAT.
    ("100.64.0.0", Some("100.64.0.0/10")),
    ("100.127.255.255", Some("100.64.0.0/10")),
    // Loopback, all of it.
    ("127.0.0.1", Some("127.0.0.0/8")),
    ("127.0.0.0", Some("127.0.0.0/8")),
    ("127.255.255.254", Some("127.0.0.0/8")),
    ("127.1.2.3", Some("127.0.0.0/8")),
    // Link-local: the metadata endpoints.
    ("169.254.169.254", Some("169.254.0.0/16")),
    ("169.254.0.0", Some("169.254.0.0/16")),
    ("169.254.255.255", Some("169.254.0.0/16")),
    // Protocol assignments, documentation, benchmarking, relay.
    ("192.0.0.0", Some("192.0.0.0/24")),
    ("192.0.0.255", Some("192.0.0.0/24")),
    ("192.0.2.1", Some("192.0.2.0/24")),
    ("192.88.99.1", Some("192.88.99.0/24")),
    ("198.18.0.0", Some("198.18.0.0/15")),
    ("198.19.255.255", Some("198.18.0.0/15")),
    ("198.51.100.7", Some("198.51.100.0/24")),
    ("203.0.113.9", Some("203.0.113.0/24")),
    // Multicast, reserved, broadcast.
    ("224.0.0.1", Some("224.0.0.0/4")),
    ("239.255.255.255", Some("224.0.0.0/4")),
    ("240.0.0.0", Some("240.0.0.0/4")),
    ("254.255.255.255", Some("240.0.0.0/4")),
    ("255.255.255.254", Some("240.0.0.0/4")),
    ("255.255.255.255", Some("255.255.255.255/32")),
    // Public IPv6.
    ("2606:4700:4700::1111", None),
    ("2a00:1450:4001:80b::200e", None),
    ("2001:200::1", None),
    ("3ffe::1", None),
    ("3fff:1000::1", None),
    // IPv6 specials.
    ("::", Some("::/128")),
    ("::1", Some("::1/128")),
    ("fe80::1", Some("fe80::/10")),
    ("febf:ffff::1", Some("fe80::/10")),
    ("fec0::1", Some("fec0::/10")),
    ("fc00::1", Some("fc00::/7")),
    ("fd12:3456::1", Some("fc00::/7")),
    ("ff02::1", Some("ff00::/8")),
    ("ff0e::1", Some("ff00::/8")),
    ("100::1", Some("100::/64")),
    ("64:ff9b:1::1", Some("64:ff9b:1::/48")),
    ("2001::1", Some("2001::/32")),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Some("2001::/32")),
    ("2001:2::1", Some("2001::/23")),
    ("2001:1ff::1", Some("2001::/23")),
    ("2001:db8::1", Some("2001:db8::/32")),
    ("3fff::1", Some("3fff::/20")),
    ("5f00::1", Some("5f00::/16")),
    // Outside global unicast, unassigned.
    ("4000::1", Some("::/0")),
    ("1::1", Some("::/0")),
    ("e000::1", Some("::/0")),
    // IPv4-compatible (deprecated): refused whatever it carries.
    ("::8.8.8.8", Some("::/96")),
    ("::127.0.0.1", Some("::/96")),
    // IPv4-mapped: the IPv4 address decides.
    ("::ffff:8.8.8.8", None),
    ("::ffff:127.0.0.1", Some("127.0.0.0/8")),
    ("::ffff:10.1.2.3", Some("10.0.0.0/8")),
    ("::ffff:169.254.169.254", Some("169.254.0.0/16")),
    ("::ffff:0.0.0.0", Some("0.0.0.0/32")),
    // NAT64: likewise.
    ("64:ff9b::8.8.8.8", None),
    ("64:ff9b::127.0.0.1", Some("127.0.0.0/8")),
    ("64:ff9b::192.168.0.1", Some("192.168.0.0/16")),
    // 6to4: the IPv4 address sits in bits 16 to 48.
    ("2002:0808:0808::1", None),
    ("2002:7f00:0001::1", Some("127.0.0.0/8")),
    ("2002:0a00:0001::", Some("10.0.0.0/8")),
    ("2002:a9fe:a9fe::1", Some("169.254.0.0/16")),
];

#[test]
fn classifies_every_special_range_and_its_neighbours() {
    for (address, expected) in TABLE {
        let ip: IpAddr = address.parse().expect("a test address parses");
        let got = classify(ip).err().map(|s| s.range);
        assert_eq!(got, *expected, "{address}");
    }
}

#[test]
fn refusals_say_what_the_address_is() {
    let say = |address: &str| {
        classify(address.parse().expect("parses"))
            .expect_err("refused")
            .to_string()
    };
    assert_eq!(say("10.0.0.5"), "private address (10.0.0.0/8)");
    assert_eq!(say("127.0.0.1"), "loopback address (127.0.0.0/8)");
    assert_eq!(
        say("169.254.169.254"),
        "link-local address (cloud metadata lives here) (169.254.0.0/16)"
    );
    assert_eq!(
        say("::ffff:127.0.0.1"),
        "loopback address (127.0.0.0/8) in IPv4-mapped form (::ffff:0:0/96)"
    );
    assert_eq!(
        say("2002:c0a8:0101::1"),
        "private address (192.168.0.0/16) in 6to4 form (2002::/16)"
    );
    assert_eq!(
        say("64:ff9b::a00:1"),
        "private address (10.0.0.0/8) in NAT64 form (64:ff9b::/96)"
    );
    assert_eq!(say("fd00::1"), "unique local (private) address (fc00::/7)");
}

/// A refused address is refused whether it arrives as IPv4 or IPv4-mapped
/// IPv6, for every IPv4 row of the table.
#[test]
fn mapped_forms_agree_with_plain_ipv4() {
    for (address, _) in TABLE {
        let Ok(v4) = address.parse::<Ipv4Addr>() else {
            continue;
        };
        let plain = classify(IpAddr::V4(v4)).map_err(|s| s.range);
        let mapped = classify(IpAddr::V6(v4.to_ipv6_mapped())).map_err(|s| s.range);
        assert_eq!(plain, mapped, "{address}");
    }
}
