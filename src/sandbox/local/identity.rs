//! Which host user a sandbox runs as.
//!
//! Inside, the agent is always `user` (uid 1000, as on E2B). On the host,
//! that uid maps to:
//!
//! - **when `ds` runs as root:** a uid of its own, leased for the sandbox's
//!   life from a range no real user owns ([`UidRange`]). Root never enters a
//!   sandbox, and a process that escaped one sandbox's mount namespace still
//!   cannot read another's files: they belong to another uid.
//! - **when `ds` runs as an ordinary user:** that user. The kernel lets an
//!   unprivileged process map only its own uid, so concurrent sandboxes share
//!   it; the mount namespaces keep them apart (see `docs/security.md`).
//!
//! A lease is a lock file held with `flock`, so two `ds` processes on one
//! machine (a server and the E2B emulator, say) never hand out the same uid,
//! and a crashed process's leases free themselves.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, Mode, OFlags};

/// The range used when root and `SANDSTORM_SANDBOX_UIDS` is not set: 65,536
/// uids at the top of systemd's container range (0x00080000–0x6FFFFFFF),
/// which no login user or system service is given.
pub(crate) const DEFAULT_RANGE: UidRange = UidRange {
    first: 0x6F00_0000,
    count: 0x1_0000,
};

/// Host uids (and equal gids) sandboxes may run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UidRange {
    first: u32,
    count: u32,
}

impl UidRange {
    /// Parses `first-last` (inclusive), refusing ranges that reach a uid
    /// below 65,536: those belong to real users and system services.
    pub(crate) fn parse(text: &str) -> Result<UidRange, String> {
        let bad = |why: &str| format!("SANDSTORM_SANDBOX_UIDS={text:?}: {why}");
        let (first, last) = text
            .split_once('-')
            .ok_or_else(|| bad("expected FIRST-LAST, e.g. 1862270976-1862336511"))?;
        let number = |s: &str| {
            s.trim()
                .parse::<u32>()
                .map_err(|_| bad("both ends must be uids"))
        };
        let (first, last) = (number(first)?, number(last)?);
        if first < 65_536 {
            return Err(bad(
                "the range must start at 65536 or above, away from real users",
            ));
        }
        if last < first || last == u32::MAX {
            return Err(bad(
                "FIRST must not be above LAST, and LAST below 4294967295",
            ));
        }
        Ok(UidRange {
            first,
            count: last - first + 1,
        })
    }
}

/// How sandboxes get their host identity on this machine.
#[derive(Debug)]
pub(crate) enum Identities {
    /// `ds` is root: each sandbox leases a uid from the range.
    Leased { range: UidRange, locks: PathBuf },
    /// `ds` is an ordinary user: sandboxes run as that user.
    Caller,
}

/// One sandbox's host uid. Dropping it ends the lease, so it must outlive
/// every process of the sandbox.
#[derive(Debug)]
pub(crate) struct Identity {
    /// The host uid and gid; `None` when sandboxes run as the caller.
    pub(crate) leased: Option<u32>,
    _lock: Option<OwnedFd>,
}

impl Identities {
    /// Leased identities when root (lock files under `runtime`), the caller
    /// otherwise.
    pub(crate) fn for_this_process(range: UidRange, runtime: &Path) -> Result<Self, String> {
        if !rustix::process::geteuid().is_root() {
            return Ok(Identities::Caller);
        }
        let locks = runtime.join("uids");
        std::fs::create_dir_all(&locks).map_err(|e| {
            format!(
                "cannot run local sandboxes as root without a uid lock folder ({}): {e}",
                locks.display()
            )
        })?;
        Ok(Identities::Leased { range, locks })
    }

    /// Whether sandboxes run as other uids than ours.
    pub(crate) fn leases(&self) -> bool {
        matches!(self, Identities::Leased { .. })
    }

    /// A uid no other live sandbox on this machine holds.
    pub(crate) fn lease(&self) -> Result<Identity, String> {
        let Identities::Leased { range, locks } = self else {
            return Ok(Identity {
                leased: None,
                _lock: None,
            });
        };
        // Start at a random place so concurrent processes rarely contend
        // for the same lock files.
        let start = uuid::Uuid::new_v4().as_u128() % u128::from(range.count);
        let start = u32::try_from(start).unwrap_or(0);
        for step in 0..range.count {
            let uid = range.first + (start + step) % range.count;
            let path = locks.join(format!("{uid}.lock"));
            let fd = rustix::fs::open(
                &path,
                OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| format!("cannot open the uid lock {}: {e}", path.display()))?;
            if rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_ok() {
                return Ok(Identity {
                    leased: Some(uid),
                    _lock: Some(fd),
                });
            }
        }
        Err(format!(
            "every sandbox uid in {}-{} is in use; widen SANDSTORM_SANDBOX_UIDS",
            range.first,
            range.first + (range.count - 1)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_real_users() {
        assert_eq!(
            UidRange::parse("100000-100009"),
            Ok(UidRange {
                first: 100_000,
                count: 10
            })
        );
        for bad in ["1000-2000", "0-70000", "100000", "200000-100000", "a-b"] {
            let err = UidRange::parse(bad).expect_err(bad);
            assert!(err.contains("SANDSTORM_SANDBOX_UIDS"), "{err}");
        }
    }

    #[test]
    fn leases_are_exclusive_until_dropped() {
        let runtime = tempfile::tempdir().expect("tempdir");
        let identities = Identities::Leased {
            range: UidRange::parse("100000-100001").expect("range"),
            locks: runtime.path().to_owned(),
        };
        let a = identities.lease().expect("first");
        let b = identities.lease().expect("second");
        assert_ne!(a.leased, b.leased);
        let err = identities.lease().expect_err("the range is used up");
        assert!(err.contains("widen SANDSTORM_SANDBOX_UIDS"), "{err}");
        drop(a);
        identities.lease().expect("a dropped lease is free again");
    }
}
