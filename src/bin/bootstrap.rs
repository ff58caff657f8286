//! The AWS Lambda door: the shared router under lambda_http's streaming
//! runtime, behind a Function URL with `InvokeMode: RESPONSE_STREAM`.
//!
//! Its only work of its own: it gives each request its invocation's
//! deadline as a [`PlatformDeadline`], so a run ends itself (an `error`
//! event of type `timeout`, the sandbox destroyed) before Lambda cuts the
//! stream; and it uses the invocation's request id as the run's request id
//! when the client sends none, so events and CloudWatch lines match.

use std::process::ExitCode;
use std::time::SystemTime;

use lambda_http::tower::ServiceBuilder;
use lambda_http::{Request, RequestExt, run_with_streaming_response};
use sandstorm::app::PlatformDeadline;
use sandstorm::doors::{self, Platform};
use sandstorm::env::EnvVars;
use sandstorm::telemetry::{self, Format};

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init(Format::Json, "info");
    // The function's own directory (/var/task), where a bundled
    // sandstorm.json is found.
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/var/task".into());
    let env = EnvVars::from_pairs(std::env::vars());
    let router = match doors::serverless_app(env, &cwd, Platform::Lambda).await {
        Ok(router) => router,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let service = ServiceBuilder::new()
        .map_request(with_invocation)
        .service(router);
    match doors::keep_running(|| run_with_streaming_response(service.clone())).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "the Lambda runtime stopped");
            ExitCode::FAILURE
        }
    }
}

fn with_invocation(mut request: Request) -> Request {
    let Some(context) = request.lambda_context_ref() else {
        return request;
    };
    let deadline = doors::deadline_from_epoch_ms(context.deadline, SystemTime::now());
    let request_id = http::HeaderValue::from_str(&context.request_id).ok();
    match deadline {
        Some(deadline) => {
            request.extensions_mut().insert(PlatformDeadline(deadline));
        }
        None => tracing::warn!(
            deadline_ms = context.deadline,
            "the invocation's deadline is already past; ignoring it (a local emulator?)"
        ),
    }
    if let Some(id) = request_id
        && !request.headers().contains_key("x-request-id")
    {
        request.headers_mut().insert("x-request-id", id);
    }
    request
}
