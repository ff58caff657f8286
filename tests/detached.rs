//! Detached runs, end to end: `ds serve` as a real process, the real runner
//! and Agent SDK in the sandbox, a scripted model whose agent outlasts the
//! platform's deadline.
//!
//! A detached run's stream ends at the deadline with a `detached` event;
//! the client reads on from `GET /runs/{id}/events` with `Last-Event-ID`,
//! from another instance that shares nothing with the first but the
//! sandboxes, and gets every event exactly once, in order, with the same id
//! and bytes as a reader that replays the whole run from its log.

mod common;

use std::time::Duration;

use common::model_server::{ModelServer, Script};
use common::product::{Chain, Serve};
use common::sse::Decoder;
use futures::StreamExt;
use serde_json::{Value, json};

/// The agent's one command: long enough that the run outlives several
/// deadlines of the short-lived instances below.
const SLOW_COMMAND: &str = "sleep 7 && echo later > later.txt";
/// The response limit of the short-lived instances: their streams detach
/// two seconds before it.
const MAX_DURATION_SECS: &str = "5";
/// How long a finished run's sandbox stays readable here.
const LINGER_SECS: &str = "2";
/// A turn of a read loop that never ends fails the test instead.
const READS: usize = 30;

/// `ds serve` on `chain` for `model`, whose finished runs linger only
/// [`LINGER_SECS`], so a test sees their sandboxes go.
fn serve(chain: Chain, model: &ModelServer) -> Serve {
    Serve::new(chain, model).env("SANDSTORM_RUN_LINGER", LINGER_SECS)
}

/// Starts a detached run of `body` on `base` and leaves after its `run`
/// event, as a client that goes away; the run's id.
async fn start_and_leave(client: &reqwest::Client, base: &str, body: Value) -> String {
    let started = read(client.post(format!("{base}/query")).json(&body), Some(1)).await;
    assert_eq!(started.status, 200, "{}", started.body);
    started.events[0].1["run_id"]
        .as_str()
        .expect("a run event first")
        .to_owned()
}

/// What one client read of a run's stream.
#[derive(Debug)]
struct Read {
    status: u16,
    run_id_header: Option<String>,
    /// The numbered events: (id, event).
    events: Vec<(u64, Value)>,
    /// The `detached` event, when the stream ended with one.
    detached: Option<Value>,
    /// The `done` event was the last.
    done: bool,
    body: String,
}

/// Reads a stream to its end, or until `keep` numbered events when given
/// (then drops the connection, as a client that goes away).
async fn read(request: reqwest::RequestBuilder, keep: Option<usize>) -> Read {
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let run_id_header = response
        .headers()
        .get("x-run-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut read = Read {
        status,
        run_id_header,
        events: Vec::new(),
        detached: None,
        done: false,
        body: String::new(),
    };
    if status != 200 {
        read.body = response.text().await.unwrap_or_default();
        return read;
    }
    let mut decoder = Decoder::new();
    let mut body = response.bytes_stream();
    let reading = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.expect("read the stream");
            read.body.push_str(&String::from_utf8_lossy(&chunk));
            for event in decoder.feed(&chunk) {
                let value = event.json();
                match value["type"].as_str() {
                    Some("detached") => read.detached = Some(value),
                    kind => {
                        let id = event
                            .id
                            .as_deref()
                            .and_then(|id| id.parse().ok())
                            .unwrap_or_else(|| panic!("an event without an id: {value}"));
                        read.done = kind == Some("done");
                        read.events.push((id, value));
                    }
                }
                if keep.is_some_and(|n| read.events.len() >= n) {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), reading)
        .await
        .expect("the stream ended within two minutes");
    read
}

/// Fails unless the emulator made `created` sandboxes and killed every one.
async fn assert_every_sandbox_killed(product: &common::product::Product, created: u64) {
    let stats = product.emulator_settled().await.expect("emulator");
    assert_eq!(
        (stats.created, stats.killed, stats.alive),
        (created, created, 0),
        "{stats:?}"
    );
}

fn ids(events: &[(u64, Value)]) -> Vec<u64> {
    events.iter().map(|(id, _)| *id).collect()
}

fn events_url(base: &str, run_id: &str) -> String {
    format!("{base}/runs/{run_id}/events")
}

/// `POST /query` with `body`, read to its end; it must answer 200.
async fn post_query(client: &reqwest::Client, base: &str, body: Value) -> Read {
    let started = read(client.post(format!("{base}/query")).json(&body), None).await;
    assert_eq!(started.status, 200, "{}", started.body);
    started
}

/// A first turn that writes notes.txt, kept `keep_alive` seconds for a
/// follow-up and asking for the file back, read to its end.
async fn write_notes_and_keep(client: &reqwest::Client, base: &str, keep_alive: u64) -> Read {
    let first = post_query(
        client,
        base,
        json!({
            "prompt": "write the notes",
            "keep_alive": keep_alive,
            "outputs": ["notes.txt"],
        }),
    )
    .await;
    assert!(first.done, "{}", first.body);
    first
}

/// A follow-up turn of `run_id` sent to `base`, read to its end.
async fn follow_up(client: &reqwest::Client, base: &str, run_id: &str, body: Value) -> Read {
    let turn = read(
        client
            .post(format!("{base}/runs/{run_id}/messages"))
            .json(&body),
        None,
    )
    .await;
    assert_eq!(turn.status, 200, "{}", turn.body);
    assert!(turn.done, "{}", turn.body);
    turn
}

