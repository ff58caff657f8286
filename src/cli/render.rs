//! Shows a run's events on the terminal: readable text, or JSON lines.
//!
//! Colours go to terminals only (anstream strips them from pipes and honours
//! `NO_COLOR` / `CLICOLOR_FORCE`); the spinner shows only on a terminal.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anstyle::{AnsiColor, Style};
use base64::Engine;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::exit;
use crate::events::RunEvent;
use crate::run::RunHandle;

const DIM: Style = Style::new().dimmed();
const TOOL: Style = AnsiColor::Cyan.on_default();
const GOOD: Style = AnsiColor::Green.on_default().bold();
const BAD: Style = AnsiColor::Red.on_default().bold();
const WARN: Style = AnsiColor::Yellow.on_default();

pub(super) enum Mode {
    /// One JSON object per line on stdout, exactly the API's events.
    Json,
    /// The agent's text on stdout; tool calls, warnings and the summary on
    /// stderr, so `ds "..." > answer.md` captures only the answer.
    Human { verbose: bool, quiet: bool },
}

impl Mode {
    /// `--json-output`, else readable text as `-v` and `-q` ask.
    pub(super) fn new(json: bool, verbose: bool, quiet: bool) -> Self {
        if json {
            Mode::Json
        } else {
            Mode::Human { verbose, quiet }
        }
    }
}

pub(super) struct Options {
    pub(super) mode: Mode,
    /// Where `file` events are saved, if anywhere.
    pub(super) output_dir: Option<PathBuf>,
    /// What Ctrl-C and SIGTERM do to the run.
    pub(super) on_interrupt: OnInterrupt,
    /// Where a replay's report is written; `None` shows it on stderr
    /// (readable mode; JSON mode has it as an event).
    pub(super) report_to: Option<PathBuf>,
}

/// What an interrupted `ds` does to the run it shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnInterrupt {
    /// The run ends with `ds`: its sandbox is destroyed first.
    EndRun,
    /// The run goes on in its sandbox (a detached run): `ds` only stops
    /// reading, and says how to read on.
    Leave,
}

/// What the run produced, for the exit code and the summary.
#[derive(Default)]
struct Tally {
    result: Option<Value>,
    failed: bool,
    saved: usize,
    /// A detached run's id, from its `run` event.
    run_id: Option<String>,
    /// The id of the last event shown: a detached run's events are
    /// numbered from 1, every one but progress, `detached`, `replay` and
    /// `omitted`.
    last_event_id: u64,
    /// A replay's report, in markdown.
    report: Option<String>,
}

/// Prints events until the run ends; returns the exit code. Ctrl-C or
/// SIGTERM ends the run, waits for its sandbox to be destroyed, and returns
/// 130 or 143.
pub(super) async fn follow(handle: RunHandle, options: Options) -> u8 {
    let RunHandle {
        mut events,
        finished,
    } = handle;
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut spinner = Spinner::new(&options.mode);
    // A service manager, a container runtime or `timeout` stops `ds` with
    // SIGTERM: that must destroy the sandbox as Ctrl-C does.
    let mut terminate = signal(SignalKind::terminate()).ok();
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            code = stopped(terminate.as_mut()) => {
                spinner.clear();
                drop(events);
                match (options.on_interrupt, &tally.run_id) {
                    (OnInterrupt::Leave, Some(run)) => {
                        finished.abort();
                        anstream::eprintln!(
                            "\n{DIM}left the run; it goes on in its sandbox. Read on with:{DIM:#}\n  \
                             ds attach {run} --from {}",
                            tally.last_event_id
                        );
                    }
                    _ => {
                        anstream::eprintln!("\n{DIM}interrupted: destroying the sandbox…{DIM:#}");
                        let _ = finished.await;
                    }
                }
                return code;
            }
        };
        let Some(event) = event else { break };
        match &event {
            RunEvent::Progress(phase) => {
                spinner.show(phase.describe());
                continue;
            }
            RunEvent::Detached(_) => {}
            RunEvent::Replay(report) => tally.report = Some(report.markdown.clone()),
            // A stored run's note of what its cap left out: not an event of
            // the run, so it has no id.
            RunEvent::Agent(line)
                if crate::events::message_type(line).as_deref() == Some("omitted") => {}
            RunEvent::Run(run) => {
                tally.run_id = Some(run.run_id.clone());
                tally.last_event_id += 1;
            }
            _ => tally.last_event_id += 1,
        }
        spinner.clear();
        let message = match &event {
            RunEvent::Agent(line) => serde_json::from_slice::<Value>(line).ok(),
            _ => None,
        };
        match &options.mode {
            Mode::Json => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&event.to_json());
                let _ = out.write_all(b"\n");
                let _ = out.flush();
            }
            Mode::Human { verbose, quiet } => {
                human(&event, message.as_ref(), *verbose, *quiet);
            }
        }
        match (&event, &message) {
            (RunEvent::Error(_), _) => tally.failed = true,
            (_, Some(m)) if m["type"] == "result" && tally.result.is_none() => {
                tally.failed |= result_failed(m);
                tally.result = Some(m.clone());
            }
            (_, Some(m)) if m["type"] == "file" => {
                if let Some(dir) = &options.output_dir {
                    match save(dir, m) {
                        Ok(path) => {
                            tally.saved += 1;
                            if matches!(options.mode, Mode::Human { quiet: false, .. }) {
                                anstream::eprintln!("{DIM}saved {}{DIM:#}", path.display());
                            }
                        }
                        Err(why) => anstream::eprintln!("{WARN}warning: {why}{WARN:#}"),
                    }
                }
            }
            _ => {}
        }
    }
    spinner.clear();
    let _ = finished.await;
    if let (Mode::Human { quiet: false, .. }, Some(result)) = (&options.mode, &tally.result) {
        summary(result, started, tally.saved, options.output_dir.as_deref());
    }
    if let Some(markdown) = &tally.report {
        report(markdown, &options);
    }
    if tally.result.is_none() || tally.failed {
        exit::RUN_FAILED
    } else {
        exit::OK
    }
}

