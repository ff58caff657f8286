//! The shape of a run: which of the runner's stdout lines the relay passes
//! on, and when.
//!
//! The runner shares its sandbox with the agent, and the agent runs any
//! code it likes, so any line on the runner's stdout may have been written
//! by the agent. Content cannot tell a forged line from a real one: a forged
//! `result` printed before the real one looks exactly like it. Keeping the
//! agent off that channel is the sandbox's job. The relay's job is the
//! shape, which holds whatever arrives:
//!
//! ```text
//! message* result (file | warning)*     the agent finished; its output files follow
//! message* error                        the runner failed
//! ```
//!
//! - The first terminal line (`result` or `error`) ends the agent's part.
//!   Every later line that is not an output line is dropped, a second
//!   `result` or `error` included, so exactly one terminal line counts.
//! - `file` and `warning` are output lines: the runner sends them after the
//!   `result` and never before, and only then do they pass, each still
//!   vetted by [`crate::outputs::OutputCheck`].
//! - The types the server writes itself ([`SERVER_OWNED`]: `done`,
//!   `stderr`, `stdout`, `progress`, `run`, `detached`, `turn`, `replay`,
//!   and `omitted` in a run's stored events) never pass from the runner.
//! - A dropped line is logged at warn by its type, never by its content:
//!   the type is named only when it is one we know, since an unknown one is
//!   text the agent chose and could hold a key.
//!
//! The server's own events come after the relay is over (an `error`, then
//! `done` once the sandbox is destroyed), so `done` is always the last one.

/// Event types only the server writes. A runner line that claims one is
/// dropped: a client must be able to trust that a `done` means the run is
/// over and a `stderr` came from stderr.
pub(crate) const SERVER_OWNED: [&str; 9] = [
    "done", "stderr", "stdout", "progress", "run", "detached", "turn", "replay", "omitted",
];

/// How many dropped lines a run logs one by one; beyond that they are only
/// counted, so an agent printing in a loop cannot flood the log.
const LOGGED_DROPS: usize = 16;

/// Where a run is in its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Stage {
    /// Before the terminal line: the agent's messages.
    #[default]
    Agent,
    /// After the `result`: only output lines.
    Outputs,
    /// After the runner's `error`: nothing.
    Ended,
}

/// A line the shape lets through, and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admitted {
    /// An agent message (`system`, `assistant`, `user`, and the SDK's other
    /// types): relayed as it is.
    Message,
    /// The run's `result`: relayed; only output lines may follow it.
    Result,
    /// The runner's own `error`: the end, reported as the run's error event.
    RunnerError,
    /// A `file` line after the `result`.
    File,
    /// A `warning` line after the `result`.
    Warning,
    /// A line that is not an SDK message (a stray print), before the end:
    /// wrapped as a `stdout` event.
    Stray,
}

/// Why the shape dropped a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dropped {
    /// It came after the terminal line and is not an output line there.
    AfterTheEnd,
    /// It claims a type only the server writes.
    ServerOwned,
    /// A `file` or `warning` before the `result`.
    OutputBeforeResult,
}

impl Dropped {
    fn describe(self) -> &'static str {
        match self {
            Dropped::AfterTheEnd => "it came after the runner's terminal event",
            Dropped::ServerOwned => "only the server writes this event type",
            Dropped::OutputBeforeResult => "output files come only after the result",
        }
    }
}

/// The relay's record of the shape so far.
#[derive(Debug, Default)]
pub(super) struct Shape {
    stage: Stage,
    dropped: usize,
}

impl Shape {
    /// Decides the next line, given its `type` (`None` when it is not an
    /// SDK message). The relay logs a drop (see [`Shape::loggable`]): the
    /// log line lives there, with the relay's others.
    pub(super) fn admit(&mut self, kind: Option<&str>) -> Result<Admitted, Dropped> {
        let verdict = self.decide(kind);
        if verdict.is_err() {
            self.dropped += 1;
        }
        verdict
    }

    /// What to log of the drop just made, for a run's first
    /// [`LOGGED_DROPS`] drops: the line's type (a known name, never text
    /// the agent chose) and the reason.
    pub(super) fn loggable(
        &self,
        kind: Option<&str>,
        why: Dropped,
    ) -> Option<(&'static str, &'static str)> {
        (self.dropped <= LOGGED_DROPS).then(|| (label(kind), why.describe()))
    }

