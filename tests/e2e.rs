//! End to end: the real Agent SDK through the whole product, offline.
//!
//! Every scenario runs twice, once through each chain:
//!
//! - `e2b::*`: `ds serve --sandbox e2b` → E2B emulator → local sandbox →
//!   bubblewrap → `node runner.mjs` → Agent SDK → scripted model;
//! - `local::*`: `ds serve --sandbox local` → bubblewrap → the same.
//!
//! `cli::*` runs `ds "..."` on the command line with a local sandbox.
//!
//! Only the model is fake ([`common::model_server`]); the assertions are on
//! what a client sees (the SSE events, `ds`'s output and exit code) and on
//! what the model was sent. Every run also checks that its sandbox is gone
//! afterwards and that no key value reached any event. Needs bubblewrap and
//! `npm ci --prefix runner`.

mod common;

use common::model_server::{
    FINAL_TEXT, LOOP_COMMAND, ModelServer, PREAMBLE_TEXT, SUBAGENT_TEXT, Script,
};
use common::product::{ANTHROPIC_KEY, Chain, Cli, Events, Product, Serve};
use common::runner::fixture;
use serde_json::{Value, json};

/// The user's upload in every scenario that reads one.
const CSV: &str = "name,qty\napple,3\npear,5\nplum,7\n";
/// The Bash call of the main scenario: reads the upload, writes a file and
/// reads it back (the sandbox is gone after the run, so the proof that the
/// file exists must come from inside it), and prints the Anthropic key the
/// sandbox holds, which the server must redact.
const BASH_COMMAND: &str = "cat data.csv && echo written-by-agent > out.txt && realpath out.txt \
                            && cat out.txt && echo \"key=$ANTHROPIC_API_KEY\"";
/// An OpenRouter key in ds serve's environment.
const OPENROUTER_KEY: &str = "sk-or-v1-e2e-env-7c41d0";
/// What the key variables hold inside a local sandbox: the model endpoint's
/// per-process placeholder, never the key.
const PLACEHOLDER: &str = "sk-ant-sandstorm-placeholder-";
/// An OpenRouter key sent in the request body.
const REQUEST_OPENROUTER_KEY: &str = "sk-or-v1-e2e-request-92be5f";

/// Runs each scenario through both chains, as `e2b::<name>` and
/// `local::<name>`.
macro_rules! through_both_chains {
    ($($scenario:ident),* $(,)?) => {
        mod e2b {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::Chain::E2b).await;
                }
            )*
        }
        mod local {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::Chain::Local).await;
                }
            )*
        }
    };
}

through_both_chains!(
    bash_reads_an_upload_and_writes_a_file_in_the_sandbox,
    structured_output_from_sandstorm_json_is_in_the_result,
    a_subagent_from_sandstorm_json_runs_with_its_prompt,
    an_uploaded_stdio_mcp_server_connects_and_its_tool_is_called,
    an_openrouter_key_in_the_environment_is_sent_as_a_bearer_token,
    an_openrouter_key_in_the_request_is_sent_as_a_bearer_token,
    default_sonnet_model_changes_the_model_the_server_sees,
    max_turns_ends_an_endless_tool_loop,
    a_model_500_ends_the_run_and_the_sandbox,
    the_agent_reaches_an_opened_host_through_the_proxy_and_nothing_else,
    the_agent_cannot_write_into_the_runners_or_claude_codes_channels,
    a_foundry_key_stays_on_the_host_and_reaches_foundry_as_x_api_key,
);

