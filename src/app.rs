//! The one HTTP application every door serves: `POST /query`, the `/runs`
//! routes of detached runs, `GET /health`, E2B's lifecycle webhooks at
//! `POST /webhooks/e2b`, and the dashboard at `GET /`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::StreamExt;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth;
use crate::error::ApiError;
use crate::events::RunEvent;
use crate::history::{self, History};
use crate::request::Query;
use crate::runs::{self, registry::Registry};
use crate::sandbox::SandboxProvider;
use crate::secret::Secret;
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use crate::{dashboard, openapi, plan, replay, run, telemetry, triggers};

/// How often an idle stream gets a comment line, so proxies and clients
/// keep the connection open while the agent thinks.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// The shared state of the application.
#[derive(Clone)]
pub struct AppState {
    /// Swapped whole by `ds serve --reload`; each request reads the
    /// settings of the moment it starts.
    settings: Arc<ArcSwap<Settings>>,
    provider: Arc<dyn SandboxProvider>,
    /// `/openapi.json`, with the sandbox providers' credential fields.
    openapi: Arc<str>,
    /// Ends the runs still going when the server stops waiting for them.
    shutdown: Shutdown,
    /// The detached runs started here.
    registry: Registry,
    /// Where runs are recorded, if they are.
    history: History,
    /// The counts each trigger's limits go by.
    trigger_limits: triggers::limits::Limiter,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("settings", &self.settings.load())
            .field("provider", &self.provider.name())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The state of a router serving `settings` with `provider`.
    pub fn new(settings: Settings, provider: Arc<dyn SandboxProvider>) -> Self {
        warn_of_inert_fields(&settings);
        crate::lifecycle::announce(&settings);
        let openapi = openapi::document(&settings.sandbox.credential_fields).into();
        AppState {
            settings: Arc::new(ArcSwap::from_pointee(settings)),
            provider,
            openapi,
            shutdown: Shutdown::never(),
            registry: Registry::default(),
            history: History::off(),
            trigger_limits: triggers::limits::Limiter::default(),
        }
    }

    /// The same state, its runs recorded in `history` (the door opens it
    /// from the settings).
    #[must_use]
    pub(crate) fn with_history(mut self, history: History) -> Self {
        self.history = history;
        self
    }

    /// The same state, its runs ended by `shutdown` (`ds serve`'s bound).
    #[must_use]
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The settings it serves with now.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Serves every later request with `settings` (`ds serve --reload`).
    /// The sandbox provider, the listening address, CORS and the run
    /// history stay as they were built.
    pub fn reload(&self, mut settings: Settings) {
        warn_of_inert_fields(&settings);
        // One outbox for the process, whatever the settings.
        settings.notify.outbox = self.settings.load().notify.outbox.clone();
        self.settings.store(Arc::new(settings));
    }

    /// The process's completion webhooks in flight, which a stopping
    /// server settles.
    pub(crate) fn outbox(&self) -> crate::notify::Outbox {
        self.settings.load().notify.outbox.clone()
    }

    /// Where runs are recorded.
    pub(crate) fn history(&self) -> &History {
        &self.history
    }

    /// The detached runs started here.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The sandbox provider runs use.
    pub fn provider(&self) -> &Arc<dyn SandboxProvider> {
        &self.provider
    }

    /// The counts each trigger's limits go by.
    pub(crate) fn trigger_limits(&self) -> &triggers::limits::Limiter {
        &self.trigger_limits
    }

    /// Starts a planned run with this state's provider, shutdown, registry
    /// and history.
    pub(crate) fn start_run(&self, plan: plan::RunPlan) -> run::RunHandle {
        run::spawn(
            self.provider.clone(),
            plan,
            self.shutdown.clone(),
            self.registry.clone(),
            &self.history,
        )
    }
}

