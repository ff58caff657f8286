//! `runner/runner.mjs` with the real Claude Agent SDK against the scripted
//! model: no sandbox, no Sandstorm server, just `node runner.mjs <config>`.
//!
//! These pin what the rest of the product relies on: one JSON line per SDK
//! message, a `result` last, exit codes, and that every `agent_config.json`
//! field reaches the SDK (and through it, the model). Needs
//! `npm ci --prefix runner`.

mod common;

use common::model_server::{
    BASH_WRITE_FILE, FINAL_TEXT, LOOP_COMMAND, ModelServer, SUBAGENT_TEXT, Script,
};
use common::runner::{RunDirs, RunnerCommand, RunnerOutput, fixture};
use serde_json::{Value, json};

const CSV: &str = "name,qty\napple,3\npear,5\nplum,7\n";

/// A config running in `dirs.work()`, with `data.csv` uploaded there.
fn config_in(dirs: &RunDirs, extra: Value) -> Value {
    std::fs::write(dirs.work().join("data.csv"), CSV).expect("upload data.csv");
    let mut config = json!({
        "prompt": "Read data.csv and write out.txt",
        "cwd": dirs.work(),
    });
    if let (Some(config), Value::Object(extra)) = (config.as_object_mut(), extra) {
        config.extend(extra);
    }
    config
}

fn assert_success(out: &RunnerOutput) {
    assert!(out.status.success(), "runner failed: {}", out.dump());
    let result = out.result();
    assert_eq!(result["subtype"], "success", "{}", out.dump());
    assert_eq!(result["is_error"], false, "{}", out.dump());
}

#[tokio::test]
async fn bash_reads_an_upload_writes_a_file_and_reports_a_result() {
    let server = ModelServer::start(Script::bash_write_file()).await;
    let dirs = RunDirs::new();
    let config = config_in(
        &dirs,
        json!({ "system_prompt": "You are the scripted CSV agent." }),
    );

    let out = RunnerCommand::new(config, &server.url()).run(&dirs).await;

    assert_success(&out);
    let init = out.init();
    assert!(init["session_id"].is_string(), "{init}");
    assert!(
        init["tools"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("Bash"))),
        "Bash not offered: {init}"
    );
    assert_eq!(init["permissionMode"], "bypassPermissions");
    assert_eq!(
        out.tool_uses(),
        vec![(
            "Bash",
            &json!({ "command": BASH_WRITE_FILE, "description": "Run the scripted command" })
        )]
    );
    let results = out.tool_results();
    assert_eq!(results.len(), 1, "{}", out.dump());
    assert!(
        results[0].0.contains("pear,5"),
        "the tool did not read the upload: {results:?}"
    );
    assert!(!results[0].1, "the Bash call failed: {results:?}");
    assert_eq!(
        std::fs::read_to_string(dirs.work().join("out.txt")).expect("the agent wrote out.txt"),
        "done\n"
    );

    let result = out.result();
    assert_eq!(result["result"], FINAL_TEXT);
    assert_eq!(result["num_turns"], 2, "{result}");
    assert!(
        result["total_cost_usd"].as_f64().is_some_and(|c| c > 0.0),
        "no cost: {result}"
    );
    // One JSON line per message, the result last and only once.
    assert_eq!(out.of_type("result").len(), 1);
    assert_eq!(out.lines[0]["type"], "system");

    let requests = server.agent_requests();
    assert!(!requests.is_empty(), "{}", server.describe_requests());
    for request in &requests {
        assert_eq!(request.header("x-api-key"), Some("test-key"));
        assert!(
            request
                .system_text()
                .contains("You are the scripted CSV agent."),
            "system_prompt did not reach the model: {}",
            request.system_text()
        );
    }
}

#[tokio::test]
async fn without_an_argument_the_config_next_to_runner_mjs_is_used() {
    let server = ModelServer::start(Script::bash_write_file()).await;
    let dirs = RunDirs::new();
    let config = config_in(&dirs, json!({}));
    let install = tempfile::tempdir().expect("temp dir");

    let out = RunnerCommand::new(config, &server.url())
        .installed_at(&install.path().join("agent-runner"))
        .run(&dirs)
        .await;

    assert_success(&out);
    assert!(dirs.work().join("out.txt").exists());
}

