//! Lifecycle webhooks: E2B's registration API (`/events/webhooks`) and the
//! signed deliveries of each sandbox's lifecycle events to the webhooks
//! that asked for them.
//!
//! A sandbox created, killed (by a kill call or by its timeout), paused,
//! resumed or given a new timeout is published as E2B publishes it: a
//! `SandboxEvent` (`e2b_wire::events`) POSTed to every enabled webhook
//! whose `events` hold its type, signed with the webhook's secret as E2B
//! signs (`e2b-signature`, `e2b-signature-version`, `e2b-webhook-id`,
//! `e2b-delivery-id`). Deliveries run in tasks of their own, never on the
//! API call that caused them; a delivery that fails (no 2xx, no answer
//! within [`ATTEMPT_TIMEOUT`]) is retried, as E2B's is (three more times,
//! 10 s apart, unless the options say otherwise). Events of one sandbox are
//! not ordered across deliveries, as E2B promises no order either.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use e2b_wire::events::{
    self, EventData, Execution, NewWebhook, SandboxEvent, Webhook, WebhookSecret, WebhookUpdate,
};
use serde::de::DeserializeOwned;

use super::stats::route;
use super::{Emulator, EmulatorError, Entry, lock};

/// The one team every sandbox and webhook of the emulator belongs to.
pub(crate) const TEAM_ID: &str = "00000000-0000-4000-8000-00000000e2b0";
/// The build every template of the emulator stands for.
const BUILD_ID: &str = "00000000-0000-4000-8000-00000000b01d";
/// How long one delivery attempt waits for the receiver's answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The vCPUs and memory a sandbox reports, as the list endpoints do.
const VCPUS: u32 = 2;
const MEMORY_MB: u32 = 512;

/// How failed deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryRetry {
    /// Attempts after the first.
    pub retries: u32,
    /// The wait before each retry.
    pub delay: Duration,
}

impl Default for DeliveryRetry {
    /// E2B's: three more attempts, 10 s apart.
    fn default() -> Self {
        DeliveryRetry {
            retries: 3,
            delay: Duration::from_secs(10),
        }
    }
}

/// The registered webhooks and what delivers to them.
pub(crate) struct Webhooks {
    registered: Mutex<BTreeMap<String, Registered>>,
    client: reqwest::Client,
    retry: DeliveryRetry,
}

struct Registered {
    webhook: Webhook,
    secret: WebhookSecret,
}

impl Webhooks {
    pub(crate) fn new(retry: DeliveryRetry) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            // A receiver answers for itself; a redirect is a failed delivery.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("e2b-emulator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Webhooks {
            registered: Mutex::new(BTreeMap::new()),
            client,
            retry,
        })
    }
}

pub(super) fn routes() -> Router<Emulator> {
    Router::new()
        .route("/events/webhooks", post(register).get(list))
        .route(
            "/events/webhooks/{id}",
            get(show).patch(update).delete(delete),
        )
}

/// A 400 with what is wrong, in E2B's error body.
fn bad(message: impl Into<String>) -> EmulatorError {
    EmulatorError::new(StatusCode::BAD_REQUEST, message)
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, EmulatorError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid body: {e}")))
}

fn not_found(id: &str) -> EmulatorError {
    EmulatorError::new(StatusCode::NOT_FOUND, format!("webhook {id} not found"))
}

fn check_url(url: &str) -> Result<(), EmulatorError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| bad(format!("url must be an absolute http or https URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad("url must be an absolute http or https URL"));
    }
    Ok(())
}

fn check_events(kinds: &[String]) -> Result<(), EmulatorError> {
    if kinds.is_empty() {
        return Err(bad("events must name at least one event type"));
    }
    if let Some(unknown) = kinds
        .iter()
        .find(|kind| !events::EVENT_TYPES.contains(&kind.as_str()))
    {
        return Err(bad(format!(
            "unknown event type {unknown:?}; the types are {}",
            events::EVENT_TYPES.join(", ")
        )));
    }
    Ok(())
}

fn check_secret(secret: &WebhookSecret) -> Result<(), EmulatorError> {
    if secret.expose().is_empty() {
        return Err(bad("signatureSecret must not be empty"));
    }
    Ok(())
}

