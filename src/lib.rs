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
//! use sandstorm::{app, env::EnvVars, settings::{SandboxKind, Settings}};
//! let env = EnvVars::from_process_and_dotenv(std::path::Path::new("."))?;
//! let settings = Settings::from_env(env, std::path::Path::new("."), SandboxKind::E2b)?;
//! let provider = sandstorm::sandbox::provider_for(&settings, sandstorm::runner_install::Install::CheckOnly)?;
//! let router = app::app(app::AppState::new(settings, provider));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! axum::serve(listener, router).await?;
//! # Ok(()) }
//! ```

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod doors;
pub mod env;
pub mod error;
pub mod events;
pub mod keys;
pub mod lines;
pub mod openapi;
pub mod outputs;
pub mod plan;
pub mod request;
pub mod run;
pub mod runner_install;
pub mod sandbox;
pub mod secret;
#[cfg(feature = "aws-secrets")]
pub mod secrets;
pub mod settings;
pub mod sync;
pub mod telemetry;