/// Start-up warnings for what sandstorm.json says that does nothing yet,
/// and for webhook triggers anyone may call.
fn warn_of_inert_fields(settings: &Settings) {
    if let Ok(config) = &settings.config {
        for (field, why) in config.inert_fields() {
            tracing::warn!(field, "sandstorm.json: `{field}` does nothing yet: {why}");
        }
    }
    for trigger in settings.triggers.all() {
        if let triggers::Source::Webhook {
            path, public: true, ..
        } = &trigger.definition.source
        {
            tracing::warn!(
                trigger = %trigger.definition.name,
                %path,
                "webhook trigger is public: anyone who knows its URL can start runs"
            );
        }
    }
}

// Every door hands the router to a runtime that needs it, its state and its
// futures to be `Send` (lambda_http's `S::Future: Send`); fail the build,
// not a door, if that ever stops being true.
const _: () = {
    const fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<AppState>();
    assert_send_sync::<Router>();
};

#[allow(dead_code)]
fn query_future_is_send(state: State<AppState>, request: Request) -> impl Send {
    query(state, request)
}

/// The point in time a hosting platform cuts the response. A door puts it in
/// the request's extensions (Lambda's per-invocation deadline); otherwise
/// the configured `max_duration` counts from the request's arrival.
#[derive(Debug, Clone, Copy)]
pub struct PlatformDeadline(pub Instant);

/// The health check's path: `ds serve` keeps connections aside for it when
/// it is full (see `cli::serve`).
pub(crate) const HEALTH_PATH: &str = "/health";

/// Builds the router. Every door and every test goes through here.
pub fn app(state: AppState) -> Router {
    let settings = state.settings();
    let mut router = Router::new()
        .route("/query", post(query))
        .route("/runs", get(list_runs))
        .route("/runs/{id}", get(run_status).delete(cancel_run))
        .route("/runs/{id}/cancel", post(cancel_run))
        .route("/runs/{id}/events", get(run_events))
        .route("/runs/{id}/messages", post(run_messages))
        .route("/runs/{id}/replay", post(replay_run))
        .route("/runs/{id}/ended", post(run_ended))
        .route(HEALTH_PATH, get(health))
        .route(crate::lifecycle::PATH, post(crate::lifecycle::receive))
        .route("/openapi.json", get(openapi_document))
        .route("/triggers", get(triggers::route::list))
        .route("/triggers/fire/{name}", post(triggers::route::fire_by_hand))
        .route("/triggers/cron/{name}", get(triggers::cron_route::fire))
        .merge(dashboard::routes())
        .fallback(trigger_or_not_found)
        .with_state(state);
    if !settings.cors_origins.is_empty() {
        router = router.layer(cors(&settings.cors_origins));
    }
    router
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([http::Method::GET, http::Method::POST, http::Method::DELETE])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("x-e2b-api-key"),
        ])
        // A browser client needs the id of the run it just started, and
        // whether the events it reads are live or stored.
        .expose_headers([
            HeaderName::from_static("x-run-id"),
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("x-events-source"),
        ])
}

async fn openapi_document(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.to_string(),
    )
        .into_response()
}

/// `GET /health`, and with `?deep=true` the checks a run depends on.
async fn health(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let deep = query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.strip_prefix("deep="))
        .next_back();
    let deep = match deep {
        None | Some("false" | "0") => false,
        Some("true" | "1") => true,
        Some(_) => {
            return ApiError::invalid("deep", "deep must be true or false").into_response();
        }
    };
    if !deep {
        return Json(crate::health::shallow()).into_response();
    }
    let current = state.settings();
    let settings = &*current;
    if let Err(e) = auth::check(&settings.auth, &headers, settings.key_source.as_deref()).await {
        return e.into_response();
    }
    Json(crate::health::deep(settings, state.provider.as_ref()).await).into_response()
}

/// A webhook trigger's path (sandstorm.json's of the moment), or 404.
async fn trigger_or_not_found(State(state): State<AppState>, request: Request) -> Response {
    match triggers::route::webhook(&state, request).await {
        Some(response) => response,
        None => not_found(),
    }
}