/// A request with the CSV upload.
fn query(extra: Value) -> Value {
    let mut body = json!({
        "prompt": "Read data.csv and write out.txt",
        "files": { "data.csv": CSV },
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}

/// A sandbox existed during the one query, and is gone now.
async fn assert_one_sandbox_came_and_went(product: &Product, events: &Events) {
    assert!(
        events.sandboxes_seen >= 1,
        "no sandbox directory appeared during the run"
    );
    product.assert_sandboxes_destroyed(1).await;
}

fn assert_success(events: &Events) {
    let result = events.result();
    assert_eq!(result["subtype"], "success", "{}", events.dump());
    assert_eq!(result["is_error"], false, "{}", events.dump());
    assert!(events.of_type("error").is_empty(), "{}", events.dump());
}

async fn bash_reads_an_upload_and_writes_a_file_in_the_sandbox(chain: Chain) {
    let model = ModelServer::start(Script::Bash {
        command: BASH_COMMAND.into(),
    })
    .await;
    let mut product = Serve::new(chain, &model)
        .config(json!({ "system_prompt": "You are the e2e CSV agent." }))
        .start()
        .await;

    let events = product.query(query(json!({}))).await;

    // system init first, with what the sandbox and the runner set up.
    assert_eq!(events.events[0]["type"], "system", "{}", events.dump());
    let init = events.init();
    assert!(init["session_id"].is_string(), "{init}");
    assert_eq!(init["cwd"], "/home/user", "{init}");
    assert_eq!(init["permissionMode"], "bypassPermissions", "{init}");
    assert!(
        init["tools"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("Bash"))),
        "{init}"
    );
    // assistant with the tool_use, user with its tool_result.
    assert_eq!(
        events.tool_uses(),
        vec![(
            "Bash",
            &json!({ "command": BASH_COMMAND, "description": "Run the scripted command" })
        )],
        "{}",
        events.dump()
    );
    let results = events.tool_results();
    assert_eq!(results.len(), 1, "{}", events.dump());
    let (output, is_error) = &results[0];
    assert!(!is_error, "the Bash call failed: {output}");
    assert!(
        output.contains(CSV.trim_end()),
        "the upload was not read: {output}"
    );
    assert!(
        output.contains("/home/user/out.txt\nwritten-by-agent"),
        "the written file was not there: {output}"
    );
    assert!(
        output.contains(&format!("key={PLACEHOLDER}")) && !output.contains(ANTHROPIC_KEY),
        "the sandbox held more than a placeholder key: {output}"
    );
    // The agent's text, then the result that ends the stream.
    let text: Vec<&str> = events
        .of_type("assistant")
        .iter()
        .filter_map(|e| e["message"]["content"].as_array())
        .flatten()
        .filter_map(|b| b["text"].as_str())
        .collect();
    assert_eq!(text, [PREAMBLE_TEXT, FINAL_TEXT], "{}", events.dump());
    assert_success(&events);
    let result = events.result();
    assert_eq!(result["result"], FINAL_TEXT);
    assert_eq!(result["num_turns"], 2, "{result}");
    assert!(
        result["total_cost_usd"].as_f64().is_some_and(|c| c > 0.0),
        "{result}"
    );
    assert_eq!(
        events.events.last(),
        Some(result),
        "the result is the last event"
    );

    // The model got the key as x-api-key and the system prompt from
    // sandstorm.json.
    let requests = model.agent_requests();
    assert!(!requests.is_empty(), "{}", model.describe_requests());
    for request in &requests {
        assert_eq!(request.header("x-api-key"), Some(ANTHROPIC_KEY));
        assert!(
            request.system_text().contains("You are the e2e CSV agent."),
            "{}",
            model.describe_requests()
        );
    }
    assert_one_sandbox_came_and_went(&product, &events).await;
}

async fn structured_output_from_sandstorm_json_is_in_the_result(chain: Chain) {
    let output = json!({ "fruits": 3, "summary": "apples, pears and plums" });
    let model = ModelServer::start(Script::StructuredOutput {
        output: output.clone(),
    })
    .await;
    let schema = json!({
        "type": "object",
        "properties": {
            "fruits": { "type": "integer" },
            "summary": { "type": "string" },
        },
        "required": ["fruits", "summary"],
        "additionalProperties": false,
    });
    let mut product = Serve::new(chain, &model)
        .config(json!({ "output_format": { "type": "json_schema", "schema": schema } }))
        .start()
        .await;

    let events = product.query(query(json!({}))).await;

    assert_success(&events);
    assert_eq!(
        events.result()["structured_output"],
        output,
        "{}",
        events.dump()
    );
    let offered = model
        .agent_requests()
        .first()
        .is_some_and(|r| r.tool_names().contains(&"StructuredOutput"));
    assert!(offered, "{}", model.describe_requests());
    assert_one_sandbox_came_and_went(&product, &events).await;
}

async fn a_subagent_from_sandstorm_json_runs_with_its_prompt(chain: Chain) {
    const MARKER: &str = "You are the fruit-counter subagent (marker e2e-51c8).";
    let model = ModelServer::start(Script::Subagent {
        agent: "fruit-counter".into(),
        prompt_marker: MARKER.into(),
    })
    .await;
    let mut product = Serve::new(chain, &model)
        .config(json!({ "agents": { "fruit-counter": {
            "description": "Counts fruit in CSV files",
            "prompt": MARKER,
            "tools": ["Read"],
        } } }))
        .start()
        .await;

    let events = product.query(query(json!({}))).await;

    assert_success(&events);
    assert!(
        events
            .tool_uses()
            .iter()
            .any(|(name, input)| ["Task", "Agent"].contains(name)
                && input["subagent_type"] == "fruit-counter"),
        "no delegation: {}",
        events.dump()
    );
    assert!(
        model
            .message_requests()
            .iter()
            .any(|r| r.system_text().contains(MARKER)),
        "the subagent never called the model:\n{}",
        model.describe_requests()
    );
    assert!(
        events
            .tool_results()
            .iter()
            .any(|(text, _)| text.contains(SUBAGENT_TEXT)),
        "the subagent's answer did not come back: {}",
        events.dump()
    );
    assert_one_sandbox_came_and_went(&product, &events).await;
}

async fn an_uploaded_stdio_mcp_server_connects_and_its_tool_is_called(chain: Chain) {
    let model = ModelServer::start(Script::McpTool {
        tool: "mcp__echo__echo".into(),
        input: json!({ "text": "hello from the model" }),
    })
    .await;
    let server_js =
        std::fs::read_to_string(fixture("mcp_echo_server.mjs")).expect("read the MCP fixture");
    let mut product = Serve::new(chain, &model)
        .config(json!({ "mcp_servers": { "echo": {
            "command": "node",
            "args": ["/home/user/mcp/echo.mjs"],
        } } }))
        .start()
        .await;

    let events = product
        .query(query(json!({ "files": { "mcp/echo.mjs": server_js } })))
        .await;

    assert_success(&events);
    let init = events.init();
    let servers = init["mcp_servers"].as_array().cloned().unwrap_or_default();
    assert!(
        servers
            .iter()
            .any(|s| s["name"] == "echo" && s["status"] == "connected"),
        "the echo MCP server is not connected: {servers:?}"
    );
    assert!(
        events
            .tool_uses()
            .iter()
            .any(|(name, _)| *name == "mcp__echo__echo"),
        "{}",
        events.dump()
    );
    assert_eq!(
        events.tool_results(),
        vec![("echo: hello from the model".to_owned(), false)],
        "{}",
        events.dump()
    );
    assert_one_sandbox_came_and_went(&product, &events).await;
}

async fn the_agent_reaches_an_opened_host_through_the_proxy_and_nothing_else(chain: Chain) {
    // Stands in for a public host: the operator opens exactly its port.
    let opened = common::http::serve_router(axum::Router::new().route(
        "/hello",
        axum::routing::get(|| async { "hello-from-opened" }),
    ))
    .await;
    let closed = common::http::serve_router(axum::Router::new().route(
        "/hello",
        axum::routing::get(|| async { "closed-host-reached" }),
    ))
    .await;
    let open = opened.trim_start_matches("http://").to_owned();
    // NO_PROXY covers loopback inside, so the agent names the proxy itself,
    // as it would not need to for a real public host.
    let curl = "curl -sS -m 20 --noproxy '' -x \"$HTTP_PROXY\"";
    let model = ModelServer::start(Script::Bash {
        command: format!(
            "{curl} {opened}/hello; echo; \
             {curl} -o /dev/null -w 'closed=%{{http_code}}' {closed}/hello; echo; \
             curl -sS -m 5 {closed}/hello || echo direct=refused"
        ),
    })
    .await;
    let mut product = Serve::new(chain, &model)
        .env("SANDSTORM_EGRESS_OPEN", &open)
        .start()
        .await;

    let events = product.query(query(json!({}))).await;

    assert_success(&events);
    let results = events.tool_results();
    let (output, _) = results.first().expect("the Bash call ran");
    assert!(output.contains("hello-from-opened"), "{output}");
    assert!(output.contains("closed=403"), "{output}");
    assert!(output.contains("direct=refused"), "{output}");
    assert!(!output.contains("closed-host-reached"), "{output}");
    assert_one_sandbox_came_and_went(&product, &events).await;
}

async fn the_agent_cannot_write_into_the_runners_or_claude_codes_channels(chain: Chain) {
    // The agent's own Bash command looks for the runner and the Claude Code
    // process it runs under, and tries their stdout through /proc.
    let probe = "for p in /proc/[0-9]*; do c=$(tr '\\0' ' ' < $p/cmdline 2>/dev/null); \
                 echo \"SEEN ${c%% *}\"; \
                 case \"$c\" in *for\\ p\\ in*) continue;; esac; \
                 case \"$c\" in *runner.mjs*|/opt/sandstorm/bin/claude*) \
                 if echo '{\"type\":\"result\",\"forged\":true}' 2>/dev/null > $p/fd/1; \
                 then echo \"OPENED ${c%% *}\"; else echo \"CLOSED ${c%% *}\"; fi;; esac; done";
    let model = ModelServer::start(Script::Bash {
        command: probe.into(),
    })
    .await;
    let mut product = Serve::new(chain, &model).start().await;

    let events = product.query(query(json!({}))).await;

    assert_success(&events);
    let results = events.tool_results();
    let (output, _) = results.first().expect("the Bash call ran");
    assert!(!output.contains("OPENED"), "{output}");
    assert!(
        output.contains("CLOSED node"),
        "the runner was not found: {output}"
    );
    assert!(
        output.contains("CLOSED /opt/sandstorm/bin/claude"),
        "Claude Code was not found: {output}"
    );
    // The tool call's own text holds the line escaped; a forged event
    // would hold it bare.
    assert!(
        !events.dump().contains("\"forged\":true"),
        "{}",
        events.dump()
    );
    assert_one_sandbox_came_and_went(&product, &events).await;
}

/// Every model call carried `Bearer <key>` and no `x-api-key`.
fn assert_bearer_only(model: &ModelServer, key: &str) {
    let requests = model.message_requests();
    assert!(!requests.is_empty(), "the model was never called");
    for request in &requests {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {key}").as_str()),
            "{:?}",
            request.headers
        );
        assert_eq!(request.header("x-api-key"), None, "{:?}", request.headers);
    }
}