#[tokio::test]
async fn user_settings_json_is_loaded() {
    // RunDirs writes the server's ~/.claude/settings.json; a broken one must
    // show up as a difference, proving the file is read at all.
    let server = ModelServer::start(Script::bash_write_file()).await;
    let dirs = RunDirs::new();
    let settings = dirs.home().join(".claude/settings.json");
    let mut parsed: Value =
        serde_json::from_str(&std::fs::read_to_string(&settings).expect("read settings"))
            .expect("settings.json is JSON");
    assert_eq!(parsed["env"]["CLAUDE_CODE_DISABLE_EXPERIMENTAL_BETAS"], "1");
    // Deny Bash through the user settings: the run must feel it.
    parsed["permissions"]["deny"] = json!(["Bash"]);
    std::fs::write(&settings, parsed.to_string()).expect("write settings");
    let config = config_in(&dirs, json!({}));

    let out = RunnerCommand::new(config, &server.url()).run(&dirs).await;

    assert!(out.status.success(), "{}", out.dump());
    let tools = out.init()["tools"].as_array().cloned().unwrap_or_default();
    assert!(
        !tools.contains(&json!("Bash")),
        "~/.claude/settings.json was not applied: {tools:?}"
    );
    assert!(!dirs.work().join("out.txt").exists());
}

#[tokio::test]
async fn project_settings_in_the_work_dir_are_ignored() {
    // settingSources is ["user"]: a `.claude/settings.json` among the
    // uploaded files does not change how the agent runs.
    let server = ModelServer::start(Script::bash_write_file()).await;
    let dirs = RunDirs::new();
    let project = dirs.work().join(".claude");
    std::fs::create_dir_all(&project).expect("create .claude");
    std::fs::write(
        project.join("settings.json"),
        r#"{"permissions":{"deny":["Bash"]}}"#,
    )
    .expect("write project settings");
    let config = config_in(&dirs, json!({}));

    let out = RunnerCommand::new(config, &server.url()).run(&dirs).await;

    assert_success(&out);
    assert!(
        dirs.work().join("out.txt").exists(),
        "project settings were applied: {}",
        out.dump()
    );
}

#[tokio::test]
async fn output_format_yields_structured_output() {
    let output = json!({ "fruits": 3, "summary": "apples, pears and plums" });
    let server = ModelServer::start(Script::StructuredOutput {
        output: output.clone(),
    })
    .await;
    let dirs = RunDirs::new();
    let schema = json!({
        "type": "object",
        "properties": {
            "fruits": { "type": "integer" },
            "summary": { "type": "string" },
        },
        "required": ["fruits", "summary"],
        "additionalProperties": false,
    });
    let config = config_in(
        &dirs,
        json!({ "output_format": { "type": "json_schema", "schema": schema } }),
    );

    let out = RunnerCommand::new(config, &server.url()).run(&dirs).await;

    assert_success(&out);
    assert_eq!(out.result()["structured_output"], output, "{}", out.dump());
    let offered = server.agent_requests()[0]
        .tool_names()
        .contains(&"StructuredOutput");
    assert!(offered, "{}", server.describe_requests());
}

#[tokio::test]
async fn a_model_that_never_calls_structured_output_cannot_hang_the_run() {
    // SDK 0.2.x loops forever here; 0.3 nudges once, then gives up. This is
    // the main reason runner/ pins 0.3 (see runner/README.md).
    let server = ModelServer::start(Script::bash_write_file()).await;
    let dirs = RunDirs::new();
    let schema = json!({ "type": "object", "properties": { "n": { "type": "integer" } } });
    let config = config_in(
        &dirs,
        json!({ "output_format": { "type": "json_schema", "schema": schema } }),
    );

    let out = RunnerCommand::new(config, &server.url())
        .timeout(std::time::Duration::from_secs(60))
        .run(&dirs)
        .await;

    assert!(out.status.success(), "{}", out.dump());
    let result = out.result();
    assert!(result.get("structured_output").is_none(), "{result}");
    assert!(
        server.agent_requests().len() <= 4,
        "the SDK kept asking:\n{}",
        server.describe_requests()
    );
}