fn not_found() -> Response {
    let body = serde_json::json!({"error": {"type": "not_found", "message": "no such route; the routes are POST /query, the /runs routes, the /triggers routes and webhook triggers' paths, GET /health, POST /webhooks/e2b and the dashboard at GET / (GET /openapi.json lists them)"}});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn query(State(state): State<AppState>, request: Request) -> Response {
    let request_id = request_id(request.headers());
    let started = start_query(&state, request, &request_id).await;
    started_response(started, &request_id, "query rejected")
}

/// The answer to a request that starts a run or a turn: its events (with
/// ids and `x-run-id` when it is detached), or why it was refused.
fn started_response(
    started: Result<Started, ApiError>,
    request_id: &str,
    refused: &'static str,
) -> Response {
    let mut response = match started {
        Ok(Started {
            events, run: None, ..
        }) => sse(events, None).into_response(),
        Ok(Started {
            events,
            run: Some(run),
            after,
        }) => {
            let mut response = sse(events, Some(Numbering::after(after))).into_response();
            if let Ok(value) = HeaderValue::from_str(&run) {
                response.headers_mut().insert("x-run-id", value);
            }
            response
        }
        Err(error) => {
            tracing::info!(%request_id, status = %error.status(), error = %error, "{refused}");
            error.into_response()
        }
    };
    set_request_id(&mut response, request_id);
    response
}

/// A run (or a turn of one) that has begun: its events, its id when it is
/// detached, and the id of the last event before its stream.
struct Started {
    events: tokio::sync::mpsc::Receiver<RunEvent>,
    run: Option<String>,
    after: u64,
}

/// A request with a query body, authorized and read: the body validated,
/// and when the platform cuts the response.
struct QueryRequest {
    query: Query,
    headers: HeaderMap,
    platform_deadline: Option<Instant>,
}

/// Everything every request with a query body is refused for.
async fn read_query(state: &AppState, request: Request) -> Result<QueryRequest, ApiError> {
    let current = state.settings();
    let (body, headers, platform_deadline) = read_request(state, request).await?;
    let query = Query::from_json(&body, &current.sandbox.credential_fields)?;
    Ok(QueryRequest {
        query,
        headers,
        platform_deadline,
    })
}

/// When the platform cuts the response to `request`: the door's deadline
/// ([`PlatformDeadline`]), else `max_duration` from its arrival.
pub(crate) fn platform_deadline(
    request: &Request,
    max_duration: Option<Duration>,
    arrived: Instant,
) -> Option<Instant> {
    request
        .extensions()
        .get::<PlatformDeadline>()
        .map(|d| d.0)
        .or_else(|| max_duration.map(|d| arrived + d))
}

/// A request with a JSON body, authorized: the body, the headers, and when
/// the platform cuts the response.
async fn read_request(
    state: &AppState,
    request: Request,
) -> Result<(bytes::Bytes, HeaderMap, Option<Instant>), ApiError> {
    let arrived = Instant::now();
    let current = state.settings();
    let settings = &*current;
    auth::check(
        &settings.auth,
        request.headers(),
        settings.key_source.as_deref(),
    )
    .await?;
    check_content_type(request.headers())?;
    let platform_deadline = platform_deadline(&request, settings.max_duration, arrived);
    let headers = request.headers().clone();
    let body = read_body(request, settings.max_body_bytes).await?;
    Ok((body, headers, platform_deadline))
}

/// Everything that can refuse a request happens here, before a sandbox
/// exists; past this point failures are in-band events.
async fn start_query(
    state: &AppState,
    request: Request,
    request_id: &str,
) -> Result<Started, ApiError> {
    let current = state.settings();
    let settings = &*current;
    let QueryRequest {
        query,
        headers,
        platform_deadline,
    } = read_query(state, request).await?;
    let brought = runs::brought_credential(settings, &query.keys);
    if let Some(run) = query.resume.clone() {
        let caller = runs::Caller::bringing(brought);
        return resume(state, query, &run, &caller, request_id, platform_deadline).await;
    }
    let caller = runs::owner(brought.as_ref());
    let mut plan = plan::prepare(
        settings,
        query,
        request_id.to_owned(),
        platform_deadline,
        Some(&caller),
    )
    .await?;
    plan.trace_parent = telemetry::context::from_headers(&headers);
    Ok(spawn(state, plan))
}

/// Starts a planned run: its events from the first, and its id when it is
/// detached.
fn spawn(state: &AppState, plan: plan::RunPlan) -> Started {
    let run = plan.detach.as_ref().map(|d| d.run.to_string());
    let handle = state.start_run(plan);
    Started {
        events: handle.events,
        run,
        after: 0,
    }
}

/// `POST /query {"resume": "<run id>"}`: the run's next turn, or with
/// `fork_session` a new run that branches from it.
async fn resume(
    state: &AppState,
    mut query: Query,
    run: &str,
    caller: &runs::Caller,
    request_id: &str,
    platform_deadline: Option<Instant>,
) -> Result<Started, ApiError> {
    let current = state.settings();
    let settings = &*current;
    let found = runs::find(
        settings,
        state.provider.as_ref(),
        &state.registry,
        run,
        caller,
        platform_deadline,
    )
    .await?;
    query.resume = None;
    if std::mem::take(&mut query.fork_session) {
        let plan = runs::turn::fork(
            settings,
            found,
            query,
            request_id.to_owned(),
            platform_deadline,
            caller.owner(),
        )
        .await?;
        return Ok(spawn(state, plan));
    }
    let context = runs::turn::Context {
        settings,
        registry: state.registry.clone(),
        shutdown: state.shutdown.clone(),
        platform_deadline,
        history: state.history.clone(),
    };
    let begun = runs::turn::follow_up(context, found, query, request_id.to_owned()).await?;
    Ok(Started {
        events: begun.handle.events,
        run: Some(begun.run_id),
        after: begun.after,
    })
}

/// `POST /runs/{id}/messages`: a follow-up turn of a run, streamed like
/// `/query`, its events numbered on from the turn before.
async fn run_messages(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let request_id = request_id(request.headers());
    let started = async {
        let QueryRequest {
            mut query,
            headers,
            platform_deadline,
        } = read_query(&state, request).await?;
        if query.resume.is_some() {
            return Err(ApiError::invalid(
                "resume",
                "resume names the run to continue on POST /query; here the path names it",
            ));
        }
        if query.fork_session {
            return Err(ApiError::invalid(
                "fork_session",
                "a fork is a new run: POST /query with resume and fork_session",
            ));
        }
        let current = state.settings();
        let settings = &*current;
        // The run's owner's credential, from the header or the body, is
        // also the turn's.
        let header = runs::Caller::of(settings, &headers);
        let brought = header
            .brought()
            .cloned()
            .or_else(|| runs::brought_credential(settings, &query.keys));
        if let (Some(key), Some(credential)) = (&brought, settings.sandbox.provider.credential) {
            query.keys.set_sandbox(credential.field, key.clone());
        }
        let caller = runs::Caller::bringing(brought);
        query.resume = Some(id.clone());
        resume(&state, query, &id, &caller, &request_id, platform_deadline).await
    }
    .await;
    started_response(started, &request_id, "follow-up refused")
}

/// `POST /runs/{id}/ended?turn=N`: a detached run's sandbox says a turn
/// ended (see [`crate::notify::callback`]). Not behind the API's token:
/// the call carries the run's own.
async fn run_ended(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let current = state.settings();
    let told = crate::notify::callback::turn_ended(
        &current,
        state.provider.as_ref(),
        &state.registry,
        &state.history,
        &id,
        query.as_deref(),
        &headers,
    )
    .await;
    let mut response = match told {
        Ok(told) => Json(told).into_response(),
        Err(error) => {
            tracing::info!(status = %error.status(), error = %error, "a run's call-back refused");
            error.into_response()
        }
    };
    set_request_id(&mut response, &request_id(&headers));
    response
}

/// `POST /runs/{id}/replay`: the recorded run again, with the body's
/// `/query` fields over its recorded request, streamed like `/query`; its
/// last events are the `replay` report and `done`.
async fn replay_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let request_id = request_id(request.headers());
    let started = async {
        let (body, headers, platform_deadline) = read_request(&state, request).await?;
        let overrides = replay::request::Overrides::parse(&body)?;
        let current = state.settings();
        let settings = &*current;
        // Whose run it is: the credential in the header, else the body's,
        // as for a follow-up turn.
        let brought = runs::Caller::of(settings, &headers)
            .brought()
            .cloned()
            .or_else(|| {
                let field = settings.sandbox.provider.credential?.field;
                overrides
                    .text(field)
                    .filter(|k| !k.is_empty())
                    .map(Secret::new)
            });
        let caller = runs::Caller::bringing(brought);
        let context = replay::Context {
            settings,
            provider: state.provider.as_ref(),
            registry: &state.registry,
            history: &state.history,
            platform_deadline,
        };
        let replay::Replaying {
            mut plan,
            original,
            replay,
            forked,
        } = replay::prepare(context, &id, overrides, &caller, request_id.clone()).await?;
        plan.trace_parent = telemetry::context::from_headers(&headers);
        let started = spawn(&state, plan);
        Ok(Started {
            events: replay::report::reporting(started.events, original, replay, forked),
            ..started
        })
    }
    .await;
    started_response(started, &request_id, "replay refused")
}

