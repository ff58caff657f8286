//! The control plane: create, get, list, kill, set-timeout, connect, pause
//! and resume, authenticated by `X-API-KEY`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use e2b_wire::control::{
    AccessToken, ConnectSandbox, ListedSandbox, NewSandbox, Sandbox as SandboxJson, SandboxDetail,
    SandboxState as StateJson, SetTimeout,
};
use sandstorm::sandbox::local::State as SandboxState;
use sandstorm::sandbox::{Sandbox, SandboxSpec};
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use super::knobs::CreateFaultMode;
use super::pause;
use super::stats::route;
use super::webhooks::{self, Details};
use super::{Emulator, EmulatorError, Entry, lock};
use e2b_wire::events;

/// E2B's default sandbox lifetime when create names none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The `clientID` of every sandbox (E2B names the cluster node).
const CLIENT_ID: &str = "emulator";

pub(super) fn routes() -> Router<Emulator> {
    Router::new()
        .route("/sandboxes", post(create_v1).get(list_v1))
        .route("/v2/sandboxes", post(create_v2).get(list_v2))
        .route("/sandboxes/{id}", get(info).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/pause", post(pause::pause))
        .route("/sandboxes/{id}/resume", post(pause::resume))
}

/// Checks `X-API-KEY` against the one key the emulator was given, in
/// constant time.
pub(super) async fn require_api_key(
    State(emulator): State<Emulator>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let expected = emulator.inner.api_key.expose().as_bytes();
    let ok = bool::from(given.as_bytes().ct_eq(expected));
    if ok {
        next.run(request).await
    } else {
        EmulatorError::new(StatusCode::UNAUTHORIZED, "Invalid API key").into_response()
    }
}

/// What one `Idempotency-Key` stands for.
pub(crate) enum Idempotent {
    /// A create with this key is still running.
    InFlight,
    /// A create with this key made this sandbox from this body.
    Done(serde_json::Value, SandboxJson),
}

/// `POST /sandboxes`: deprecated by E2B for `POST /v2/sandboxes`, still
/// served (our client and older SDKs use it), and logged so a test run
/// shows who still calls it.
async fn create_v1(State(emulator): State<Emulator>, body: axum::body::Bytes) -> Response {
    tracing::warn!("POST /sandboxes is deprecated: E2B's SDKs create with POST /v2/sandboxes");
    create(emulator, body, Api::V1).await
}

/// `POST /v2/sandboxes`: create, made safe to retry by `Idempotency-Key`.
///
/// E2B's public sources do not show how the key is handled; the spec's
/// answers for this call do (409 and 422 besides create's own), so the
/// emulator answers as an idempotency key usually works: the same key and
/// the same body give back the first sandbox, a different body with a used
/// key is 422, and a key whose first create is still running is 409.
async fn create_v2(
    State(emulator): State<Emulator>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(key) = headers.get("idempotency-key") else {
        return create(emulator, body, Api::V2).await;
    };
    emulator.inner.stats.request(route::CREATE);
    if let Some(fault) = injected_fault(&emulator).await {
        return fault;
    }
    let Some(key) = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
    else {
        return EmulatorError::new(
            StatusCode::BAD_REQUEST,
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )
        .into_response();
    };
    let key = key.to_owned();
    let value: serde_json::Value = match parse(&body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    {
        let mut keys = lock(&emulator.inner.idempotency);
        match keys.get(&key) {
            Some(Idempotent::InFlight) => {
                return EmulatorError::new(
                    StatusCode::CONFLICT,
                    "a create with this Idempotency-Key is still in progress",
                )
                .into_response();
            }
            Some(Idempotent::Done(first, sandbox)) => {
                if *first == value {
                    return (StatusCode::CREATED, axum::Json(sandbox.clone())).into_response();
                }
                return EmulatorError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Idempotency-Key was already used with a different request body",
                )
                .into_response();
            }
            None => {
                keys.insert(key.clone(), Idempotent::InFlight);
            }
        }
    }
    // A client that gives up drops this handler mid-create; the key must
    // then be free for its retry, as after any failed create.
    let in_flight = InFlightKey {
        emulator: emulator.clone(),
        key: Some(key.clone()),
    };
    let response = create_sandbox(emulator.clone(), body, Api::V2).await;
    in_flight.disarm();
    let mut keys = lock(&emulator.inner.idempotency);
    if response.status() == StatusCode::CREATED {
        // A replay answers exactly what the first create did.
        if let Some(sandbox) = response
            .extensions()
            .get::<CreatedSandbox>()
            .map(|c| c.0.clone())
        {
            keys.insert(key, Idempotent::Done(value, sandbox));
            return response;
        }
    }
    // A failed create leaves the key free for the retry it invites.
    keys.remove(&key);
    response
}

/// Frees an in-flight `Idempotency-Key` if its create is dropped before it
/// finishes.
struct InFlightKey {
    emulator: Emulator,
    key: Option<String>,
}

impl InFlightKey {
    /// The create finished: its handler settles the key itself.
    fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for InFlightKey {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            lock(&self.emulator.inner.idempotency).remove(&key);
        }
    }
}