async fn an_openrouter_key_in_the_environment_is_sent_as_a_bearer_token(chain: Chain) {
    // The sandbox holds a placeholder as ANTHROPIC_AUTH_TOKEN: the real
    // token stays on the host side.
    let model = ModelServer::start(Script::Bash {
        command: "cat data.csv && echo \"token=$ANTHROPIC_AUTH_TOKEN\"".into(),
    })
    .await;
    let mut product = Serve::new(chain, &model)
        .env_remove("ANTHROPIC_API_KEY")
        .env("OPENROUTER_API_KEY", OPENROUTER_KEY)
        .start()
        .await;

    let events = product.query(query(json!({}))).await;

    assert_success(&events);
    assert_bearer_only(&model, OPENROUTER_KEY);
    let results = events.tool_results();
    assert!(
        results.iter().any(
            |(t, _)| t.contains(&format!("token={PLACEHOLDER}")) && !t.contains(OPENROUTER_KEY)
        ),
        "{results:?}"
    );
    assert_one_sandbox_came_and_went(&product, &events).await;
}

async fn an_openrouter_key_in_the_request_is_sent_as_a_bearer_token(chain: Chain) {
    let model = ModelServer::start(Script::bash_write_file()).await;
    let mut product = Serve::new(chain, &model)
        .env_remove("ANTHROPIC_API_KEY")
        .start()
        .await;

    let events = product
        .query(query(
            json!({ "openrouter_api_key": REQUEST_OPENROUTER_KEY }),
        ))
        .await;

    assert_success(&events);
    assert_bearer_only(&model, REQUEST_OPENROUTER_KEY);
    assert_one_sandbox_came_and_went(&product, &events).await;
}

