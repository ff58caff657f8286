//! The client examples of docs/clients.md, run as a user would run them:
//! `bash`, `python` (with httpx and httpx-sse) and `node` against
//! `ds serve` and the E2B emulator.
//!
//! The query examples reach the real runner and Agent SDK in the sandbox;
//! the scripted model writes report.md, so the `file` event comes back and
//! each example must save it byte for byte, and every event the real SDK
//! sent must match its schema in src/openapi.json. docs/clients.md must show
//! each file verbatim, and the JavaScript examples must type-check as strict
//! TypeScript.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::model_server::{ModelServer, Script};
use common::process;
use common::runner::{OFFLINE_ENV, require_node_modules};
use common::serve::{Stack, StackBuilder, start_stack};
use common::sse;
use common::tools::{manifest_dir, tool};
use serde_json::Value;

/// The bearer token the server requires; the examples read it from
/// SANDSTORM_API_TOKEN.
const TOKEN: &str = "examples-token-3b8e61f0c2-0123456789";
/// What the scripted agent runs in the sandbox, next to the uploaded data.csv.
const MAKE_REPORT: &str = "{ echo '# Sales'; cat data.csv; } > report.md && echo written";
/// report.md as the agent makes it from the example's data.csv.
const REPORT: &str = "# Sales\nregion,sales\nnorth,10\nsouth,7\n";
/// Each example run, from start to exit, including a real agent run.
const RUN_LIMIT: Duration = Duration::from_secs(120);

fn examples_dir() -> PathBuf {
    manifest_dir().join("docs/examples")
}

fn example(name: &str) -> PathBuf {
    examples_dir().join(name)
}

/// `ds serve` with a bearer token, whose sandboxes run the real runner
/// against a model that makes report.md.
fn real_stack() -> (Stack, ModelServer) {
    require_node_modules();
    let script = Script::Bash {
        command: MAKE_REPORT.to_owned(),
    };
    let model = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(ModelServer::start(script));
    let names: Vec<&str> = OFFLINE_ENV
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| *name != "IS_SANDBOX")
        .collect();
    let mut builder = StackBuilder::default()
        .env("ANTHROPIC_BASE_URL", &model.url())
        .env("SANDSTORM_API_TOKEN", TOKEN)
        .env("SANDSTORM_FORWARD_ENV", &names.join(","));
    for (name, value) in OFFLINE_ENV {
        if names.contains(name) {
            builder = builder.env(name, value);
        }
    }
    (builder.start(), model)
}

struct Ran {
    stdout: String,
    stderr: String,
    success: bool,
    /// The example's working folder, where it saves output/.
    cwd: tempfile::TempDir,
}

/// Runs `program example` in a fresh folder, with SANDSTORM_URL and, when
/// given, SANDSTORM_API_TOKEN.
fn run(program: &Path, example: &Path, url: &str, token: Option<&str>) -> Ran {
    let cwd = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(program);
    command
        .arg(example)
        .current_dir(cwd.path())
        .env("SANDSTORM_URL", url)
        .env_remove("SANDSTORM_API_TOKEN")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    if let Some(token) = token {
        command.env("SANDSTORM_API_TOKEN", token);
    }
    let (status, stdout, stderr) = process::run(command, RUN_LIMIT);
    Ran {
        stdout,
        stderr,
        success: status.success(),
        cwd,
    }
}

fn python() -> PathBuf {
    let python = tool("python", "httpx and httpx-sse");
    let probe = Command::new(&python)
        .args(["-c", "import httpx, httpx_sse"])
        .output()
        .expect("python");
    assert!(
        probe.status.success(),
        "httpx or httpx-sse is missing from .venv; install them with: \
         .venv/bin/pip install -r tests/python/requirements.txt\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    python
}

/// The JSON events an example printed: `query.sh` prints the raw event
/// stream (curl), the others one event's JSON per line.
fn events(stdout: &str) -> Vec<Value> {
    let streamed: Vec<Value> = sse::parse(stdout)
        .iter()
        .filter_map(|event| serde_json::from_str(&event.data).ok())
        .collect();
    let printed = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok());
    streamed
        .into_iter()
        .chain(printed)
        .filter(Value::is_object)
        .collect()
}

