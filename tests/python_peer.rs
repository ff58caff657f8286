//! Python Sandstorm 0.9.2's users move over without changing their code:
//! its own clients and its own starter configs, as real peers, against
//! `ds serve` (the E2B emulator or a local sandbox, the real runner and
//! Agent SDK, the scripted model).
//!
//! The clients are 0.9.2's `SandstormClient` from PyPI and its TypeScript
//! client, compiled from its sdist into a temporary folder here; the
//! starters are the sdist's `examples/*/sandstorm.json`. scripts/setup
//! fetches both into `.venv/peers`; nothing of them is committed. The
//! scripted model's records show that each field took effect.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use common::model_server::{ModelServer, RecordedRequest, Script};
use common::product::{Chain, Events, Product, Serve};
use common::tools::manifest_dir;

/// Where scripts/setup puts Python Sandstorm 0.9.2.
fn peers() -> PathBuf {
    manifest_dir().join(".venv/peers")
}

fn require(path: &Path) -> &Path {
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup (it fetches Python Sandstorm 0.9.2 from PyPI)",
        path.display()
    );
    path
}

/// The bearer token the server is started with: 0.9.2's variable name.
const TOKEN: &str = "peer-token-0123456789abcdef0123456789";

/// A skill on disk, in sandstorm.json's `skills_dir`.
const DISK_SKILL: &str = "---\nname: owasp-top-10\ndescription: Checks code against the \
                          OWASP Top 10 (disk-skill-marker)\n---\n\nLook for injection first.\n";
/// A skill sent in the request's `extra_skills`.
const EXTRA_SKILL: &str = "---\nname: style-guide\ndescription: House writing style \
                           (extra-skill-marker)\n---\n\nWrite short sentences.\n";

/// What the scripted model answers through the StructuredOutput tool.
fn answer() -> Value {
    json!({"verdict": "ship it", "issues": 0})
}

fn output_format() -> Value {
    json!({"type": "json_schema", "schema": {
        "type": "object",
        "properties": {"verdict": {"type": "string"}, "issues": {"type": "integer"}},
        "required": ["verdict", "issues"],
        "additionalProperties": false
    }})
}

/// sandstorm.json in 0.9.2's words: a preset prompt with appends, config
/// tools, two MCP servers with `${VAR}` placeholders, two agents, skills.
fn config() -> Value {
    json!({
        "system_prompt": {"type": "preset", "preset": "claude_code", "append": "preset-append-marker"},
        "system_prompt_append": "config-append-marker",
        "allowed_tools": ["Read", "Glob"],
        "timeout": 120,
        "skills_dir": ".claude/skills",
        "mcp_servers": {
            "echo": {"command": "node", "args": ["${ECHO_SERVER:-/nowhere.mjs}"]},
            "linear": {"type": "http", "url": "https://mcp.linear.app/mcp",
                       "headers": {"Authorization": "Bearer ${LINEAR_API_KEY}"}}
        },
        "agents": {
            "reviewer": {"description": "Reviews code (reviewer-marker)", "prompt": "Review."},
            "writer": {"description": "Writes docs (writer-marker)", "prompt": "Write."}
        }
    })
}

/// The request a 0.9.2 user sends, with every field of 0.9.2's that we
/// take: each narrows or adds to the config above.
fn request(echo_server: &str) -> Value {
    json!({
        "prompt": "Review the change.",
        "model": "sonnet",
        "max_turns": 5,
        "timeout": 90,
        "files": {"mcp/echo.mjs": echo_server},
        "output_format": output_format(),
        "allowed_tools": ["Bash", "Read", "Skill", "Agent"],
        "allowed_mcp_servers": ["echo"],
        "allowed_skills": ["owasp-top-10", "style-guide"],
        "allowed_agents": ["reviewer", "triager"],
        "extra_agents": {"triager": {"description": "Triages issues (triager-marker)", "prompt": "Triage."}},
        "extra_skills": {"style-guide": EXTRA_SKILL},
        "max_budget_usd": 5.0,
        "team_id": "T-peer",
        "user_id": "U-peer",
        "channel_id": "C-peer",
        "detach": true
    })
}

