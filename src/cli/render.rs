//! Shows a run's events on the terminal: readable text, or JSON lines.

use std::io::Write;
use std::time::Instant;

use serde_json::Value;

use super::exit;
use crate::events::RunEvent;
use crate::run::RunHandle;

pub(super) enum Mode {
    /// One JSON object per line on stdout, exactly the API's events.
    Json,
    /// The agent's text on stdout; tool calls, stderr and the summary on
    /// stderr, so `ds "..." > answer.md` captures only the answer.
    Human { verbose: bool },
}

/// Prints events until the run ends; returns the exit code. Ctrl-C ends the
/// run, waits for its sandbox to be destroyed, and returns 130.
pub(super) async fn follow(handle: RunHandle, mode: Mode) -> u8 {
    let RunHandle {
        mut events,
        finished,
    } = handle;
    let started = Instant::now();
    let mut code = exit::RUN_FAILED;
    let mut saw_result = false;
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("\ninterrupted: destroying the sandbox…");
                drop(events);
                let _ = finished.await;
                return exit::INTERRUPTED;
            }
        };
        let Some(event) = event else { break };
        match &mode {
            Mode::Json => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&event.to_json());
                let _ = out.write_all(b"\n");
                let _ = out.flush();
            }
            Mode::Human { verbose } => human(&event, *verbose, started),
        }
        match &event {
            RunEvent::Agent(line) => {
                if let Ok(value) = serde_json::from_slice::<Value>(line)
                    && value["type"] == "result"
                    && !saw_result
                {
                    saw_result = true;
                    code = if result_failed(&value) {
                        exit::RUN_FAILED
                    } else {
                        exit::OK
                    };
                }
            }
            RunEvent::Error(_) => code = exit::RUN_FAILED,
            RunEvent::Stderr(_) => {}
        }
    }
    let _ = finished.await;
    if !saw_result {
        return exit::RUN_FAILED;
    }
    code
}

fn result_failed(result: &Value) -> bool {
    result["is_error"] == true || result["subtype"].as_str().is_some_and(|s| s != "success")
}

fn human(event: &RunEvent, verbose: bool, started: Instant) {
    match event {
        RunEvent::Agent(line) => {
            let Ok(message) = serde_json::from_slice::<Value>(line) else {
                return;
            };
            match message["type"].as_str() {
                Some("assistant") => assistant(&message),
                Some("result") => result(&message, started),
                Some("stdout") => println!("{}", message["data"].as_str().unwrap_or_default()),
                _ => {}
            }
        }
        RunEvent::Stderr(line) if verbose => eprintln!("  {line}"),
        RunEvent::Stderr(_) => {}
        RunEvent::Error(error) => {
            eprintln!("error: {} (request {})", error.message, error.request_id);
        }
    }
}

fn assistant(message: &Value) {
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
            Some("tool_use") => {
                let name = block["name"].as_str().unwrap_or("tool");
                eprintln!("→ {name}{}", key_argument(name, &block["input"]));
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

fn result(message: &Value, started: Instant) {
    if let Some(structured) = message.get("structured_output").filter(|v| !v.is_null()) {
        println!(
            "{}",
            serde_json::to_string_pretty(structured).unwrap_or_default()
        );
    }
    let turns = message["num_turns"].as_u64().unwrap_or(0);
    let cost = message["total_cost_usd"].as_f64().unwrap_or(0.0);
    let seconds = message["duration_ms"]
        .as_f64()
        .map_or_else(|| started.elapsed().as_secs_f64(), |ms| ms / 1000.0);
    let status = if result_failed(message) {
        let subtype = message["subtype"].as_str().filter(|s| *s != "success");
        format!("✗ {}", subtype.unwrap_or("error"))
    } else {
        "✓ done".to_owned()
    };
    eprintln!("{status} · {turns} turns · ${cost:.4} · {seconds:.1}s");
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
}
