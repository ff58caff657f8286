//! `GET /runs/{id}/events` from a run's stored events
//! (`SANDSTORM_STORE_EVENTS`), through the router with an SQLite history:
//! an attached run's sandbox is never found again, so its stored events
//! are all a reader gets.

use std::io::Read as _;

use super::*;
use crate::history::sqlite::SqliteStore;
use crate::history::{History, RunStore};

const KEY: &str = "sk-ant-test-key-123";

struct Stored {
    router: Router,
    history: History,
    store: Arc<SqliteStore>,
    _dir: tempfile::TempDir,
}

/// The router over `output`, its runs recorded in an SQLite file, their
/// events kept up to `cap` (none when `None`).
fn stored(output: Vec<ProcessEvent>, then: Then, cap: Option<usize>) -> Stored {
    stored_with(output, then, cap, &[])
}

fn stored_with(
    output: Vec<ProcessEvent>,
    then: Then,
    cap: Option<usize>,
    env: &[(&str, &str)],
) -> Stored {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&dir.path().join("h.db")).expect("open"));
    let history = History::spawn(store.clone(), None).storing_events(cap);
    let provider = Arc::new(Scripted::new(output, then));
    let mut pairs = vec![("ANTHROPIC_API_KEY", KEY)];
    pairs.extend_from_slice(env);
    let settings = settings_from(&pairs);
    Stored {
        router: app(AppState::new(settings, provider).with_history(history.clone())),
        history,
        store,
        _dir: dir,
    }
}

impl Stored {
    async fn send(&self, request: Request) -> Response {
        self.router
            .clone()
            .oneshot(request)
            .await
            .expect("response")
    }