/// What `GET /runs/{id}/events` answers from.
enum EventSource {
    /// The run's sandbox: its event log, live.
    Live(runs::Found),
    /// Its sandbox is gone, and the history kept its events.
    Stored(history::events::Reader),
}

/// `GET /runs/{id}/events`: a run's events from the start, or after
/// `Last-Event-ID` / `?after=N`, then live until it ends; once its sandbox
/// is gone, the events the history kept of it, if it kept them.
async fn run_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    platform: Option<Extension<PlatformDeadline>>,
    headers: HeaderMap,
) -> Response {
    let request_id = request_id(&headers);
    let arrived = Instant::now();
    let current = state.settings();
    let settings = &*current;
    let source = async {
        auth::check(&settings.auth, &headers, settings.key_source.as_deref()).await?;
        let after = runs::after(&headers, query.as_deref())?;
        let platform_deadline = platform
            .map(|Extension(d)| d.0)
            .or_else(|| settings.max_duration.map(|d| arrived + d));
        let caller = runs::Caller::of(settings, &headers);
        let found = runs::find(
            settings,
            state.provider.as_ref(),
            &state.registry,
            &id,
            &caller,
            platform_deadline,
        )
        .await;
        let source = match found {
            Ok(found) => EventSource::Live(found),
            // An attached run is never found live: its kept events are
            // all there is to read of it, as of a detached one whose
            // sandbox is gone.
            Err(ApiError::NoSuchRun) => EventSource::Stored(
                history::api::kept_events(&state.history, caller.owner_digest(), &id)
                    .await
                    .ok_or(ApiError::NoSuchRun)?,
            ),
            Err(e) => return Err(e),
        };
        Ok::<_, ApiError>((source, after))
    }
    .await;
    let mut response = match source {
        Ok((EventSource::Stored(reader), after)) => {
            let mut response = stored_sse(reader, after).into_response();
            response
                .headers_mut()
                .insert("x-events-source", HeaderValue::from_static("history"));
            response
        }
        Ok((EventSource::Live(found), after)) => {
            let recording = state
                .history
                .reading(&found.follow.run.run_id, &found.follow.created_at);
            // A run this process started tells its webhook through any of
            // its readers that sees a turn end: once, whichever is first.
            let watch = found
                .follow
                .notice
                .clone()
                .map(|plan| crate::notify::Watch {
                    plan,
                    subject: crate::notify::notice::Subject::of(&found.follow),
                });
            let handle = run::detached::reattach(
                found.sandbox,
                found.follow,
                state.shutdown.clone(),
                state.registry.clone(),
            );
            let handle = crate::history::tap::tap(recording, handle);
            let handle = crate::notify::tap(watch, handle, false);
            sse(handle.events, Some(Numbering::after(after))).into_response()
        }
        Err(error) => {
            tracing::info!(%request_id, status = %error.status(), error = %error, "run read refused");
            error.into_response()
        }
    };
    set_request_id(&mut response, &request_id);
    response
}

