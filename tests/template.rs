//! The E2B template (template/) installs the runner's pinned Agent SDK and
//! no other: it copies runner/'s own package.json and lock and runs
//! `npm ci`, and runner/package.json pins one exact version that the lock
//! agrees with.
//!
//! The template is rendered offline by the official E2B Python SDK (the
//! version pinned in tests/python/requirements.txt), which also hashes every
//! file a COPY step would upload: a path that is missing, or hidden by a
//! .dockerignore, fails here instead of in an E2B build.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const SDK: &str = "@anthropic-ai/claude-agent-sdk";
const RUNNER_DIR: &str = "/opt/agent-runner";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read_json(path: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(path)).expect(path);
    serde_json::from_str(&text).expect(path)
}

/// The SDK version runner/package.json pins, checked to be exact.
fn pinned_version() -> String {
    let package = read_json("runner/package.json");
    let pin = package["dependencies"][SDK]
        .as_str()
        .expect("runner/package.json depends on the Agent SDK")
        .to_owned();
    assert!(
        !pin.is_empty() && pin.chars().all(|c| c.is_ascii_digit() || c == '.'),
        "runner/package.json pins {SDK} to {pin:?}; it must be one exact version"
    );
    pin
}

/// The template as the E2B SDK would send it to E2B's build API.
fn rendered_template() -> (Value, String) {
    let python = repo().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing; install the pinned e2b SDK with: scripts/setup \
         (or: python3 -m venv .venv && .venv/bin/pip install -r tests/python/requirements.txt)",
        python.display()
    );
    let script = "import json, sys\n\
                  sys.path.insert(0, 'template')\n\
                  from template import template\n\
                  from e2b import Template\n\
                  print(json.dumps({'json': json.loads(Template.to_json(template)),\n\
                  'context': template._template._file_context_path}))\n";
    // The template copies the static build that build.py stages; the SDK
    // hashes what it would upload, so a file that exists stands in for it.
    let proxy = "src/bin/model_proxy.rs";
    let output = Command::new(&python)
        .current_dir(repo())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("SANDSTORM_MODEL_PROXY_BUILD", proxy)
        .args(["-c", script])
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "the E2B SDK could not render template/template.py:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rendered: Value = serde_json::from_slice(&output.stdout).expect("json");
    let context = rendered["context"].as_str().expect("context").to_owned();
    (rendered["json"].clone(), context)
}

fn steps<'a>(template: &'a Value, kind: &str) -> Vec<&'a Value> {
    template["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|step| step["type"] == kind)
        .collect()
}

#[test]
fn runner_lock_holds_the_version_package_json_pins() {
    let pin = pinned_version();
    let lock = read_json("runner/package-lock.json");
    assert_eq!(
        lock["packages"][""]["dependencies"][SDK], pin,
        "runner/package-lock.json was made for another package.json; run npm install --prefix runner"
    );
    assert_eq!(
        lock["packages"][format!("node_modules/{SDK}")]["version"],
        pin,
        "runner/package-lock.json installs another {SDK} than runner/package.json pins"
    );
}

#[test]
fn the_template_installs_runner_s_own_lock_with_npm_ci_at_opt_agent_runner() {
    let (template, context) = rendered_template();
    assert_eq!(
        Path::new(&context).canonicalize().expect("context"),
        repo().canonicalize().expect("repo"),
        "the template's copies are relative to the repository root"
    );

    let copies: Vec<(&str, &str, &str)> = steps(&template, "COPY")
        .iter()
        .map(|step| {
            assert!(
                step["filesHash"].is_string(),
                "the SDK hashed what {step} uploads"
            );
            let arg = |i: usize| step["args"][i].as_str().expect("COPY arg");
            (arg(0), arg(1), arg(2))
        })
        .collect();
    let dest = format!("{RUNNER_DIR}/");
    assert_eq!(
        copies[..2],
        [
            ("runner/package.json", dest.as_str(), "user"),
            ("runner/package-lock.json", dest.as_str(), "user"),
        ],
        "the template copies runner/'s manifest and lock, owned by the sandbox user"
    );
    assert_eq!(copies.len(), 3, "and one more file: {copies:?}");
    assert!(
        copies[2].0 == "src/bin/model_proxy.rs"
            && copies[2].1 == "/usr/local/bin/sandstorm-model-proxy"
            && copies[2].2 == "root",
        "the model proxy, owned by root, where the server starts it: {copies:?}"
    );

    let runs: Vec<(&str, Option<&str>)> = steps(&template, "RUN")
        .iter()
        .map(|step| {
            (
                step["args"][0].as_str().expect("command"),
                step["args"][1].as_str(),
            )
        })
        .collect();
    let npm_ci = runs
        .iter()
        .find(|(command, _)| command.contains("npm ci"))
        .expect("a RUN step with npm ci");
    assert!(
        npm_ci.0.starts_with(&format!("cd {RUNNER_DIR} && npm ci")),
        "npm ci runs in {RUNNER_DIR}: {}",
        npm_ci.0
    );
    assert_eq!(
        npm_ci.1,
        Some("user"),
        "the install belongs to the sandbox user"
    );
    assert!(
        !npm_ci.0.contains("--omit"),
        "the SDK's CLI is an optional dependency"
    );
    let chown = format!("chown user:user {RUNNER_DIR}");
    assert!(
        runs.iter()
            .any(|(command, user)| command.contains(&chown) && *user == Some("root")),
        "{RUNNER_DIR} is made writable for the sandbox user, who receives runner.mjs there"
    );
    assert!(
        runs.iter()
            .all(|(command, _)| !command.contains("npm install")),
        "the template installs only from the lock"
    );

    let apt = runs
        .iter()
        .find(|(command, _)| command.contains("apt-get install"))
        .expect("an apt-get install step");
    for tool in ["git", "ripgrep", "curl", "python3"] {
        assert!(
            apt.0.split_whitespace().any(|word| word == tool),
            "{tool} is installed: {}",
            apt.0
        );
    }
    assert_eq!(template["fromImage"], "node:24-bookworm-slim", "Node 24");

    // The agent's user cannot become root: sudo goes, root's password is
    // locked, and the build fails if either still works.
    let root_steps: Vec<&str> = runs
        .iter()
        .filter(|(_, user)| *user == Some("root"))
        .map(|(command, _)| *command)
        .collect();
    assert!(
        root_steps
            .iter()
            .any(|c| c.contains("apt-get purge -y --auto-remove sudo")
                && c.contains("passwd -l root")),
        "{root_steps:?}"
    );
    let last = runs.last().expect("steps");
    assert!(
        last.0.contains("sudo -n true") && last.0.contains("exit 1") && last.1 == Some("user"),
        "the last step checks, as user, that sudo is gone: {last:?}"
    );
}

#[test]
fn the_template_names_no_sdk_version_of_its_own() {
    let pin = pinned_version();
    for file in [
        "template/template.py",
        "template/build.py",
        "template/README.md",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).expect(file);
        assert!(
            !text.contains(&pin) && !text.contains(&format!("{SDK}@")),
            "{file} names an Agent SDK version; the version lives in runner/package.json only"
        );
    }
}
