//! The Vercel function behind `/query` (see `vercel.json`): the shared
//! router under vercel_runtime, which streams `text/event-stream` bodies.
//! `api/health.rs` is the same door for `/health`.
//!
//! Vercel's deadline is the function's `maxDuration`; the router knows it
//! from `SANDSTORM_MAX_DURATION` (default: the value in `vercel.json`).

use std::process::ExitCode;

use sandstorm::doors::{self, Platform};
use sandstorm::env::EnvVars;
use sandstorm::telemetry::{self, Format};
use tower::ServiceBuilder;
use vercel_runtime::axum::VercelLayer;

#[tokio::main]
pub(crate) async fn main() -> ExitCode {
    telemetry::init(Format::Json, "info");
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let env = EnvVars::from_pairs(std::env::vars());
    let router = match doors::serverless_app(env, &cwd, Platform::Vercel).await {
        Ok(router) => router,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let service = ServiceBuilder::new()
        .layer(VercelLayer::new())
        .map_request(doors::strip_api_prefix)
        .service(router);
    match vercel_runtime::run(service).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "the Vercel runtime stopped");
            ExitCode::FAILURE
        }
    }
}