/// The answer of a successful create, kept beside its response for the
/// idempotency record.
#[derive(Clone)]
struct CreatedSandbox(SandboxJson);

/// Refuses what E2B's API refuses before it boots anything: a timeout of
/// zero or above the plan's limit, and a template it does not know.
fn check_create(emulator: &Emulator, new: &NewSandbox) -> Result<(), EmulatorError> {
    if emulator.inner.lenient {
        return Ok(());
    }
    if let Some(timeout) = new.timeout {
        if timeout == 0 {
            return Err(EmulatorError::new(
                StatusCode::BAD_REQUEST,
                "Timeout must be greater than 0",
            ));
        }
        let max = emulator.inner.max_timeout_secs;
        if timeout > max {
            // E2B states the plan's limit in whole hours.
            return Err(EmulatorError::new(
                StatusCode::BAD_REQUEST,
                format!("Timeout cannot be greater than {} hours", max / 3600),
            ));
        }
    }
    let template = new.template_id.as_deref().unwrap_or("base");
    if !emulator.inner.templates.contains(template) {
        return Err(EmulatorError::new(
            StatusCode::NOT_FOUND,
            format!("template '{template}' not found"),
        ));
    }
    Ok(())
}

async fn create(emulator: Emulator, body: axum::body::Bytes, api: Api) -> Response {
    emulator.inner.stats.request(route::CREATE);
    if let Some(fault) = injected_fault(&emulator).await {
        return fault;
    }
    create_sandbox(emulator, body, api).await
}

/// The create fault the knobs hold, if any. It stands for the edge failing
/// before E2B's API sees the request, so it comes before any idempotency
/// bookkeeping: the retry of a create that hung is not refused as still in
/// progress.
async fn injected_fault(emulator: &Emulator) -> Option<Response> {
    let fault = emulator.knobs().take_create_fault();
    match fault? {
        CreateFaultMode::Error => Some(
            EmulatorError::new(StatusCode::INTERNAL_SERVER_ERROR, "injected create failure")
                .into_response(),
        ),
        CreateFaultMode::Unavailable => Some(
            EmulatorError::new(StatusCode::SERVICE_UNAVAILABLE, "injected create failure")
                .into_response(),
        ),
        CreateFaultMode::RateLimit => {
            let retry_after = emulator.knobs().retry_after_secs();
            let mut response =
                EmulatorError::new(StatusCode::TOO_MANY_REQUESTS, "injected rate limit")
                    .into_response();
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(retry_after));
            Some(response)
        }
        CreateFaultMode::Hang => std::future::pending().await,
    }
}

/// Create past the faults: check the body, then boot the sandbox.
/// Which create was called: v2 sandboxes are always secure, as the SDKs
/// (which no longer send `secure` there) expect; v1 asks with `secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    V1,
    V2,
}