#[tokio::test]
async fn a_detached_run_outlives_the_deadline_and_another_instance_reads_on_exactly_once() {
    let model = ModelServer::start(Script::Bash {
        command: SLOW_COMMAND.to_owned(),
    })
    .await;
    let product = Serve::new(Chain::E2b, &model)
        .env("SANDSTORM_MAX_DURATION", MAX_DURATION_SECS)
        .env("SANDSTORM_RUN_LINGER", LINGER_SECS)
        .start()
        .await;
    let other = product.another_instance(&[], &[]).await;
    let unbounded = product
        .another_instance(&[], &["SANDSTORM_MAX_DURATION"])
        .await;
    let client = reqwest::Client::new();

    let first = post_query(
        &client,
        product.url(),
        json!({"prompt": "go", "detach": true}),
    )
    .await;
    let (first_id, run) = first.events.first().cloned().expect("a first event");
    assert_eq!(
        (first_id, run["type"].as_str()),
        (1, Some("run")),
        "{}",
        first.body
    );
    let run_id = run["run_id"].as_str().expect("run_id").to_owned();
    assert_eq!(first.run_id_header.as_deref(), Some(run_id.as_str()));
    assert!(run["expires_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    let detached = first
        .detached
        .clone()
        .unwrap_or_else(|| panic!("the stream detached at the deadline: {}", first.body));
    let mut got = first.events;
    assert_eq!(detached["last_event_id"], got.len() as u64);
    assert_eq!(detached["resume"], format!("/runs/{run_id}/events"));

    // A reader from the start, on an instance with no deadline, started
    // while the run goes on: the reference every other read must match.
    let replay = tokio::spawn(read(client.get(events_url(&unbounded.url, &run_id)), None));

    // The client comes back, each time to the other instance, until done.
    let bases = [other.url.clone(), product.url().to_owned()];
    let mut reads = 1;
    while !got.last().is_some_and(|(_, e)| e["type"] == "done") {
        assert!(reads < READS, "the run never ended: {got:?}");
        let last = got.last().map_or(0, |(id, _)| *id);
        let next = read(
            client
                .get(events_url(&bases[reads % 2], &run_id))
                .header("last-event-id", last.to_string()),
            None,
        )
        .await;
        assert_eq!(next.status, 200, "{}", next.body);
        assert!(
            next.done || next.detached.is_some(),
            "a read ends with done or detached: {}",
            next.body
        );
        if let Some((id, _)) = next.events.first() {
            assert_eq!(*id, last + 1, "a read starts right after Last-Event-ID");
        }
        got.extend(next.events);
        reads += 1;
    }
    assert!(reads >= 3, "the agent outlasted at least two deadlines");

    let n = got.len() as u64;
    assert_eq!(
        ids(&got),
        (1..=n).collect::<Vec<_>>(),
        "every event once, in order"
    );
    // Its status, from an instance that did not start it, while the
    // finished run's sandbox lingers.
    let (code, status) = get_json(client.get(format!("{}/runs/{run_id}", other.url))).await;
    assert_eq!(code, 200, "{status}");
    let result = &got
        .iter()
        .find(|(_, e)| e["type"] == "result")
        .expect("result")
        .1;
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(status["last_event_id"], n, "{status}");
    assert_eq!(status["turns"], result["num_turns"], "{status}");
    assert_eq!(
        status["total_cost_usd"], result["total_cost_usd"],
        "{status}"
    );
    assert_eq!(status["prompt"], "go");
    assert_eq!(status["expires_at"], run["expires_at"]);
    assert!(status["model"].is_string(), "{status}");
    let replay = replay.await.expect("replay task");
    assert!(replay.done, "the replay reads to the end: {}", replay.body);
    assert_eq!(
        replay.events, got,
        "the same ids and the same events as a full replay"
    );

    let types: Vec<&str> = got.iter().filter_map(|(_, e)| e["type"].as_str()).collect();
    assert!(
        types.contains(&"assistant") && types.contains(&"result"),
        "{types:?}"
    );
    let (_, done) = got.last().expect("done");
    assert_eq!(done["status"], "success");
    let result = got
        .iter()
        .find(|(_, e)| e["type"] == "result")
        .expect("result");
    assert_eq!(result.1["subtype"], "success");

    let stats = product.emulator_settled().await.expect("emulator");
    assert_eq!(
        (stats.created, stats.killed, stats.alive),
        (1, 1, 0),
        "one sandbox, ended by its lifetime after the linger: {stats:?}"
    );
}

#[tokio::test]
async fn only_the_owner_finds_a_run_and_strangers_learn_nothing() {
    let model = ModelServer::start(Script::Bash {
        command: SLOW_COMMAND.to_owned(),
    })
    .await;
    let product = serve(Chain::E2b, &model).start().await;
    let other = product.another_instance(&[], &[]).await;
    let client = reqwest::Client::new();
    let run_id = start_and_leave(
        &client,
        product.url(),
        json!({"prompt": "go", "detach": true}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let unknown = format!("run_{}", "0".repeat(32));
    for (base, id, key) in [
        // Another tenant, with its own E2B key, on either instance.
        (
            product.url(),
            run_id.as_str(),
            Some("e2b_another_tenant_key"),
        ),
        (
            other.url.as_str(),
            run_id.as_str(),
            Some("e2b_another_tenant_key"),
        ),
        // Ids that are not runs.
        (other.url.as_str(), unknown.as_str(), None),
        (other.url.as_str(), "not-a-run", None),
        (other.url.as_str(), &run_id[..run_id.len() - 1], None),
    ] {
        let mut request = client.get(events_url(base, id));
        if let Some(key) = key {
            request = request.header("x-e2b-api-key", key);
        }
        let refused = read(request, None).await;
        assert_eq!(refused.status, 404, "{id} with {key:?}: {}", refused.body);
        let body: Value = serde_json::from_str(&refused.body).expect("a JSON error");
        assert_eq!(body["error"]["type"], "not_found");
        assert_eq!(body["error"]["message"], "no such run");
    }

    // The owner, from the other instance, reads it to the end.
    let rest = read(
        client
            .get(events_url(&other.url, &run_id))
            .query(&[("after", "1")]),
        None,
    )
    .await;
    assert!(rest.done, "{}", rest.body);
    assert_eq!(rest.events.first().map(|(id, _)| *id), Some(2));
    assert_every_sandbox_killed(&product, 1).await;
}

#[tokio::test]
async fn a_local_detached_run_goes_on_when_its_client_leaves_and_is_read_again() {
    let model = ModelServer::start(Script::Bash {
        command: "sleep 3 && echo later > later.txt".to_owned(),
    })
    .await;
    let product = serve(Chain::Local, &model).start().await;
    let client = reqwest::Client::new();

    // A run without detach: no ids, no run id, as before.
    let plain = client
        .post(format!("{}/query", product.url()))
        .json(&json!({"prompt": "go"}))
        .send()
        .await
        .expect("POST /query");
    assert!(plain.headers().get("x-run-id").is_none());
    let text = plain.text().await.expect("the plain stream");
    assert!(text.contains("\"type\":\"done\""), "{text}");
    assert!(
        !text.lines().any(|line| line.starts_with("id:")),
        "a run without detach has no event ids: {text}"
    );

    let first = read(
        client
            .post(format!("{}/query", product.url()))
            .json(&json!({"prompt": "go", "detach": true})),
        Some(3),
    )
    .await;
    assert_eq!(ids(&first.events), [1, 2, 3]);
    let run_id = first.events[0].1["run_id"]
        .as_str()
        .expect("run_id")
        .to_owned();
    // The client is gone; the run goes on.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let rest = read(
        client
            .get(events_url(product.url(), &run_id))
            .header("last-event-id", "3"),
        None,
    )
    .await;
    assert_eq!(rest.status, 200, "{}", rest.body);
    assert!(rest.done, "{}", rest.body);
    let n = 3 + rest.events.len() as u64;
    assert_eq!(ids(&rest.events), (4..=n).collect::<Vec<_>>());
    assert!(rest.events.iter().any(|(_, e)| e["type"] == "result"));
    assert_eq!(
        rest.events.last().map(|(_, e)| e["status"].clone()),
        Some(json!("success"))
    );
    // The server's registry answers for its local runs, while the
    // finished run's sandbox lingers.
    let (code, status) = get_json(client.get(format!("{}/runs/{run_id}", product.url()))).await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(status["last_event_id"], n, "{status}");
    let (_, list) = get_json(client.get(format!("{}/runs", product.url()))).await;
    assert_eq!(list["runs"][0]["run_id"], run_id.as_str(), "{list}");
    product.assert_sandboxes_destroyed(2).await;
}

#[tokio::test]
async fn the_vercel_door_detaches_before_max_duration_and_reads_on() {
    use common::doors::{door_env, start_vercel_function};
    use common::emulator;
    let model = ModelServer::start(Script::Bash {
        command: SLOW_COMMAND.to_owned(),
    })
    .await;
    let work = tempfile::tempdir().expect("emulator folder");
    let mut options = emulator::options();
    options.work_root = Some(work.path().to_owned());
    // The VM's model proxy reaches the model, as a real one does.
    options.egress_open = Some(format!("127.0.0.1:{}", model.port()));
    let e2b = emulator::start_with(options).await;
    let offline = common::product::offline_env();
    let mut env = door_env(&e2b);
    env.extend(offline.iter().map(|(k, v)| (k.as_str(), v.clone())));
    env.extend([
        ("ANTHROPIC_BASE_URL", model.url()),
        ("SANDSTORM_MAX_DURATION", MAX_DURATION_SECS.to_owned()),
        ("SANDSTORM_RUN_LINGER", LINGER_SECS.to_owned()),
    ]);
    let (function, url) = start_vercel_function(env!("CARGO_BIN_EXE_vercel-query"), env).await;
    let client = reqwest::Client::new();

    let first = read(
        client
            .post(format!("{url}/query"))
            .json(&json!({"prompt": "go", "detach": true})),
        None,
    )
    .await;
    assert_eq!(first.status, 200, "{}\n{}", first.body, function.output());
    assert!(first.detached.is_some(), "{}", first.body);
    let run_id = first.events[0].1["run_id"]
        .as_str()
        .expect("run_id")
        .to_owned();
    let mut got = first.events;
    let mut reads = 1;
    while !got.last().is_some_and(|(_, e)| e["type"] == "done") {
        assert!(reads < READS, "the run never ended: {got:?}");
        let last = got.last().map_or(0, |(id, _)| *id);
        // As Vercel's rewrite delivers it: the path the client asked for,
        // with the matched `id` added to the query.
        let next = read(
            client
                .get(events_url(&url, &run_id))
                .query(&[("id", run_id.as_str())])
                .header("last-event-id", last.to_string()),
            None,
        )
        .await;
        assert_eq!(next.status, 200, "{}", next.body);
        got.extend(next.events);
        reads += 1;
    }
    assert!(
        reads >= 3,
        "the agent outlasted two of the function's deadlines"
    );
    let n = got.len() as u64;
    assert_eq!(
        ids(&got),
        (1..=n).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert_eq!(
        got.last().map(|(_, e)| e["status"].clone()),
        Some(json!("success"))
    );
    let stats = e2b.settled(Duration::from_secs(10)).await;
    assert_eq!(
        (stats.created, stats.killed, stats.alive),
        (1, 1, 0),
        "{stats:?}"
    );
}

/// A JSON answer and its status code.
async fn get_json(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn runs_are_listed_and_a_cancel_ends_every_reader_and_the_sandbox() {
    // An agent that never stops on its own.
    let model = ModelServer::start(Script::EndlessBash).await;
    let product = serve(Chain::E2b, &model).start().await;
    let other = product.another_instance(&[], &[]).await;
    let client = reqwest::Client::new();
    let run_id = start_and_leave(
        &client,
        product.url(),
        json!({"prompt": "sleep for a minute", "detach": true}),
    )
    .await;

    // A reader on the other instance, from the start, until the end.
    let reader = tokio::spawn(read(client.get(events_url(&other.url, &run_id)), None));
    // Wait until the agent is in its long command.
    let mut status = Value::Null;
    for _ in 0..100 {
        let (code, body) = get_json(client.get(format!("{}/runs/{run_id}", other.url))).await;
        if code == 200 {
            status = body;
            if status["last_event_id"].as_u64().unwrap_or(0) >= 4 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status["status"], "running", "{status}");
    assert_eq!(status["prompt"], "sleep for a minute");
    assert_eq!(status["turns"], Value::Null);

    // Listed by both instances: by the registry here, by E2B there.
    for base in [product.url(), other.url.as_str()] {
        let (code, list) = get_json(client.get(format!("{base}/runs"))).await;
        assert_eq!(code, 200, "{list}");
        let runs = list["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), 1, "{list}");
        assert_eq!(runs[0]["run_id"], run_id.as_str());
        assert_eq!(runs[0]["status"], "running");
    }
    // Another tenant lists nothing and cannot cancel.
    let (code, list) = get_json(
        client
            .get(format!("{}/runs", other.url))
            .header("x-e2b-api-key", "e2b_another_tenant_key"),
    )
    .await;
    assert_eq!(
        (code, list["runs"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{list}"
    );
    let (code, _) = get_json(
        client
            .delete(format!("{}/runs/{run_id}", other.url))
            .header("x-e2b-api-key", "e2b_another_tenant_key"),
    )
    .await;
    assert_eq!(code, 404);

    // The owner cancels, on the instance that did not start the run.
    let (code, cancelled) =
        get_json(client.post(format!("{}/runs/{run_id}/cancel", other.url))).await;
    assert_eq!(code, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");

    let reader = reader.await.expect("reader task");
    assert!(reader.done, "{}", reader.body);
    let n = reader.events.len();
    let (_, error) = &reader.events[n - 2];
    let (_, done) = &reader.events[n - 1];
    assert_eq!(error["type"], "error", "{}", reader.body);
    assert_eq!(error["error_type"], "cancelled", "{error}");
    assert_eq!(done["status"], "error");
    assert_eq!(cancelled["last_event_id"], n as u64);

    // Created = killed; then the run is gone for everyone.
    assert_every_sandbox_killed(&product, 1).await;
    let (code, _) = get_json(client.get(format!("{}/runs/{run_id}", other.url))).await;
    assert_eq!(code, 404);
    let (_, list) = get_json(client.get(format!("{}/runs", product.url()))).await;
    assert_eq!(list["runs"].as_array().map(Vec::len), Some(0), "{list}");
}

#[tokio::test]
async fn the_run_s_own_timeout_ends_a_detached_run_in_its_sandbox() {
    // An agent that never stops: only the run's `timeout` ends it, and the
    // wrapper in the sandbox enforces that, with nobody attached.
    let model = ModelServer::start(Script::EndlessBash).await;
    let product = serve(Chain::E2b, &model).start().await;
    let client = reqwest::Client::new();
    let run_id = start_and_leave(
        &client,
        product.url(),
        json!({"prompt": "go", "detach": true, "timeout": 8}),
    )
    .await;
    // The client left at once; a reader from another instance sees the end.
    let other = product.another_instance(&[], &[]).await;
    let rest = read(client.get(events_url(&other.url, &run_id)), None).await;
    assert!(rest.done, "{}", rest.body);
    let n = rest.events.len();
    let (_, error) = &rest.events[n - 2];
    assert_eq!(error["type"], "error", "{}", rest.body);
    assert_eq!(error["error_type"], "timeout", "{error}");
    assert_eq!(rest.events[n - 1].1["status"], "error");
    let (_, status) = get_json(client.get(format!("{}/runs/{run_id}", other.url))).await;
    assert_eq!(status["status"], "expired", "{status}");
    assert_every_sandbox_killed(&product, 1).await;
}

/// `ds` with the product's environment (so, without `--server`, it asks
/// the same E2B), in an empty folder; its exit code, stdout and stderr.
async fn ds(product: &common::product::Product, args: &[&str]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = tokio::process::Command::new(common::serve::DS)
        .args(args)
        .current_dir(dir.path())
        .env_clear()
        .envs(product.env())
        .output()
        .await
        .expect("run ds");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn ds_lists_attaches_to_and_cancels_runs_on_a_server_and_on_e2b_directly() {
    let model = ModelServer::start(Script::Bash {
        command: "sleep 4 && echo later > later.txt".to_owned(),
    })
    .await;
    let product = serve(Chain::E2b, &model).start().await;
    let client = reqwest::Client::new();
    let run_id = start_and_leave(
        &client,
        product.url(),
        json!({"prompt": "go", "detach": true}),
    )
    .await;

    // Through the server.
    let server = product.url().to_owned();
    let (code, out, err) = ds(&product, &["runs", "--server", &server, "--json-output"]).await;
    assert_eq!(code, Some(0), "{err}");
    let listed: Value =
        serde_json::from_str(out.lines().next().unwrap_or_default()).expect("a JSON line");
    assert_eq!(listed["run_id"], run_id.as_str(), "{out}");
    let (code, out, err) = ds(
        &product,
        &[
            "attach",
            &run_id,
            "--from",
            "1",
            "--server",
            &server,
            "--json-output",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}\n{out}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    assert_ne!(lines[0]["type"], "run", "--from 1 skips the run event");
    assert!(lines.iter().any(|e| e["type"] == "result"), "{out}");
    assert_eq!(lines.last().map(|e| e["type"].clone()), Some(json!("done")));

    // Directly against E2B, with no server: another run, listed and
    // cancelled by `ds` alone.
    let second_id = start_and_leave(
        &client,
        product.url(),
        json!({"prompt": "again", "detach": true}),
    )
    .await;
    let (code, out, err) = ds(&product, &["runs"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&second_id), "{out}\n{err}");
    let (code, _, err) = ds(&product, &["cancel", &second_id]).await;
    assert_eq!(code, Some(0), "{err}");
    // Its agent is still in its 4 s command.
    assert!(err.contains("cancelled"), "{err}");
    let (code, _, err) = ds(
        &product,
        &["attach", "run_00000000000000000000000000000000"],
    )
    .await;
    assert_eq!(code, Some(1), "an unknown run: {err}");
    assert!(err.contains("no such run"), "{err}");

    // `ds "..." --detach` runs one itself, on E2B, and shows it to the end.
    let (code, out, err) = ds(&product, &["go", "--detach", "--json-output"]).await;
    assert_eq!(code, Some(0), "{err}\n{out}");
    let first: Value = serde_json::from_str(out.lines().next().unwrap_or_default()).expect("JSON");
    assert_eq!(first["type"], "run", "{out}");
    // A local sandbox would end with `ds`: refused, before any sandbox.
    let (code, _, err) = ds(&product, &["go", "--detach", "--sandbox", "local"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--detach needs an E2B sandbox"), "{err}");

    assert_every_sandbox_killed(&product, 3).await;
}

#[tokio::test]
async fn sandstorm_json_detach_is_the_default_a_request_can_turn_off() {
    let model = ModelServer::start(Script::bash_write_file()).await;
    let product = serve(Chain::Local, &model)
        .config(json!({"detach": true}))
        .start()
        .await;
    let client = reqwest::Client::new();
    let detached = read(
        client
            .post(format!("{}/query", product.url()))
            .json(&json!({"prompt": "go"})),
        None,
    )
    .await;
    assert_eq!(detached.events[0].1["type"], "run", "{}", detached.body);
    assert!(detached.done, "{}", detached.body);
    let plain = client
        .post(format!("{}/query", product.url()))
        .json(&json!({"prompt": "go", "detach": false}))
        .send()
        .await
        .expect("POST /query");
    assert!(plain.headers().get("x-run-id").is_none());
    let text = plain.text().await.expect("the plain stream");
    assert!(text.contains("\"type\":\"done\""), "{text}");
    assert!(
        !text.lines().any(|line| line.starts_with("id:")),
        "detach: false wins over sandstorm.json: {text}"
    );
    product.assert_sandboxes_destroyed(2).await;
}

/// The text of every message of a recorded model request, in order.
fn conversation(request: &common::model_server::RecordedRequest) -> String {
    request.body["messages"].to_string()
}

#[tokio::test]
async fn a_follow_up_turn_resumes_the_session_in_the_same_sandbox_from_any_instance() {
    let model = ModelServer::start(Script::Bash {
        command: "echo from-turn-one | tee notes.txt".to_owned(),
    })
    .await;
    let product = serve(Chain::E2b, &model).start().await;
    let other = product.another_instance(&[], &[]).await;
    let client = reqwest::Client::new();

    // Turn 1, its sandbox kept for a follow-up.
    let first = write_notes_and_keep(&client, product.url(), 120).await;
    let run_id = first.run_id_header.clone().expect("x-run-id");
    let (code, status) = get_json(client.get(format!("{}/runs/{run_id}", other.url))).await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["status"], "idle", "{status}");
    let last = first.events.last().expect("events").0;
    assert_eq!(status["last_event_id"], last, "{status}");
    let turn_one_requests = model.agent_requests().len();

    // Turn 2, on the instance that did not start the run.
    let second = follow_up(
        &client,
        &other.url,
        &run_id,
        json!({"prompt": "what did you write?", "files": {"extra.txt": "x"}}),
    )
    .await;
    assert_eq!(second.run_id_header.as_deref(), Some(run_id.as_str()));
    let n = last + second.events.len() as u64;
    assert_eq!(ids(&second.events), (last + 1..=n).collect::<Vec<_>>());
    let (_, turn) = &second.events[0];
    assert_eq!(turn["type"], "turn", "{turn}");
    assert_eq!(turn["turn"], 2);
    assert_eq!(turn["run_id"], run_id.as_str());
    let (_, done) = second.events.last().expect("done");
    assert_eq!(done["status"], "success", "{}", second.body);
    // The model saw the whole conversation: the first prompt, its tool
    // call and what the command printed.
    let requests = model.agent_requests();
    let resumed = requests[turn_one_requests..]
        .iter()
        .find(|r| conversation(r).contains("what did you write?"))
        .unwrap_or_else(|| panic!("no request of turn 2:\n{}", model.describe_requests()));
    let seen = conversation(resumed);
    assert!(
        seen.contains("write the notes") && seen.contains("from-turn-one"),
        "turn 2's request lacks turn 1's prompt or tool result"
    );
    // The file the first turn wrote is still there: the run's outputs
    // send it back again.
    let file = second
        .events
        .iter()
        .find(|(_, e)| e["type"] == "file")
        .unwrap_or_else(|| panic!("no file event: {}", second.body));
    assert_eq!(file.1["path"], "notes.txt");

    // A replay from the start is both turns, the same ids and bytes.
    let replay = read(client.get(events_url(product.url(), &run_id)), None).await;
    let both: Vec<_> = first.events.iter().chain(&second.events).cloned().collect();
    assert_eq!(replay.events, both);

    // Another tenant's key finds no run to continue, on either route.
    let (code, refused) = get_json(
        client
            .post(format!("{}/runs/{run_id}/messages", other.url))
            .header("x-e2b-api-key", "e2b_another_tenant_key")
            .json(&json!({"prompt": "let me in"})),
    )
    .await;
    assert_eq!(code, 404, "{refused}");
    let (code, refused) = get_json(client.post(format!("{}/query", other.url)).json(&json!({
        "prompt": "let me in",
        "resume": run_id,
        "e2b_api_key": "e2b_another_tenant_key",
    })))
    .await;
    assert_eq!(code, 404, "{refused}");

    // 0.9.2's `resume` on /query is the next turn, with the same checks.
    let before_resume = model.agent_requests().len();
    let third = post_query(
        &client,
        product.url(),
        json!({"prompt": "and once more", "resume": run_id}),
    )
    .await;
    assert_eq!(third.events[0].0, n + 1);
    assert_eq!(third.events[0].1["turn"], 3, "{}", third.body);
    assert!(third.done, "{}", third.body);
    let requests = model.agent_requests();
    let resumed = requests[before_resume..]
        .iter()
        .find(|r| conversation(r).contains("and once more"))
        .unwrap_or_else(|| panic!("no request of turn 3:\n{}", model.describe_requests()));
    assert!(
        conversation(resumed).contains("write the notes")
            && conversation(resumed).contains("what did you write?"),
        "turn 3's request lacks the earlier turns' prompts"
    );
    assert!(
        third
            .events
            .iter()
            .any(|(_, e)| e["type"] == "file" && e["path"] == "notes.txt"),
        "turn 1's file is gone by turn 3: {}",
        third.body
    );
    let n = n + third.events.len() as u64;

    // `ds continue`, straight to E2B with no server between.
    let (code, out, err) = ds(
        &product,
        &["continue", &run_id, "a fourth", "--json-output"],
    )
    .await;
    assert_eq!(code, Some(0), "{err}\n{out}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    assert_eq!(
        (lines[0]["type"].as_str(), lines[0]["turn"].as_u64()),
        (Some("turn"), Some(4)),
        "{out}"
    );
    assert_eq!(
        lines.last().map(|e| e["status"].clone()),
        Some(json!("success")),
        "{out}"
    );
    let n = n + lines.len() as u64;

    // A fork is a new run in a new sandbox, its session branched from the
    // old one's; the old run is untouched.
    let before_fork = model.agent_requests().len();
    let fork = read(
        client.post(format!("{}/query", other.url)).json(&json!({
            "prompt": "branch off",
            "resume": run_id,
            "fork_session": true,
            "detach": true,
        })),
        None,
    )
    .await;
    assert_eq!(fork.status, 200, "{}", fork.body);
    assert!(fork.done, "{}", fork.body);
    let fork_id = fork.run_id_header.clone().expect("the fork's run id");
    assert_ne!(fork_id, run_id);
    assert_eq!(fork.events[0].0, 1);
    let requests = model.agent_requests();
    let forked = requests[before_fork..]
        .iter()
        .find(|r| conversation(r).contains("branch off"))
        .unwrap_or_else(|| panic!("no request of the fork:\n{}", model.describe_requests()));
    assert!(
        conversation(forked).contains("a fourth"),
        "the fork's request lacks the old run's conversation"
    );
    let (_, status) = get_json(client.get(format!("{}/runs/{run_id}", other.url))).await;
    assert_eq!(status["status"], "idle", "{status}");
    assert_eq!(status["last_event_id"], n, "{status}");
    // The fork is over and lingers for LINGER_SECS: end it while it does.
    let (code, _) = get_json(client.delete(format!("{}/runs/{fork_id}", product.url()))).await;
    assert_eq!(code, 200);

    // From the command line alone: `ds --detach --keep-alive`, then
    // `ds continue` and `ds cancel`, straight to E2B.
    let (code, out, err) = ds(
        &product,
        &["go", "--detach", "--keep-alive", "60", "--json-output"],
    )
    .await;
    assert_eq!(code, Some(0), "{err}\n{out}");
    let started: Value =
        serde_json::from_str(out.lines().next().unwrap_or_default()).expect("JSON");
    let cli_run = started["run_id"]
        .as_str()
        .expect("a run event first")
        .to_owned();
    let (code, out, err) = ds(
        &product,
        &["continue", &cli_run, "and then", "--json-output"],
    )
    .await;
    assert_eq!(code, Some(0), "{err}\n{out}");
    assert!(out.contains("\"type\":\"turn\""), "{out}");
    let (code, _, err) = ds(&product, &["cancel", &cli_run]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("cancelled"), "{err}");

    // Ending an idle run destroys its sandbox.
    let (code, ended) = get_json(client.delete(format!("{}/runs/{run_id}", other.url))).await;
    assert_eq!(code, 200, "{ended}");
    assert_eq!(ended["status"], "cancelled", "{ended}");
    // Also on the instance whose registry still held it.
    let (code, gone) = get_json(client.get(format!("{}/runs/{run_id}", product.url()))).await;
    assert_eq!(code, 404, "{gone}");
    assert_every_sandbox_killed(&product, 3).await;
}

#[tokio::test]
async fn a_follow_up_is_refused_while_a_turn_runs_and_once_the_run_is_over() {
    let model = ModelServer::start(Script::EndlessBash).await;
    // Over runs linger long enough here to be asked for another turn on a
    // loaded machine; ending `ds serve` ends its local sandboxes.
    let product = Serve::new(Chain::Local, &model)
        .env("SANDSTORM_RUN_LINGER", "60")
        .start()
        .await;
    let client = reqwest::Client::new();
    let messages = |run_id: &str| format!("{}/runs/{run_id}/messages", product.url());

    let kept = start_and_leave(
        &client,
        product.url(),
        json!({"prompt": "loop", "keep_alive": 60}),
    )
    .await;
    let (code, refused) = get_json(
        client
            .post(messages(&kept))
            .json(&json!({"prompt": "next"})),
    )
    .await;
    assert_eq!(code, 409, "{refused}");
    assert_eq!(refused["error"]["type"], "turn_running", "{refused}");
    // What a run is started with, a follow-up cannot change.
    let (code, refused) = get_json(
        client
            .post(messages(&kept))
            .json(&json!({"prompt": "next", "outputs": ["*.txt"]})),
    )
    .await;
    assert_eq!(code, 422, "{refused}");
    assert_eq!(refused["error"]["field"], "outputs", "{refused}");
    let (code, refused) = get_json(
        client
            .post(messages(&kept))
            .json(&json!({"prompt": "next", "team_id": "T2"})),
    )
    .await;
    assert_eq!(code, 422, "{refused}");
    assert_eq!(refused["error"]["field"], "team_id", "{refused}");
    // Cancelled, the run takes no more turns.
    let (code, cancelled) = get_json(client.delete(format!("{}/runs/{kept}", product.url()))).await;
    assert_eq!(
        (code, cancelled["status"].as_str()),
        (200, Some("cancelled")),
        "{cancelled}"
    );
    let (code, refused) = get_json(
        client
            .post(messages(&kept))
            .json(&json!({"prompt": "next"})),
    )
    .await;
    assert_eq!(code, 410, "{refused}");
    assert_eq!(refused["error"]["type"], "run_over", "{refused}");

    // A run started without keep_alive is over with its turn.
    let once = start_and_leave(
        &client,
        product.url(),
        json!({"prompt": "loop", "detach": true, "timeout": 5}),
    )
    .await;
    let rest = read(client.get(events_url(product.url(), &once)), None).await;
    assert!(rest.done, "{}", rest.body);
    let (_, status) = get_json(client.get(format!("{}/runs/{once}", product.url()))).await;
    assert_eq!(status["status"], "expired", "{status}");
    let (code, refused) = get_json(
        client
            .post(messages(&once))
            .json(&json!({"prompt": "next"})),
    )
    .await;
    assert_eq!(code, 410, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("keep_alive"), "{refused}");
    // An id nobody started is no run.
    let (code, _) = get_json(
        client
            .post(messages("run_0000000000000000000000000000000000"))
            .json(&json!({"prompt": "next"})),
    )
    .await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn keep_alive_counts_from_the_turn_s_end_however_often_the_run_is_read() {
    const KEEP_ALIVE: u64 = 8;
    let model = ModelServer::start(Script::bash_write_file()).await;
    let product = serve(Chain::Local, &model).start().await;
    let client = reqwest::Client::new();
    let first = read(
        client
            .post(format!("{}/query", product.url()))
            .json(&json!({"prompt": "go", "keep_alive": KEEP_ALIVE})),
        None,
    )
    .await;
    assert!(first.done, "{}", first.body);
    let ended = std::time::Instant::now();
    let run_id = first.run_id_header.expect("x-run-id");
    let status = format!("{}/runs/{run_id}", product.url());

    // Readers that reach the end of the idle run, again and again, do not
    // keep it longer: its idle time counts from the turn's end.
    for at in [1.5, 3.0, 4.5] {
        tokio::time::sleep_until((ended + Duration::from_secs_f64(at)).into()).await;
        let again = read(client.get(events_url(product.url(), &run_id)), None).await;
        assert!(again.done, "{}", again.body);
        let (code, body) = get_json(client.get(&status)).await;
        assert_eq!(
            (code, body["status"].as_str()),
            (200, Some("idle")),
            "{body}"
        );
    }
    // Had each read restarted it, it would stay until 12.5 s after.
    tokio::time::sleep_until((ended + Duration::from_secs(10)).into()).await;
    let (code, body) = get_json(client.get(&status)).await;
    assert_eq!(code, 404, "kept past keep_alive: {body}");
    let (code, _) = get_json(
        client
            .post(format!("{}/runs/{run_id}/messages", product.url()))
            .json(&json!({"prompt": "too late"})),
    )
    .await;
    assert_eq!(code, 404);
    product.assert_sandboxes_destroyed(1).await;
}

/// The emulator's sandboxes in `state` (E2B's list, as the SDKs call it).
async fn sandboxes_in(product: &common::product::Product, state: &str) -> Vec<Value> {
    let env = product.env();
    reqwest::Client::new()
        .get(format!("{}/v2/sandboxes?state={state}", env["E2B_API_URL"]))
        .header("X-API-Key", env["E2B_API_KEY"].as_str())
        .send()
        .await
        .expect("list the emulator's sandboxes")
        .json()
        .await
        .expect("a JSON list")
}

/// Waits until the emulator holds exactly one sandbox, paused.
async fn wait_until_paused(product: &common::product::Product) -> Value {
    for _ in 0..100 {
        if let [paused] = sandboxes_in(product, "paused").await.as_slice() {
            return paused.clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the idle run's sandbox was not paused within 20 s");
}

#[tokio::test]
async fn an_idle_run_s_e2b_sandbox_is_paused_resumed_for_a_follow_up_and_ended_past_keep_alive() {
    const KEEP_ALIVE: u64 = 8;
    let model = ModelServer::start(Script::Bash {
        command: "echo kept-while-paused | tee notes.txt".to_owned(),
    })
    .await;
    let product = serve(Chain::E2b, &model).start().await;
    let other = product.another_instance(&[], &[]).await;
    let client = reqwest::Client::new();
    let first = write_notes_and_keep(&client, product.url(), KEEP_ALIVE).await;
    let run_id = first.run_id_header.expect("x-run-id");

    // After the linger (2 s here), the idle run's sandbox is paused.
    let sandbox = wait_until_paused(&product).await["sandboxID"].clone();
    // Reading it from another instance resumes it to read it.
    let (code, status) = get_json(client.get(format!("{}/runs/{run_id}", other.url))).await;
    assert_eq!(
        (code, status["status"].as_str()),
        (200, Some("idle")),
        "{status}"
    );

    // A follow-up resumes it: the same sandbox, its files, its session.
    let second = follow_up(
        &client,
        &other.url,
        &run_id,
        json!({"prompt": "what did you write?"}),
    )
    .await;
    assert_eq!(
        second.events.last().map(|(_, e)| e["status"].clone()),
        Some(json!("success"))
    );
    assert!(
        second
            .events
            .iter()
            .any(|(_, e)| e["type"] == "file" && e["path"] == "notes.txt"),
        "{}",
        second.body
    );
    // Idle again, it is paused again; once it has been paused past
    // keep_alive, the instance that finds it so ends it.
    let paused = wait_until_paused(&product).await;
    assert_eq!(paused["sandboxID"], sandbox, "the same sandbox all along");
    let paused_at = humantime::parse_rfc3339_weak(paused["endAt"].as_str().expect("endAt"))
        .expect("an RFC 3339 endAt");
    let over = paused_at + Duration::from_secs(KEEP_ALIVE + 1);
    tokio::time::sleep(
        over.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
    .await;
    let (code, body) = get_json(client.get(format!("{}/runs/{run_id}", other.url))).await;
    assert_eq!(code, 404, "{body}");
    assert_every_sandbox_killed(&product, 1).await;
}

#[tokio::test]
async fn a_cancel_that_comes_before_the_runner_starts_still_stops_it() {
    // An agent that never stops on its own: only the cancel ends it.
    let model = ModelServer::start(Script::EndlessBash).await;
    let product = serve(Chain::E2b, &model).start().await;
    let client = reqwest::Client::new();
    // The sandbox holds the runner's start for 3 s: the cancel below comes
    // in between, before there is a runner to signal.
    let knobs = client
        .post(format!("{}/_emulator/config", product.env()["E2B_API_URL"]))
        .json(&json!({"runner_start_delay_ms": 3000}))
        .send()
        .await
        .expect("configure the emulator");
    assert!(knobs.status().is_success());
    let run_id = start_and_leave(
        &client,
        product.url(),
        json!({"prompt": "loop", "detach": true}),
    )
    .await;
    let (code, cancelled) =
        get_json(client.delete(format!("{}/runs/{run_id}", product.url()))).await;
    assert_eq!(
        (code, cancelled["status"].as_str()),
        (200, Some("cancelled")),
        "{cancelled}"
    );
    let rest = read(client.get(events_url(product.url(), &run_id)), None).await;
    assert!(rest.done, "{}", rest.body);
    let n = rest.events.len();
    assert_eq!(
        rest.events[n - 2].1["error_type"],
        "cancelled",
        "{}",
        rest.body
    );
    assert_every_sandbox_killed(&product, 1).await;
}

#[tokio::test]
async fn a_value_filled_into_an_mcp_server_is_redacted_for_a_reader_on_another_instance() {
    const TOKEN: &str = "mcp-token-from-the-environment-4821";
    // The agent prints the config its runner read, MCP servers and all.
    let model = ModelServer::start(Script::Bash {
        command: "cat /opt/agent-runner/agent_config.json".into(),
    })
    .await;
    let product = Serve::new(Chain::E2b, &model)
        .config(json!({"mcp_servers": {"tracker": {
            "command": "node", "args": ["-e", "0"], "env": {"TRACKER_TOKEN": "${TRACKER_TOKEN}"}
        }}}))
        .env("TRACKER_TOKEN", TOKEN)
        .start()
        .await;
    let client = reqwest::Client::new();
    let run_id = start_and_leave(
        &client,
        product.url(),
        json!({"prompt": "show the config", "detach": true}),
    )
    .await;
    // A second instance, which knows the variable as every instance of a
    // deployment does, reads the whole run.
    let other = product.another_instance(&[], &[]).await;
    let read = read(client.get(events_url(&other.url, &run_id)), None).await;
    assert!(read.done, "{}", read.body);
    assert!(
        read.body.contains("TRACKER_TOKEN") && read.body.contains("[REDACTED]"),
        "the agent printed the server's env: {}",
        read.body
    );
    assert!(
        !read.body.contains(TOKEN),
        "the token reached a reader: {}",
        read.body
    );
}
