//! The host side of a local sandbox's network.
//!
//! A local sandbox has a network namespace of its own with only `lo` in
//! it; everything that leaves it goes through a proxy on the host. This
//! module holds the rules that proxy applies. Every destination passes the
//! sandbox's [`policy`]: public addresses only ([`address`]) unless the
//! operator opened more ([`openings`]), and only the sandbox's allowed
//! domains when it has a list.

#![cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "the egress proxy applies these rules; until it lands only the tests do"
    )
)]
#![expect(
    unused_imports,
    reason = "the egress proxy and config loading use these; they have not landed yet"
)]

mod address;
mod openings;
mod policy;

pub(crate) use openings::{OPEN_VARIABLE, Opening, OpeningError, parse_openings};
pub(crate) use policy::{EgressRules, PatternError, validate_allow};
