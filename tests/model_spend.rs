//! The hard spending cap, end to end: `ds serve` with a local sandbox, the
//! real runner and Agent SDK, and the scripted model.
//!
//! The model endpoint on the host is the only way the agent reaches the
//! model with the key, so it counts every call, the SDK's and the agent's
//! own, and refuses the first call after a cap is reached. These tests
//! check which call that is against the scripted model's own record of
//! what reached it, and what the client is told.
//!
//! Needs bubblewrap and `npm ci --prefix runner`.

mod common;

use common::model_server::{ModelServer, RecordedRequest, Script};
use common::product::{Chain, Events, Product, Serve};
use serde_json::{Value, json};

/// The scripted model reports these for every answer.
const INPUT_TOKENS: u64 = 100;
const OUTPUT_TOKENS: u64 = 20;
const TOKENS_PER_CALL: u64 = INPUT_TOKENS + OUTPUT_TOKENS;

/// List prices in US dollars per million tokens (input, output) of the
/// models the SDK asks for in these runs.
fn list_price(model: &str) -> (f64, f64) {
    if model.contains("haiku-4-5") {
        (1.0, 5.0)
    } else if model.contains("sonnet-4-5") {
        (3.0, 15.0)
    } else {
        panic!("a call for {model}, which these tests do not price")
    }
}

/// The calls that reached the model and cost something: every POST to the
/// Messages API but token counts.
fn billed(model: &ModelServer) -> Vec<RecordedRequest> {
    model
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/v1/messages"))
        .collect()
}

fn cost_of(request: &RecordedRequest) -> f64 {
    let (input, output) = list_price(request.model().unwrap_or_default());
    (INPUT_TOKENS as f64 * input + OUTPUT_TOKENS as f64 * output) / 1e6
}

fn budget_error(events: &Events) -> &Value {
    let errors = events.of_type("error");
    assert_eq!(errors.len(), 1, "{}", events.dump());
    assert_eq!(
        errors[0]["error_type"],
        "budget_exceeded",
        "{}",
        events.dump()
    );
    errors[0]
}

/// A POST that must answer 200 with an event stream: its events, read to
/// the end.
async fn post_events(client: &reqwest::Client, url: String, body: Value) -> Vec<Value> {
    let response = client.post(&url).json(&body).send().await.expect("POST");
    assert_eq!(response.status(), 200, "POST {url}");
    common::sse::json_events(&response.text().await.expect("the event stream"))
}