/// `GET /runs`: the caller's runs, newest first: a page of the history,
/// and on the first page the runs that still have a sandbox.
async fn list_runs(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    run_json(&state, &headers, "list runs", async {
        let wanted = history::api::ListQuery::parse(query.as_deref())?;
        let settings = state.settings();
        // Later pages are the history's alone: the live runs came first.
        let live = if wanted.cursor.is_none() {
            runs::list(
                &settings,
                state.provider.as_ref(),
                &state.registry,
                &headers,
            )
            .await?
        } else {
            Vec::new()
        };
        let caller = runs::Caller::of(&settings, &headers);
        let page = history::api::page(&state.history, caller.owner_digest(), &wanted).await?;
        Ok(history::api::merged(live, page, &wanted))
    })
    .await
}

/// `GET /runs/{id}`: what the run is doing, from its sandbox while it has
/// one, over its record; a finished run's record.
async fn run_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    run_json(&state, &headers, "read a run's status", async {
        let settings = state.settings();
        let caller = runs::Caller::of(&settings, &headers);
        let record = history::api::record(&state.history, caller.owner_digest(), &id);
        let info = match find_run(&state, &id, &headers).await {
            Ok(found) => match runs::status::read(found.sandbox.as_ref(), &found.follow).await {
                Ok(info) => Some(info),
                // Its sandbox went (killed behind this server's back) since
                // it was found: the record says what became of the run.
                Err(e) => match runs::provider_error(&e) {
                    ApiError::NoSuchRun => None,
                    other => return Err(other),
                },
            },
            Err(ApiError::NoSuchRun) => None,
            Err(e) => return Err(e),
        };
        let record = record.await;
        if record.is_none() && info.is_none() {
            return Err(ApiError::NoSuchRun);
        }
        Ok(history::api::shown(record.as_ref(), info.as_ref()))
    })
    .await
}

