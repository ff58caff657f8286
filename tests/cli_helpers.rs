//! The project helpers Python 0.9.2 users reach for: `ds init`, `ds add`,
//! `ds doctor` and `ds serve -p`, each run as the `ds` binary in a fresh
//! folder with an environment of the test's making (nothing of the
//! machine's but `PATH`). Every address used is on loopback.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::emulator::{self, EmulatorOptions};
use common::http::Refused;
use common::keys::E2B_KEY;
use common::process::{self, Process};
use common::runner::runner_dir;
use common::serve::DS;
use sandstorm::config::SandstormConfig;

/// The seven starters of 0.9.2, by name.
const STARTERS: [&str; 7] = [
    "general-assistant",
    "research-brief",
    "document-analyst",
    "support-triage",
    "api-extractor",
    "security-audit",
    "code-review",
];

const TOOLPACKS: [&str; 5] = ["linear", "notion", "firecrawl", "exa", "github"];

/// How long one helper may take: each is a few file operations, or one
/// loopback request.
const LIMIT: Duration = Duration::from_secs(60);

/// What a finished `ds` printed, and how it ended.
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn dump(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// The doctor's line for `what`.
    fn line(&self, what: &str) -> &str {
        let needle = format!("  {what}: ");
        self.stdout
            .lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_else(|| panic!("no `{what}` line:\n{}", self.dump()))
    }
}

/// A folder to run `ds` in, with a home folder of its own.
struct Project {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Project {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp folder");
        let home = dir.path().join(".home");
        std::fs::create_dir(&home).expect("a home folder");
        Project {
            env: vec![("HOME".into(), home.display().to_string())],
            dir,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    fn write(&self, relative: &str, content: &str) {
        let path = self.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("parent folder");
        }
        std::fs::write(path, content).expect("write a file");
    }

    fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.path().join(relative))
            .unwrap_or_else(|e| panic!("read {relative}: {e}"))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(DS);
        command
            .args(args)
            .current_dir(self.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        let (status, stdout, stderr) = process::run(self.command(args), LIMIT);
        Output {
            code: status.code(),
            stdout,
            stderr,
        }
    }

    /// [`Project::run`] off the test's runtime, which meanwhile serves the
    /// in-process emulator `ds` talks to.
    async fn run_async(self, args: &[&str]) -> (Self, Output) {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let output = self.run(&args);
            (self, output)
        })
        .await
        .expect("join ds")
    }
}