/// Claude Code itself, switched to Azure AI Foundry, inside the sandbox:
/// told to skip its own auth, it sends no key, and reaches the model
/// through the endpoint with the token in its base URL's path. (The E2B
/// chain's emulator makes local sandboxes, so the key stays out there too;
/// on E2B itself it still goes in.)
async fn a_foundry_key_stays_on_the_host_and_reaches_foundry_as_x_api_key(chain: Chain) {
    const FOUNDRY_KEY: &str = "foundry-e2e-key-5d1e09";
    let model = ModelServer::start(Script::Bash {
        command: "cat data.csv && echo \"key=[$ANTHROPIC_FOUNDRY_API_KEY$AZURE_API_KEY] \
                  base=$ANTHROPIC_FOUNDRY_BASE_URL\""
            .into(),
    })
    .await;
    let mut product = Serve::new(chain, &model)
        .env_remove("ANTHROPIC_API_KEY")
        .env("CLAUDE_CODE_USE_FOUNDRY", "1")
        .env("ANTHROPIC_FOUNDRY_API_KEY", FOUNDRY_KEY)
        .env("ANTHROPIC_FOUNDRY_BASE_URL", &model.url())
        .start()
        .await;

    let events = product.query(query(json!({}))).await;

    assert_success(&events);
    let requests = model.message_requests();
    assert!(!requests.is_empty(), "the model was never called");
    for request in &requests {
        assert_eq!(
            request.header("x-api-key"),
            Some(FOUNDRY_KEY),
            "{:?}",
            request.headers
        );
        // The CLI's skip-auth dummy goes no further than the endpoint.
        assert_eq!(
            request.header("authorization"),
            None,
            "{:?}",
            request.headers
        );
    }
    // The sandbox's endpoint: the host's behind the local proxy port, or
    // the E2B template's model proxy.
    let endpoint = match chain {
        Chain::Local => "http://127.0.0.1:3128",
        Chain::E2b => "http://127.0.0.1:880",
    };
    let results = events.tool_results();
    assert!(
        results
            .iter()
            .any(|(t, _)| t.contains(&format!("key=[] base={endpoint}/sandstorm/"))),
        "{results:?}"
    );
    assert_one_sandbox_came_and_went(&product, &events).await;
}

