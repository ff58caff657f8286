//! What sandstorm.json says about the sandbox itself: `limits`, the caps
//! on what one run's sandbox may use, and `network`, the domains it may
//! reach. Their ranges and checks live here, and so does the merge: the
//! operator's `SANDSTORM_SANDBOX_*` settings are the defaults, and each
//! limit sandstorm.json gives wins over its setting.
//!
//! Nothing here enforces anything: the values land in
//! [`SandboxSpec`](crate::sandbox::SandboxSpec), and each sandbox provider
//! enforces them.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::sandbox::{Limits, NetworkPolicy};

/// sandstorm.json's `limits`; each one left out takes the server's setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Memory, in MiB.
    #[serde(
        default,
        deserialize_with = "crate::request::whole_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_mb: Option<u64>,
    /// Processes and threads alive at once.
    #[serde(
        default,
        deserialize_with = "crate::request::whole_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub processes: Option<u64>,
    /// Disk in each writable folder, in MiB.
    #[serde(
        default,
        deserialize_with = "crate::request::whole_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub disk_mb: Option<u64>,
    /// CPU time one process may use, in seconds.
    #[serde(
        default,
        deserialize_with = "crate::request::whole_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_seconds: Option<u64>,
}

/// sandstorm.json's `network`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The hosts (`pypi.org`, that host only) and wildcards (`*.github.com`,
    /// any name under github.com but not github.com itself) the sandbox may
    /// reach; left out, every public host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
}

/// One limit: its key in `limits`, the setting that gives its default, and
/// the values it may take. The lower bounds keep a run able to start at all
/// (Node, the SDK's CLI and a shell); the upper ones catch a unit mistake.
#[derive(Debug, Clone)]
pub(crate) struct LimitField {
    /// The key in sandstorm.json's `limits`.
    pub key: &'static str,
    /// The operator's setting.
    pub variable: &'static str,
    /// The values allowed, in the field's own unit.
    pub range: RangeInclusive<u64>,
}

/// `memory_mb`: 64 MiB to 1 TiB.
pub(crate) const MEMORY_MB: LimitField = LimitField {
    key: "memory_mb",
    variable: "SANDSTORM_SANDBOX_MEMORY_MB",
    range: 64..=1_048_576,
};
/// `processes`: 16 to 65,536.
pub(crate) const PROCESSES: LimitField = LimitField {
    key: "processes",
    variable: "SANDSTORM_SANDBOX_PROCESSES",
    range: 16..=65_536,
};
/// `disk_mb`: 64 MiB to 1 TiB.
pub(crate) const DISK_MB: LimitField = LimitField {
    key: "disk_mb",
    variable: "SANDSTORM_SANDBOX_DISK_MB",
    range: 64..=1_048_576,
};
/// `cpu_seconds`: 10 s to a week.
pub(crate) const CPU_SECONDS: LimitField = LimitField {
    key: "cpu_seconds",
    variable: "SANDSTORM_SANDBOX_CPU_SECONDS",
    range: 10..=604_800,
};

impl LimitField {
    /// Whether `value` is in range; the error says the range.
    pub(crate) fn check(&self, value: u64) -> Result<(), String> {
        if self.range.contains(&value) {
            Ok(())
        } else {
            Err(format!(
                "must be between {} and {}",
                self.range.start(),
                self.range.end()
            ))
        }
    }
}

const MIB: u64 = 1024 * 1024;