async fn create_sandbox(emulator: Emulator, body: axum::body::Bytes, api: Api) -> Response {
    let new: NewSandbox = match parse(&body) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = check_create(&emulator, &new) {
        return e.into_response();
    }
    let timeout = new
        .timeout
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let sandbox = match emulator
        .inner
        .provider
        .create(SandboxSpec {
            lifetime: timeout,
            ..SandboxSpec::default()
        })
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "creating a local sandbox failed");
            return EmulatorError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not create the sandbox",
            )
            .into_response();
        }
    };
    let started_at = SystemTime::now();
    let entry = Arc::new(Entry {
        id: new_id(),
        template_id: new.template_id.unwrap_or_else(|| "base".to_owned()),
        metadata: new.metadata,
        env_vars: new.env_vars,
        started_at,
        execution_id: uuid::Uuid::new_v4().to_string(),
        end_at: std::sync::Mutex::new(started_at + timeout),
        // E2B issues a token only to a secure sandbox: every v2 one, and
        // a v1 one when create asks for `secure`.
        access_token: (api == Api::V2 || new.secure == Some(true))
            .then(|| AccessToken::new(uuid::Uuid::new_v4().simple().to_string())),
        envd_version: emulator.inner.envd_version.clone(),
        sandbox,
        paused: std::sync::atomic::AtomicBool::new(false),
        auto_pause: new.auto_pause == Some(true),
        transition: tokio::sync::Mutex::new(()),
        processes: Default::default(),
    });
    lock(&emulator.inner.sandboxes).insert(entry.id.clone(), entry.clone());
    emulator.inner.stats.created();
    webhooks::publish(&emulator, &entry, events::CREATED, Details::default());
    if entry.auto_pause {
        // Its timeout is the emulator's to act on, not the sandbox's.
        entry.sandbox.clear_lifetime();
        tokio::spawn(pause::at_timeout(emulator.clone(), entry.clone()));
    }
    tokio::spawn(forget_when_expired(emulator, entry.clone()));
    let json = sandbox_json(&entry);
    let mut response = (StatusCode::CREATED, axum::Json(json.clone())).into_response();
    response.extensions_mut().insert(CreatedSandbox(json));
    response
}

/// E2B sandbox ids are short lowercase alphanumerics.
fn new_id() -> String {
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    id.truncate(20);
    id
}

/// Drops the sandbox from the registry when its timeout kills it.
async fn forget_when_expired(emulator: Emulator, entry: Arc<Entry>) {
    if entry.sandbox.stopped().await == SandboxState::Expired {
        let removed = {
            let mut sandboxes = lock(&emulator.inner.sandboxes);
            match sandboxes.get(&entry.id) {
                Some(e) if Arc::ptr_eq(e, &entry) => sandboxes.remove(&entry.id).is_some(),
                _ => false,
            }
        };
        if removed {
            killed(&emulator, &entry, events::KILL_REASON_TIMEOUT);
        }
    }
}

/// Counts a sandbox killed and tells the lifecycle webhooks why.
fn killed(emulator: &Emulator, entry: &Entry, reason: &'static str) {
    emulator.inner.stats.killed();
    webhooks::publish(
        emulator,
        entry,
        events::KILLED,
        Details {
            kill_reason: Some(reason),
            ..Details::default()
        },
    );
}

/// Create's and connect's answer.
pub(super) fn sandbox_json(entry: &Entry) -> SandboxJson {
    SandboxJson {
        template_id: entry.template_id.clone(),
        sandbox_id: entry.id.clone(),
        client_id: CLIENT_ID.to_owned(),
        alias: Some(entry.template_id.clone()),
        envd_version: entry.envd_version.clone(),
        envd_access_token: entry.access_token.clone(),
        domain: None,
    }
}