    fn decide(&mut self, kind: Option<&str>) -> Result<Admitted, Dropped> {
        match (self.stage, kind) {
            (_, Some(kind)) if SERVER_OWNED.contains(&kind) => Err(Dropped::ServerOwned),
            (Stage::Agent, Some("result")) => {
                self.stage = Stage::Outputs;
                Ok(Admitted::Result)
            }
            (Stage::Agent, Some("error")) => {
                self.stage = Stage::Ended;
                Ok(Admitted::RunnerError)
            }
            (Stage::Agent, Some("file" | "warning")) => Err(Dropped::OutputBeforeResult),
            (Stage::Agent, Some(_)) => Ok(Admitted::Message),
            (Stage::Agent, None) => Ok(Admitted::Stray),
            (Stage::Outputs, Some("file")) => Ok(Admitted::File),
            (Stage::Outputs, Some("warning")) => Ok(Admitted::Warning),
            (Stage::Outputs | Stage::Ended, _) => Err(Dropped::AfterTheEnd),
        }
    }

    /// How many lines were dropped.
    pub(super) fn dropped(&self) -> usize {
        self.dropped
    }
}

/// A line's type for the log: a name we know, never text the agent chose.
fn label(kind: Option<&str>) -> &'static str {
    const KNOWN: [&str; 12] = [
        "system",
        "assistant",
        "user",
        "result",
        "error",
        "file",
        "warning",
        "stream_event",
        "done",
        "stderr",
        "stdout",
        "progress",
    ];
    match kind {
        None => "(not an SDK message)",
        Some(kind) => KNOWN
            .into_iter()
            .find(|known| *known == kind)
            .unwrap_or("(another type)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `types` through a fresh shape; `"-"` is a line that is not an
    /// SDK message.
    fn run(types: &[&str]) -> Vec<Result<Admitted, Dropped>> {
        let mut shape = Shape::default();
        types
            .iter()
            .map(|t| shape.admit((*t != "-").then_some(*t)))
            .collect()
    }

    #[test]
    fn a_finished_run_is_messages_a_result_and_its_output_lines() {
        assert_eq!(
            run(&[
                "system",
                "assistant",
                "-",
                "user",
                "tool_progress",
                "result",
                "file",
                "warning",
                "file"
            ]),
            [
                Ok(Admitted::Message),
                Ok(Admitted::Message),
                Ok(Admitted::Stray),
                Ok(Admitted::Message),
                Ok(Admitted::Message),
                Ok(Admitted::Result),
                Ok(Admitted::File),
                Ok(Admitted::Warning),
                Ok(Admitted::File),
            ]
        );
    }

    #[test]
    fn only_the_first_terminal_line_counts() {
        assert_eq!(
            run(&["result", "result", "error", "file"]),
            [
                Ok(Admitted::Result),
                Err(Dropped::AfterTheEnd),
                Err(Dropped::AfterTheEnd),
                Ok(Admitted::File),
            ]
        );
        assert_eq!(
            run(&["error", "result", "error", "file", "warning"]),
            [
                Ok(Admitted::RunnerError),
                Err(Dropped::AfterTheEnd),
                Err(Dropped::AfterTheEnd),
                Err(Dropped::AfterTheEnd),
                Err(Dropped::AfterTheEnd),
            ]
        );
    }

    #[test]
    fn after_the_result_only_output_lines_pass() {
        assert_eq!(
            run(&[
                "result",
                "assistant",
                "-",
                "system",
                "tool_progress",
                "file"
            ]),
            [
                Ok(Admitted::Result),
                Err(Dropped::AfterTheEnd),
                Err(Dropped::AfterTheEnd),
                Err(Dropped::AfterTheEnd),
                Err(Dropped::AfterTheEnd),
                Ok(Admitted::File),
            ]
        );
    }

    #[test]
    fn output_lines_before_the_result_are_dropped() {
        assert_eq!(
            run(&["file", "warning", "result"]),
            [
                Err(Dropped::OutputBeforeResult),
                Err(Dropped::OutputBeforeResult),
                Ok(Admitted::Result),
            ]
        );
    }

    #[test]
    fn server_owned_types_never_pass_at_any_stage() {
        for stage in [&[][..], &["result"], &["error"]] {
            for kind in SERVER_OWNED {
                let mut types = stage.to_vec();
                types.push(kind);
                assert_eq!(
                    run(&types).last(),
                    Some(&Err(Dropped::ServerOwned)),
                    "{types:?}"
                );
            }
        }
        // A dropped line does not end the agent's part.
        assert_eq!(run(&["done", "result"])[1], Ok(Admitted::Result));
    }

    #[test]
    fn drops_are_counted() {
        let mut shape = Shape::default();
        for kind in ["done", "result", "result", "assistant"] {
            let _ = shape.admit(Some(kind));
        }
        assert_eq!(shape.dropped(), 3);
    }

    #[test]
    fn the_log_names_known_types_only() {
        assert_eq!(label(Some("result")), "result");
        assert_eq!(label(Some("done")), "done");
        assert_eq!(label(Some("sk-ant-a-key-as-a-type")), "(another type)");
        assert_eq!(label(None), "(not an SDK message)");
    }
}