/// A starter's file as checked in (and embedded in `ds`).
fn starter_file(starter: &str, relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/cli/starters")
        .join(starter)
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

// ---- ds init ----

#[test]
fn init_writes_the_starter_into_a_folder_named_after_it() {
    let project = Project::new();
    let out = project.run(&["init", "research-brief"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    assert_eq!(
        project.read("research-brief/sandstorm.json"),
        starter_file("research-brief", "sandstorm.json")
    );
    assert_eq!(
        project.read("research-brief/README.md"),
        starter_file("research-brief", "README.md")
    );
    assert!(
        project
            .read("research-brief/.env.example")
            .contains("ANTHROPIC_API_KEY="),
        "{}",
        out.dump()
    );
    assert!(out.stdout.contains("cd research-brief"), "{}", out.dump());
}

#[test]
fn init_without_a_starter_writes_general_assistant_and_takes_a_directory() {
    let project = Project::new();
    let out = project.run(&["init"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    assert_eq!(
        project.read("general-assistant/sandstorm.json"),
        starter_file("general-assistant", "sandstorm.json")
    );
    // An alias, into a folder of the caller's choosing.
    let out = project.run(&["init", "pr-review", "reviewer"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    assert_eq!(
        project.read("reviewer/sandstorm.json"),
        starter_file("code-review", "sandstorm.json")
    );
    // Its MCP servers' variables are listed for the person to fill in.
    let example = project.read("reviewer/.env.example");
    for variable in ["GITHUB_PERSONAL_ACCESS_TOKEN=", "LINEAR_API_KEY="] {
        assert_eq!(example.matches(variable).count(), 1, "{example}");
    }
}

#[test]
fn init_writes_the_security_audit_skill_where_skills_dir_points() {
    let project = Project::new();
    let out = project.run(&["init", "security-audit", "."]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let config = json(&project.read("sandstorm.json"));
    let skills = config["skills_dir"].as_str().expect("skills_dir");
    let skill = project.read(&format!("{skills}/owasp-top-10/SKILL.md"));
    assert!(skill.starts_with("---\nname: owasp-top-10\n"), "{skill}");
}

#[test]
fn init_refuses_to_overwrite_naming_the_file_and_force_overwrites() {
    let project = Project::new();
    project.write("proj/sandstorm.json", "{\"model\": \"mine\"}\n");
    let out = project.run(&["init", "general-assistant", "proj"]);
    assert_eq!(out.code, Some(2), "{}", out.dump());
    assert!(out.stderr.contains("proj/sandstorm.json"), "{}", out.dump());
    assert!(out.stderr.contains("--force"), "{}", out.dump());
    assert_eq!(
        project.read("proj/sandstorm.json"),
        "{\"model\": \"mine\"}\n"
    );
    assert!(
        !project.path().join("proj/README.md").exists(),
        "a refusal writes nothing"
    );

    let out = project.run(&["init", "general-assistant", "proj", "--force"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    assert_eq!(
        project.read("proj/sandstorm.json"),
        starter_file("general-assistant", "sandstorm.json")
    );
}

#[test]
fn init_list_shows_the_seven_starters() {
    let out = Project::new().run(&["init", "--list"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let listed: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|line| line.strip_prefix("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|word| *word != "also:")
        .collect();
    assert_eq!(listed, STARTERS, "{}", out.dump());
}

#[test]
fn init_of_an_unknown_starter_exits_2_listing_the_names() {
    let project = Project::new();
    let out = project.run(&["init", "no-such-starter"]);
    assert_eq!(out.code, Some(2), "{}", out.dump());
    for name in STARTERS {
        assert!(out.stderr.contains(name), "{}", out.dump());
    }
    assert_eq!(
        std::fs::read_dir(project.path()).expect("list").count(),
        1,
        "nothing written but the home folder"
    );
}

/// Each starter loads as the server loads it: sandstorm.json and, for the
/// one with skills, its skills folder.
#[test]
fn every_starter_written_loads_as_sandstorm_json() {
    let project = Project::new();
    for name in STARTERS {
        let out = project.run(&["init", name]);
        assert_eq!(out.code, Some(0), "{}", out.dump());
        let folder = project.path().join(name);
        let path = folder.join("sandstorm.json");
        match SandstormConfig::load(Some(&path), &folder) {
            Ok(config) if config.skills_dir.is_some() => {
                assert!(!config.skills.is_empty(), "{name}: its skills load");
            }
            Ok(_) => {}
            Err(e) => panic!("{name}: {e}"),
        }
    }
}

// ---- ds add ----

#[test]
fn add_creates_sandstorm_json_and_env_example_with_a_placeholder() {
    let project = Project::new();
    let out = project.run(&["add", "linear"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let config = json(&project.read("sandstorm.json"));
    assert_eq!(
        config["mcp_servers"]["linear"],
        serde_json::json!({
            "command": "npx",
            "args": ["-y", "linear-mcp"],
            "env": {"LINEAR_ACCESS_TOKEN": "${LINEAR_API_KEY}"}
        })
    );
    assert_eq!(
        project
            .read(".env.example")
            .matches("LINEAR_API_KEY=")
            .count(),
        1
    );
    // Today's parser takes what `ds add` writes.
    let path = project.path().join("sandstorm.json");
    let bytes = std::fs::read(&path).expect("sandstorm.json");
    SandstormConfig::parse(&bytes, &path).expect("ds add writes a valid sandstorm.json");
}

#[test]
fn add_keeps_the_other_fields_in_their_order_and_lists_each_variable_once() {
    let project = Project::new();
    let original = r#"{
  "system_prompt": "Be brief.",
  "model": "haiku",
  "mcp_servers": {
    "mine": {"command": "my-server", "args": ["--flag"]}
  },
  "max_turns": 7,
  "outputs": ["output/**"]
}
"#;
    project.write("sandstorm.json", original);
    project.write(".env.example", "ANTHROPIC_API_KEY=\n# EXA_API_KEY=\n");
    let out = project.run(&["add", "firecrawl"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let out = project.run(&["add", "exa"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());

    let text = project.read("sandstorm.json");
    let config = json(&text);
    let before = json(original);
    for field in ["system_prompt", "model", "max_turns", "outputs"] {
        assert_eq!(config[field], before[field], "{field}: {text}");
    }
    assert_eq!(config["mcp_servers"]["mine"], before["mcp_servers"]["mine"]);
    assert_eq!(
        config["mcp_servers"]["firecrawl"]["env"]["FIRECRAWL_API_KEY"],
        "${FIRECRAWL_API_KEY}"
    );
    let order: Vec<usize> = [
        "\"system_prompt\"",
        "\"model\"",
        "\"mcp_servers\"",
        "\"mine\"",
        "\"firecrawl\"",
        "\"exa\"",
        "\"max_turns\"",
        "\"outputs\"",
    ]
    .iter()
    .map(|key| text.find(key).unwrap_or_else(|| panic!("{key} in {text}")))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "order kept: {text}");

    // Adding again changes nothing and lists nothing twice; a variable that
    // is there commented out counts as listed.
    let out = project.run(&["add", "firecrawl"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    assert_eq!(project.read("sandstorm.json"), text);
    let example = project.read(".env.example");
    assert!(
        example.starts_with("ANTHROPIC_API_KEY=\n# EXA_API_KEY=\n"),
        "{example}"
    );
    assert_eq!(
        example.matches("FIRECRAWL_API_KEY=").count(),
        1,
        "{example}"
    );
    assert_eq!(example.matches("EXA_API_KEY=").count(), 1, "{example}");
}

#[test]
fn add_refuses_to_replace_a_different_server_of_the_same_name_without_force() {
    let project = Project::new();
    let mine = "{\"mcp_servers\": {\"github\": {\"command\": \"my-github\"}}}\n";
    project.write("sandstorm.json", mine);
    let out = project.run(&["add", "github"]);
    assert_eq!(out.code, Some(2), "{}", out.dump());
    assert!(out.stderr.contains("mcp_servers.github"), "{}", out.dump());
    assert!(out.stderr.contains("--force"), "{}", out.dump());
    assert_eq!(project.read("sandstorm.json"), mine);

    let out = project.run(&["add", "github", "--force"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let config = json(&project.read("sandstorm.json"));
    assert_eq!(
        config["mcp_servers"]["github"]["env"]["GITHUB_TOKEN"],
        "${GITHUB_TOKEN}"
    );
}

#[test]
fn add_adds_the_tool_pattern_to_an_existing_allow_list() {
    let project = Project::new();
    project.write("sandstorm.json", "{\"allowed_tools\": [\"Read\"]}\n");
    let out = project.run(&["add", "notion"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let config = json(&project.read("sandstorm.json"));
    assert_eq!(
        config["allowed_tools"],
        serde_json::json!(["Read", "mcp__notion__*"])
    );
}

#[test]
fn add_list_shows_the_five_toolpacks_and_whether_each_is_installed() {
    let project = Project::new();
    let out = project.run(&["add", "exa"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let out = project.run(&["add", "--list"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let lines: Vec<&str> = out.stdout.lines().collect();
    for name in TOOLPACKS {
        let at = lines
            .iter()
            .position(|l| l.starts_with(&format!("  {name} ")))
            .unwrap_or_else(|| panic!("{name} listed:\n{}", out.dump()));
        let status = lines.get(at + 2).copied().unwrap_or_default().trim();
        let want = if name == "exa" {
            "installed"
        } else {
            "not installed"
        };
        assert_eq!(status, want, "{name}:\n{}", out.dump());
    }
}

#[test]
fn add_of_an_unknown_toolpack_exits_2_listing_the_names() {
    let project = Project::new();
    let out = project.run(&["add", "slack"]);
    assert_eq!(out.code, Some(2), "{}", out.dump());
    for name in TOOLPACKS {
        assert!(out.stderr.contains(name), "{}", out.dump());
    }
    assert!(!project.path().join("sandstorm.json").exists());
}

// ---- ds doctor ----

/// A key that must never appear in what `ds doctor` prints.
const CANARY_KEY: &str = "sk-ant-doctor-canary-5e1f07c2d9";
const CANARY_E2B: &str = "e2b_doctorcanary0123456789abcdef";
const CANARY_ROUTER: &str = "sk-or-doctor-canary-88aa";

#[test]
fn doctor_fails_on_a_missing_model_key_with_a_fix() {
    let out = Project::new().run(&["doctor"]);
    assert_eq!(out.code, Some(1), "{}", out.dump());
    let line = out.line("model key");
    assert!(line.starts_with("fail  "), "{line}");
    assert!(line.contains("-- fix: set ANTHROPIC_API_KEY"), "{line}");
    // Without an E2B key the local sandbox is the one used, and said so.
    assert!(out.line("E2B key").starts_with("ok    "), "{}", out.dump());
    assert!(out.line("sandbox").contains("local"), "{}", out.dump());
}

#[test]
fn doctor_never_prints_a_key_and_passes_when_nothing_fails() {
    let project = Project::new()
        .env("ANTHROPIC_API_KEY", CANARY_KEY)
        // Closed: nothing here may reach E2B, and without --deep nothing tries.
        .env("E2B_API_URL", "http://127.0.0.1:9");
    project.write(
        ".env",
        &format!("E2B_API_KEY={CANARY_E2B}\nOPENROUTER_API_KEY={CANARY_ROUTER}\n"),
    );
    let out = project.run(&["doctor"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    assert!(
        out.line("model key").starts_with("ok    "),
        "{}",
        out.dump()
    );
    let e2b = out.line("E2B key");
    assert!(
        e2b.starts_with("ok    ") && e2b.contains("in .env"),
        "{e2b}"
    );
    assert!(out.line("sandbox").contains("e2b"), "{}", out.dump());
    for secret in [CANARY_KEY, CANARY_E2B, CANARY_ROUTER] {
        // Not the key, nor the part after its well-known prefix.
        let tail = &secret[secret.len() - 10..];
        for stream in [&out.stdout, &out.stderr] {
            assert!(!stream.contains(tail), "{secret} leaked:\n{}", out.dump());
        }
    }
}

#[test]
fn doctor_reports_an_invalid_sandstorm_json_with_its_error() {
    let project = Project::new().env("ANTHROPIC_API_KEY", CANARY_KEY);
    project.write("sandstorm.json", "{\"max_turns\": \"many\"}\n");
    let expected = SandstormConfig::load(None, project.path())
        .expect_err("an invalid file")
        .to_string();
    let out = project.run(&["doctor"]);
    assert_eq!(out.code, Some(1), "{}", out.dump());
    let line = out.line("sandstorm.json");
    assert!(line.starts_with("fail  "), "{line}");
    assert!(line.contains(&expected), "{expected:?} in {line}");
}

/// An in-process emulator that accepts only [`E2B_KEY`].
async fn emulator() -> emulator::RunningEmulator {
    // Listing sandboxes runs nothing, so `ds` itself serves as the shim
    // (the emulator only checks that the file exists).
    let mut options = EmulatorOptions::new(runner_dir(), PathBuf::from(DS));
    options.api_key = sandstorm::secret::Secret::new(E2B_KEY);
    emulator::start_with(options).await
}

#[tokio::test]
async fn doctor_deep_reaches_the_e2b_api_and_checks_the_key() {
    let e2b = emulator().await;
    let project = Project::new()
        .env("ANTHROPIC_API_KEY", CANARY_KEY)
        .env("E2B_API_URL", &e2b.url)
        .env("E2B_API_KEY", E2B_KEY);
    let (project, out) = project.run_async(&["doctor", "--deep"]).await;
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let line = out.line("E2B API");
    assert!(line.starts_with("ok    "), "{line}");
    assert!(
        line.contains(&e2b.url) && line.contains("accepted the key"),
        "{line}"
    );
    assert_eq!(e2b.requests("list"), 1, "one request: {:?}", e2b.stats());

    // The same API with a key it does not know.
    let project = project.env("E2B_API_KEY", CANARY_E2B);
    let (_, out) = project.run_async(&["doctor", "--deep"]).await;
    assert_eq!(out.code, Some(1), "{}", out.dump());
    let line = out.line("E2B API");
    assert!(
        line.starts_with("fail  ") && line.contains("rejected"),
        "{line}"
    );
    assert!(!out.stdout.contains(&CANARY_E2B[4..]), "{}", out.dump());
}

#[test]
fn doctor_deep_fails_when_the_e2b_api_cannot_be_reached() {
    let closed = Refused::new();
    let project = Project::new()
        .env("ANTHROPIC_API_KEY", CANARY_KEY)
        .env("E2B_API_URL", &closed.url())
        .env("E2B_API_KEY", E2B_KEY);
    let out = project.run(&["doctor", "--deep"]);
    assert_eq!(out.code, Some(1), "{}", out.dump());
    let line = out.line("E2B API");
    assert!(line.starts_with("fail  "), "{line}");
    assert!(
        line.contains(&closed.url()) && line.contains("-- fix: "),
        "{line}"
    );
    // Without --deep the same setup passes: only the request failed.
    let out = project.run(&["doctor"]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
}

// ---- ds serve -p ----

#[tokio::test]
async fn serve_takes_p_as_the_short_form_of_port() {
    let closed = Refused::new();
    // E2B on a closed loopback port: serving /health asks nothing of it,
    // and a local sandbox would install the runner first.
    let project = Project::new()
        .env("E2B_API_URL", &closed.url())
        .env("E2B_API_KEY", E2B_KEY)
        .env("RUST_LOG", "warn");
    let command = project.command(&["serve", "-p", "0"]);
    let (_server, url): (Process, String) = Process::start(
        "ds serve -p 0",
        command,
        Duration::from_secs(30),
        process::listening_on,
    )
    .await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(!url.ends_with(":0"), "port 0 picks a port: {url}");
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        reqwest::get(format!("{url}/health")),
    )
    .await
    .expect("answers in time")
    .expect("GET /health");
    assert_eq!(answer.status(), 200);
}
