//! README.md stays true: its `ds` commands parse and run against the E2B
//! emulator, its sandstorm.json examples load, its client example is the
//! tested file, its links resolve.

mod common;

use std::path::Path;
use std::time::Duration;

use clap::Parser;
use common::emulator::{self, Knobs};
use common::keys::E2B_KEY;
use common::model_server::{FINAL_TEXT, ModelServer, Script};
use common::product::Cli;
use common::serve::DsServe;
use sandstorm::config::SandstormConfig;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md")
}

/// The bodies of the fenced blocks of one language.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let fence = format!("```{lang}");
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_start() == fence => current = Some(String::new()),
            Some(body) if line.trim_start() == "```" => {
                out.push(std::mem::take(body));
                current = None;
            }
            Some(body) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    out
}

/// A command line cut at a pipe or a comment.
fn words(line: &str) -> Vec<String> {
    let words = shlex::split(line).unwrap_or_else(|| panic!("unbalanced quotes: {line}"));
    words
        .into_iter()
        .take_while(|w| w != "|" && !w.starts_with('#'))
        .collect()
}

/// Every `ds ...` (and `cargo run --release -- ...`) line of the README's
/// bash blocks, as the words after `ds`.
fn ds_commands() -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    for block in blocks(&readme(), "bash") {
        for line in block.lines().map(str::trim) {
            let args = if let Some(rest) = line.strip_prefix("cargo run --release -- ") {
                format!("ds {rest}")
            } else if line.starts_with("ds ") {
                line.to_owned()
            } else {
                continue;
            };
            commands.push(words(&args));
        }
    }
    commands
}

#[test]
fn every_ds_command_in_the_readme_parses() {
    let commands = ds_commands();
    for words in &commands {
        if let Err(e) = sandstorm::cli::Cli::try_parse_from(words) {
            panic!("README command {words:?} does not parse: {e}");
        }
    }
    assert!(
        commands.len() >= 10,
        "only {} ds commands found",
        commands.len()
    );
}

#[tokio::test]
async fn every_ds_query_in_the_readme_runs_against_the_emulator() {
    let model = ModelServer::start(Script::Bash {
        command: "mkdir -p output && echo chart > output/chart.png && echo readme-ok".into(),
    })
    .await;
    // The VM's model proxy reaches the model, as a real one does.
    let mut options = emulator::options();
    options.egress_open = Some(format!("127.0.0.1:{}", model.port()));
    let e2b = emulator::start_with(options).await;
    // Queries only: `serve` is the test below, `runs`, `attach`,
    // `continue`, `cancel` and `replay` name runs that do not exist here
    // (tests/detached.rs and tests/replay.rs run them), `init`, `add`
    // and `doctor` run in tests/cli_helpers.rs, and `webhook` in
    // tests/lifecycle_webhooks.rs.
    let queries: Vec<Vec<String>> = ds_commands()
        .into_iter()
        .filter(|words| {
            words.get(1).is_some_and(|w| {
                ![
                    "serve", "runs", "attach", "continue", "cancel", "replay", "init", "add",
                    "doctor", "webhook",
                ]
                .contains(&w.as_str())
            })
        })
        .collect();
    assert!(queries.len() >= 8, "{queries:?}");
    for words in queries {
        let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        // No E2B key flag and no --sandbox: ds picks E2B because the key is
        // in the environment, as in the README's setup.
        let output = Cli::new(&model)
            .without_sandbox_flag()
            .env("E2B_API_KEY", E2B_KEY)
            .env("E2B_API_URL", &e2b.url)
            .env("E2B_SANDBOX_URL", &e2b.url)
            // A detached run's sandbox goes at its end, like the others'.
            .env("SANDSTORM_RUN_LINGER", "0")
            .file("data.csv", "region,sales\nnorth,10\n")
            .file("prod.json", "{}")
            .file("staging.json", "{}")
            .run(&args)
            .await;
        assert_eq!(
            output.status.code(),
            Some(0),
            "{words:?}\n{}",
            output.dump()
        );
        assert!(
            output.stdout.contains(FINAL_TEXT),
            "{words:?}\n{}",
            output.dump()
        );
    }
    let stats = e2b.stats();
    assert_eq!(stats.created, stats.killed, "{stats:?}");
}

#[tokio::test]
async fn every_ds_serve_in_the_readme_starts_and_answers_health() {
    let e2b = emulator::start(Knobs::default()).await;
    let serves: Vec<Vec<String>> = ds_commands()
        .into_iter()
        .filter(|words| words.get(1).is_some_and(|w| w == "serve"))
        .collect();
    assert!(serves.len() >= 4, "{serves:?}");
    for words in serves {
        // The README's ports may be taken here: DsServe drops `--port` and
        // starts on port 0.
        let server = DsServe::new(&words[1..])
            .env("E2B_API_KEY", E2B_KEY)
            .env("E2B_API_URL", &e2b.url)
            .env("E2B_SANDBOX_URL", &e2b.url)
            .start()
            .await;
        let health = server.url.replace("0.0.0.0", "127.0.0.1");
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            reqwest::get(format!("{health}/health")),
        )
        .await
        .expect("answers in time")
        .expect("health");
        assert_eq!(answer.status(), 200, "{words:?}");
    }
}

#[test]
fn every_sandstorm_json_example_in_the_readme_loads() {
    let examples = blocks(&readme(), "json");
    assert!(examples.len() >= 3);
    for json in examples {
        if let Err(e) = SandstormConfig::parse(json.as_bytes(), Path::new("README.md")) {
            panic!("README example is not a valid sandstorm.json: {e}\n{json}");
        }
    }
}

#[test]
fn the_readme_curl_example_is_the_tested_file() {
    let tested = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/query.sh"),
    )
    .expect("docs/examples/query.sh");
    assert!(
        blocks(&readme(), "bash").contains(&tested),
        "README must show docs/examples/query.sh verbatim"
    );
}

#[test]
fn every_relative_link_in_the_readme_resolves() {
    let text = readme();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for piece in text.split("](").skip(1) {
        let target = piece.split(')').next().unwrap_or_default();
        if target.starts_with("http") || target.starts_with('#') || target.is_empty() {
            continue;
        }
        let path = target.split('#').next().unwrap_or_default();
        assert!(root.join(path).exists(), "README links to missing {target}");
    }
}