/// One entry of the list endpoints.
fn listed_json(entry: &Entry) -> ListedSandbox {
    ListedSandbox {
        template_id: entry.template_id.clone(),
        sandbox_id: entry.id.clone(),
        client_id: CLIENT_ID.to_owned(),
        alias: Some(entry.template_id.clone()),
        started_at: rfc3339(entry.started_at),
        end_at: rfc3339(*lock(&entry.end_at)),
        cpu_count: 2,
        memory_mb: 512,
        disk_size_mb: 1024,
        state: if pause::is_paused(entry) {
            StateJson::Paused
        } else {
            StateJson::Running
        },
        envd_version: entry.envd_version.clone(),
        metadata: entry.metadata.clone(),
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

pub(super) fn not_found(id: &str) -> EmulatorError {
    EmulatorError::new(StatusCode::NOT_FOUND, format!("sandbox {id} not found"))
}

async fn info(State(emulator): State<Emulator>, Path(id): Path<String>) -> Response {
    emulator.inner.stats.request(route::GET);
    match emulator.entry(&id) {
        Some(entry) => axum::Json(SandboxDetail {
            listed: listed_json(&entry),
            envd_access_token: entry.access_token.clone(),
            domain: None,
        })
        .into_response(),
        None => not_found(&id).into_response(),
    }
}

async fn kill(State(emulator): State<Emulator>, Path(id): Path<String>) -> Response {
    emulator.inner.stats.request(route::KILL);
    if emulator.knobs().take_kill_failure() {
        return EmulatorError::new(StatusCode::SERVICE_UNAVAILABLE, "injected kill failure")
            .into_response();
    }
    let Some(entry) = lock(&emulator.inner.sandboxes).remove(&id) else {
        return not_found(&id).into_response();
    };
    // The kill finishes on a task of its own, as E2B's does whatever the
    // caller does next: a caller that hangs up (a server shutting down)
    // drops this handler, and the sandbox, already out of the map, would
    // otherwise be left half destroyed and never counted killed.
    let killing = tokio::spawn(async move {
        destroy(&entry).await;
        killed(&emulator, &entry, events::KILL_REASON_REQUEST);
    });
    match killing.await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => EmulatorError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the kill failed: {e}"),
        )
        .into_response(),
    }
}

/// Ends a sandbox through the same entry point a run uses.
pub(super) async fn destroy(entry: &Entry) {
    // Destroying a local sandbox cannot fail; the trait allows it to for
    // remote providers.
    if let Err(e) = Sandbox::destroy(&*entry.sandbox).await {
        tracing::warn!(sandbox = %entry.id, error = %e, "destroying a sandbox failed");
    }
}