impl LimitsConfig {
    /// The first limit out of its range: its key and why.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        let fields = [
            (&MEMORY_MB, self.memory_mb),
            (&PROCESSES, self.processes),
            (&DISK_MB, self.disk_mb),
            (&CPU_SECONDS, self.cpu_seconds),
        ];
        for (field, value) in fields {
            if let Some(value) = value {
                field.check(value).map_err(|why| (field.key, why))?;
            }
        }
        Ok(())
    }

    /// The limits given here, each one missing taken from `defaults`.
    pub(crate) fn over(&self, defaults: Limits) -> Limits {
        // In range, a MiB count cannot overflow: at most 2^20 MiB is 2^40 bytes.
        let bytes = |mb: u64| mb.saturating_mul(MIB);
        Limits {
            memory_bytes: self.memory_mb.map_or(defaults.memory_bytes, bytes),
            processes: self.processes.unwrap_or(defaults.processes),
            disk_bytes: self.disk_mb.map_or(defaults.disk_bytes, bytes),
            cpu_seconds: self.cpu_seconds.unwrap_or(defaults.cpu_seconds),
        }
    }
}

/// How many domains `network.allow` may list.
pub(crate) const MAX_ALLOW: usize = 1024;

impl NetworkConfig {
    /// The first entry that is not a domain or `*.` and a domain: its index
    /// (`None` for the list as a whole) and why.
    pub(crate) fn check(&self) -> Result<(), (Option<usize>, String)> {
        let allow = self.allow.as_deref().unwrap_or_default();
        if allow.len() > MAX_ALLOW {
            return Err((
                None,
                format!("lists {} domains; the limit is {MAX_ALLOW}", allow.len()),
            ));
        }
        for (index, entry) in allow.iter().enumerate() {
            check_domain(entry).map_err(|why| (Some(index), format!("{entry:?} {why}")))?;
        }
        Ok(())
    }

    /// The policy a sandbox gets.
    pub(crate) fn policy(&self) -> NetworkPolicy {
        NetworkPolicy {
            allow: self.allow.clone(),
        }
    }
}

