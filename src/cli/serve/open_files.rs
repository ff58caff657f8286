//! Open files for `ds serve`: the soft limit raised to the hard one at
//! start-up, and the connection cap fitted to the result.
//!
//! The soft limit is often 1,024 while the hard one is far higher; only the
//! soft one binds, and a process may raise it up to the hard one. Go's
//! runtime does the same at start-up. The children `ds serve` starts
//! (bubblewrap and the runner, for local sandboxes) inherit the raised
//! limit, which Node.js handles.

use std::num::NonZeroUsize;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use super::accept::HEALTH_SLOTS;

/// The connection cap when nothing sets one and the limit allows it.
const DEFAULT_MAX_CONNECTIONS: u64 = 1024;

/// Descriptors one served connection may hold: the client's socket, the
/// sandbox's process stream (E2B) or pipes (local), and a share of the
/// pooled E2B API sockets.
const FDS_PER_CONNECTION: u64 = 4;

/// Descriptors the process holds apart from its connections: stdio, the
/// listener, the runtime's epoll and wakers, connection pools, files.
const HEADROOM: u64 = 64;

/// Raises the soft limit on open files to the hard one. Returns the soft
/// limit in force afterwards; `None` when there is none.
pub(super) fn raise_limit() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        let raised = Rlimit {
            current: Some(maximum),
            maximum: Some(maximum),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::debug!(from = current, to = maximum, "raised the open-file limit");
                return Some(maximum);
            }
            Err(error) => tracing::warn!(%error, current, "could not raise the open-file limit"),
        }
    }
    limit.current
}

/// The connection cap: `configured`, else [`DEFAULT_MAX_CONNECTIONS`]
/// lowered to what `open_files` has descriptors for.
pub(super) fn max_connections(configured: Option<NonZeroUsize>, open_files: Option<u64>) -> usize {
    let capacity = open_files.map_or(u64::MAX, |limit| {
        limit.saturating_sub(HEADROOM + HEALTH_SLOTS as u64) / FDS_PER_CONNECTION
    });
    match configured {
        Some(max) => {
            if u64::try_from(max.get()).unwrap_or(u64::MAX) > capacity {
                // Honoured all the same: the estimate per connection is a
                // rough one, and past the limit the accept loop only waits.
                tracing::warn!(
                    max_connections = max.get(),
                    open_files,
                    "SANDSTORM_MAX_CONNECTIONS may need more open files than the limit allows"
                );
            }
            max.get()
        }
        None => usize::try_from(capacity.clamp(1, DEFAULT_MAX_CONNECTIONS)).unwrap_or(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_fits_the_open_file_limit() {
        assert_eq!(max_connections(None, None), 1024);
        assert_eq!(max_connections(None, Some(1_048_576)), 1024);
        // 1024 - 64 - 8 = 952 spare descriptors, 4 a connection.
        assert_eq!(max_connections(None, Some(1024)), 238);
        assert_eq!(max_connections(None, Some(10)), 1, "never zero");
    }

    #[test]
    fn a_configured_cap_wins() {
        let eight = NonZeroUsize::new(8);
        assert_eq!(max_connections(eight, Some(1_048_576)), 8);
        let many = NonZeroUsize::new(5000);
        assert_eq!(max_connections(many, Some(1024)), 5000);
    }
}
