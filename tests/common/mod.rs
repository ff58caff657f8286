//! Helpers shared by the integration tests.
//!
//! Every test file that needs them says `mod support;`. Each test file is its
//! own crate and uses a different part of this module, hence the allows.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "compiled into each test crate as a private module; each uses a different part"
)]

pub mod emulator;
pub mod messages;
pub mod model_server;
pub mod product;
pub mod runner;
