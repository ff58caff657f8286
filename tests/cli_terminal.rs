//! `ds` as a person sees it: on a pseudo-terminal (colours, the spinner
//! with the run's phase) and piped (plain text), plus `--quiet`.

mod common;

use common::model_server::{FINAL_TEXT, ModelServer, Script};
use common::product::Cli;

const ESC: &str = "\u{1b}[";
/// The colours of the tool lines and of the success summary.
const CYAN: &str = "\u{1b}[36m";
const GREEN: &str = "\u{1b}[32m";

fn model() -> Script {
    Script::Bash {
        command: "echo hello-from-bash".into(),
    }
}

#[tokio::test]
async fn on_a_terminal_ds_shows_colours_the_phase_and_each_tool_call() {
    let model = ModelServer::start(model()).await;
    let output = Cli::new(&model)
        .env("TERM", "xterm-256color")
        .terminal()
        .run(&["say hello"])
        .await;
    assert_eq!(output.status.code(), Some(0), "{}", output.dump());
    let screen = &output.stdout;
    assert!(
        screen.contains(CYAN) && screen.contains(GREEN),
        "colours on a terminal: {screen:?}"
    );
    assert!(
        screen.contains("starting the agent"),
        "the spinner names the phase: {screen:?}"
    );
    assert!(screen.contains("→ Bash"), "{screen:?}");
    assert!(screen.contains("echo hello-from-bash"), "{screen:?}");
    assert!(screen.contains(FINAL_TEXT), "{screen:?}");
    assert!(screen.contains("✓ done"), "{screen:?}");
}

#[tokio::test]
async fn piped_ds_prints_plain_text_with_the_answer_alone_on_stdout() {
    let model = ModelServer::start(model()).await;
    let output = Cli::new(&model)
        .env("TERM", "xterm-256color")
        .run(&["say hello"])
        .await;
    assert_eq!(output.status.code(), Some(0), "{}", output.dump());
    for stream in [&output.stdout, &output.stderr] {
        assert!(
            !stream.contains(ESC),
            "no escape codes when piped: {stream:?}"
        );
    }
    assert!(
        !output.stderr.contains("starting the agent"),
        "no spinner when piped"
    );
    assert!(output.stdout.contains(FINAL_TEXT), "{}", output.dump());
    assert!(!output.stdout.contains("→ Bash"), "tool calls go to stderr");
    assert!(
        output.stderr.contains("→ Bash: echo hello-from-bash"),
        "{}",
        output.dump()
    );
    let summary = output.stderr.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("✓ done · 2 turns · $") && summary.ends_with('s'),
        "{summary:?}"
    );
}

#[tokio::test]
async fn quiet_prints_only_the_answer() {
    let model = ModelServer::start(model()).await;
    let output = Cli::new(&model).run(&["say hello", "--quiet"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", output.dump());
    assert!(output.stdout.contains(FINAL_TEXT), "{}", output.dump());
    assert_eq!(
        output.stderr.trim(),
        "",
        "nothing but the answer: {}",
        output.dump()
    );
}

#[tokio::test]
async fn no_color_turns_colours_off_even_on_a_terminal() {
    let model = ModelServer::start(model()).await;
    let output = Cli::new(&model)
        .env("TERM", "xterm-256color")
        .env("NO_COLOR", "1")
        .terminal()
        .run(&["say hello"])
        .await;
    assert_eq!(output.status.code(), Some(0), "{}", output.dump());
    let screen = &output.stdout;
    assert!(screen.contains("✓ done"), "{screen:?}");
    assert!(
        !screen.contains(CYAN) && !screen.contains(GREEN),
        "{screen:?}"
    );
}

#[tokio::test]
async fn without_an_e2b_key_ds_runs_in_a_local_sandbox_and_says_so() {
    let model = ModelServer::start(model()).await;
    let output = Cli::new(&model)
        .without_sandbox_flag()
        .run(&["say hello"])
        .await;
    assert_eq!(output.status.code(), Some(0), "{}", output.dump());
    assert!(
        output
            .stderr
            .contains("no E2B key set; running in a local bubblewrap sandbox"),
        "{}",
        output.dump()
    );
    assert!(output.sandboxes_seen >= 1, "a local sandbox was made");
    assert!(output.stdout.contains(FINAL_TEXT), "{}", output.dump());
}

#[tokio::test]
async fn a_binary_file_is_refused_with_a_clear_error_and_exit_status_2() {
    let model = ModelServer::start(model()).await;
    let output = Cli::new(&model)
        .file("image.bin", "PNG\0\u{1}\u{2}")
        .run(&["describe it", "-f", "image.bin"])
        .await;
    assert_eq!(output.status.code(), Some(2), "{}", output.dump());
    assert!(
        output.stderr.contains("image.bin is not a text file"),
        "{}",
        output.dump()
    );
    assert_eq!(output.sandboxes_seen, 0, "refused before any sandbox");
    assert!(model.requests().is_empty(), "the model was never called");
}
