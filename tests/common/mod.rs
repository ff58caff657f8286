//! The test toolkit: everything the integration tests share. Each test
//! file says `mod common;` and uses its part, hence the allows.
//!
//! - [`keys`]: the test keys, one value each;
//! - [`emulator`]: the E2B emulator, in-process or as its binary, and the
//!   leak check on its counters (the one file that names the emulator);
//! - [`serve`]: `ds serve` as a process, on the port it picked and printed;
//! - [`process`]: child processes that stop with the test, run-to-end
//!   commands, and the ports a child listens on;
//! - [`sse`]: the one server-sent-events parser; [`stream`]: a `/query`
//!   answer read to its end with timings; [`http`]: an in-process router
//!   on loopback, a raw `GET`, an address that refuses connections;
//! - [`doors`]: what the serverless door tests share; [`moto`]: AWS's
//!   services as moto's server emulates them; [`phoenix`]: Arize Phoenix,
//!   an OpenTelemetry receiver whose stored spans tests read back;
//!   [`otlp`]: a plain OTLP/HTTP receiver (JSON) that keeps what arrived;
//! - [`model_server`], [`runner`], [`messages`], [`product`]: the scripted
//!   model, the real runner offline, the Agent SDK's messages, and the
//!   whole product as a user runs it (end-to-end tests);
//! - [`sandbox`]: processes in any sandbox, read to their end;
//! - [`receiver`]: a webhook receiver on loopback that keeps what arrived;
//! - [`tools`]: repository paths and the pinned tools from PyPI;
//! - [`webhooks`]: a completion webhook receiver on loopback, and the
//!   official Standard Webhooks verifier.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "compiled into each test crate as a private module; each uses a different part"
)]

pub mod doors;
pub mod emulator;
pub mod http;
pub mod keys;
pub mod messages;
pub mod model_server;
pub mod moto;
pub mod otlp;
pub mod phoenix;
pub mod process;
pub mod product;
pub mod receiver;
pub mod runner;
pub mod sandbox;
pub mod serve;
pub mod sse;
pub mod stream;
pub mod tools;
pub mod webhooks;
