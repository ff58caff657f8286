//! Sandstorm: run Claude agents in secure sandboxes behind one HTTPS call.
//!
//! Each `POST /query` creates a fresh sandbox (an E2B cloud VM, or a local
//! bubblewrap sandbox), starts the Claude Agent SDK runner inside it, relays
//! every message the agent prints as a server-sent event, and destroys the
//! sandbox when the run ends.
//!
//! Every door (the `ds` CLI and server, Lambda, Vercel) serves the same
//! [`app::app`] router:
//!
//! ```no_run
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! use sandstorm::{app, doors::PROVIDERS, env::EnvVars, sandbox::provider::Setup};
//! use sandstorm::settings::{Profile, SandboxChoice, Settings};
//! let cwd = std::path::Path::new(".");
//! let env = EnvVars::from_pairs(std::env::vars());
//! let choice = SandboxChoice {
//!     catalog: PROVIDERS,
//!     requested: None,
//!     setup: Setup::CheckOnly,
//!     executable: None,
//! };
//! let settings = Settings::build(&env, cwd, Profile::Server, choice)?;
//! let provider = settings.sandbox.build_provider()?;
//! let router = app::app(app::AppState::new(settings, provider));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! axum::serve(listener, router).await?;
//! # Ok(()) }
//! ```

pub mod app;
mod auth;
pub mod cli;
pub mod config;
mod dashboard;
pub mod deploy;
pub mod doors;
pub mod env;
mod error;
mod events;
pub mod exit_watch;
mod health;
mod hex;
mod history;
mod json_field;
pub mod keys;
pub(crate) mod lifecycle;
pub mod lines;
pub mod model_proxy;
mod notify;
mod openapi;
mod outputs;
mod plan;
mod replay;
pub mod request;
mod run;
pub mod run_id;
pub mod runs;
pub mod sandbox;
pub mod secret;
pub mod settings;
pub mod shutdown;
pub mod spend;
pub mod sync;
pub mod telemetry;
pub mod triggers;
