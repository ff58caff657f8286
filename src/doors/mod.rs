//! What the serverless doors (the Lambda `bootstrap`, the Vercel functions)
//! share, so that each door stays a short `main` that only adapts its
//! runtime's types.
//!
//! Nothing here knows lambda_http or vercel_runtime: a door turns its
//! platform's deadline into a [`PlatformDeadline`](crate::app::PlatformDeadline)
//! with [`deadline_from_epoch_ms`], and builds its router with
//! [`serverless_app`].

use std::future::Future;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use tokio::time::Instant;

use crate::app::{self, AppState};
use crate::env::EnvVars;
use crate::history::History;
use crate::sandbox::provider::{Catalog, Setup};
use crate::sandbox::{e2b, local};
use crate::settings::{HistorySettings, Profile, SANDBOX_VARIABLE, SandboxChoice, Settings};

#[cfg(any(feature = "aws-secrets", feature = "aws-dynamodb"))]
mod aws;
pub mod scheduled;
#[cfg(feature = "aws-secrets")]
pub mod secrets;

/// Every sandbox provider `ds` and `ds serve` offer, in order of preference
/// when none is named: the first whose credential is set, else the first
/// that needs none. Adding a provider is one line here (see
/// [`crate::sandbox::provider`]).
pub const PROVIDERS: Catalog = &[&e2b::PROVIDER, &local::PROVIDER];

/// The providers a serverless function can run: those whose declaration
/// says so.
pub(crate) const SERVERLESS_PROVIDERS: Catalog = &[&e2b::PROVIDER];

/// The `maxDuration` that `vercel.json` gives the functions, and so the
/// limit a Vercel run must end before when `SANDSTORM_MAX_DURATION` does
/// not say otherwise. A test keeps the two equal.
pub const VERCEL_MAX_DURATION: Duration = Duration::from_secs(300);

/// The platform a serverless door runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// AWS Lambda: the deadline comes with each invocation.
    Lambda,
    /// Vercel: the deadline is the function's `maxDuration`.
    Vercel,
}

impl Platform {
    fn name(self) -> &'static str {
        match self {
            Platform::Lambda => "AWS Lambda",
            Platform::Vercel => "Vercel",
        }
    }
}

/// The settings of a serverless door.
///
/// They differ from `ds serve` in three ways:
/// - the sandbox is one of [`SERVERLESS_PROVIDERS`] (E2B): a function has no
///   bubblewrap and no room for the agent's node_modules, so
///   `SANDSTORM_SANDBOX=local` is refused here rather than failing on the
///   first query;
/// - anonymous `/query` is refused unless `SANDSTORM_ALLOW_ANONYMOUS=1`: a
///   function URL is public, and every query spends its owner's API keys;
/// - on Vercel the run ends before `maxDuration` ([`VERCEL_MAX_DURATION`]
///   unless `SANDSTORM_MAX_DURATION` is set).
///
/// With the `aws-secrets` feature and `SANDSTORM_SECRET_ID` set, keys the
/// environment lacks are read from that AWS secret.
pub async fn serverless_settings(
    env: EnvVars,
    cwd: &Path,
    platform: Platform,
) -> Result<Settings, String> {
    if let Some(other) = env.get(SANDBOX_VARIABLE)
        && !SERVERLESS_PROVIDERS.iter().any(|p| p.name == other)
    {
        return Err(format!(
            "{SANDBOX_VARIABLE}={other} is not available on {}: serverless functions run \
             agents in E2B sandboxes only; unset {SANDBOX_VARIABLE} or set it to e2b",
            platform.name()
        ));
    }
    let max_duration = match platform {
        Platform::Lambda => None,
        Platform::Vercel => Some(VERCEL_MAX_DURATION),
    };
    let choice = SandboxChoice {
        catalog: SERVERLESS_PROVIDERS,
        requested: None,
        setup: Setup::CheckOnly,
        // Serverless providers need nothing beside the function's binary.
        executable: None,
    };
    let mut settings = Settings::build(&env, cwd, Profile::Serverless { max_duration }, choice)?;
    settings.key_source = key_source(&env).await?;
    Ok(settings)
}