/// `POST /runs/{id}/cancel` (0.9.2's path) and `DELETE /runs/{id}`.
async fn cancel_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    run_json(&state, &headers, "cancel a run", async {
        let found = find_run(&state, &id, &headers).await?;
        let info = runs::cancel(found, &state.registry).await?;
        if info.status == runs::status::Status::Cancelled {
            state.history.cancelled(&info.run_id, &info.created_at);
        }
        Ok(serde_json::to_value(info).unwrap_or_default())
    })
    .await
}

async fn find_run(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
) -> Result<runs::Found, ApiError> {
    runs::find(
        &state.settings(),
        state.provider.as_ref(),
        &state.registry,
        id,
        &runs::Caller::of(&state.settings(), headers),
        None,
    )
    .await
}

/// A `/runs` answer as JSON, behind the bearer token like `/query`.
async fn run_json(
    state: &AppState,
    headers: &HeaderMap,
    what: &'static str,
    answer: impl Future<Output = Result<serde_json::Value, ApiError>>,
) -> Response {
    let request_id = request_id(headers);
    let current = state.settings();
    let settings = &*current;
    let checked = auth::check(&settings.auth, headers, settings.key_source.as_deref()).await;
    let answered = match checked {
        Ok(()) => answer.await,
        Err(error) => Err(error),
    };
    let mut response = match answered {
        Ok(body) => Json(body).into_response(),
        Err(error) => {
            tracing::info!(%request_id, status = %error.status(), error = %error, what, "refused");
            error.into_response()
        }
    };
    set_request_id(&mut response, &request_id);
    response
}

/// The whole body, up to `limit` bytes. Only a body over the limit is a
/// 413; a client that resets or stalls mid-body gets a 400 that says so.
pub(crate) async fn read_body(request: Request, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|error| {
            let over_limit =
                std::iter::successors(Some(&error as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| e.is::<http_body_util::LengthLimitError>());
            if over_limit {
                ApiError::TooLarge {
                    field: None,
                    message: format!("request body exceeds the {limit}-byte limit"),
                }
            } else {
                ApiError::BadRequest {
                    message: format!("could not read the request body: {error}"),
                }
            }
        })
}