/// `POST /query` that may be refused: its status and JSON body.
async fn post(product: &Product, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/query", product.url()))
        .json(&body)
        .send()
        .await
        .expect("POST /query");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_cost_cap_refuses_the_call_after_the_one_that_crossed_it() {
    cost_cap_refuses_the_call_after_the_one_that_crossed_it(Chain::Local).await;
}

#[tokio::test]
async fn the_e2b_model_proxy_refuses_the_call_after_the_one_that_crossed_the_cost_cap() {
    cost_cap_refuses_the_call_after_the_one_that_crossed_it(Chain::E2b).await;
}

async fn cost_cap_refuses_the_call_after_the_one_that_crossed_it(chain: Chain) {
    let model = ModelServer::start(Script::EndlessBash).await;
    let mut product = Serve::new(chain, &model).start().await;
    let cap = 0.002;

    let events = product
        .query(json!({
            "prompt": "loop",
            "model": "claude-sonnet-4-5",
            "max_cost_usd": cap,
            "max_turns": 100,
        }))
        .await;

    let error = budget_error(&events);
    let message = error["error"].as_str().unwrap_or_default();
    assert!(message.contains("max_cost_usd of $0.002"), "{message}");
    assert!(message.contains("refused the next call"), "{message}");

    // The last call that reached the model is the one that crossed the cap.
    let calls = billed(&model);
    let costs: Vec<f64> = calls.iter().map(cost_of).collect();
    let total: f64 = costs.iter().sum();
    let before_last: f64 = costs[..costs.len() - 1].iter().sum();
    assert!(
        before_last < cap && total >= cap,
        "the cap of ${cap} was crossed at ${before_last} → ${total} over {} calls:\n{}",
        calls.len(),
        model.describe_requests()
    );

    // The endpoint's tally agrees with the model's record, and says why.
    let spend = &events.done["sandstorm"]["spend"];
    assert_eq!(spend["calls"], calls.len(), "{spend}");
    assert!(spend["refused_calls"].as_u64() >= Some(1), "{spend}");
    let counted = spend["cost_usd"].as_f64().expect("cost_usd");
    assert!((counted - total).abs() < 1e-9, "{counted} vs {total}");
    assert_eq!(
        spend["exceeded"],
        json!({"cap": "max_cost_usd", "limit": cap})
    );
    assert_eq!(
        spend["input_tokens"],
        INPUT_TOKENS * calls.len() as u64,
        "{spend}"
    );
    assert!(
        message.contains(&format!("over {} model calls", calls.len())),
        "{message}"
    );
    product.assert_sandboxes_destroyed(1).await;
}

/// What the agent runs: twelve Messages calls of its own with curl, with
/// the placeholder key it was given, each printing its status.
const CURL_LOOP: &str = "for i in $(seq 1 12); do curl -s -o /dev/null -w '%{http_code} ' \
     -H \"x-api-key: $ANTHROPIC_API_KEY\" -H 'content-type: application/json' \
     -H 'anthropic-version: 2023-06-01' \
     -d '{\"model\":\"claude-haiku-4-5\",\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}' \
     \"$ANTHROPIC_BASE_URL/v1/messages\"; done";

#[tokio::test]
async fn an_agent_calling_the_endpoint_itself_is_held_to_the_token_cap() {
    agent_calling_the_endpoint_is_held_to_the_token_cap(Chain::Local).await;
}

#[tokio::test]
async fn an_agent_calling_the_e2b_model_proxy_itself_is_held_to_the_token_cap() {
    agent_calling_the_endpoint_is_held_to_the_token_cap(Chain::E2b).await;
}

async fn agent_calling_the_endpoint_is_held_to_the_token_cap(chain: Chain) {
    let model = ModelServer::start(Script::Bash {
        command: CURL_LOOP.into(),
    })
    .await;
    let mut product = Serve::new(chain, &model).start().await;
    let cap = 6 * TOKENS_PER_CALL;

    let events = product
        .query(json!({"prompt": "call the model yourself", "max_tokens": cap}))
        .await;

    // The agent's own calls got answers until the cap, then 402s.
    let results = events.tool_results();
    assert_eq!(results.len(), 1, "{}", events.dump());
    let statuses: Vec<&str> = results[0].0.split_whitespace().collect();
    assert_eq!(statuses.len(), 12, "{statuses:?}");
    let answered = statuses.iter().take_while(|s| **s == "200").count();
    assert!(
        statuses[answered..].iter().all(|s| *s == "402"),
        "after the first refusal every call is refused: {statuses:?}"
    );

    // Exactly as many calls reached the model as the cap allows: the
    // SDK's, then the agent's, until the tally reached the cap.
    let calls = billed(&model);
    assert_eq!(
        calls.len() as u64,
        cap / TOKENS_PER_CALL,
        "{}",
        model.describe_requests()
    );
    assert!(answered >= 1, "{statuses:?}");
    let error = budget_error(&events);
    let message = error["error"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("max_tokens of {cap}")),
        "{message}"
    );
    let spend = &events.done["sandstorm"]["spend"];
    assert_eq!(spend["calls"], calls.len(), "{spend}");
    // The agent's refused curls, and the SDK's call after them.
    assert!(
        spend["refused_calls"].as_u64() > Some((12 - answered) as u64),
        "{spend}"
    );
    product.assert_sandboxes_destroyed(1).await;
}