/// Checks one `network.allow` entry: a lowercase domain name such as
/// `pypi.org`, or `*.` and one, such as `*.github.com`. An address is the
/// name a client asks for, so no scheme, port or path belongs in it.
fn check_domain(entry: &str) -> Result<(), &'static str> {
    if entry.is_empty() {
        return Err("must not be empty");
    }
    if entry.contains("://") {
        return Err("must be a domain name, without a scheme such as https://");
    }
    if entry == "*" {
        return Err("must not be a bare *; leave `network.allow` out to allow every public host");
    }
    if entry.contains('/') {
        return Err("must be a domain name, without a path");
    }
    if entry.contains(':') {
        return Err("must be a domain name, without a port");
    }
    let domain = entry.strip_prefix("*.").unwrap_or(entry);
    if domain.contains('*') {
        return Err("may use * only as a whole first label, as in *.github.com");
    }
    if domain.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("must be lowercase");
    }
    if !domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err("may hold only lowercase letters, digits, hyphens and dots");
    }
    if domain.len() > 253 {
        return Err("is longer than 253 characters, the most a domain name has");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        return Err("has an empty label: a leading, trailing or doubled dot");
    }
    if labels.iter().any(|l| l.len() > 63) {
        return Err("has a label longer than 63 characters");
    }
    if labels
        .iter()
        .any(|l| l.starts_with('-') || l.ends_with('-'))
    {
        return Err("has a label that starts or ends with a hyphen");
    }
    if labels.len() < 2 {
        return Err("must have at least two labels, as in pypi.org");
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("must be a domain name, not an IP address");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_left_out_takes_the_default() {
        let defaults = Limits {
            memory_bytes: 1,
            processes: 2,
            disk_bytes: 3,
            cpu_seconds: 4,
        };
        assert_eq!(LimitsConfig::default().over(defaults), defaults);
        let given = LimitsConfig {
            memory_mb: Some(512),
            cpu_seconds: Some(60),
            ..LimitsConfig::default()
        };
        assert_eq!(
            given.over(defaults),
            Limits {
                memory_bytes: 512 * MIB,
                processes: 2,
                disk_bytes: 3,
                cpu_seconds: 60,
            }
        );
    }

    #[test]
    fn the_largest_limits_do_not_overflow() {
        let most = LimitsConfig {
            memory_mb: Some(*MEMORY_MB.range.end()),
            disk_mb: Some(*DISK_MB.range.end()),
            ..LimitsConfig::default()
        };
        let limits = most.over(Limits::DEFAULT);
        assert_eq!(limits.memory_bytes, 1 << 40);
        assert_eq!(limits.disk_bytes, 1 << 40);
    }

    #[test]
    fn the_default_limits_are_in_range() {
        let defaults = Limits::DEFAULT;
        for (field, value) in [
            (&MEMORY_MB, defaults.memory_bytes / MIB),
            (&PROCESSES, defaults.processes),
            (&DISK_MB, defaults.disk_bytes / MIB),
            (&CPU_SECONDS, defaults.cpu_seconds),
        ] {
            assert!(field.check(value).is_ok(), "{} {value}", field.key);
        }
    }

    #[test]
    fn a_limit_out_of_range_names_its_key_and_range() {
        for (limits, key, message) in [
            (
                LimitsConfig {
                    memory_mb: Some(63),
                    ..LimitsConfig::default()
                },
                "memory_mb",
                "must be between 64 and 1048576",
            ),
            (
                LimitsConfig {
                    processes: Some(0),
                    ..LimitsConfig::default()
                },
                "processes",
                "must be between 16 and 65536",
            ),
            (
                LimitsConfig {
                    disk_mb: Some(1_048_577),
                    ..LimitsConfig::default()
                },
                "disk_mb",
                "must be between 64 and 1048576",
            ),
            (
                LimitsConfig {
                    cpu_seconds: Some(604_801),
                    ..LimitsConfig::default()
                },
                "cpu_seconds",
                "must be between 10 and 604800",
            ),
        ] {
            assert_eq!(limits.check(), Err((key, message.to_owned())));
        }
    }

    #[test]
    fn domains_and_wildcards_are_allowed() {
        for entry in [
            "pypi.org",
            "*.github.com",
            "files.pythonhosted.org",
            "a-b.c0.io",
            "xn--bcher-kva.example",
        ] {
            assert_eq!(check_domain(entry), Ok(()), "{entry}");
        }
    }

    #[test]
    fn each_malformed_entry_says_what_is_wrong() {
        for (entry, why) in [
            ("", "empty"),
            ("https://pypi.org", "scheme"),
            ("*", "bare *"),
            ("pypi.org/simple", "path"),
            ("pypi.org:443", "port"),
            ("*github.com", "whole first label"),
            ("api.*.github.com", "whole first label"),
            ("*.*.github.com", "whole first label"),
            ("PyPI.org", "lowercase"),
            ("pypi_org.com", "only lowercase letters"),
            ("bücher.de", "only lowercase letters"),
            ("py pi.org", "only lowercase letters"),
            (".pypi.org", "empty label"),
            ("pypi.org.", "empty label"),
            ("pypi..org", "empty label"),
            ("*.", "empty label"),
            ("-pypi.org", "hyphen"),
            ("pypi-.org", "hyphen"),
            ("localhost", "two labels"),
            ("*.com", "two labels"),
            ("10.0.0.1", "IP address"),
        ] {
            let message = check_domain(entry).expect_err(entry);
            assert!(message.contains(why), "{entry:?}: {message}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(check_domain(&long_label).expect_err("label").contains("63"));
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        assert!(check_domain(&long_name).expect_err("name").contains("253"));
    }

    #[test]
    fn the_error_names_the_entry_by_index() {
        let network = NetworkConfig {
            allow: Some(vec!["pypi.org".into(), "https://github.com".into()]),
        };
        let (index, message) = network.check().expect_err("refused");
        assert_eq!(index, Some(1));
        assert!(message.starts_with("\"https://github.com\" "), "{message}");
        let many = NetworkConfig {
            allow: Some(vec!["pypi.org".into(); MAX_ALLOW + 1]),
        };
        assert_eq!(many.check().expect_err("too many").0, None);
    }
}