async fn start(model: &ModelServer) -> Product {
    Serve::new(Chain::E2b, model)
        .config(config())
        .file(".claude/skills/owasp-top-10/SKILL.md", DISK_SKILL)
        // 0.9.2's name for the token; its clients send it as a bearer.
        .env("SANDSTORM_API_KEY", TOKEN)
        .env("ECHO_SERVER", "/home/user/mcp/echo.mjs")
        // Kept a while after the stream ends, for GET /runs to list it.
        .env("SANDSTORM_RUN_LINGER", "60")
        .start()
        .await
}

fn echo_server() -> String {
    std::fs::read_to_string(manifest_dir().join("tests/fixtures/mcp_echo_server.mjs"))
        .expect("read the MCP fixture")
}

/// Runs `body` through 0.9.2's Python client; its events, one per line.
fn python_client(url: &str, body: &Value) -> Events {
    let package = require(&peers().join("duvo-sandstorm/sandstorm/client.py"))
        .parent()
        .and_then(Path::parent)
        .expect("the package's folder")
        .to_path_buf();
    let python = require(&manifest_dir().join(".venv/bin/python")).to_path_buf();
    let mut command = Command::new(python);
    command
        .arg(manifest_dir().join("tests/peers/query_092.py"))
        .args([url, TOKEN])
        .env("PYTHONPATH", package);
    run_driver(command, body)
}