#[cfg(feature = "aws-secrets")]
async fn key_source(
    env: &EnvVars,
) -> Result<Option<std::sync::Arc<dyn crate::keys::KeySource>>, String> {
    Ok(secrets::SecretsManagerSource::from_env(env)
        .await?
        .map(|source| std::sync::Arc::new(source) as std::sync::Arc<dyn crate::keys::KeySource>))
}

#[cfg(not(feature = "aws-secrets"))]
#[allow(clippy::unused_async)] // the same signature as with the feature
async fn key_source(
    env: &EnvVars,
) -> Result<Option<std::sync::Arc<dyn crate::keys::KeySource>>, String> {
    match env.get("SANDSTORM_SECRET_ID") {
        Some(_) => Err(
            "SANDSTORM_SECRET_ID is set but this build has no AWS Secrets Manager \
                        support; build with --features aws-secrets"
                .into(),
        ),
        None => Ok(None),
    }
}

/// The router of a serverless door: [`serverless_settings`], the E2B
/// provider, the run history its settings ask for, and [`app::app`].
pub async fn serverless_app(
    env: EnvVars,
    cwd: &Path,
    platform: Platform,
) -> Result<Router, String> {
    Ok(serverless(env, cwd, platform).await?.router)
}

/// A serverless door's application: its router, and the state behind it
/// for what comes in other than HTTP (the Lambda door's scheduled
/// invocations, [`scheduled`]).
#[derive(Debug, Clone)]
pub struct Serverless {
    /// What the router serves from.
    pub state: AppState,
    /// What serves HTTP.
    pub router: Router,
}

/// [`serverless_app`], with its state.
pub async fn serverless(
    env: EnvVars,
    cwd: &Path,
    platform: Platform,
) -> Result<Serverless, String> {
    let settings = serverless_settings(env.clone(), cwd, platform).await?;
    let provider = settings.sandbox.build_provider()?;
    // Off unless SANDSTORM_HISTORY_TABLE names a table (or
    // SANDSTORM_HISTORY_PATH a file): an instance's own disk does not
    // outlive it.
    let history = serverless_history(&env, &settings.history)
        .await?
        .settling_ends(SETTLE_ENDS);
    // Each response flushes the run's spans before it ends (see
    // `telemetry::flush`).
    let telemetry = crate::telemetry::Telemetry::active();
    let state = AppState::new(settings, provider).with_history(history);
    let router = app::app(state.clone()).layer(axum::middleware::map_response(
        move |response: axum::response::Response| {
            let telemetry = telemetry.clone();
            async move { crate::telemetry::flush::at_end(response, telemetry) }
        },
    ));
    Ok(Serverless { state, router })
}

/// How long a run's `done` waits for its record's end to land on a
/// serverless door. The platform may freeze the instance as soon as the
/// response ends (Lambda does), and a write left in the queue would then
/// wait for the next invocation, or for ever. One write takes milliseconds;
/// a store that is down costs the client at most this, never the run.
const SETTLE_ENDS: Duration = Duration::from_secs(2);

/// How long one DynamoDB call of the history may take, retries included:
/// under the history writer's own bound, so the SDK's error is the one
/// logged.
#[cfg(feature = "aws-dynamodb")]
const HISTORY_CALL_TIMEOUT: Duration = Duration::from_secs(4);

/// The history of a serverless door: the DynamoDB table
/// `SANDSTORM_HISTORY_TABLE` names, else what [`crate::history::open`]
/// makes of its settings. A table with no region to find it in is a
/// start-up error; a table that is down later is only logged.
#[cfg(feature = "aws-dynamodb")]
async fn serverless_history(env: &EnvVars, settings: &HistorySettings) -> Result<History, String> {
    let Some(table) = &settings.table else {
        return Ok(crate::history::open(settings));
    };
    let config = aws::sdk_config(env, HISTORY_CALL_TIMEOUT).await;
    if config.region().is_none() {
        return Err(format!(
            "SANDSTORM_HISTORY_TABLE is set to {table:?} but no AWS region is configured; \
             set AWS_REGION"
        ));
    }
    let mut client = aws_sdk_dynamodb::config::Builder::from(&config);
    if let Some(url) = aws::endpoint(env, "AWS_ENDPOINT_URL_DYNAMODB") {
        client = client.endpoint_url(url);
    }
    let store = crate::history::dynamodb::DynamoDbStore::new(
        aws_sdk_dynamodb::Client::from_conf(client.build()),
        table.clone(),
        settings.retention,
    );
    tracing::info!(table = %table, "run history: recording runs in DynamoDB");
    // No sweep: the store's records carry their TTL.
    Ok(History::spawn(std::sync::Arc::new(store), None).storing_events(settings.store_events))
}