/// `POST /events/webhooks`: 201 with the webhook (never its secret).
async fn register(State(emulator): State<Emulator>, body: Bytes) -> Response {
    emulator.inner.stats.request(route::WEBHOOK_REGISTER);
    let new: NewWebhook = match parse(&body) {
        Ok(new) => new,
        Err(e) => return e.into_response(),
    };
    let checked = check_url(&new.url)
        .and_then(|()| check_events(&new.events))
        .and_then(|()| check_secret(&new.signature_secret));
    if let Err(e) = checked {
        return e.into_response();
    }
    let webhook = Webhook {
        id: uuid::Uuid::new_v4().to_string(),
        team_id: TEAM_ID.to_owned(),
        name: new.name,
        created_at: rfc3339(SystemTime::now()),
        enabled: new.enabled,
        url: new.url,
        events: new.events,
    };
    lock(&emulator.inner.webhooks.registered).insert(
        webhook.id.clone(),
        Registered {
            webhook: webhook.clone(),
            secret: new.signature_secret,
        },
    );
    (StatusCode::CREATED, axum::Json(webhook)).into_response()
}

/// `GET /events/webhooks`: every webhook, oldest first.
async fn list(State(emulator): State<Emulator>) -> Response {
    emulator.inner.stats.request(route::WEBHOOK_LIST);
    let mut webhooks: Vec<Webhook> = lock(&emulator.inner.webhooks.registered)
        .values()
        .map(|r| r.webhook.clone())
        .collect();
    webhooks.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    axum::Json(webhooks).into_response()
}

/// `GET /events/webhooks/{id}`.
async fn show(State(emulator): State<Emulator>, Path(id): Path<String>) -> Response {
    emulator.inner.stats.request(route::WEBHOOK_GET);
    match lock(&emulator.inner.webhooks.registered).get(&id) {
        Some(registered) => axum::Json(registered.webhook.clone()).into_response(),
        None => not_found(&id).into_response(),
    }
}

/// `PATCH /events/webhooks/{id}`: the fields given replace the webhook's.
async fn update(State(emulator): State<Emulator>, Path(id): Path<String>, body: Bytes) -> Response {
    emulator.inner.stats.request(route::WEBHOOK_UPDATE);
    let change: WebhookUpdate = match parse(&body) {
        Ok(change) => change,
        Err(e) => return e.into_response(),
    };
    let checked = change
        .url
        .as_deref()
        .map_or(Ok(()), check_url)
        .and_then(|()| change.events.as_deref().map_or(Ok(()), check_events))
        .and_then(|()| {
            change
                .signature_secret
                .as_ref()
                .map_or(Ok(()), check_secret)
        });
    if let Err(e) = checked {
        return e.into_response();
    }
    let mut registered = lock(&emulator.inner.webhooks.registered);
    let Some(found) = registered.get_mut(&id) else {
        return not_found(&id).into_response();
    };
    let WebhookUpdate {
        name,
        url,
        enabled,
        events,
        signature_secret,
    } = change;
    if let Some(name) = name {
        found.webhook.name = name;
    }
    if let Some(url) = url {
        found.webhook.url = url;
    }
    if let Some(enabled) = enabled {
        found.webhook.enabled = enabled;
    }
    if let Some(events) = events {
        found.webhook.events = events;
    }
    if let Some(secret) = signature_secret {
        found.secret = secret;
    }
    axum::Json(found.webhook.clone()).into_response()
}

/// `DELETE /events/webhooks/{id}`: 200, or 404.
async fn delete(State(emulator): State<Emulator>, Path(id): Path<String>) -> Response {
    emulator.inner.stats.request(route::WEBHOOK_DELETE);
    match lock(&emulator.inner.webhooks.registered).remove(&id) {
        Some(_) => StatusCode::OK.into_response(),
        None => not_found(&id).into_response(),
    }
}

/// What an event says beyond the sandbox it is about.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Details {
    /// `kill_reason` of a `killed`.
    pub(crate) kill_reason: Option<&'static str>,
    /// The new end of an `updated`.
    pub(crate) set_timeout: Option<SystemTime>,
}