#[tokio::test]
async fn a_subagent_from_config_runs_with_its_own_prompt() {
    const MARKER: &str = "You are the fruit-counter subagent (marker 7f3a).";
    let server = ModelServer::start(Script::Subagent {
        agent: "fruit-counter".into(),
        prompt_marker: MARKER.into(),
    })
    .await;
    let dirs = RunDirs::new();
    let config = config_in(
        &dirs,
        json!({ "agents": { "fruit-counter": {
            "description": "Counts fruit in CSV files",
            "prompt": MARKER,
            "tools": ["Read"],
        } } }),
    );

    let out = RunnerCommand::new(config, &server.url()).run(&dirs).await;

    assert_success(&out);
    let calls = out.tool_uses();
    assert!(
        calls
            .iter()
            .any(|(name, input)| ["Task", "Agent"].contains(name)
                && input["subagent_type"] == "fruit-counter"),
        "no delegation: {calls:?}"
    );
    let subagent_requests: Vec<_> = server
        .message_requests()
        .into_iter()
        .filter(|r| r.system_text().contains(MARKER))
        .collect();
    assert!(
        !subagent_requests.is_empty(),
        "the subagent never called the model:\n{}",
        server.describe_requests()
    );
    assert!(
        out.tool_results()
            .iter()
            .any(|(text, _)| text.contains(SUBAGENT_TEXT)),
        "the subagent's answer did not come back: {}",
        out.dump()
    );
    assert_eq!(out.result()["result"], FINAL_TEXT);
}

#[tokio::test]
async fn a_stdio_mcp_server_connects_and_its_tool_is_called() {
    let server = ModelServer::start(Script::McpTool {
        tool: "mcp__echo__echo".into(),
        input: json!({ "text": "hello from the model" }),
    })
    .await;
    let dirs = RunDirs::new();
    let echo = fixture("mcp_echo_server.mjs");
    let config = config_in(
        &dirs,
        json!({ "mcp_servers": { "echo": { "command": "node", "args": [echo] } } }),
    );

    let out = RunnerCommand::new(config, &server.url()).run(&dirs).await;

    assert_success(&out);
    let init = out.init();
    let servers = init["mcp_servers"].as_array().cloned().unwrap_or_default();
    assert!(
        servers
            .iter()
            .any(|s| s["name"] == "echo" && s["status"] == "connected"),
        "the echo MCP server is not connected: {servers:?}"
    );
    assert!(
        init["tools"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("mcp__echo__echo"))),
        "{init}"
    );
    assert_eq!(
        out.tool_results(),
        vec![("echo: hello from the model".to_owned(), false)],
        "{}",
        out.dump()
    );
}

#[tokio::test]
async fn openrouter_style_auth_reaches_the_model_as_a_bearer_token() {
    let server = ModelServer::start(Script::bash_write_file()).await;
    let dirs = RunDirs::new();
    let config = config_in(&dirs, json!({}));

    let out = RunnerCommand::new(config, &server.url())
        .env("ANTHROPIC_AUTH_TOKEN", "sk-or-v1-scripted")
        .env("ANTHROPIC_API_KEY", "")
        .run(&dirs)
        .await;

    assert_success(&out);
    let requests = server.message_requests();
    assert!(!requests.is_empty());
    for request in &requests {
        assert_eq!(
            request.header("authorization"),
            Some("Bearer sk-or-v1-scripted")
        );
        assert_eq!(request.header("x-api-key"), None, "{:?}", request.headers);
    }
}

#[tokio::test]
async fn default_sonnet_model_env_renames_the_sonnet_alias() {
    let server = ModelServer::start(Script::bash_write_file()).await;
    let dirs = RunDirs::new();
    let config = config_in(&dirs, json!({ "model": "sonnet" }));

    let out = RunnerCommand::new(config, &server.url())
        .env(
            "ANTHROPIC_DEFAULT_SONNET_MODEL",
            "qwen/qwen3-coder-scripted",
        )
        .run(&dirs)
        .await;

    assert_success(&out);
    let requests = server.agent_requests();
    assert!(!requests.is_empty());
    for request in &requests {
        assert_eq!(request.model(), Some("qwen/qwen3-coder-scripted"));
    }
}