/// Runs `body` through 0.9.2's TypeScript client, compiled from its sdist
/// into `out` with the TypeScript of tests/examples-ts.
fn typescript_client(url: &str, body: &Value, out: &Path) -> Events {
    let sources =
        require(&peers().join("duvo_sandstorm-0.9.2/clients/typescript/src")).to_path_buf();
    let tsc = require(&manifest_dir().join("tests/examples-ts/node_modules/typescript/bin/tsc"))
        .to_path_buf();
    let types = manifest_dir().join("tests/examples-ts/node_modules/@types");
    let tsconfig = json!({
        "compilerOptions": {
            "target": "ES2022", "module": "NodeNext", "moduleResolution": "NodeNext",
            "lib": ["ES2022", "DOM"], "strict": true, "skipLibCheck": true,
            "outDir": out.join("dist"), "rootDir": sources, "typeRoots": [types],
            "types": ["node"]
        },
        "include": [sources.join("*.ts")],
        "exclude": [sources.join("*.test.ts")]
    });
    std::fs::write(out.join("tsconfig.json"), tsconfig.to_string()).expect("write tsconfig");
    // An ES module, as the client's package.json says.
    std::fs::write(out.join("package.json"), r#"{"type":"module"}"#).expect("write package.json");
    let built = Command::new("node")
        .arg(&tsc)
        .args(["-p", &out.join("tsconfig.json").display().to_string()])
        .output()
        .expect("run tsc");
    assert!(
        built.status.success(),
        "the 0.9.2 TypeScript client does not compile: {}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let mut command = Command::new("node");
    command
        .arg(manifest_dir().join("tests/peers/query_092.mjs"))
        .arg(out.join("dist/index.js"))
        .args([url, TOKEN]);
    run_driver(command, body)
}

fn run_driver(mut command: Command, body: &Value) -> Events {
    use std::io::Write as _;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the 0.9.2 client");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.to_string().as_bytes())
        .expect("write the body");
    let output = child.wait_with_output().expect("the 0.9.2 client ends");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the 0.9.2 client failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    Events::parse_lines(&stdout)
}

/// The main agent's requests: tools on offer and not a subagent's.
fn main_requests(model: &ModelServer) -> Vec<RecordedRequest> {
    model
        .agent_requests()
        .into_iter()
        .filter(|r| r.system_text().contains("config-append-marker"))
        .collect()
}

/// The SDK's subagent tool, `Agent` (0.3.x) or `Task`, as offered.
fn agent_tool(request: &RecordedRequest) -> &'static str {
    ["Agent", "Task"]
        .into_iter()
        .find(|t| request.tool_names().contains(t))
        .unwrap_or("Agent")
}

/// Everything a run of [`request`] must show in the model's records and in
/// its events.
fn assert_every_field_took_effect(model: &ModelServer, events: &Events) {
    let requests = main_requests(model);
    let first = requests.first().unwrap_or_else(|| {
        panic!(
            "no request of the main agent reached the model:\n{}",
            model.describe_requests()
        )
    });
    let system = first.system_text();
    let body = first.body.to_string();

    // allowed_tools: the request's list, not the config's, and nothing
    // else built in; the Skill tool is not added to a request's list.
    let built_in: BTreeSet<&str> = first
        .tool_names()
        .into_iter()
        .filter(|name| !name.starts_with("mcp__"))
        .collect();
    assert_eq!(
        built_in,
        BTreeSet::from([
            agent_tool(first),
            "Bash",
            "Read",
            "Skill",
            "StructuredOutput"
        ]),
        "the model sees only the request's tools (and the SDK's StructuredOutput)"
    );
    // allowed_mcp_servers: echo, whose `${ECHO_SERVER}` was filled in (it
    // connected), and not linear, whose `${LINEAR_API_KEY}` is not set.
    let servers: Vec<(&str, &str)> = events.init()["mcp_servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["name"].as_str()?, s["status"].as_str()?)))
        .collect();
    assert_eq!(servers, [("echo", "connected")], "{}", events.dump());
    assert!(first.tool_names().contains(&"mcp__echo__echo"));
    // The system prompt: Claude Code's preset, its append, then the
    // config's system_prompt_append.
    let preset = system
        .find("preset-append-marker")
        .expect("the preset's append");
    let appended = system
        .find("config-append-marker")
        .expect("system_prompt_append");
    assert!(preset < appended, "{system}");
    assert!(
        system.contains("Claude Code"),
        "the preset is Claude Code's: {system}"
    );
    // Skills: the disk skill and the request's, both listed for the model.
    // SDK 0.3 lists them (and the subagents, and the budget) in a system
    // turn at the head of the conversation, beside the system prompt.
    let system_turns: String = first.body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "system")
        .map(Value::to_string)
        .collect();
    for marker in ["disk-skill-marker", "extra-skill-marker"] {
        assert!(
            system_turns.contains(marker),
            "skill {marker} is not listed for the model: {body}"
        );
    }
    // max_budget_usd: the SDK counts against it.
    assert!(
        system_turns.contains("USD budget: $0/$5"),
        "the budget did not reach the SDK: {system_turns}"
    );
    // allowed_agents with extra_agents: reviewer and triager, not writer.
    for marker in ["reviewer-marker", "triager-marker"] {
        assert!(
            body.contains(marker),
            "agent {marker} is not offered: {body}"
        );
    }
    assert!(
        !body.contains("writer-marker"),
        "agent writer was not allowed: {body}"
    );
    // model and output_format.
    assert!(
        first.model().is_some_and(|m| m.contains("sonnet")),
        "{:?}",
        first.model()
    );
    let result = events.result();
    assert_eq!(result["subtype"], "success", "{}", events.dump());
    assert_eq!(result["structured_output"], answer(), "{}", events.dump());
}

#[tokio::test]
async fn the_python_client_of_0_9_2_runs_with_every_field_it_sends() {
    let model = ModelServer::start(Script::StructuredOutput { output: answer() }).await;
    let product = start(&model).await;

    // Kept for a follow-up, which `resume` sends below.
    let mut body = request(&echo_server());
    body["keep_alive"] = json!(120);
    let events = tokio::task::spawn_blocking({
        let url = product.url().to_owned();
        move || python_client(&url, &body)
    })
    .await
    .expect("the client's thread");
    assert_every_field_took_effect(&model, &events);

    // team_id, user_id and channel_id: the run's labels in GET /runs.
    let runs: Value = reqwest::Client::new()
        .get(format!("{}/runs", product.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET /runs")
        .json()
        .await
        .expect("a JSON list of runs");
    let run_id = events.of_type("run")[0]["run_id"].clone();
    let listed = runs["runs"]
        .as_array()
        .and_then(|runs| runs.iter().find(|r| r["run_id"] == run_id))
        .unwrap_or_else(|| panic!("run {run_id} is not listed: {runs}"));
    assert_eq!(
        listed["labels"],
        json!({"team_id": "T-peer", "user_id": "U-peer", "channel_id": "C-peer"}),
        "{listed}"
    );

    // resume (0.9.2's field; here a run id): the run's next turn, through
    // the same client, in the same SDK session.
    let follow_up = json!({"prompt": "And the tests?", "resume": run_id,
                           "allowed_mcp_servers": ["echo"]});
    let turn = tokio::task::spawn_blocking({
        let url = product.url().to_owned();
        move || python_client(&url, &follow_up)
    })
    .await
    .expect("the client's thread");
    assert_eq!(turn.events[0]["type"], "turn", "{}", turn.dump());
    assert_eq!(turn.result()["subtype"], "success", "{}", turn.dump());
    let last = model.agent_requests().pop().expect("a request of turn 2");
    let conversation = last.body["messages"].to_string();
    assert!(
        conversation.contains("Review the change.") && conversation.contains("And the tests?"),
        "turn 2 carries turn 1's conversation: {conversation}"
    );

    // The client's health(), and no token: 401.
    let health = reqwest::get(format!("{}/health", product.url()))
        .await
        .expect("GET /health");
    assert_eq!(health.status(), 200);
    let refused = reqwest::Client::new()
        .post(format!("{}/query", product.url()))
        .json(&json!({"prompt": "hi"}))
        .send()
        .await
        .expect("POST /query");
    assert_eq!(
        refused.status(),
        401,
        "SANDSTORM_API_KEY closes the endpoint"
    );
}

#[tokio::test]
async fn the_typescript_client_of_0_9_2_runs_with_every_field_it_sends() {
    let model = ModelServer::start(Script::StructuredOutput { output: answer() }).await;
    let product = start(&model).await;
    let out = tempfile::tempdir().expect("a folder for the compiled client");

    let events = tokio::task::spawn_blocking({
        let url = product.url().to_owned();
        let out = out.path().to_path_buf();
        move || typescript_client(&url, &request(&echo_server()), &out)
    })
    .await
    .expect("the client's thread");
    assert_every_field_took_effect(&model, &events);
}

#[tokio::test]
async fn max_budget_usd_reaches_the_sdk_and_ends_the_run() {
    let model = ModelServer::start(Script::bash_write_file()).await;
    let product = start(&model).await;
    // One scripted call costs more than this.
    let body = json!({"prompt": "Spend.", "max_budget_usd": 0.000_001, "allowed_mcp_servers": []});
    let events = tokio::task::spawn_blocking({
        let url = product.url().to_owned();
        move || python_client(&url, &body)
    })
    .await
    .expect("the client's thread");
    let result = events.result();
    assert_eq!(
        result["subtype"],
        "error_max_budget_usd",
        "{}",
        events.dump()
    );
    assert_eq!(
        main_requests(&model).len(),
        1,
        "the SDK stopped after the call that spent the budget:\n{}",
        model.describe_requests()
    );
}

/// The least instance of a JSON schema of the kinds 0.9.2's starters use
/// (`type`, `properties`, `required`, `items`, `enum`): every required
/// property, empty lists, the first enum value.
fn instance_of(schema: &Value) -> Value {
    if let Some(first) = schema["enum"].as_array().and_then(|values| values.first()) {
        return first.clone();
    }
    let kind = match &schema["type"] {
        Value::Array(kinds) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|k| *k != "null")
            .unwrap_or("null"),
        kind => kind.as_str().unwrap_or("object"),
    };
    match kind {
        "object" => {
            let required: Vec<&str> = schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            required
                .into_iter()
                .map(|name| (name.to_owned(), instance_of(&schema["properties"][name])))
                .collect::<serde_json::Map<_, _>>()
                .into()
        }
        "array" => json!([]),
        "string" => json!("scripted"),
        "integer" | "number" => json!(0),
        "boolean" => json!(false),
        _ => Value::Null,
    }
}

/// Copies `from` (a starter's folder) into a server's working directory:
/// its sandstorm.json and its `.claude` folder of skills, byte for byte.
fn starter_files(mut serve: Serve, from: &Path, under: &Path) -> Serve {
    for entry in std::fs::read_dir(from).expect("read a starter's folder") {
        let path = entry.expect("an entry").path();
        let relative = under.join(path.file_name().expect("a name"));
        if path.is_dir() {
            serve = starter_files(serve, &path, &relative);
        } else if relative.starts_with(".claude") || relative == Path::new("sandstorm.json") {
            serve = serve.file(relative, std::fs::read(&path).expect("read a starter file"));
        }
    }
    serve
}

#[tokio::test]
async fn each_of_the_seven_starters_of_0_9_2_loads_and_runs() {
    let examples = require(&peers().join("duvo_sandstorm-0.9.2/examples")).to_path_buf();
    let mut starters: Vec<PathBuf> = std::fs::read_dir(&examples)
        .expect("read the examples")
        .map(|entry| entry.expect("an entry").path())
        .filter(|path| path.join("sandstorm.json").is_file())
        .collect();
    starters.sort();
    assert_eq!(
        starters.len(),
        7,
        "0.9.2 ships seven starters: {starters:?}"
    );

    for starter in starters {
        let name = starter
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        let config: Value = serde_json::from_slice(
            &std::fs::read(starter.join("sandstorm.json")).expect("read sandstorm.json"),
        )
        .expect("the starter's sandstorm.json is JSON");
        let output = instance_of(&config["output_format"]["schema"]);
        let model = ModelServer::start(Script::StructuredOutput {
            output: output.clone(),
        })
        .await;
        let mut product = starter_files(Serve::new(Chain::Local, &model), &starter, Path::new(""))
            .start()
            .await;
        let events = product
            .query(json!({"prompt": format!("Run the {name} starter on nothing.")}))
            .await;
        let result = events.result();
        assert_eq!(result["subtype"], "success", "{name}: {}", events.dump());
        assert_eq!(
            result["structured_output"],
            output,
            "{name}: {}",
            events.dump()
        );

        let request = model
            .agent_requests()
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("{name}: no request reached the model"));
        let offered: BTreeSet<&str> = request.tool_names().into_iter().collect();
        if let Some(tools) = config["allowed_tools"].as_array() {
            // The config's tools, and the Skill tool where there are
            // skills; nothing else built in but StructuredOutput.
            let mut expected: BTreeSet<&str> = tools
                .iter()
                .filter_map(Value::as_str)
                .map(|tool| {
                    if tool == "Task" {
                        agent_tool(&request)
                    } else {
                        tool
                    }
                })
                .collect();
            expected.insert("StructuredOutput");
            if config.get("skills_dir").is_some() {
                expected.insert("Skill");
            }
            assert_eq!(offered, expected, "{name}");
        }
        let system = request.system_text();
        let prompt = config["system_prompt"].as_str().expect("a string prompt");
        assert!(
            system.contains(prompt),
            "{name}: its system prompt reached the model"
        );
        product.assert_sandboxes_destroyed(1).await;
    }
}