async fn default_sonnet_model_changes_the_model_the_server_sees(chain: Chain) {
    let model = ModelServer::start(Script::bash_write_file()).await;
    let mut product = Serve::new(chain, &model)
        .env("ANTHROPIC_DEFAULT_SONNET_MODEL", "qwen/qwen3-coder-e2e")
        .start()
        .await;

    let events = product.query(query(json!({ "model": "sonnet" }))).await;

    assert_success(&events);
    let requests = model.agent_requests();
    assert!(!requests.is_empty(), "{}", model.describe_requests());
    for request in &requests {
        assert_eq!(request.model(), Some("qwen/qwen3-coder-e2e"));
    }
    assert_one_sandbox_came_and_went(&product, &events).await;
}

async fn max_turns_ends_an_endless_tool_loop(chain: Chain) {
    let model = ModelServer::start(Script::EndlessBash).await;
    let mut product = Serve::new(chain, &model).start().await;

    let events = product.query(query(json!({ "max_turns": 3 }))).await;

    let result = events.result();
    assert_eq!(result["subtype"], "error_max_turns", "{}", events.dump());
    assert_eq!(result["is_error"], true, "{result}");
    assert!(
        result["num_turns"].as_u64().is_some_and(|n| n >= 3),
        "{result}"
    );
    let calls = events.tool_uses();
    assert!(!calls.is_empty(), "{}", events.dump());
    assert!(
        calls
            .iter()
            .all(|(_, input)| input["command"] == LOOP_COMMAND)
    );
    assert_eq!(
        model.agent_requests().len(),
        3,
        "{}",
        model.describe_requests()
    );
    assert_one_sandbox_came_and_went(&product, &events).await;
}