#[tokio::test]
async fn max_turns_ends_an_endless_tool_loop() {
    let server = ModelServer::start(Script::EndlessBash).await;
    let dirs = RunDirs::new();
    let config = config_in(&dirs, json!({ "max_turns": 3 }));

    let out = RunnerCommand::new(config, &server.url())
        .timeout(std::time::Duration::from_secs(30))
        .run(&dirs)
        .await;

    // An error result is still a finished run: exit 0, the line says it.
    assert!(out.status.success(), "{}", out.dump());
    let result = out.result();
    assert_eq!(result["subtype"], "error_max_turns", "{result}");
    assert_eq!(result["is_error"], true);
    assert!(
        result["num_turns"].as_u64().is_some_and(|n| n >= 3),
        "{result}"
    );
    assert!(
        out.tool_uses()
            .iter()
            .all(|(_, input)| input["command"] == LOOP_COMMAND)
    );
    assert_eq!(
        server.agent_requests().len(),
        3,
        "{}",
        server.describe_requests()
    );
}

/// Runs the Bash script against a model that fails every call with `status`.
async fn run_against_failing_model(status: u16) -> RunnerOutput {
    let server = ModelServer::start(Script::ApiError { status }).await;
    let dirs = RunDirs::new();
    let config = config_in(&dirs, json!({}));
    let out = RunnerCommand::new(config, &server.url()).run(&dirs).await;
    assert!(
        !server.message_requests().is_empty(),
        "the model was never called"
    );
    out
}

/// The run ends (no hang, no retries) with an error `result` that names the
/// status: SDK 0.3 reports a failed model call in-band rather than throwing,
/// so the runner exits 0 and the line carries the failure. No tool ran.
fn assert_failed_run(out: &RunnerOutput, status: u16) {
    assert!(out.status.success(), "{}", out.dump());
    let result = out.result();
    assert_eq!(result["is_error"], true, "{result}");
    assert_eq!(result["api_error_status"], status, "{result}");
    assert!(
        result["result"]
            .as_str()
            .is_some_and(|r| r.contains(&status.to_string())),
        "{result}"
    );
    assert!(out.tool_uses().is_empty());
}

#[tokio::test]
async fn a_model_500_ends_the_run_as_an_error() {
    let out = run_against_failing_model(500).await;
    assert_failed_run(&out, 500);
}

#[tokio::test]
async fn a_model_400_ends_the_run_as_an_error() {
    let out = run_against_failing_model(400).await;
    assert_failed_run(&out, 400);
}

#[tokio::test]
async fn a_model_529_ends_the_run_as_an_error() {
    let out = run_against_failing_model(529).await;
    assert_failed_run(&out, 529);
}

/// The runner's own error line for a config it cannot use.
async fn runner_error_for(config_text: Option<&str>) -> String {
    let dirs = RunDirs::new();
    if let Some(text) = config_text {
        std::fs::write(dirs.config_path(), text).expect("write config");
    }
    // Nothing may reach the model; point it somewhere that refuses.
    let out = RunnerCommand::new(Value::Null, "http://127.0.0.1:9")
        .run_existing_config(&dirs)
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", out.dump());
    assert_eq!(out.lines.len(), 1, "{}", out.dump());
    let line = &out.lines[0];
    assert_eq!(line["type"], "error");
    assert_eq!(line["error"]["type"], "runner_error");
    line["error"]["message"]
        .as_str()
        .expect("error message")
        .to_owned()
}