    /// Runs a query to its end; its stream's body and its run's id.
    async fn run(&self) -> (String, String) {
        let body = body_text(self.send(post(r#"{"prompt":"hi"}"#)).await).await;
        // The writes happen off the run's path.
        self.history.settle(Duration::from_secs(5)).await;
        let listed = body_text(self.send(get("/runs", &[])).await).await;
        let listed: serde_json::Value = serde_json::from_str(&listed).expect("JSON");
        let run_id = listed["runs"][0]["run_id"]
            .as_str()
            .unwrap_or_else(|| panic!("a run listed: {listed}"))
            .to_owned();
        (body, run_id)
    }

    /// The whole blob the store holds of `run_id`, decompressed.
    async fn kept_text(&self, run_id: &str) -> String {
        let owner = runs::Caller::bringing(None);
        let blob = self
            .store
            .kept_events(owner.owner_digest(), run_id)
            .await
            .expect("read")
            .expect("events kept");
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_string(&mut text)
            .expect("gzip");
        text
    }
}

fn get(path: &str, headers: &[(&str, &str)]) -> Request {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::empty()).expect("request")
}

/// The `(id, data)` of each event of an SSE body.
fn events_of(body: &str) -> Vec<(Option<String>, String)> {
    let mut last = None;
    sse::parse(body)
        .into_iter()
        .map(|event| {
            // The parser carries an id over to events without one; here
            // an event's own id is wanted.
            let id = (event.id != last).then(|| event.id.clone()).flatten();
            last.clone_from(&event.id);
            (id, event.data)
        })
        .collect()
}

fn a_run() -> Vec<ProcessEvent> {
    vec![
        out(&format!("{SYSTEM}\n")),
        out(&format!(
            "{{\"type\":\"assistant\",\"text\":\"my key is {KEY}\"}}\n"
        )),
        err(&format!("leaked {KEY}\n")),
        out(&format!("{RESULT}\n")),
    ]
}

#[tokio::test]
async fn a_finished_runs_events_are_read_back_as_its_client_got_them() {
    let h = stored(a_run(), Then::Exit(0), Some(1 << 20));
    let (live, run_id) = h.run().await;
    let live: Vec<String> = events_of(&live).into_iter().map(|(_, data)| data).collect();
    assert_eq!(live.len(), 5, "{live:?}");

    let path = format!("/runs/{run_id}/events");
    let response = h.send(get(&path, &[])).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-events-source"], "history");
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let replayed = events_of(&body_text(response).await);
    // The same bytes, numbered from 1 as a reader of a detached run's are.
    let expected: Vec<(Option<String>, String)> = live
        .iter()
        .enumerate()
        .map(|(i, data)| (Some((i + 1).to_string()), data.clone()))
        .collect();
    assert_eq!(replayed, expected);

    // After an id, by header or by query, as for a live run.
    for request in [
        get(&path, &[("last-event-id", "3")]),
        get(&format!("{path}?after=3"), &[]),
    ] {
        let after = events_of(&body_text(h.send(request).await).await);
        assert_eq!(after, expected[3..], "after 3");
    }
    // Bad ids are refused as for a live run.
    let (status, body) = error_body(h.send(get(&format!("{path}?after=x"), &[])).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

#[tokio::test]
async fn no_key_is_in_a_runs_stored_events() {
    let h = stored(a_run(), Then::Exit(0), Some(1 << 20));
    let (live, run_id) = h.run().await;
    assert!(!live.contains(KEY), "{live}");
    // In the store itself, not only in what the API answers from it.
    let kept = h.kept_text(&run_id).await;
    assert!(kept.contains("[REDACTED]"), "{kept}");
    assert!(!kept.contains(KEY), "a key in the stored events: {kept}");
    let replayed = body_text(h.send(get(&format!("/runs/{run_id}/events"), &[])).await).await;
    assert!(
        replayed.contains("[REDACTED]") && !replayed.contains(KEY),
        "{replayed}"
    );
}

#[tokio::test]
async fn past_the_cap_a_run_keeps_its_first_events_and_its_end_and_says_what_it_left_out() {
    // Lines that do not compress, about 2 KB each, past a 4 KiB cap.
    let mut seed = 1u64;
    let mut noise = || -> String {
        (0..2000)
            .map(|_| {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                char::from(b'a' + (seed >> 59).to_le_bytes()[0] % 26)
            })
            .collect()
    };
    let mut output = vec![out(&format!("{SYSTEM}\n"))];
    for _ in 0..20 {
        output.push(out(&format!(
            "{{\"type\":\"assistant\",\"text\":\"{}\"}}\n",
            noise()
        )));
    }
    output.push(out(&format!("{RESULT}\n")));
    let h = stored(output, Then::Exit(0), Some(4096));
    let (live, run_id) = h.run().await;
    let live: Vec<String> = events_of(&live).into_iter().map(|(_, data)| data).collect();
    assert_eq!(live.len(), 23, "init, 20 messages, result, done");

    let replayed =
        events_of(&body_text(h.send(get(&format!("/runs/{run_id}/events"), &[])).await).await);
    let kept = replayed.iter().take_while(|(id, _)| id.is_some()).count();
    assert!(kept >= 1, "the first events are kept: {replayed:?}");
    for (i, (id, data)) in replayed[..kept].iter().enumerate() {
        assert_eq!(id.as_deref(), Some((i + 1).to_string().as_str()));
        assert_eq!(data, &live[i]);
    }
    let (id, omitted) = &replayed[kept];
    assert_eq!(id, &None, "the omitted event is not one of the run's");
    let omitted: serde_json::Value = serde_json::from_str(omitted).expect("JSON");
    assert_eq!(omitted["type"], "omitted", "{omitted}");
    assert_eq!(omitted["first_event_id"], kept + 1, "{omitted}");
    assert_eq!(omitted["last_event_id"], 22, "{omitted}");
    assert!(
        omitted["message"]
            .as_str()
            .is_some_and(|m| m.contains("SANDSTORM_STORE_EVENTS_MAX_BYTES")),
        "{omitted}"
    );
    // The end is kept whatever the cap: the run's `done`, with its id.
    assert_eq!(
        replayed[kept + 1..],
        [(Some("23".to_owned()), live[22].clone())]
    );
    // The store keeps about the cap.
    let owner = runs::Caller::bringing(None);
    let blob = h
        .store
        .kept_events(owner.owner_digest(), &run_id)
        .await
        .expect("read")
        .expect("kept");
    assert!(blob.len() <= 4096 + 512, "{} bytes", blob.len());

    // A reader past the gap's start is told of the rest of it only.
    let after = events_of(
        &body_text(
            h.send(get(&format!("/runs/{run_id}/events?after=20"), &[]))
                .await,
        )
        .await,
    );
    let omitted: serde_json::Value = serde_json::from_str(&after[0].1).expect("JSON");
    assert_eq!(
        (&omitted["first_event_id"], &omitted["last_event_id"]),
        (&serde_json::json!(21), &serde_json::json!(22))
    );
    assert_eq!(after.len(), 2, "{after:?}");
}

#[tokio::test]
async fn without_stored_events_a_finished_run_is_not_found_as_before() {
    let h = stored(a_run(), Then::Exit(0), None);
    let (_, run_id) = h.run().await;
    let (status, body) =
        error_body(h.send(get(&format!("/runs/{run_id}/events"), &[])).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // The record is there all the same.
    let response = h.send(get(&format!("/runs/{run_id}"), &[])).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn stored_events_are_their_owners_alone() {
    // A server whose sandboxes take a key, which a caller may bring.
    let h = stored_with(
        a_run(),
        Then::Exit(0),
        Some(1 << 20),
        &[("E2B_API_KEY", "e2b_the_servers_own_key")],
    );
    let (_, run_id) = h.run().await;
    let path = format!("/runs/{run_id}/events");
    let response = h.send(get(&path, &[])).await;
    assert_eq!(response.status(), StatusCode::OK);
    // A caller with a key of its own is another tenant.
    let (status, _) = error_body(
        h.send(get(&path, &[("x-e2b-api-key", "e2b_another_tenants_key")]))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
