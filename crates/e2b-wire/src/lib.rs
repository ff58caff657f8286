//! E2B's wire: what goes over the network between an E2B client and E2B.
//!
//! Our client (`sandstorm::sandbox::e2b`) and the `e2b-emulator` both speak
//! through these types, so a field renamed on one side is a compile error on
//! the other instead of a runtime surprise. Pure types and codecs, no I/O:
//!
//! - [`control`]: the control plane's JSON bodies (create, connect,
//!   set-timeout, list, errors), `spec/openapi.yml`;
//! - [`connect`]: the Connect RPC streaming envelope envd frames messages in;
//! - [`envd`]: envd's process and file messages in the Connect JSON codec;
//! - [`events`]: sandbox lifecycle events, the webhooks that deliver them,
//!   and how E2B signs a delivery.
//!
//! ```
//! use e2b_wire::connect::{FLAG_MESSAGE, FrameDecoder, encode};
//! use e2b_wire::envd::{ProcessEventJson, StartEvent, StartResponse};
//!
//! let started = StartResponse {
//!     event: ProcessEventJson { start: Some(StartEvent { pid: 7 }), ..Default::default() },
//! };
//! let json = serde_json::to_vec(&started)?;
//! let mut decoder = FrameDecoder::new();
//! decoder.push(&encode(FLAG_MESSAGE, &json));
//! let frame = decoder.next_frame()?.expect("one whole frame");
//! assert_eq!(serde_json::from_slice::<StartResponse>(&frame.payload)?, started);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod connect;
pub mod control;
pub mod envd;
pub mod events;
