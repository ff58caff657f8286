//! The E2B emulator's lifecycle webhooks: its registration API
//! (`/events/webhooks`, as E2B's answers) and the signed events it sends
//! to a receiver on loopback when sandboxes are created, given a new
//! timeout, paused, resumed and killed (by a kill call or their timeout).
//!
//! Needs bubblewrap (the emulator's sandboxes are real).

mod common;

use std::time::Duration;

use common::emulator::{self, Knobs};
use common::keys::E2B_KEY as KEY;
use common::receiver::{Received, Receiver};
use e2b_wire::events;
use serde_json::{Value, json};

/// A liveness guard, not a timing assertion.
const GUARD: Duration = Duration::from_secs(30);
const SECRET: &str = "emulator-webhook-secret";

struct Emu {
    base: String,
    http: reqwest::Client,
}

impl Emu {
    async fn start() -> Emu {
        Emu::with_retry_delay(Duration::from_secs(10)).await
    }

    async fn with_retry_delay(delay: Duration) -> Emu {
        let mut options = emulator::options();
        options.knobs = Knobs::default();
        options.webhook_retry.delay = delay;
        Emu {
            base: emulator::start_with(options).await.url,
            http: reqwest::Client::new(),
        }
    }

    fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("X-API-Key", KEY)
    }

    /// Sends `request`: its status and JSON body (null when empty).
    async fn call(request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("an answer");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn register(&self, body: Value) -> (u16, Value) {
        Self::call(
            self.api(reqwest::Method::POST, "/events/webhooks")
                .json(&body),
        )
        .await
    }

    /// Registers `url` for `kinds`, enabled, signed with [`SECRET`]; its id.
    async fn subscribe(&self, url: &str, kinds: &[&str]) -> String {
        let (status, webhook) = self
            .register(json!({"name": "test", "url": url, "enabled": true,
                             "events": kinds, "signatureSecret": SECRET}))
            .await;
        assert_eq!(status, 201, "{webhook}");
        webhook["id"].as_str().expect("an id").to_owned()
    }

    async fn create(&self, body: Value) -> String {
        let (status, created) =
            Self::call(self.api(reqwest::Method::POST, "/v2/sandboxes").json(&body)).await;
        assert_eq!(status, 201, "{created}");
        created["sandboxID"].as_str().expect("an id").to_owned()
    }

    async fn sandbox_call(&self, method: reqwest::Method, path: String, body: Value) -> u16 {
        let (status, answer) = Self::call(self.api(method, &path).json(&body)).await;
        assert!((200..300).contains(&status), "{path}: {status} {answer}");
        status
    }
}

/// Fails unless `delivery` carries E2B's headers and a valid signature of
/// its body under [`SECRET`].
fn assert_signed(delivery: &Received, webhook_id: &str) {
    assert!(
        events::signature_matches(
            SECRET.as_bytes(),
            &delivery.body,
            delivery.header("e2b-signature")
        ),
        "a bad signature on {:?}",
        delivery.headers
    );
    assert_eq!(delivery.header("e2b-signature-version"), "v1");
    assert_eq!(delivery.header("e2b-webhook-id"), webhook_id);
    assert!(!delivery.header("e2b-delivery-id").is_empty());
    assert_eq!(delivery.header("content-type"), "application/json");
}