async fn set_timeout(
    State(emulator): State<Emulator>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    emulator.inner.stats.request(route::TIMEOUT);
    match sandbox_and_body::<SetTimeout>(&emulator, &id, &body) {
        Ok((entry, SetTimeout { timeout })) => {
            if let Some(end) = end_in(&entry, Duration::from_secs(timeout), End::Replace) {
                updated(&emulator, &entry, end);
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn connect(
    State(emulator): State<Emulator>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    emulator.inner.stats.request(route::CONNECT);
    match sandbox_and_body::<ConnectSandbox>(&emulator, &id, &body) {
        Ok((entry, ConnectSandbox { timeout })) => {
            // A paused sandbox is resumed (201), for `timeout` or E2B's
            // default; a running one answers 200 and only ever lives longer.
            if pause::resume_if_paused(&emulator, &entry, timeout.map(Duration::from_secs)).await {
                return (StatusCode::CREATED, axum::Json(sandbox_json(&entry))).into_response();
            }
            if let Some(timeout) = timeout
                && let Some(end) = end_in(&entry, Duration::from_secs(timeout), End::NoEarlier)
            {
                updated(&emulator, &entry, end);
            }
            axum::Json(sandbox_json(&entry)).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// What set-timeout and connect both start from: the sandbox the path
/// names (404 if none) and the request's body (400 if it does not parse).
pub(super) fn sandbox_and_body<T: DeserializeOwned>(
    emulator: &Emulator,
    id: &str,
    body: &[u8],
) -> Result<(Arc<Entry>, T), EmulatorError> {
    let entry = emulator.entry(id).ok_or_else(|| not_found(id))?;
    Ok((entry, parse(body)?))
}

/// How a new end relates to the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// Set-timeout: the new end replaces the old, earlier or later.
    Replace,
    /// Connect: the end only ever moves later.
    NoEarlier,
}

/// Sets the sandbox to end `timeout` from now, as `how` allows; its new
/// end, when it moved.
pub(super) fn end_in(entry: &Entry, timeout: Duration, how: End) -> Option<SystemTime> {
    let new_end = SystemTime::now() + timeout;
    let mut end = lock(&entry.end_at);
    if how == End::NoEarlier && new_end <= *end {
        return None;
    }
    *end = new_end;
    // An `autoPause` sandbox is paused at its end by `pause::at_timeout`.
    if !entry.auto_pause {
        entry.sandbox.set_lifetime(timeout);
    }
    Some(new_end)
}

/// A running sandbox's timeout changed: E2B publishes an `updated` event
/// with its new end.
fn updated(emulator: &Emulator, entry: &Entry, end: SystemTime) {
    webhooks::publish(
        emulator,
        entry,
        events::UPDATED,
        Details {
            set_timeout: Some(end),
            ..Details::default()
        },
    );
}

/// A JSON request body, or the 400 that says why it is not one.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, EmulatorError> {
    serde_json::from_slice(body)
        .map_err(|e| EmulatorError::new(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))
}

/// The list filters both list endpoints take.
struct Filter {
    metadata: Vec<(String, String)>,
    /// `None` means any state.
    states: Option<Vec<String>>,
    limit: Option<usize>,
    next_token: Option<usize>,
}

impl Filter {
    fn from_query(query: &[(String, String)]) -> Result<Self, EmulatorError> {
        let mut filter = Filter {
            metadata: Vec::new(),
            states: None,
            limit: None,
            next_token: None,
        };
        for (key, value) in query {
            match key.as_str() {
                // `metadata=k%3Dv%26k2%3Dv2`: a query string inside the
                // query, whose keys and values the SDKs percent-encode again.
                "metadata" => {
                    for (k, v) in form_urlencoded::parse(value.as_bytes()) {
                        filter.metadata.push((decode(&k), decode(&v)));
                    }
                }
                "state" => filter
                    .states
                    .get_or_insert_with(Vec::new)
                    .extend(value.split(',').map(str::to_owned)),
                "limit" => filter.limit = Some(parse_number(key, value)?),
                "nextToken" => filter.next_token = Some(parse_number(key, value)?),
                _ => {}
            }
        }
        Ok(filter)
    }

    fn matches(&self, entry: &Entry) -> bool {
        let state = if pause::is_paused(entry) {
            "paused"
        } else {
            "running"
        };
        let state_wanted = self
            .states
            .as_ref()
            .is_none_or(|s| s.iter().any(|s| s == state));
        state_wanted
            && self
                .metadata
                .iter()
                .all(|(k, v)| entry.metadata.get(k) == Some(v))
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn parse_number(key: &str, value: &str) -> Result<usize, EmulatorError> {
    value
        .parse()
        .map_err(|_| EmulatorError::new(StatusCode::BAD_REQUEST, format!("{key} must be a number")))
}

/// Matching sandboxes, oldest first (a stable order to page through).
fn matching(emulator: &Emulator, filter: &Filter) -> Vec<Arc<Entry>> {
    let mut entries: Vec<Arc<Entry>> = lock(&emulator.inner.sandboxes)
        .values()
        .filter(|e| filter.matches(e))
        .cloned()
        .collect();
    entries.sort_by(|a, b| {
        a.started_at
            .cmp(&b.started_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    entries
}

async fn list_v2(
    State(emulator): State<Emulator>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    emulator.inner.stats.request(route::LIST);
    let filter = match Filter::from_query(&query) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let entries = matching(&emulator, &filter);
    let start = filter.next_token.unwrap_or(0).min(entries.len());
    let end = filter.limit.map_or(entries.len(), |l| {
        start.saturating_add(l).min(entries.len())
    });
    let page: Vec<ListedSandbox> = entries[start..end].iter().map(|e| listed_json(e)).collect();
    let mut headers = HeaderMap::new();
    if end < entries.len() {
        headers.insert("x-next-token", HeaderValue::from(end));
    }
    (headers, axum::Json(page)).into_response()
}

async fn list_v1(
    State(emulator): State<Emulator>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    emulator.inner.stats.request(route::LIST);
    let mut filter = match Filter::from_query(&query) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    // v1 lists running sandboxes only ("List all running sandboxes").
    filter.states = Some(vec!["running".to_owned()]);
    let page: Vec<ListedSandbox> = matching(&emulator, &filter)
        .iter()
        .map(|e| listed_json(e))
        .collect();
    axum::Json(page).into_response()
}