#[tokio::test]
async fn a_cap_that_cannot_hold_is_refused_before_the_run() {
    let model = ModelServer::start(Script::bash_write_file()).await;

    // A model with no price cannot have a cost cap...
    let local = Serve::new(Chain::Local, &model).start().await;
    let (status, body) = post(
        &local,
        json!({"prompt": "go", "model": "claude-unreleased-9", "max_cost_usd": 1}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "max_cost_usd", "{body}");
    let detail = body.to_string();
    assert!(detail.contains("claude-unreleased-9"), "{detail}");
    assert!(detail.contains("SANDSTORM_MODEL_PRICES"), "{detail}");
    drop(local);

    // ...until the operator prices it.
    let mut priced = Serve::new(Chain::Local, &model)
        .env(
            "SANDSTORM_MODEL_PRICES",
            r#"{"claude-unreleased-9": {"input": 1, "output": 5, "cache_write": 1.25, "cache_read": 0.1}}"#,
        )
        .start()
        .await;
    let events = priced
        .query(json!({"prompt": "go", "model": "claude-unreleased-9", "max_cost_usd": 1}))
        .await;
    assert_eq!(events.result()["subtype"], "success", "{}", events.dump());
    let spend = &events.done["sandstorm"]["spend"];
    assert!(spend["cost_usd"].as_f64() > Some(0.0), "{spend}");
    assert!(spend.get("exceeded").is_none(), "{spend}");
    // An alias is priced as the id the SDK resolves it to, on each call.
    let events = priced
        .query(json!({"prompt": "go", "model": "sonnet", "max_cost_usd": 1}))
        .await;
    assert_eq!(events.result()["subtype"], "success", "{}", events.dump());
    assert!(
        events.done["sandstorm"]["spend"]["cost_usd"].as_f64() > Some(0.0),
        "{}",
        events.done
    );
    drop(priced);

    // A provider whose sandbox holds the key cannot enforce a cap: the
    // request is refused rather than promised a cap that would not hold.
    let e2b = Serve::new(Chain::E2b, &model)
        .env("SANDSTORM_E2B_MODEL_PROXY", "0")
        .start()
        .await;
    for field in ["max_cost_usd", "max_tokens"] {
        let (status, body) = post(&e2b, json!({"prompt": "go", field: 1})).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
        assert!(body.to_string().contains("e2b"), "{body}");
    }
    // With the model proxy a cloud provider's run may have one too
    // (tests/keyless_clouds.rs).
}

/// What the agent looks for: the model key, in its own environment, in
/// every process's it can read, in the files it can read, and through
/// sudo. The key's tail is put together in the shell, so that the command's
/// own text (which the SDK writes to its transcript) does not hold it.
fn probe(key: &str) -> String {
    let (a, b) = key[key.len() - 12..].split_at(6);
    format!(
        "a={a}; b={b}; needle=$a$b; \
         echo env:$(env | grep -c $needle); \
         echo environ:$(grep -l -s $needle /proc/*/environ | wc -l); \
         echo files:$(grep -r -l -s $needle /home /tmp /opt /etc /run /var 2>/dev/null | wc -l); \
         if sudo -n true 2>/dev/null; then echo sudo:yes; else echo sudo:no; fi; \
         echo base:$ANTHROPIC_BASE_URL"
    )
}

#[tokio::test]
async fn the_e2b_sandbox_holds_no_key_and_the_model_gets_the_real_one() {
    sandbox_holds_no_key_and_the_model_gets_the_real_one(Chain::E2b, "http://127.0.0.1:880").await;
}

#[tokio::test]
async fn the_local_sandbox_holds_no_key_and_the_model_gets_the_real_one() {
    sandbox_holds_no_key_and_the_model_gets_the_real_one(Chain::Local, "http://127.0.0.1:3128")
        .await;
}

async fn sandbox_holds_no_key_and_the_model_gets_the_real_one(chain: Chain, endpoint: &str) {
    let model = ModelServer::start(Script::Bash {
        command: probe(common::product::ANTHROPIC_KEY),
    })
    .await;
    let mut product = Serve::new(chain, &model).start().await;

    let events = product.query(json!({"prompt": "look for the key"})).await;

    assert_eq!(events.result()["subtype"], "success", "{}", events.dump());
    let results = events.tool_results();
    assert_eq!(results.len(), 1, "{}", events.dump());
    let found = &results[0].0;
    assert!(
        events.init().get("sandstorm").is_none(),
        "no credential went in, and the system event says none: {}",
        events.init()
    );
    let base = format!("base:{endpoint}");
    for line in ["env:0", "environ:0", "files:0", "sudo:no", base.as_str()] {
        assert!(found.lines().any(|l| l == line), "no {line:?} in {found}");
    }
    // Every call reached the model with the real key, which only the proxy
    // held.
    let requests = model.agent_requests();
    assert!(!requests.is_empty(), "{}", model.describe_requests());
    for request in &requests {
        assert_eq!(
            request.header("x-api-key"),
            Some(common::product::ANTHROPIC_KEY),
            "{}",
            model.describe_requests()
        );
    }
    // The proxy's tally came back from inside the sandbox.
    let spend = &events.done["sandstorm"]["spend"];
    assert_eq!(spend["calls"], billed(&model).len(), "{spend}");
    product.assert_sandboxes_destroyed(1).await;
}

/// Turn 1's agent leaves a process behind that calls the model with the
/// turn's placeholder after the turn has ended, and writes the status.
const LATE_CALL: &str = "setsid -f sh -c 'sleep 3; curl -s -o /dev/null -w \"%{http_code}\" \
     -H \"x-api-key: $ANTHROPIC_API_KEY\" -H \"content-type: application/json\" \
     -H \"anthropic-version: 2023-06-01\" \
     -d \"{\\\"model\\\":\\\"claude-haiku-4-5\\\",\\\"max_tokens\\\":5,\\\"messages\\\":[{\\\"role\\\":\\\"user\\\",\\\"content\\\":\\\"late\\\"}]}\" \
     \"$ANTHROPIC_BASE_URL/v1/messages\" > /home/user/late.txt' > /dev/null 2>&1; echo left";

#[tokio::test]
async fn the_local_endpoint_refuses_a_turn_s_token_once_the_turn_is_over() {
    a_turn_s_token_dies_with_the_turn(Chain::Local).await;
}

#[tokio::test]
async fn the_e2b_model_proxy_refuses_a_turn_s_token_once_the_turn_is_over() {
    a_turn_s_token_dies_with_the_turn(Chain::E2b).await;
}

async fn a_turn_s_token_dies_with_the_turn(chain: Chain) {
    use base64::Engine;
    let model = ModelServer::start(Script::Bash {
        command: LATE_CALL.into(),
    })
    .await;
    let product = Serve::new(chain, &model).start().await;
    let client = reqwest::Client::new();
    let first = post_events(
        &client,
        format!("{}/query", product.url()),
        json!({
            "prompt": "leave a late caller",
            "keep_alive": 120,
            // Outputs are the run's: turn 2 brings back what the late caller wrote.
            "outputs": ["late.txt"],
        }),
    )
    .await;
    let run_id = first
        .iter()
        .find_map(|e| e["run_id"].as_str().filter(|_| e["type"] == "run"))
        .unwrap_or_else(|| panic!("no run event: {first:?}"))
        .to_owned();
    assert!(first.iter().any(|e| e["type"] == "done"), "{first:?}");
    let calls_after_turn_one = billed(&model).len();

    // The late caller fires while the run idles between turns.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let second = post_events(
        &client,
        format!("{}/runs/{run_id}/messages", product.url()),
        json!({"prompt": "what did it get?"}),
    )
    .await;
    let file = second
        .iter()
        .find(|e| e["type"] == "file")
        .unwrap_or_else(|| panic!("late.txt did not come back: {second:?}"));
    let status = base64::engine::general_purpose::STANDARD
        .decode(file["data"].as_str().expect("data"))
        .expect("base64");
    let status = String::from_utf8_lossy(&status);
    // Refused (401) by a later endpoint, or nothing listening (000): never
    // an answer.
    assert!(
        status == "401" || status == "000",
        "the late call got {status}"
    );
    assert!(
        billed(&model)[calls_after_turn_one..]
            .iter()
            .all(|r| !r.body.to_string().contains("\"late\"")),
        "the late call reached the model:\n{}",
        model.describe_requests()
    );
    let _ = client
        .delete(format!("{}/runs/{run_id}", product.url()))
        .send()
        .await;
}