#[tokio::test]
async fn webhooks_are_registered_listed_changed_and_deleted_as_e2b_answers() {
    let emu = Emu::start().await;
    let (status, created) = emu
        .register(
            json!({"name": "mine", "url": "https://example.com/webhooks/e2b",
                         "enabled": true, "events": [events::KILLED],
                         "signatureSecret": SECRET}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("an id").to_owned();
    assert_eq!(created["name"], "mine");
    assert_eq!(created["enabled"], true);
    assert_eq!(created["events"], json!([events::KILLED]));
    assert!(created["teamId"].is_string() && created["createdAt"].is_string());
    assert!(
        !created.to_string().contains(SECRET),
        "the secret is never answered: {created}"
    );

    let (status, listed) = Emu::call(emu.api(reqwest::Method::GET, "/events/webhooks")).await;
    assert_eq!(status, 200);
    assert_eq!(listed, json!([created]));

    let path = format!("/events/webhooks/{id}");
    let (status, changed) = Emu::call(
        emu.api(reqwest::Method::PATCH, &path)
            .json(&json!({"enabled": false, "events": [events::CREATED, events::KILLED]})),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["enabled"], false);
    assert_eq!(changed["url"], "https://example.com/webhooks/e2b");
    let (status, shown) = Emu::call(emu.api(reqwest::Method::GET, &path)).await;
    assert_eq!((status, &shown), (200, &changed));

    let (status, _) = Emu::call(emu.api(reqwest::Method::DELETE, &path)).await;
    assert_eq!(status, 200);
    for method in [
        reqwest::Method::GET,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
    ] {
        let (status, body) = Emu::call(
            emu.api(method.clone(), &path)
                .json(&json!({"enabled": true})),
        )
        .await;
        assert_eq!(status, 404, "{method} after delete: {body}");
        assert_eq!(body["code"], 404);
    }

    // What E2B's API would refuse, with the reason named.
    for (body, says) in [
        (
            json!({"name": "n", "url": "ftp://example.com", "events": [events::KILLED], "signatureSecret": "s"}),
            "url",
        ),
        (
            json!({"name": "n", "url": "https://example.com", "events": ["sandbox.lifecycle.exploded"], "signatureSecret": "s"}),
            "sandbox.lifecycle.exploded",
        ),
        (
            json!({"name": "n", "url": "https://example.com", "events": [], "signatureSecret": "s"}),
            "events",
        ),
        (
            json!({"name": "n", "url": "https://example.com", "events": [events::KILLED], "signatureSecret": ""}),
            "signatureSecret",
        ),
        (
            json!({"name": "n", "url": "https://example.com", "events": [events::KILLED]}),
            "signatureSecret",
        ),
    ] {
        let (status, answer) = emu.register(body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap_or_default()
                .contains(says),
            "{body}: {answer}"
        );
    }
    // The API key guards it as it guards the rest of the control plane.
    let (status, _) = Emu::call(
        emu.http
            .get(format!("{}/events/webhooks", emu.base))
            .header("X-API-Key", "e2b_wrong"),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn each_lifecycle_event_arrives_signed_at_the_webhooks_that_asked_for_it() {
    let emu = Emu::start().await;
    let everything = Receiver::start().await;
    let kills_only = Receiver::start().await;
    let disabled = Receiver::start().await;
    let all = emu.subscribe(&everything.url, &events::EVENT_TYPES).await;
    let kills = emu.subscribe(&kills_only.url, &[events::KILLED]).await;
    let off = emu.subscribe(&disabled.url, &events::EVENT_TYPES).await;
    let (status, _) = Emu::call(
        emu.api(reqwest::Method::PATCH, &format!("/events/webhooks/{off}"))
            .json(&json!({"enabled": false})),
    )
    .await;
    assert_eq!(status, 200);

    let id = emu
        .create(json!({"templateID": "base", "timeout": 300, "metadata": {"sandstorm_run": "abc"}}))
        .await;
    emu.sandbox_call(
        reqwest::Method::POST,
        format!("/sandboxes/{id}/timeout"),
        json!({"timeout": 120}),
    )
    .await;
    emu.sandbox_call(
        reqwest::Method::POST,
        format!("/sandboxes/{id}/pause"),
        json!({}),
    )
    .await;
    emu.sandbox_call(
        reqwest::Method::POST,
        format!("/v2/sandboxes/{id}/connect"),
        json!({"timeout": 60}),
    )
    .await;
    emu.sandbox_call(
        reqwest::Method::DELETE,
        format!("/sandboxes/{id}"),
        json!({}),
    )
    .await;

    let kinds = [
        events::CREATED,
        events::UPDATED,
        events::PAUSED,
        events::RESUMED,
        events::KILLED,
    ];
    let received = everything
        .until(GUARD, "every event", |got| {
            kinds
                .iter()
                .all(|kind| got.iter().any(|r| r.json()["type"] == *kind))
        })
        .await;
    for delivery in &received {
        assert_signed(delivery, &all);
        let event = delivery.json();
        // E2B's SandboxEvent, snake case.
        assert_eq!(event["sandbox_id"], id.as_str(), "{event}");
        assert_eq!(event["version"], "v2");
        assert_eq!(event["event_category"], "lifecycle");
        assert_eq!(event["sandbox_template_id"], "base");
        for field in [
            "id",
            "timestamp",
            "sandbox_execution_id",
            "sandbox_build_id",
            "sandbox_team_id",
        ] {
            assert!(
                event[field].as_str().is_some_and(|v| !v.is_empty()),
                "{field}: {event}"
            );
        }
        assert_eq!(
            event["event_data"]["sandbox_metadata"],
            json!({"sandstorm_run": "abc"}),
            "{event}"
        );
    }
    let updated = everything.events(events::UPDATED);
    assert!(
        updated
            .iter()
            .all(|u| u.json()["event_data"]["set_timeout"].is_string()),
        "an update names the new end"
    );
    let killed = everything.events(events::KILLED);
    assert_eq!(killed.len(), 1);
    let data = &killed[0].json()["event_data"];
    assert_eq!(data["kill_reason"], "request", "{data}");
    assert!(data["execution"]["execution_time"].is_u64(), "{data}");
    assert_eq!(data["execution"]["vcpu_count"], 2, "{data}");

    let received = kills_only
        .until(GUARD, "the kill", |got| !got.is_empty())
        .await;
    // A moment for anything it should not get to arrive anyway.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received_all = kills_only.received();
    assert_eq!(received_all.len(), 1, "only the kill: {received:?}");
    assert_eq!(received_all[0].json()["type"], events::KILLED);
    assert_signed(&received_all[0], &kills);
    assert!(
        disabled.received().is_empty(),
        "a disabled webhook gets nothing"
    );
}

#[tokio::test]
async fn a_sandbox_its_timeout_ends_is_reported_killed_for_its_timeout() {
    let emu = Emu::start().await;
    let receiver = Receiver::start().await;
    let webhook = emu.subscribe(&receiver.url, &[events::KILLED]).await;
    let id = emu
        .create(json!({"templateID": "base", "timeout": 1}))
        .await;
    let received = receiver
        .until(GUARD, "the timeout's kill", |got| !got.is_empty())
        .await;
    assert_signed(&received[0], &webhook);
    let event = received[0].json();
    assert_eq!(event["sandbox_id"], id.as_str());
    assert_eq!(event["event_data"]["kill_reason"], "timeout", "{event}");
}

#[tokio::test]
async fn a_failed_delivery_is_tried_again_with_the_same_event() {
    let emu = Emu::with_retry_delay(Duration::from_millis(100)).await;
    // Fails twice, then takes it.
    let receiver = Receiver::answering(&[500, 503]).await;
    let webhook = emu.subscribe(&receiver.url, &[events::CREATED]).await;
    emu.create(json!({"templateID": "base"})).await;
    let received = receiver
        .until(GUARD, "the third attempt", |got| got.len() >= 3)
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(receiver.received().len(), 3, "no attempt after a 200");
    for attempt in &received {
        assert_signed(attempt, &webhook);
    }
    let event_ids: Vec<Value> = received.iter().map(|r| r.json()["id"].clone()).collect();
    assert!(event_ids.windows(2).all(|w| w[0] == w[1]), "{event_ids:?}");
    let delivery_ids: std::collections::BTreeSet<&str> = received
        .iter()
        .map(|r| r.header("e2b-delivery-id"))
        .collect();
    assert_eq!(
        delivery_ids.len(),
        3,
        "each attempt is a delivery of its own"
    );
}
