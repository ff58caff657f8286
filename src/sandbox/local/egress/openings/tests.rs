//! The openings grammar, what each opening admits, and the messages a bad
//! entry gets.

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a test socket address parses")
}

#[test]
fn openings_parse_in_every_shape() {
    let openings = parse_openings(
        "127.0.0.1:8443, 10.0.0.0/8,[::1]:9000,192.168.1.5,, ::1, [fd00::1], fd00::/8,",
    )
    .expect("parses");
    let shown: Vec<String> = openings.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "127.0.0.1:8443",
            "10.0.0.0/8",
            "[::1]:9000",
            "192.168.1.5",
            "::1",
            "fd00::1",
            "fd00::/8"
        ]
    );
    assert_eq!(parse_openings("").expect("empty is fine"), []);
    assert_eq!(parse_openings(" , ").expect("blank is fine"), []);
}

#[test]
fn openings_admit_exactly_what_they_name() {
    let open = |s: &str| parse_openings(s).expect("parses")[0];
    let port = open("127.0.0.1:8443");
    assert!(port.admits(addr("127.0.0.1:8443")));
    assert!(!port.admits(addr("127.0.0.1:8444")));
    assert!(!port.admits(addr("127.0.0.2:8443")));
    assert!(port.admits(addr("[::ffff:127.0.0.1]:8443")));
    assert!(!port.admits(addr("[::1]:8443")));

    let range = open("10.0.0.0/8");
    assert!(range.admits(addr("10.0.0.0:1")));
    assert!(range.admits(addr("10.255.255.255:65535")));
    assert!(!range.admits(addr("11.0.0.0:80")));
    assert!(!range.admits(addr("[::a00:1]:80")));

    let host = open("192.168.1.5");
    assert!(host.admits(addr("192.168.1.5:22")));
    assert!(!host.admits(addr("192.168.1.6:22")));

    let v6 = open("[::1]:9000");
    assert!(v6.admits(addr("[::1]:9000")));
    assert!(!v6.admits(addr("[::1]:9001")));
    assert!(!v6.admits(addr("127.0.0.1:9000")));

    let v6_range = open("fd00::/8");
    assert!(v6_range.admits(addr("[fdff::1]:443")));
    assert!(!v6_range.admits(addr("[fc00::1]:443")));

    let everything = open("0.0.0.0/0");
    assert!(everything.admits(addr("127.0.0.1:1")));
    assert!(!everything.admits(addr("[::1]:1")));
}

#[test]
fn bad_openings_name_the_entry_and_the_fault() {
    let cases = [
        (
            "127.0.0.1:8443,localhost:80",
            "SANDSTORM_EGRESS_OPEN[1]: \"localhost:80\" is not an opening; write an address \
             (192.168.1.5), an address and port (127.0.0.1:8443, [::1]:9000) or a range \
             (10.0.0.0/8)",
        ),
        (
            "10.0.0.1/8",
            "SANDSTORM_EGRESS_OPEN[0]: \"10.0.0.1/8\" has bits set past its prefix length; \
             the range is 10.0.0.0/8",
        ),
        (
            "10.0.0.0/33",
            "SANDSTORM_EGRESS_OPEN[0]: \"10.0.0.0/33\" has a prefix length that is not a \
             number from 0 to 32",
        ),
        (
            "fd00::/129",
            "SANDSTORM_EGRESS_OPEN[0]: \"fd00::/129\" has a prefix length that is not a \
             number from 0 to 128",
        ),
        (
            "127.0.0.1:0",
            "SANDSTORM_EGRESS_OPEN[0]: \"127.0.0.1:0\" has port \"0\", which is not a port \
             from 1 to 65535",
        ),
        (
            " , [::1]:99999",
            "SANDSTORM_EGRESS_OPEN[1]: \"[::1]:99999\" has port \"99999\", which is not a \
             port from 1 to 65535",
        ),
        (
            "::ffff:127.0.0.1",
            "SANDSTORM_EGRESS_OPEN[0]: \"::ffff:127.0.0.1\" is an IPv4-mapped address; write \
             it in IPv4 form",
        ),
    ];
    for (list, message) in cases {
        let error = parse_openings(list).expect_err(list);
        assert_eq!(error.to_string(), message, "{list}");
    }
    for bad in [
        "[::1",
        "[::1]x",
        "[::1]9000",
        "[127.0.0.1]:80",
        "::1:80:x",
        "10.0.0.0/x",
        "example.com",
        "1.2.3.4:",
        "*",
    ] {
        assert!(parse_openings(bad).is_err(), "{bad} should not parse");
    }
}