/// A replay's report: to its file when one is named, else on stderr in
/// readable mode (as 0.9.2's `ds replay` shows it).
fn report(markdown: &str, options: &Options) {
    match &options.report_to {
        Some(path) => match std::fs::write(path, markdown) {
            Ok(()) => anstream::eprintln!("{DIM}report written to {}{DIM:#}", path.display()),
            Err(e) => anstream::eprintln!(
                "{WARN}warning: the report could not be written to {}: {e}{WARN:#}\n{markdown}",
                path.display()
            ),
        },
        None if matches!(options.mode, Mode::Human { .. }) => anstream::eprintln!("\n{markdown}"),
        None => {}
    }
}

/// Resolves when Ctrl-C or SIGTERM arrives, with the exit code that says
/// which. Without a SIGTERM handler (it could not be installed), Ctrl-C only.
async fn stopped(terminate: Option<&mut Signal>) -> u8 {
    let term = async {
        match terminate {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => exit::INTERRUPTED,
        () = term => exit::TERMINATED,
    }
}

/// A spinner with the run's phase, on a terminal, in readable mode.
struct Spinner(Option<ProgressBar>);

impl Spinner {
    fn new(mode: &Mode) -> Self {
        let wanted =
            matches!(mode, Mode::Human { quiet: false, .. }) && std::io::stderr().is_terminal();
        Spinner(wanted.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        }))
    }

    fn show(&self, phase: &str) {
        if let Some(bar) = &self.0 {
            bar.set_message(format!("{phase}…"));
        }
    }

    fn clear(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}

fn result_failed(result: &Value) -> bool {
    result["is_error"] == true || result["subtype"].as_str().is_some_and(|s| s != "success")
}

fn human(event: &RunEvent, message: Option<&Value>, verbose: bool, quiet: bool) {
    match event {
        RunEvent::Agent(_) => {
            let Some(message) = message else { return };
            match message["type"].as_str() {
                Some("assistant") => assistant(message, quiet),
                Some("result") => {
                    if let Some(structured) =
                        message.get("structured_output").filter(|v| !v.is_null())
                    {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(structured).unwrap_or_default()
                        );
                    }
                }
                Some("warning") => {
                    let text = message["message"].as_str().unwrap_or_default();
                    anstream::eprintln!("{WARN}warning: {text}{WARN:#}");
                }
                Some("stdout") => println!("{}", message["data"].as_str().unwrap_or_default()),
                // A stored run's events past the history's cap.
                Some("omitted") => {
                    let text = message["message"]
                        .as_str()
                        .unwrap_or("events were left out");
                    anstream::eprintln!("{WARN}{text}{WARN:#}");
                }
                _ => {}
            }
        }
        RunEvent::Stderr(line) if verbose => anstream::eprintln!("{DIM}  {line}{DIM:#}"),
        // The summary says how the run ended; `done` is for machines.
        // A replay's report comes after the summary (see `report`).
        RunEvent::Stderr(_) | RunEvent::Progress(_) | RunEvent::Done(_) | RunEvent::Replay(_) => {}
        RunEvent::Error(error) => {
            anstream::eprintln!(
                "{BAD}error:{BAD:#} {} {DIM}(request {}){DIM:#}",
                error.message,
                error.request_id
            );
        }
        RunEvent::Run(run) => {
            anstream::eprintln!(
                "{DIM}run {} (its sandbox is kept until {}){DIM:#}",
                run.run_id,
                run.expires_at
            );
        }
        RunEvent::Detached(detached) => {
            anstream::eprintln!(
                "{WARN}the run goes on in its sandbox; read on from event {} at {}{WARN:#}",
                detached.last_event_id + 1,
                detached.resume
            );
        }
        RunEvent::Turn(turn) => {
            anstream::eprintln!("{DIM}turn {} of run {}{DIM:#}", turn.turn, turn.run_id);
        }
    }
}