async fn a_model_500_ends_the_run_and_the_sandbox(chain: Chain) {
    let model = ModelServer::start(Script::ApiError { status: 500 }).await;
    let mut product = Serve::new(chain, &model).start().await;

    let events = product.query(query(json!({}))).await;

    assert!(
        !model.message_requests().is_empty(),
        "the model was never called"
    );
    let last = events.events.last().expect("at least one event");
    let failed = last["type"] == "error" || (last["type"] == "result" && last["is_error"] == true);
    assert!(failed, "the run did not end in failure: {}", events.dump());
    if last["type"] == "result" {
        assert_eq!(last["api_error_status"], 500, "{last}");
    }
    assert!(events.tool_uses().is_empty(), "{}", events.dump());
    assert_one_sandbox_came_and_went(&product, &events).await;
}

/// `ds "prompt"` on the command line, with a local sandbox.
mod cli {
    #[tokio::test]
    async fn ctrl_c_and_sigterm_destroy_the_sandbox_before_ds_exits() {
        use rustix::process::Signal;
        let model = ModelServer::start(Script::EndlessBash).await;
        for (signal, code) in [(Signal::INT, 130), (Signal::TERM, 143)] {
            let out = Cli::new(&model)
                .run_and_signal(&["Loop until stopped"], signal)
                .await;
            assert_eq!(out.status.code(), Some(code), "{signal:?}: {}", out.dump());
            assert_eq!(out.sandboxes_seen, 1, "{}", out.dump());
            assert!(
                out.sandboxes_left.is_empty(),
                "{signal:?} left {:?}",
                out.sandboxes_left
            );
            assert!(out.stderr.contains("interrupted"), "{}", out.dump());
        }
    }
    use super::*;

    #[tokio::test]
    async fn json_output_is_one_json_event_per_line() {
        let model = ModelServer::start(Script::Bash {
            command: BASH_COMMAND.into(),
        })
        .await;

        let out = Cli::new(&model)
            .file("data.csv", CSV)
            .run(&["Read data.csv", "-f", "data.csv", "--json-output"])
            .await;

        assert_eq!(out.status.code(), Some(0), "{}", out.dump());
        let events = Events::parse_lines(&out.stdout);
        events.init();
        assert!(
            events
                .tool_results()
                .iter()
                .any(|(text, is_error)| !is_error && text.contains(CSV.trim_end())),
            "no tool_result with the CSV: {}",
            out.dump()
        );
        assert!(
            out.stdout.contains(&format!("key={PLACEHOLDER}"))
                && !out.stdout.contains(ANTHROPIC_KEY),
            "the sandbox held more than a placeholder key: {}",
            out.dump()
        );
        assert_success(&events);
        assert_eq!(events.result()["num_turns"], 2);
        assert!(out.sandboxes_seen >= 1, "no sandbox appeared");
        assert!(out.sandboxes_left.is_empty(), "{:?}", out.sandboxes_left);
    }

    #[tokio::test]
    async fn human_mode_prints_the_answer_and_a_summary_line() {
        let model = ModelServer::start(Script::bash_write_file()).await;

        let out = Cli::new(&model)
            .file("data.csv", CSV)
            .file(
                "sandstorm.json",
                &json!({ "system_prompt": "You are the e2e CLI agent." }).to_string(),
            )
            .run(&["Read data.csv", "-f", "data.csv"])
            .await;

        assert_eq!(out.status.code(), Some(0), "{}", out.dump());
        // The agent's text on stdout, and nothing else there.
        assert_eq!(
            out.stdout,
            format!("{PREAMBLE_TEXT}\n{FINAL_TEXT}\n"),
            "{}",
            out.dump()
        );
        // `✓ done · 2 turns · $0.0123 · 1.2s` on stderr.
        let summary = out
            .stderr
            .lines()
            .find(|l| l.starts_with("✓ done · "))
            .unwrap_or_else(|| panic!("no summary line: {}", out.dump()));
        let parts: Vec<&str> = summary.split(" · ").collect();
        assert_eq!(parts.len(), 4, "{summary}");
        assert_eq!(parts[1], "2 turns", "{summary}");
        let cost = parts[2]
            .strip_prefix('$')
            .filter(|c| c.split_once('.').is_some_and(|(_, d)| d.len() == 4))
            .and_then(|c| c.parse::<f64>().ok());
        assert!(cost.is_some_and(|c| c > 0.0), "cost in {summary}");
        let seconds = parts[3]
            .strip_suffix('s')
            .and_then(|s| s.parse::<f64>().ok());
        assert!(seconds.is_some_and(|s| s > 0.0), "duration in {summary}");
        assert!(
            model
                .agent_requests()
                .iter()
                .all(|r| r.system_text().contains("You are the e2e CLI agent.")),
            "sandstorm.json in the working directory was not used:\n{}",
            model.describe_requests()
        );
        assert!(out.sandboxes_left.is_empty(), "{:?}", out.sandboxes_left);
    }

