//! The private addresses an operator opened to sandboxes
//! (`SANDSTORM_EGRESS_OPEN`).
//!
//! Public addresses are always reachable; an operator who wants sandboxes
//! to reach something private (a package mirror on `10.0.0.5`, a test
//! server on loopback) opens it by address, range, or address and port.
//! [`parse_openings`] reads the list, once, where the door reads its
//! environment; its error names the entry at fault.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::address::{in_range, network};

/// What the operator variable is called, for error messages.
pub(crate) const OPEN_VARIABLE: &str = "SANDSTORM_EGRESS_OPEN";

/// An address range the operator opened, optionally for one port only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Opening {
    net: IpAddr,
    len: u8,
    port: Option<u16>,
}

impl Opening {
    /// Whether this opening lets the sandbox reach `addr`.
    pub(crate) fn admits(&self, addr: SocketAddr) -> bool {
        in_range(addr.ip().to_canonical(), self.net, self.len)
            && self.port.is_none_or(|port| port == addr.port())
    }
}

impl fmt::Display for Opening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.net.is_ipv4() { 32 } else { 128 };
        match (self.net, self.port) {
            (net, None) if self.len == full => write!(f, "{net}"),
            (net, None) => write!(f, "{net}/{}", self.len),
            (net, Some(port)) => write!(f, "{}", SocketAddr::new(net, port)),
        }
    }
}

/// Why `SANDSTORM_EGRESS_OPEN` could not be read: which entry, and what is
/// wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{OPEN_VARIABLE}[{index}]: {entry:?} {reason}")]
pub(crate) struct OpeningError {
    /// The entry's position in the list, from 0.
    pub(crate) index: usize,
    /// The entry as written.
    pub(crate) entry: String,
    /// What is wrong with it.
    pub(crate) reason: String,
}

/// Reads the operator's openings: comma-separated entries, each an address
/// (`192.168.1.5`, `::1`), an address and port (`127.0.0.1:8443`,
/// `[::1]:9000`) or a range (`10.0.0.0/8`, `fd00::/8`). Blank entries are
/// skipped, so a trailing comma is fine.
pub(crate) fn parse_openings(list: &str) -> Result<Vec<Opening>, OpeningError> {
    list.split(',')
        .map(str::trim)
        .enumerate()
        .filter(|(_, entry)| !entry.is_empty())
        .map(|(index, entry)| {
            parse_opening(entry).map_err(|reason| OpeningError {
                index,
                entry: entry.to_owned(),
                reason,
            })
        })
        .collect()
}

fn parse_opening(entry: &str) -> Result<Opening, String> {
    const SHAPES: &str = "is not an opening; write an address (192.168.1.5), an address \
                          and port (127.0.0.1:8443, [::1]:9000) or a range (10.0.0.0/8)";
    let (net, len, port) = if let Some((ip, len)) = entry.split_once('/') {
        let ip: IpAddr = ip.parse().map_err(|_| SHAPES.to_owned())?;
        let full = if ip.is_ipv4() { 32 } else { 128 };
        let len: u8 =
            len.parse().ok().filter(|len| *len <= full).ok_or_else(|| {
                format!("has a prefix length that is not a number from 0 to {full}")
            })?;
        (ip, len, None)
    } else if let Some(rest) = entry.strip_prefix('[') {
        let (ip, rest) = rest.split_once(']').ok_or_else(|| SHAPES.to_owned())?;
        let ip: Ipv6Addr = ip.parse().map_err(|_| SHAPES.to_owned())?;
        let port = match (rest, rest.strip_prefix(':')) {
            ("", _) => None,
            (_, Some(port)) => Some(parse_port(port)?),
            (_, None) => return Err(SHAPES.to_owned()),
        };
        (IpAddr::V6(ip), 128, port)
    } else if let Ok(ip) = entry.parse::<IpAddr>() {
        (ip, if ip.is_ipv4() { 32 } else { 128 }, None)
    } else if let Some((ip, port)) = entry.rsplit_once(':')
        && let Ok(ip) = ip.parse::<Ipv4Addr>()
    {
        (IpAddr::V4(ip), 32, Some(parse_port(port)?))
    } else {
        return Err(SHAPES.to_owned());
    };
    if let IpAddr::V6(v6) = net
        && v6.to_ipv4_mapped().is_some()
    {
        return Err("is an IPv4-mapped address; write it in IPv4 form".to_owned());
    }
    let network = network(net, len);
    if network != net {
        return Err(format!(
            "has bits set past its prefix length; the range is {network}/{len}"
        ));
    }
    Ok(Opening { net, len, port })
}

fn parse_port(port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "has port {port:?}, which is not a port from 1 to 65535"
        )),
        Ok(port) => Ok(port),
    }
}

#[cfg(test)]
mod tests;