#[cfg(not(feature = "aws-dynamodb"))]
#[allow(clippy::unused_async)] // the same signature as with the feature
async fn serverless_history(_env: &EnvVars, settings: &HistorySettings) -> Result<History, String> {
    match &settings.table {
        Some(_) => Err(
            "SANDSTORM_HISTORY_TABLE is set but this build has no DynamoDB support; \
             build with --features aws-dynamodb"
                .into(),
        ),
        None => Ok(crate::history::open(settings)),
    }
}

/// Converts a deadline in milliseconds since the Unix epoch (Lambda's
/// `Lambda-Runtime-Deadline-Ms`) into a monotonic instant, given the wall
/// clock's `now`.
///
/// `None` when the deadline is not in the future. Lambda itself always sends
/// one ahead of the invocation's start; local emulators may not (`cargo
/// lambda watch` sends a fixed 600000, ten minutes after 1970), and taking
/// that at its word would end every run at once.
pub fn deadline_from_epoch_ms(deadline_ms: u64, now: SystemTime) -> Option<Instant> {
    let deadline = UNIX_EPOCH + Duration::from_millis(deadline_ms);
    let remaining = deadline.duration_since(now).ok()?;
    Some(Instant::now() + remaining)
}

/// How many times in a row a runtime loop may fail soon after it started
/// before [`keep_running`] gives up.
const MAX_QUICK_FAILURES: u32 = 5;
/// A failure this soon after a start counts as "in a row".
const QUICK_FAILURE: Duration = Duration::from_secs(1);

/// Runs a platform's request loop, and runs it again when it fails.
///
/// lambda_runtime ends its loop on any error talking to the Runtime API,
/// even a connection closed between two polls of `/next` (which `cargo
/// lambda watch`, answering empty polls at once, provokes). Exiting would
/// make Lambda start a cold environment. Failing [`MAX_QUICK_FAILURES`]
/// times in a row within a second of each start means the API is gone, and
/// the error is returned.
pub async fn keep_running<F, Fut, E>(mut run: F) -> Result<(), E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut quick_failures = 0;
    loop {
        let started = Instant::now();
        let Err(error) = run().await else {
            return Ok(());
        };
        quick_failures = if started.elapsed() < QUICK_FAILURE {
            quick_failures + 1
        } else {
            1
        };
        if quick_failures >= MAX_QUICK_FAILURES {
            return Err(error);
        }
        tracing::warn!(%error, "the runtime loop failed; starting it again");
        tokio::time::sleep(Duration::from_millis(100) * quick_failures).await;
    }
}