#[tokio::test]
async fn the_system_event_names_the_credentials_that_went_into_the_sandbox() {
    let model = ModelServer::start(Script::bash_write_file()).await;
    // E2B with the model proxy turned off: the key goes in, as in the
    // original.
    let mut product = Serve::new(Chain::E2b, &model)
        .env("SANDSTORM_E2B_MODEL_PROXY", "0")
        .start()
        .await;
    let events = product.query(json!({"prompt": "go"})).await;
    assert_eq!(
        events.init()["sandstorm"],
        json!({"credentials_in_sandbox": ["ANTHROPIC_API_KEY"]}),
        "{}",
        events.init()
    );
    // The SDK's own fields are all still there.
    assert!(events.init()["session_id"].is_string(), "{}", events.init());
    assert_eq!(events.of_type("system").len(), 1, "{}", events.dump());
    drop(product);

    // By default the template's model proxy holds it, and nothing went in.
    let mut product = Serve::new(Chain::E2b, &model).start().await;
    let events = product.query(json!({"prompt": "go"})).await;
    assert_eq!(events.result()["subtype"], "success", "{}", events.dump());
    assert!(
        events.init().get("sandstorm").is_none(),
        "{}",
        events.init()
    );
}

/// The agent's curl loop, then its try at the endpoint's record of the
/// turn: a forged tally of nothing written over it, moved over it, and
/// the record removed; then what it sees of the folder.
fn curl_loop_then_forge() -> String {
    let forged = r#"{"spend":{"calls":0,"refused_calls":0,"input_tokens":0,"output_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"cost_usd":0},"final":true}"#;
    format!(
        "{CURL_LOOP}; echo; f=/run/sandstorm/spend/turn-1.json; echo '{forged}' > /tmp/forged; \
         cp /tmp/forged $f; echo '{forged}' > $f; mv -f /tmp/forged $f; rm -f $f; \
         mkdir -p /run/sandstorm/spend/x; ls -ld /run/sandstorm/spend; ls -l $f"
    )
}