/// JSON, or no content type at all: `curl -d` sends form encoding by
/// default, and the original's README examples rely on it being accepted.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let mime = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let accepted = mime == "application/json"
        || (mime.starts_with("application/") && mime.ends_with("+json"))
        || mime == "application/x-www-form-urlencoded";
    if accepted {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// The ids of a detached run's events: each event's place in the run, from
/// 1, whoever serves it. A reader that comes back after `after` gets only
/// the events past it.
#[derive(Debug, Clone, Copy)]
struct Numbering {
    next: u64,
    after: u64,
}

impl Numbering {
    fn after(after: u64) -> Self {
        Numbering { next: 1, after }
    }

    /// The event as this stream sends it, if it does.
    fn number(&mut self, event: RunEvent) -> Option<Event> {
        match event {
            // Not part of the run: it says where this stream stopped.
            RunEvent::Detached(mut detached) => {
                detached.last_event_id = (self.next - 1).max(self.after);
                Some(data(&RunEvent::Detached(detached)))
            }
            // Not part of the run either: a reader of the run's log does
            // not get it, so it takes no id of the run's.
            event @ RunEvent::Replay(_) => Some(data(&event)),
            event => {
                let id = self.next;
                self.next += 1;
                (id > self.after).then(|| data(&event).id(id.to_string()))
            }
        }
    }
}

fn data(event: &RunEvent) -> Event {
    Event::default().data(String::from_utf8_lossy(&event.to_json()))
}

/// The response of a run's events. `numbering` is set for a detached run:
/// its events carry ids.
fn sse(
    events: tokio::sync::mpsc::Receiver<RunEvent>,
    mut numbering: Option<Numbering>,
) -> impl IntoResponse {
    let stream = ReceiverStream::new(events).filter_map(move |event| {
        // Progress is for the CLI's spinner; the API's events are the
        // agent's messages and the run's outcome.
        let event = match (event, numbering.as_mut()) {
            (RunEvent::Progress(_), _) => None,
            (event, None) => Some(data(&event)),
            (event, Some(numbering)) => numbering.number(event),
        };
        std::future::ready(event)
    });
    event_stream(stream)
}

/// The response of a run's stored events: those after `after`, each with
/// the id and the bytes a reader of the live run got, and an `omitted`
/// event where the cap left some out. A blob that turns out unreadable
/// part way ends the stream there (the status is sent by then), without a
/// `done`, as a stream cut short does.
fn stored_sse(reader: history::events::Reader, after: u64) -> impl IntoResponse {
    use history::events::Stored;
    let items = reader
        .map_while(|item| {
            item.inspect_err(
                |e| tracing::warn!(error = %e, "run history: a run's stored events broke off"),
            )
            .ok()
        })
        .filter_map(move |item| match item {
            Stored::Event { id, json } => (id > after).then(|| {
                Event::default()
                    .data(String::from_utf8_lossy(&json))
                    .id(id.to_string())
            }),
            // Unnumbered, as `detached` is: not an event of the run.
            Stored::Omitted { first, last } => (last > after).then(|| {
                Event::default().data(history::events::omitted_json(first.max(after + 1), last))
            }),
        });
    event_stream(futures::stream::iter(items))
}

/// An SSE response of `events`, with keepalives.
fn event_stream(events: impl futures::Stream<Item = Event> + Send + 'static) -> impl IntoResponse {
    let sse = Sse::new(events.map(Ok::<_, Infallible>)).keep_alive(
        KeepAlive::new()
            .interval(KEEPALIVE_INTERVAL)
            .text("keepalive"),
    );
    // Reverse proxies (nginx) buffer responses unless told not to.
    ([("x-accel-buffering", "no")], sse)
}

/// A client's `x-request-id` when it is short and printable, else a new one.
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}

fn set_request_id(response: &mut Response, request_id: &str) {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
}

#[cfg(test)]
mod tests;
