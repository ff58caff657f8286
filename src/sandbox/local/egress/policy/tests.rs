//! Allowlist patterns: what they match, what they refuse to be, and the
//! two-step rule with the operator's openings.

use std::net::SocketAddr;

use super::*;
use crate::sandbox::local::egress::parse_openings;

fn patterns(list: &[&str]) -> Vec<String> {
    list.iter().map(|p| (*p).to_owned()).collect()
}

fn rules(allow: Option<&[&str]>, open: &str) -> EgressRules {
    let policy = NetworkPolicy {
        allow: allow.map(patterns),
    };
    EgressRules::new(&policy, parse_openings(open).expect("openings parse")).expect("valid")
}

fn host(s: &str) -> Host {
    Host::parse(s).expect("a test host parses")
}

#[test]
fn patterns_match_exact_hosts_and_subdomains() {
    let rules = rules(
        Some(&["pypi.org", "*.github.com", "Files.Example.TEST."]),
        "",
    );
    let cases = [
        ("pypi.org", true),
        ("PyPI.org", true),
        ("pypi.org.", true),
        ("www.pypi.org", false),
        ("pypi.org.evil.test", false),
        ("xpypi.org", false),
        ("api.github.com", true),
        ("a.b.github.com", true),
        ("API.GitHub.com.", true),
        ("github.com", false),
        ("evilgithub.com", false),
        ("github.com.evil.test", false),
        ("files.example.test", true),
        ("example.test", false),
    ];
    for (name, expected) in cases {
        assert_eq!(rules.check_host(&host(name)), expected, "{name}");
    }
}

#[test]
fn without_an_allowlist_every_host_passes_step_one() {
    let rules = rules(None, "");
    for name in ["example.com", "127.0.0.1", "[::1]", "localhost"] {
        assert!(rules.check_host(&host(name)), "{name}");
    }
}

/// The rule the proxy documents: an allowlist names domains, so an IP
/// literal never passes one, opened or not.
#[test]
fn an_allowlist_refuses_ip_literals_even_when_opened() {
    let rules = rules(Some(&["example.test"]), "127.0.0.1,::1");
    assert!(!rules.check_host(&host("127.0.0.1")));
    assert!(!rules.check_host(&host("[::1]")));
    assert!(rules.check_host(&host("example.test")));
}

#[test]
fn addresses_pass_when_public_or_opened() {
    let rules = rules(None, "127.0.0.1:8443,10.0.0.0/8");
    let check = |s: &str| rules.check_addr(s.parse::<SocketAddr>().expect("parses"));
    assert!(check("93.184.216.34:443").is_ok());
    assert!(check("127.0.0.1:8443").is_ok());
    assert!(check("10.9.8.7:5432").is_ok());
    let refused = check("127.0.0.1:8444").expect_err("another port stays shut");
    assert_eq!(refused.range, "127.0.0.0/8");
    assert_eq!(
        check("169.254.169.254:80").expect_err("metadata").range,
        "169.254.0.0/16"
    );
    assert_eq!(
        check("192.168.0.1:80").expect_err("not opened").range,
        "192.168.0.0/16"
    );
}

#[test]
fn hosts_parse_as_addresses_or_names() {
    assert_eq!(host("10.0.0.5"), Host::Ip("10.0.0.5".parse().expect("ip")));
    assert_eq!(host("[::1]"), Host::Ip("::1".parse().expect("ip")));
    assert_eq!(host("Example.COM."), Host::Name("example.com".into()));
    assert_eq!(host("[::1]").to_string(), "[::1]");
    for bad in [
        "", ".", "a..b", "-a.com", "a-.com", "a b", "[nope]", "[::1", "ex*.com",
    ] {
        assert_eq!(Host::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn bad_patterns_are_named_with_their_index() {
    let cases = [
        (
            &["pypi.org", "*.github.com", "*"][..],
            "network.allow[2]: \"*\" is not a domain pattern: a wildcard may only start a \
             pattern, as in *.github.com",
        ),
        (
            &["foo.*.com"],
            "network.allow[0]: \"foo.*.com\" is not a domain pattern: a wildcard may only \
             start a pattern, as in *.github.com",
        ),
        (
            &["*github.com"],
            "network.allow[0]: \"*github.com\" is not a domain pattern: a wildcard may only \
             start a pattern, as in *.github.com",
        ),
        (
            &["ok.test", "10.0.0.5"],
            "network.allow[1]: \"10.0.0.5\" is not a domain pattern: it is an IP address; \
             network.allow names domains (the operator opens addresses with \
             SANDSTORM_EGRESS_OPEN)",
        ),
        (
            &["[::1]"],
            "network.allow[0]: \"[::1]\" is not a domain pattern: it is an IP address; \
             network.allow names domains (the operator opens addresses with \
             SANDSTORM_EGRESS_OPEN)",
        ),
        (
            &[""],
            "network.allow[0]: \"\" is not a domain pattern: it is empty",
        ),
        (
            &["https://pypi.org"],
            "network.allow[0]: \"https://pypi.org\" is not a domain pattern: a label may hold \
             only letters, digits, hyphens and underscores",
        ),
        (
            &["pypi.org:443"],
            "network.allow[0]: \"pypi.org:443\" is not a domain pattern: a label may hold \
             only letters, digits, hyphens and underscores",
        ),
        (
            &["a..b"],
            "network.allow[0]: \"a..b\" is not a domain pattern: each dot-separated label \
             must be 1 to 63 characters",
        ),
        (
            &["-a.test"],
            "network.allow[0]: \"-a.test\" is not a domain pattern: a label may not start or \
             end with a hyphen",
        ),
    ];
    for (list, message) in cases {
        let error = validate_allow(&patterns(list)).expect_err(message);
        assert_eq!(error.to_string(), message);
    }
    let long_label = format!("{}.test", "a".repeat(64));
    assert!(validate_allow(&[long_label]).is_err());
    let long_name = vec!["a".repeat(63); 4].join(".");
    assert!(validate_allow(&[long_name]).is_err());
    assert_eq!(
        validate_allow(&patterns(&["*.GitHub.com.", "pypi.org"])).expect("valid"),
        [
            DomainPattern::Subdomains(".github.com".into()),
            DomainPattern::Exact("pypi.org".into())
        ]
    );
}

#[test]
fn rules_refuse_a_bad_policy() {
    let policy = NetworkPolicy {
        allow: Some(patterns(&["*"])),
    };
    assert!(EgressRules::new(&policy, Vec::new()).is_err());
}