fn assert_success_result(ran: &Ran, name: &str) {
    assert!(
        ran.success,
        "{name} failed:\n{}\n{}",
        ran.stdout, ran.stderr
    );
    let events = events(&ran.stdout);
    let result = events
        .iter()
        .find(|e| e["type"] == "result")
        .unwrap_or_else(|| panic!("{name} printed no result event:\n{}", ran.stdout));
    assert_eq!(result["subtype"], "success", "{name}: {result}");
    assert!(
        events.iter().any(|e| e["type"] == "system"),
        "{name} printed the agent's events:\n{}",
        ran.stdout
    );
}

fn assert_report_saved(ran: &Ran, name: &str) {
    let saved = ran.cwd.path().join("output/report.md");
    let content = std::fs::read_to_string(&saved).unwrap_or_else(|e| {
        panic!(
            "{name} did not save output/report.md ({e}):\n{}\n{}",
            ran.stdout, ran.stderr
        )
    });
    assert_eq!(content, REPORT, "{name} saved report.md byte for byte");
    assert!(
        ran.stdout
            .contains(&format!("report.md ({} bytes)", REPORT.len())),
        "{name} says what it saved:\n{}",
        ran.stdout
    );
}

/// Checks each event against its schema in src/openapi.json (picked by
/// `type`), with the JSON Schema validator schemathesis uses, so the
/// document describes what the real Agent SDK sends.
fn assert_events_match_the_openapi_document(events: &[Value]) {
    let script = r##"
import json, sys, jsonschema_rs
doc = json.load(open("src/openapi.json"))
names = {"system": "SystemEvent", "assistant": "AssistantEvent", "user": "UserEvent",
         "result": "ResultEvent", "stderr": "StderrEvent", "error": "ErrorEvent",
         "file": "FileEvent", "warning": "WarningEvent", "stdout": "StdoutEvent",
         "done": "DoneEvent"}
problems = []
for event in json.load(sys.stdin):
    name = names.get(event.get("type"), "OtherAgentEvent")
    validator = jsonschema_rs.validator_for(dict(doc, **{"$ref": "#/components/schemas/" + name}))
    problems += [f"{name}: {e.message} in {json.dumps(event)[:300]}" for e in validator.iter_errors(event)]
print("\n".join(problems))
sys.exit(1 if problems else 0)
"##;
    let mut child = Command::new(python())
        .current_dir(manifest_dir())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(&serde_json::to_vec(events).expect("json"))
            .expect("write events");
    }
    let output = child.wait_with_output().expect("python");
    assert!(
        output.status.success(),
        "events that src/openapi.json does not describe:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_query_example_gets_its_events_and_the_report_back() {
    let (stack, _model) = real_stack();
    let bash = Path::new("bash");

    let curl = run(bash, &example("query.sh"), &stack.url, Some(TOKEN));
    assert_success_result(&curl, "query.sh");
    let file = events(&curl.stdout)
        .into_iter()
        .find(|e| e["type"] == "file")
        .unwrap_or_else(|| panic!("query.sh printed no file event:\n{}", curl.stdout));
    assert_eq!(file["path"], "report.md");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(file["data"].as_str().expect("base64"))
        .expect("valid base64");
    assert_eq!(bytes, REPORT.as_bytes());
    assert_events_match_the_openapi_document(&events(&curl.stdout));

    let py = run(&python(), &example("query.py"), &stack.url, Some(TOKEN));
    assert_success_result(&py, "query.py");
    assert_report_saved(&py, "query.py");

    let node = run(
        Path::new("node"),
        &example("query.mjs"),
        &stack.url,
        Some(TOKEN),
    );
    assert_success_result(&node, "query.mjs");
    assert_report_saved(&node, "query.mjs");
}