/// Publishes `kind` about `entry` to every webhook that wants it, from
/// tasks of their own. Returns at once.
pub(crate) fn publish(emulator: &Emulator, entry: &Entry, kind: &'static str, details: Details) {
    let webhooks = &emulator.inner.webhooks;
    let targets: Vec<(String, String, WebhookSecret)> = lock(&webhooks.registered)
        .values()
        .filter(|r| r.webhook.enabled && r.webhook.events.iter().any(|e| e == kind))
        .map(|r| {
            (
                r.webhook.id.clone(),
                r.webhook.url.clone(),
                r.secret.clone(),
            )
        })
        .collect();
    if targets.is_empty() {
        return;
    }
    let event = event(entry, kind, details);
    let body = match serde_json::to_vec(&event) {
        Ok(body) => Bytes::from(body),
        Err(e) => {
            tracing::error!(error = %e, "a lifecycle event did not serialize");
            return;
        }
    };
    for (webhook_id, url, secret) in targets {
        tokio::spawn(deliver(
            webhooks.client.clone(),
            webhooks.retry,
            Delivery {
                webhook_id,
                url,
                signature: events::signature(secret.expose().as_bytes(), &body),
                body: body.clone(),
                kind,
                sandbox_id: entry.id.clone(),
            },
        ));
    }
}

/// The event E2B would publish.
fn event(entry: &Entry, kind: &'static str, details: Details) -> SandboxEvent {
    let now = SystemTime::now();
    // `execution` comes with a kill and a pause, as E2B's orchestrator
    // sends it.
    let execution = matches!(kind, events::KILLED | events::PAUSED).then(|| Execution {
        started_at: humantime::format_rfc3339_seconds(entry.started_at).to_string(),
        vcpu_count: VCPUS,
        memory_mb: MEMORY_MB,
        execution_time: now
            .duration_since(entry.started_at)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    });
    let label = match kind {
        events::CREATED => "create",
        events::KILLED => "kill",
        events::PAUSED => "pause",
        events::RESUMED => "resume",
        events::UPDATED => "update",
        _ => "",
    };
    SandboxEvent {
        id: uuid::Uuid::new_v4().to_string(),
        version: events::EVENT_VERSION.to_owned(),
        kind: kind.to_owned(),
        timestamp: rfc3339(now),
        event_category: "lifecycle".to_owned(),
        event_label: label.to_owned(),
        event_data: Some(EventData {
            sandbox_metadata: Some(entry.metadata.clone()),
            execution,
            kill_reason: details.kill_reason.map(str::to_owned),
            set_timeout: details
                .set_timeout
                .map(|at| humantime::format_rfc3339_seconds(at).to_string()),
        }),
        sandbox_id: entry.id.clone(),
        sandbox_execution_id: entry.execution_id.clone(),
        sandbox_template_id: entry.template_id.clone(),
        sandbox_build_id: BUILD_ID.to_owned(),
        sandbox_team_id: TEAM_ID.to_owned(),
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// One event on its way to one webhook.
struct Delivery {
    webhook_id: String,
    url: String,
    signature: String,
    body: Bytes,
    kind: &'static str,
    sandbox_id: String,
}

/// POSTs the event until a 2xx answers or the retries run out.
async fn deliver(client: reqwest::Client, retry: DeliveryRetry, delivery: Delivery) {
    for attempt in 0..=retry.retries {
        if attempt > 0 {
            tokio::time::sleep(retry.delay).await;
        }
        let sent = client
            .post(&delivery.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(events::SIGNATURE_HEADER, &delivery.signature)
            .header(events::SIGNATURE_VERSION_HEADER, events::SIGNATURE_VERSION)
            .header(events::WEBHOOK_ID_HEADER, &delivery.webhook_id)
            .header(events::DELIVERY_ID_HEADER, uuid::Uuid::new_v4().to_string())
            .body(delivery.body.clone())
            .send()
            .await;
        let failure = match sent {
            Ok(answer) if answer.status().is_success() => {
                tracing::info!(
                    webhook = %delivery.webhook_id,
                    sandbox = %delivery.sandbox_id,
                    event = delivery.kind,
                    "lifecycle event delivered"
                );
                return;
            }
            Ok(answer) => format!("answered {}", answer.status()),
            // Its URL may hold a token of the receiver's: left out.
            Err(e) => e.without_url().to_string(),
        };
        tracing::warn!(
            webhook = %delivery.webhook_id,
            sandbox = %delivery.sandbox_id,
            event = delivery.kind,
            attempt = attempt + 1,
            %failure,
            "a lifecycle event delivery failed"
        );
    }
}