#[tokio::test]
async fn a_local_detached_run_tells_every_reader_its_spend_and_cap() {
    detached_run_tells_every_reader_its_spend_and_cap(Chain::Local).await;
}

#[tokio::test]
async fn an_e2b_detached_run_tells_every_reader_its_spend_and_cap() {
    detached_run_tells_every_reader_its_spend_and_cap(Chain::E2b).await;
}

/// A detached run's end, read again after its first stream ended, is an
/// attached run's: `budget_exceeded` and the endpoint's tally, which the
/// agent could not forge.
async fn detached_run_tells_every_reader_its_spend_and_cap(chain: Chain) {
    let model = ModelServer::start(Script::Bash {
        command: curl_loop_then_forge(),
    })
    .await;
    let product = Serve::new(chain, &model).start().await;
    let client = reqwest::Client::new();
    let cap = 6 * TOKENS_PER_CALL;

    let read = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.expect("the request");
        assert_eq!(response.status(), 200);
        Events::from_sse(&response.text().await.expect("the event stream"))
    };
    let first =
        read(client.post(format!("{}/query", product.url())).json(
            &json!({"prompt": "call the model yourself", "max_tokens": cap, "detach": true}),
        ))
        .await;
    let run_id = first.of_type("run")[0]["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run event: {}", first.dump()))
        .to_owned();
    // A later reader, after the first stream has ended.
    let later = read(client.get(format!("{}/runs/{run_id}/events", product.url()))).await;

    let calls = billed(&model);
    assert_eq!(
        calls.len() as u64,
        cap / TOKENS_PER_CALL,
        "{}",
        model.describe_requests()
    );
    for (reader, events) in [("first", &first), ("later", &later)] {
        let error = budget_error(events);
        let message = error["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("max_tokens of {cap}")),
            "{reader}: {message}"
        );
        assert!(
            message.contains(&format!("over {} model calls", calls.len())),
            "{reader}: {message}"
        );
        let spend = &events.done["sandstorm"]["spend"];
        assert_eq!(spend["calls"], calls.len(), "{reader}: {spend}");
        assert_eq!(
            spend["input_tokens"],
            INPUT_TOKENS * calls.len() as u64,
            "{reader}: {spend}"
        );
        assert_eq!(
            spend["output_tokens"],
            OUTPUT_TOKENS * calls.len() as u64,
            "{reader}: {spend}"
        );
        assert!(
            spend["refused_calls"].as_u64() >= Some(1),
            "{reader}: {spend}"
        );
        assert_eq!(
            spend["exceeded"],
            json!({"cap": "max_tokens", "limit": cap}),
            "{reader}: {spend}"
        );
        assert_eq!(events.done["status"], "error", "{reader}");
    }
    // On E2B the record is in the sandbox, in a folder of root's the agent
    // could read and not write.
    if chain == Chain::E2b {
        let results = later.tool_results();
        let seen = &results[0].0;
        assert!(
            seen.lines()
                .any(|l| l.starts_with("drwxr-xr-x") && l.contains("/run/sandstorm/spend")),
            "{seen}"
        );
        assert!(seen.contains("turn-1.json"), "the record is gone: {seen}");
    }
    let _ = client
        .delete(format!("{}/runs/{run_id}", product.url()))
        .send()
        .await;
}