#[test]
fn the_query_examples_fail_loudly_on_a_wrong_token() {
    let stack = StackBuilder::default()
        .synthetic(3)
        .env("SANDSTORM_API_TOKEN", TOKEN)
        .start();
    for (program, name) in [
        (PathBuf::from("bash"), "query.sh"),
        (python(), "query.py"),
        (PathBuf::from("node"), "query.mjs"),
    ] {
        let ran = run(&program, &example(name), &stack.url, Some("wrong-token"));
        assert!(!ran.success, "{name} exits non-zero on a 401");
        let said = format!("{}{}", ran.stdout, ran.stderr);
        assert!(
            said.contains("401") || said.contains("unauthorized"),
            "{name} shows the error:\n{said}"
        );
    }
}

#[test]
fn the_health_examples_print_the_status_and_version() {
    let stack = start_stack(3);
    for (program, name) in [
        (PathBuf::from("bash"), "health.sh"),
        (python(), "health.py"),
        (PathBuf::from("node"), "health.mjs"),
    ] {
        let ran = run(&program, &example(name), &stack.url, None);
        assert!(ran.success, "{name}:\n{}\n{}", ran.stdout, ran.stderr);
        let version = env!("CARGO_PKG_VERSION");
        let expected = if std::path::Path::new(name)
            .extension()
            .is_some_and(|e| e == "sh")
        {
            format!(r#"{{"status":"ok","version":"{version}"}}"#)
        } else {
            format!("ok {version}\n")
        };
        assert_eq!(ran.stdout, expected, "{name}");
    }
}

#[test]
fn the_javascript_examples_type_check_as_strict_typescript() {
    let tools = manifest_dir().join("tests/examples-ts");
    let tsc = tools.join("node_modules/.bin/tsc");
    assert!(
        tsc.exists(),
        "TypeScript is not installed for the example check; run: \
         npm ci --prefix tests/examples-ts (or scripts/setup)"
    );
    // As .mts files: TypeScript's ES modules, as .mjs is Node's.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for name in ["query", "health"] {
        let target = format!("{name}.mts");
        std::fs::copy(example(&format!("{name}.mjs")), dir.path().join(&target)).expect("copy");
        files.push(target);
    }
    let config = serde_json::json!({
        "compilerOptions": {
            "strict": true,
            "noEmit": true,
            "target": "es2022",
            "module": "nodenext",
            "moduleResolution": "nodenext",
            "types": ["node"],
            "typeRoots": [tools.join("node_modules/@types")],
            "skipLibCheck": true,
        },
        "files": files,
    });
    std::fs::write(dir.path().join("tsconfig.json"), config.to_string()).expect("tsconfig");
    let mut command = Command::new(&tsc);
    command.arg("-p").arg(dir.path().join("tsconfig.json"));
    let (status, stdout, stderr) = process::run(command, Duration::from_secs(120));
    assert!(
        status.success(),
        "docs/examples/*.mjs are not valid strict TypeScript:\n{stdout}\n{stderr}"
    );
}

#[test]
fn clients_md_shows_every_example_verbatim() {
    let doc =
        std::fs::read_to_string(manifest_dir().join("docs/clients.md")).expect("docs/clients.md");
    let mut names: Vec<String> = std::fs::read_dir(examples_dir())
        .expect("docs/examples")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert!(names.len() >= 6, "{names:?}");
    for name in names {
        let lang = match name.rsplit('.').next() {
            Some("sh") => "bash",
            Some("py") => "python",
            Some("mjs") => "typescript",
            other => panic!("an example of unknown kind {other:?}: {name}"),
        };
        let content = std::fs::read_to_string(example(&name)).expect("example");
        let block = format!("```{lang}\n{content}```\n");
        assert!(
            doc.contains(&block),
            "docs/clients.md does not show docs/examples/{name} verbatim in a ```{lang} block"
        );
    }
}