fn assistant(message: &Value, quiet: bool) {
    let Some(blocks) = message["message"]["content"].as_array() else {
        return;
    };
    for block in blocks {
        match block["type"].as_str() {
            Some("text") => {
                if let Some(text) = block["text"].as_str() {
                    println!("{text}");
                }
            }
            Some("tool_use") if !quiet => {
                let name = block["name"].as_str().unwrap_or("tool");
                anstream::eprintln!(
                    "{TOOL}→ {name}{TOOL:#}{DIM}{}{DIM:#}",
                    key_argument(name, &block["input"])
                );
            }
            _ => {}
        }
    }
}

/// The one argument that says what a tool call does.
pub(super) fn key_argument(tool: &str, input: &Value) -> String {
    let field = match tool {
        "Bash" => "command",
        "Read" | "Write" | "Edit" | "NotebookEdit" => "file_path",
        "Glob" | "Grep" => "pattern",
        "WebFetch" => "url",
        "WebSearch" => "query",
        "Task" | "Agent" => "description",
        _ => "",
    };
    let text = input[field].as_str().map(str::to_owned).unwrap_or_else(|| {
        if input.is_null() {
            String::new()
        } else {
            input.to_string()
        }
    });
    let line = text.lines().next().unwrap_or_default();
    let shown: String = line.chars().take(100).collect();
    if shown.is_empty() {
        String::new()
    } else if shown.len() < text.len() {
        format!(": {shown}…")
    } else {
        format!(": {shown}")
    }
}

fn summary(result: &Value, started: Instant, saved: usize, dir: Option<&Path>) {
    let turns = result["num_turns"].as_u64().unwrap_or(0);
    let cost = result["total_cost_usd"].as_f64().unwrap_or(0.0);
    let seconds = result["duration_ms"]
        .as_f64()
        .map_or_else(|| started.elapsed().as_secs_f64(), |ms| ms / 1000.0);
    let status = if result_failed(result) {
        let subtype = result["subtype"].as_str().filter(|s| *s != "success");
        format!("{BAD}✗ {}{BAD:#}", subtype.unwrap_or("error"))
    } else {
        format!("{GOOD}✓ done{GOOD:#}")
    };
    let files = match dir {
        Some(dir) => format!(" · {saved} files saved to {}", dir.display()),
        None => String::new(),
    };
    anstream::eprintln!("{status} · {turns} turns · ${cost:.4} · {seconds:.1}s{files}");
}

/// Saves one `file` event under `dir`. The path comes from the sandbox, so
/// it is normalized the way upload paths are: nothing may land outside `dir`.
fn save(dir: &Path, file: &Value) -> Result<PathBuf, String> {
    let raw = file["path"].as_str().unwrap_or_default();
    let relative =
        crate::request::normalize_path(raw).map_err(|why| format!("output file refused: {why}"))?;
    let content = base64::engine::general_purpose::STANDARD
        .decode(file["data"].as_str().unwrap_or_default())
        .map_err(|e| format!("output file {raw:?} is not valid base64: {e}"))?;
    let target = dir.join(&relative);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::write(&target, content)
        .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_arguments_name_what_the_tool_does() {
        let input = serde_json::json!({"command": "ls -la\nrm x", "description": "list"});
        assert_eq!(key_argument("Bash", &input), ": ls -la…");
        let input = serde_json::json!({"file_path": "/home/user/a.txt"});
        assert_eq!(key_argument("Read", &input), ": /home/user/a.txt");
        let input = serde_json::json!({"x": 1});
        assert_eq!(key_argument("mcp__s__t", &input), ": {\"x\":1}");
    }

    #[test]
    fn error_results_fail_the_run() {
        assert!(result_failed(
            &serde_json::json!({"subtype": "error_max_turns"})
        ));
        assert!(result_failed(
            &serde_json::json!({"subtype": "success", "is_error": true})
        ));
        assert!(!result_failed(
            &serde_json::json!({"subtype": "success", "is_error": false})
        ));
    }

    #[test]
    fn saved_files_stay_inside_the_output_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |path: &str| serde_json::json!({"type":"file","path":path,"data":"AAEC/w=="});
        let saved = save(dir.path(), &file("charts/a.png")).expect("saved");
        assert_eq!(std::fs::read(saved).expect("read"), [0, 1, 2, 255]);
        for escape in ["../evil", "/etc/passwd", "a/../../evil"] {
            let err = save(dir.path(), &file(escape)).expect_err(escape);
            assert!(err.contains("refused"), "{err}");
        }
        assert!(!dir.path().parent().expect("parent").join("evil").exists());
    }
}