/// Maps `/api/<name>` to `/<name>`, keeping the query string.
///
/// `vercel.json` rewrites `/query` to the function `api/query.rs` and
/// `/health` to `api/health.rs`. Whether the function then sees the path the
/// client asked for or the rewrite's destination, the router gets `/query`
/// or `/health`; calling a function by its own path works too.
pub fn strip_api_prefix<B>(mut request: http::Request<B>) -> http::Request<B> {
    let uri = request.uri();
    let Some(rest) = uri.path().strip_prefix("/api/") else {
        return request;
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("/{rest}?{query}"),
        None => format!("/{rest}"),
    };
    let mut parts = uri.clone().into_parts();
    if let Ok(rewritten) = path_and_query.parse() {
        parts.path_and_query = Some(rewritten);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvVars {
        EnvVars::from_pairs(pairs.iter().copied())
    }

    async fn settings(pairs: &[(&str, &str)], platform: Platform) -> Result<Settings, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        serverless_settings(env(pairs), dir.path(), platform).await
    }

    #[tokio::test]
    async fn a_local_sandbox_is_a_startup_error() {
        let err = settings(&[("SANDSTORM_SANDBOX", "local")], Platform::Lambda)
            .await
            .expect_err("refused");
        assert!(err.contains("SANDSTORM_SANDBOX=local"), "{err}");
        assert!(err.contains("E2B"), "{err}");
        let ok = settings(&[("SANDSTORM_SANDBOX", "e2b")], Platform::Lambda)
            .await
            .expect("e2b is fine");
        assert_eq!(ok.sandbox.provider.name, e2b::PROVIDER.name);
    }

    #[tokio::test]
    async fn anonymous_access_is_off_unless_asked_for() {
        let closed = settings(&[], Platform::Vercel).await.expect("settings");
        assert!(!closed.auth.allow_anonymous);
        let open = settings(&[("SANDSTORM_ALLOW_ANONYMOUS", "1")], Platform::Lambda)
            .await
            .expect("settings");
        assert!(open.auth.allow_anonymous);
    }

    #[tokio::test]
    async fn vercel_runs_end_before_max_duration_and_lambda_uses_its_context() {
        let vercel = settings(&[], Platform::Vercel).await.expect("settings");
        assert_eq!(vercel.max_duration, Some(VERCEL_MAX_DURATION));
        let custom = settings(&[("SANDSTORM_MAX_DURATION", "800")], Platform::Vercel)
            .await
            .expect("settings");
        assert_eq!(custom.max_duration, Some(Duration::from_secs(800)));
        let lambda = settings(&[], Platform::Lambda).await.expect("settings");
        assert_eq!(lambda.max_duration, None);
    }

    #[test]
    fn epoch_deadlines_become_instants() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let before = Instant::now();
        let deadline = deadline_from_epoch_ms(1_700_000_000_000 + 30_000, now).expect("ahead");
        let remaining = deadline - before;
        assert!(
            remaining >= Duration::from_secs(30) && remaining < Duration::from_secs(31),
            "{remaining:?}"
        );
        // What `cargo lambda watch` sends.
        assert_eq!(deadline_from_epoch_ms(600_000, now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_loop_is_restarted_until_it_fails_quickly_in_a_row() {
        let mut calls = 0;
        let once = keep_running(|| {
            calls += 1;
            let result = if calls == 1 { Err("reset") } else { Ok(()) };
            async move { result }
        })
        .await;
        assert_eq!((once, calls), (Ok(()), 2));

        let mut calls = 0;
        let gone = keep_running(|| {
            calls += 1;
            async { Err::<(), _>("connection refused") }
        })
        .await;
        assert_eq!(
            (gone, calls),
            (Err("connection refused"), MAX_QUICK_FAILURES)
        );
    }

    #[tokio::test]
    async fn a_serverless_router_serves_the_dashboard_to_anyone_and_the_api_to_the_token() {
        use tower::ServiceExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let token = "t".repeat(crate::auth::MIN_TOKEN_CHARS);
        for platform in [Platform::Lambda, Platform::Vercel] {
            let router = serverless_app(
                env(&[("SANDSTORM_API_TOKEN", &token), ("E2B_API_KEY", "e2b_test")]),
                dir.path(),
                platform,
            )
            .await
            .expect("router");
            let status = |path: &str| {
                let request = http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .expect("request");
                let router = router.clone();
                async move {
                    let response = router.oneshot(request).await.expect("response");
                    let csp = response.headers().contains_key("content-security-policy");
                    (response.status().as_u16(), csp)
                }
            };
            assert_eq!(status("/").await, (200, true), "{platform:?}");
            assert_eq!(
                status("/dashboard/app.js").await,
                (200, true),
                "{platform:?}"
            );
            assert_eq!(status("/runs").await, (401, false), "{platform:?}");
        }
    }

    #[test]
    fn api_prefixes_are_stripped() {
        let request = |uri: &str| http::Request::get(uri).body(()).expect("request");
        assert_eq!(strip_api_prefix(request("/api/query")).uri(), "/query");
        assert_eq!(
            strip_api_prefix(request("/api/health?x=1")).uri(),
            "/health?x=1"
        );
        assert_eq!(strip_api_prefix(request("/query")).uri(), "/query");
        assert_eq!(strip_api_prefix(request("/apiary")).uri(), "/apiary");
    }
}
