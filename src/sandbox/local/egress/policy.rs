//! The egress rules of one sandbox: the domains it may name
//! (`network.allow`) and the private addresses the operator opened.
//!
//! A destination passes in two steps, and must pass both:
//!
//! 1. The host the client named, before any lookup. With no allowlist every
//!    host passes. With one, a name must match a pattern, and an IP literal
//!    never passes: patterns name domains, and an address is not a domain.
//!    So `network.allow = ["example.test"]` refuses `127.0.0.1` even when
//!    the operator opened it; an opening widens the address rule below, it
//!    does not bypass the request's allowlist. A name that fails is never
//!    looked up, so a refused name leaks nothing through DNS either.
//! 2. Each address the name resolved to ([`EgressRules::check_addr`]): a
//!    public address passes, and so does one the operator opened.
//!
//! Patterns are `pypi.org` (that host exactly) and `*.github.com` (any
//! subdomain, at any depth, but not `github.com` itself), compared without
//! regard to case or a trailing dot.

use std::net::{IpAddr, SocketAddr};

use super::address::{self, Special};
use super::openings::Opening;
use crate::sandbox::NetworkPolicy;

/// The longest DNS name, in characters, without the trailing dot.
const MAX_NAME: usize = 253;
/// The longest DNS label.
const MAX_LABEL: usize = 63;

/// One `network.allow` entry, lowercased, without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DomainPattern {
    /// `pypi.org`: this host only.
    Exact(String),
    /// `*.github.com`, kept as `.github.com`: any name that ends with it.
    Subdomains(String),
}

impl DomainPattern {
    /// Whether `host` (a name as [`Host::parse`] leaves it) matches.
    fn matches(&self, host: &str) -> bool {
        match self {
            DomainPattern::Exact(name) => host == name,
            // The suffix starts with a dot, so the apex never matches and
            // `evilgithub.com` does not end with `.github.com`.
            DomainPattern::Subdomains(suffix) => host.ends_with(suffix.as_str()),
        }
    }
}

/// A `network.allow` entry that is not a domain pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("network.allow[{index}]: {pattern:?} is not a domain pattern: {reason}")]
pub(crate) struct PatternError {
    /// The entry's position, from 0.
    pub(crate) index: usize,
    /// The entry as written.
    pub(crate) pattern: String,
    /// What is wrong with it.
    pub(crate) reason: &'static str,
}

/// Checks every `network.allow` entry and returns them ready to match:
/// what config loading calls, so a bad pattern is reported when the
/// configuration is read rather than when a sandbox first connects.
pub(crate) fn validate_allow(patterns: &[String]) -> Result<Vec<DomainPattern>, PatternError> {
    patterns
        .iter()
        .enumerate()
        .map(|(index, pattern)| {
            parse_pattern(pattern).map_err(|reason| PatternError {
                index,
                pattern: pattern.clone(),
                reason,
            })
        })
        .collect()
}

fn parse_pattern(pattern: &str) -> Result<DomainPattern, &'static str> {
    let lower = pattern.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower);
    let (wildcard, name) = match lower.strip_prefix("*.") {
        Some(name) => (true, name),
        None => (false, lower),
    };
    if name.contains('*') || lower == "*" {
        return Err("a wildcard may only start a pattern, as in *.github.com");
    }
    if name.parse::<IpAddr>().is_ok()
        || name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .is_some_and(|n| n.parse::<IpAddr>().is_ok())
    {
        return Err("it is an IP address; network.allow names domains \
                    (the operator opens addresses with SANDSTORM_EGRESS_OPEN)");
    }
    check_name(name)?;
    Ok(if wildcard {
        DomainPattern::Subdomains(format!(".{name}"))
    } else {
        DomainPattern::Exact(name.to_owned())
    })
}

/// Whether `name` (lowercase, no trailing dot) is a DNS name: labels of 1
/// to 63 letters, digits, hyphens or underscores, not starting or ending
/// with a hyphen, 253 characters in all.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > MAX_NAME {
        return Err("it is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL {
            return Err("each dot-separated label must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a label may hold only letters, digits, hyphens and underscores");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label may not start or end with a hyphen");
        }
    }
    Ok(())
}

/// A destination host as a client named it in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Host {
    /// An IP literal (`10.0.0.5`, `[::1]`).
    Ip(IpAddr),
    /// A DNS name, lowercased, without a trailing dot.
    Name(String),
}

impl Host {
    /// Reads the host part of a request target; `None` when it is neither
    /// an IP literal nor a DNS name.
    pub(crate) fn parse(host: &str) -> Option<Host> {
        if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return inner.parse().ok().map(Host::Ip);
        }
        if let Ok(ip) = host.parse() {
            return Some(Host::Ip(ip));
        }
        let lower = host.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        check_name(name).ok()?;
        Some(Host::Name(name.to_owned()))
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// Where one sandbox may connect: its allowlist and the operator's
/// openings. Built once per sandbox and shared by its connections.
#[derive(Debug, Clone, Default)]
pub(crate) struct EgressRules {
    allow: Option<Vec<DomainPattern>>,
    open: Vec<Opening>,
}

impl EgressRules {
    /// The rules of a sandbox with `policy`, under the operator's openings
    /// (from [`parse_openings`](super::parse_openings)).
    pub(crate) fn new(policy: &NetworkPolicy, open: Vec<Opening>) -> Result<Self, PatternError> {
        let allow = policy.allow.as_deref().map(validate_allow).transpose()?;
        Ok(EgressRules { allow, open })
    }

    /// Step 1: may the client name this host at all? (See the module doc
    /// for why an IP literal fails any allowlist.)
    pub(crate) fn check_host(&self, host: &Host) -> bool {
        match (&self.allow, host) {
            (None, _) => true,
            (Some(_), Host::Ip(_)) => false,
            (Some(patterns), Host::Name(name)) => patterns.iter().any(|p| p.matches(name)),
        }
    }

    /// Step 2: may the sandbox connect to this address? `addr` must be in
    /// canonical form (an IPv4-mapped address as IPv4), as the proxy
    /// connects to it.
    pub(crate) fn check_addr(&self, addr: SocketAddr) -> Result<(), Special> {
        if self.open.iter().any(|o| o.admits(addr)) {
            return Ok(());
        }
        address::classify(addr.ip())
    }
}

#[cfg(test)]
mod tests;
