//! Sandstorm: run Claude agents in secure sandboxes behind one HTTPS call.
//!
//! Each `POST /query` creates a fresh sandbox (an E2B cloud VM, or a local
//! bubblewrap sandbox), starts the Claude Agent SDK runner inside it, relays
//! every message the agent prints as a server-sent event, and destroys the
//! sandbox when the run ends.

pub mod connect;
pub mod emulator;
pub mod env;
pub mod envd;
pub mod lines;
pub mod runner_install;
pub mod sandbox;
pub mod secret;