    #[tokio::test]
    async fn a_failing_run_exits_1() {
        let model = ModelServer::start(Script::ApiError { status: 500 }).await;

        let out = Cli::new(&model)
            .file("data.csv", CSV)
            .run(&["Read data.csv", "-f", "data.csv"])
            .await;

        assert_eq!(out.status.code(), Some(1), "{}", out.dump());
        assert!(
            !model.message_requests().is_empty(),
            "the model was never called"
        );
        assert!(out.sandboxes_seen >= 1, "no sandbox appeared");
        assert!(out.sandboxes_left.is_empty(), "{:?}", out.sandboxes_left);
    }
}

mod shutdown {
    use std::time::Duration;

    use super::*;
    use common::process::Signal;
    use common::product::offline_env;
    use common::serve::DsServe;
    use common::stream::read_stream;

    /// `ds serve` stopped mid-run waits its bound (1 s here), then ends the
    /// run with a `shutdown` error, destroys its sandbox and exits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopping_server_ends_runs_past_its_bound_and_destroys_their_sandboxes() {
        let model = ModelServer::start(Script::EndlessBash).await;
        let tmp = tempfile::tempdir().expect("TMPDIR for the local sandboxes");
        let mut server = DsServe::new(["serve", "--sandbox", "local"])
            .envs(offline_env())
            .env("ANTHROPIC_BASE_URL", model.url())
            .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
            .env("SANDSTORM_SHUTDOWN_TIMEOUT", "1")
            .env("TMPDIR", tmp.path())
            .env("SANDSTORM_HISTORY_PATH", tmp.path().join("h.db"))
            .start()
            .await;
        let request = reqwest::Client::new()
            .post(format!("{}/query", server.url))
            .json(&json!({"prompt": "Loop until stopped"}));
        let reading = tokio::spawn(read_stream(request));
        let sandboxes = || {
            std::fs::read_dir(tmp.path())
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter(|e| e.file_name().to_string_lossy().starts_with("sandstorm-"))
                        .count()
                })
                .unwrap_or_default()
        };
        let started = async {
            while sandboxes() == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), started)
            .await
            .expect("the run makes its sandbox");

        server.process.signal(Signal::TERM);
        let stream = tokio::time::timeout(Duration::from_secs(60), reading)
            .await
            .expect("the stream ends after the bound")
            .expect("the reader");
        let last = stream.last();
        assert_eq!(last["type"], "error", "{:?}", stream.events);
        assert_eq!(last["error_type"], "shutdown", "{last}");
        let done = stream.closing.as_ref().expect("a done event");
        assert_eq!(done["status"], "error", "{done}");
        let status =
            tokio::task::block_in_place(|| server.process.wait_for_exit(Duration::from_secs(30)))
                .expect("ds serve exits after its bound");
        assert!(status.success(), "{status:?}: {}", server.log());
        assert_eq!(sandboxes(), 0, "the sandbox was destroyed");
        // The history says how the stop ended the run: it was written
        // before the process went.
        let db = rusqlite::Connection::open(tmp.path().join("h.db")).expect("the history");
        let record: String = db
            .query_row("SELECT record FROM runs", [], |row| row.get(0))
            .expect("the run's record");
        let record: Value = serde_json::from_str(&record).expect("JSON");
        assert_eq!(record["status"], "failed", "{record}");
        assert_eq!(record["error_type"], "shutdown", "{record}");
    }
}