#[tokio::test]
async fn a_bad_config_is_a_runner_error_line_and_exit_1() {
    let message = runner_error_for(None).await;
    assert!(message.contains("cannot read agent config"), "{message}");

    let message = runner_error_for(Some("{not json")).await;
    assert!(message.contains("not valid JSON"), "{message}");

    let message = runner_error_for(Some(r#"{"cwd":"/tmp"}"#)).await;
    assert!(message.contains(r#""prompt" is missing"#), "{message}");

    let message = runner_error_for(Some(r#"{"prompt":"hi","max_turn":3}"#)).await;
    assert!(message.contains(r#"unknown field "max_turn""#), "{message}");

    let message = runner_error_for(Some(r#"{"prompt":"hi","max_turns":"3"}"#)).await;
    assert!(
        message.contains(r#""max_turns" must be a positive integer"#),
        "{message}"
    );
}

#[tokio::test]
async fn an_sdk_failure_is_a_runner_error_line_and_exit_1() {
    // A cwd that does not exist makes the SDK throw when it starts the CLI.
    let server = ModelServer::start(Script::bash_write_file()).await;
    let dirs = RunDirs::new();
    let missing = dirs.work().join("no-such-dir");
    let config = config_in(&dirs, json!({ "cwd": missing }));

    let out = RunnerCommand::new(config, &server.url()).run(&dirs).await;

    assert_eq!(out.status.code(), Some(1), "{}", out.dump());
    let last = out.lines.last().expect("an error line");
    assert_eq!(last["type"], "error", "{}", out.dump());
    assert_eq!(last["error"]["type"], "runner_error");
    assert!(
        last["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{last}"
    );
    assert!(out.of_type("result").is_empty());
}

#[tokio::test]
async fn null_fields_mean_absent_as_the_server_writes_them() {
    let server = ModelServer::start(Script::bash_write_file()).await;
    let dirs = RunDirs::new();
    let config = config_in(
        &dirs,
        json!({
            "model": null, "max_turns": null, "system_prompt": null,
            "output_format": null, "agents": null, "mcp_servers": null,
        }),
    );

    let out = RunnerCommand::new(config, &server.url()).run(&dirs).await;

    assert_success(&out);
}

#[tokio::test]
async fn a_slow_reader_still_gets_every_line() {
    // Lines far bigger than a pipe buffer, and a reader that only starts
    // reading after the agent is done: the runner must wait for the pipe
    // instead of dropping lines or exiting with output unflushed.
    let rows: Vec<String> = (0..4000)
        .map(|i| format!("row {i:05} {}", "x".repeat(90)))
        .collect();
    let output = json!({ "rows": rows });
    let server = ModelServer::start(Script::StructuredOutput {
        output: output.clone(),
    })
    .await;
    let dirs = RunDirs::new();
    let schema = json!({
        "type": "object",
        "properties": { "rows": { "type": "array", "items": { "type": "string" } } },
        "required": ["rows"],
    });
    let config = config_in(
        &dirs,
        json!({ "output_format": { "type": "json_schema", "schema": schema } }),
    );

    let out = RunnerCommand::new(config, &server.url())
        .read_after(std::time::Duration::from_secs(3))
        .run(&dirs)
        .await;

    assert_success(&out);
    let total: usize = out.lines.iter().map(|l| l.to_string().len()).sum();
    assert!(
        total > 512 * 1024,
        "output too small to fill a pipe: {total} bytes"
    );
    assert_eq!(out.result()["structured_output"], output);
}

/// Makes `output/a.txt` and a hidden folder nested past PATH_MAX, which no
/// path-based listing can read (ENAMETOOLONG).
const MAKE_UNLISTABLE_HIDDEN_FOLDER: &str = "mkdir -p output && echo made > output/a.txt \
    && mkdir .deep && (cd .deep && d=$(printf '%0200d' 0) \
    && for i in $(seq 25); do mkdir $d && cd $d || exit 1; done) && echo made";

#[tokio::test]
async fn output_files_are_listed_without_entering_hidden_folders() {
    // The SDK's CLI outlives the result and creates and removes a lock
    // folder in the home (`.claude.json.lock`) while the runner lists it.
    // A recursive readdir that entered it just as it went failed as a whole
    // ("cannot list /home/user: ENOENT") and lost every output file.
    // Hidden folders are never sent, so they must never be entered: a
    // hidden folder that cannot be listed stands in for the one that went.
    let server = ModelServer::start(Script::Bash {
        command: MAKE_UNLISTABLE_HIDDEN_FOLDER.into(),
    })
    .await;
    let dirs = RunDirs::new();
    let outputs = json!({
        "patterns": ["**"], "max_files": 20,
        "max_file_bytes": 1 << 20, "max_total_bytes": 1 << 20,
    });
    let config = config_in(&dirs, json!({ "outputs": outputs }));

    let out = RunnerCommand::new(config, &server.url()).run(&dirs).await;

    assert!(out.status.success(), "runner failed: {}", out.dump());
    assert_eq!(out.of_type("result").len(), 1, "{}", out.dump());
    assert!(
        dirs.work().join(".deep").is_dir(),
        "the agent did not make the hidden folder: {}",
        out.dump()
    );
    assert!(out.of_type("warning").is_empty(), "{}", out.dump());
    let paths: Vec<&str> = out
        .of_type("file")
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    assert_eq!(paths, ["data.csv", "output/a.txt"], "{}", out.dump());
}
