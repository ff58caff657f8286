//! Output files: the files the agent made, streamed back as `file` events.
//!
//! A request (or sandstorm.json) names globs relative to `/home/user`, or
//! `"auto"`: every file the run created or changed there, as Python
//! Sandstorm 0.9.2 sends back. After the agent's `result`, the runner sends
//! each such file, and the client gets it as
//! `{"type":"file","name","relative_path","path","size","mime","data"}`
//! (0.9.2's `name`, `relative_path` and `data`, base64, beside our `path`,
//! which is the same as `relative_path`); each file over a limit is a
//! `warning` that names it.
//!
//! The runner lives inside the sandbox the agent controls, so the relay
//! believes none of it: [`OutputCheck`] reads each output line strictly,
//! sends a file only when its path is a plain relative path (no `..`, not
//! absolute, no hidden name, no `\`, no drive) that one of the run's globs
//! matches, counts the limits again, and writes the event the client gets
//! itself, so a client can join `path` to a folder of its own. Which lines
//! may be output lines at all, and when, is the relay's shape
//! (`run/shape.rs`).

mod glob;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::events::Redactor;
use glob::Glob;

/// How many patterns one request may give.
pub(crate) const MAX_PATTERNS: usize = 32;
const MAX_PATTERN_BYTES: usize = 1024;

/// The limits on what comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub(crate) struct OutputLimits {
    /// How many files one run may send back.
    pub max_files: usize,
    /// The largest file sent, in bytes (before base64).
    pub max_file_bytes: usize,
    /// All files of one run together, in bytes (before base64).
    pub max_total_bytes: usize,
}

/// 20 files, 10 MB each, 25 MB in all: large enough for reports and charts,
/// small enough for a Lambda streamed response (20 MB soft limit aside,
/// clients hold these in memory).
pub(crate) const DEFAULT_LIMITS: OutputLimits = OutputLimits {
    max_files: 20,
    max_file_bytes: 10 * 1024 * 1024,
    max_total_bytes: 25 * 1024 * 1024,
};

/// `outputs`: which files come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outputs {
    /// Every file the run created or changed under `/home/user`, hidden
    /// ones aside.
    Auto,
    /// The files these globs (relative to `/home/user`) match.
    Globs(Vec<String>),
}

/// The name of [`Outputs::Auto`] in JSON and on the command line.
pub(crate) const AUTO: &str = "auto";

impl Outputs {
    /// Checks the globs; the error names the pattern.
    pub(crate) fn validate(&self) -> Result<(), String> {
        match self {
            Outputs::Auto => Ok(()),
            Outputs::Globs(patterns) => validate_patterns(patterns),
        }
    }

    /// What the run asks of the runner, within `limits`; `None` when
    /// nothing is to come back (an empty list).
    pub(crate) fn plan(&self, limits: OutputLimits) -> Option<OutputPlan> {
        match self {
            Outputs::Auto => Some(OutputPlan {
                patterns: vec!["**".to_owned()],
                limits,
                changed_only: true,
            }),
            Outputs::Globs(patterns) if patterns.is_empty() => None,
            Outputs::Globs(patterns) => Some(OutputPlan {
                patterns: patterns.clone(),
                limits,
                changed_only: false,
            }),
        }
    }
}

impl<'de> Deserialize<'de> for Outputs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(word) if word == AUTO => Ok(Outputs::Auto),
            list @ serde_json::Value::Array(_) => Vec::<String>::deserialize(list)
                .map(Outputs::Globs)
                .map_err(serde::de::Error::custom),
            _ => Err(serde::de::Error::custom(
                "expected \"auto\" or a list of globs relative to /home/user",
            )),
        }
    }
}

impl Serialize for Outputs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Outputs::Auto => s.serialize_str(AUTO),
            Outputs::Globs(patterns) => patterns.serialize(s),
        }
    }
}

/// Checks the globs of `outputs`; the error names the pattern.
pub(crate) fn validate_patterns(patterns: &[String]) -> Result<(), String> {
    if patterns.len() > MAX_PATTERNS {
        return Err(format!(
            "{} output patterns; the limit is {MAX_PATTERNS}",
            patterns.len()
        ));
    }
    for pattern in patterns {
        let problem = if pattern.is_empty() {
            Some("must not be empty")
        } else if pattern.len() > MAX_PATTERN_BYTES {
            Some("is longer than 1024 bytes")
        } else if pattern.starts_with('/') {
            Some("must be relative to /home/user")
        } else if pattern.split('/').any(|part| part == "..") {
            Some("must not contain '..'")
        } else if pattern.contains('\0') {
            Some("must not contain a NUL byte")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(format!("output pattern {pattern:?} {problem}"));
        }
    }
    Ok(())
}

/// What the runner reads from `agent_config.json`.
#[derive(Debug, Serialize)]
pub(crate) struct OutputRequest<'a> {
    /// The globs, relative to the runner's working folder.
    pub patterns: &'a [String],
    /// Flattened, so the runner sees `max_files` and the rest beside
    /// `patterns`.
    #[serde(flatten)]
    pub limits: OutputLimits,
    /// Only files created or changed since the runner started.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub changed_only: bool,
}

/// What a run asked to get back: its globs, and the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutputPlan {
    /// The globs, relative to `/home/user`.
    pub patterns: Vec<String>,
    /// The limits on what comes back.
    pub limits: OutputLimits,
    /// Only files the run created or changed (`"auto"`).
    pub changed_only: bool,
}

impl OutputPlan {
    /// What the runner is told.
    pub(crate) fn request(&self) -> OutputRequest<'_> {
        OutputRequest {
            patterns: &self.patterns,
            limits: self.limits,
            changed_only: self.changed_only,
        }
    }
}

/// The relay's count of what has gone out, to hold the runner to the limits.
#[derive(Debug)]
struct OutputBudget {
    limits: OutputLimits,
    files: usize,
    bytes: usize,
}

impl OutputBudget {
    fn new(limits: OutputLimits) -> Self {
        OutputBudget {
            limits,
            files: 0,
            bytes: 0,
        }
    }

    /// Whether one more file of `size` bytes fits, or which limit it breaks.
    fn check(&self, size: usize) -> Result<(), String> {
        if self.files >= self.limits.max_files {
            return Err(format!(
                "the limit is {} output files",
                self.limits.max_files
            ));
        }
        if size > self.limits.max_file_bytes {
            return Err(format!(
                "the per-file limit is {} bytes",
                self.limits.max_file_bytes
            ));
        }
        if self.bytes.saturating_add(size) > self.limits.max_total_bytes {
            return Err(format!(
                "the total limit is {} bytes",
                self.limits.max_total_bytes
            ));
        }
        Ok(())
    }

    fn spend(&mut self, size: usize) {
        self.files += 1;
        self.bytes = self.bytes.saturating_add(size);
    }
}

/// What the relay does with one output line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Vetted {
    /// Send this event, written by the server from what it checked.
    Send(Bytes),
    /// The file is not sent; send `warning`, which says why. `reason` is
    /// for the log: a fixed phrase, never the runner's text.
    Withheld {
        /// The `warning` event.
        warning: Bytes,
        /// Why, for the log.
        reason: &'static str,
    },
    /// Send nothing; the reason is for the log.
    Dropped(&'static str),
}

/// The relay's check of the runner's output lines, for one run.
#[derive(Debug)]
pub(crate) struct OutputCheck {
    /// `None` when the run asked for no files.
    globs: Option<Vec<Glob>>,
    budget: Option<OutputBudget>,
}

/// A `file` line as the runner writes it; anything else is malformed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLine {
    #[serde(rename = "type")]
    _kind: String,
    path: String,
    /// The runner's count; the server sends the length it decoded.
    #[serde(rename = "size")]
    _size: u64,
    mime: String,
    content_base64: String,
}

/// A `warning` line as the runner writes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WarningLine {
    #[serde(rename = "type")]
    _kind: String,
    #[serde(default)]
    path: Option<String>,
    message: String,
}

/// The events the client gets, written here and nowhere else.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum OutputEvent<'a> {
    /// `name`, `relative_path` and `data` are Python Sandstorm 0.9.2's
    /// names, so its clients save the file; `path` is ours, the same as
    /// `relative_path`. The content is sent once, as `data`.
    File {
        name: &'a str,
        relative_path: &'a str,
        path: &'a str,
        size: usize,
        mime: &'a str,
        data: &'a str,
    },
    Warning {
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<&'a str>,
        message: &'a str,
    },
}

impl OutputEvent<'_> {
    fn to_bytes(&self) -> Bytes {
        // Serializing strings and numbers cannot fail.
        serde_json::to_vec(self).map_or_else(|_| Bytes::new(), Bytes::from)
    }
}

/// What a withheld file with an unusable path is told as: the path itself
/// is not repeated, since a client might use it.
const UNSAFE_PATH: &str =
    "an output file was withheld: its path is not a plain relative path under /home/user";
const MALFORMED_FILE: &str = "an output file was withheld: its event was malformed";
/// What `mime` says when the runner's is not a plain media type.
const OCTET_STREAM: &str = "application/octet-stream";

impl OutputCheck {
    /// The check for a run that asked for `plan`'s files, or for none.
    pub(crate) fn new(plan: Option<&OutputPlan>) -> Self {
        OutputCheck {
            globs: plan.map(|p| p.patterns.iter().map(|g| Glob::new(g)).collect()),
            budget: plan.map(|p| OutputBudget::new(p.limits)),
        }
    }

    /// Vets a `file` line. A file that holds one of the run's keys is
    /// withheld: base64 would hide the key from the line's redaction.
    pub(crate) fn file(&mut self, line: &[u8], redactor: &Redactor) -> Vetted {
        let withhold = |path: Option<&str>, message: &str, reason| Vetted::Withheld {
            warning: OutputEvent::Warning { path, message }.to_bytes(),
            reason,
        };
        let Ok(file) = serde_json::from_slice::<FileLine>(line) else {
            return withhold(None, MALFORMED_FILE, "a malformed file event");
        };
        let path = file.path.as_str();
        if let Err(reason) = plain_path(path) {
            return withhold(None, UNSAFE_PATH, reason);
        }
        let refused =
            |why: &str, reason| withhold(Some(path), &format!("{path} not sent: {why}"), reason);
        let (Some(globs), Some(budget)) = (&self.globs, &mut self.budget) else {
            return refused(
                "the run asked for no output files",
                "no output files were asked for",
            );
        };
        if !globs.iter().any(|g| g.matches(path)) {
            return refused(
                "it matches none of the run's output patterns",
                "a path outside the output patterns",
            );
        }
        // Checked on the encoded length first, so a huge line is refused
        // before it is decoded.
        let encoded = &file.content_base64;
        let size = (encoded.len() / 4 * 3).saturating_sub(padding(encoded));
        if let Err(limit) = budget.check(size) {
            return refused(&limit, "over an output limit");
        }
        let Ok(content) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            return refused(
                "its content is not valid base64",
                "content that is not base64",
            );
        };
        if redactor.finds_any(&content) {
            return refused("it contains a key of this run", "it holds a key of the run");
        }
        budget.spend(content.len());
        let mime = if plain_mime(&file.mime) {
            file.mime.as_str()
        } else {
            OCTET_STREAM
        };
        Vetted::Send(
            OutputEvent::File {
                name: path.rsplit('/').next().unwrap_or(path),
                relative_path: path,
                path,
                size: content.len(),
                mime,
                data: &file.content_base64,
            }
            .to_bytes(),
        )
    }

    /// Vets a `warning` line: well formed, and about a plain path if any.
    pub(crate) fn warning(line: &[u8]) -> Vetted {
        let Ok(warning) = serde_json::from_slice::<WarningLine>(line) else {
            return Vetted::Dropped("a malformed warning");
        };
        if warning
            .path
            .as_deref()
            .is_some_and(|p| plain_path(p).is_err())
        {
            return Vetted::Dropped("a warning about a path that is not plain");
        }
        Vetted::Send(
            OutputEvent::Warning {
                path: warning.path.as_deref(),
                message: &warning.message,
            }
            .to_bytes(),
        )
    }
}

/// How many `=` end a base64 text (at most 2 count).
fn padding(encoded: &str) -> usize {
    encoded.bytes().rev().take(2).filter(|b| *b == b'=').count()
}

/// Whether `path` is one a client can join to a folder of its own and stay
/// inside it, on any system: relative, `/`-separated, every name plain.
/// The runner's paths always are; it lists names one folder at a time and
/// skips hidden ones.
fn plain_path(path: &str) -> Result<(), &'static str> {
    const MAX_PATH_BYTES: usize = 4096;
    if path.is_empty() {
        return Err("an empty path");
    }
    if path.len() > MAX_PATH_BYTES {
        return Err("a path that is too long");
    }
    if path.starts_with('/') {
        return Err("an absolute path");
    }
    if path.contains('\\') {
        return Err("a path with a backslash, a folder separator elsewhere");
    }
    if path.chars().any(char::is_control) {
        return Err("a path with a control character");
    }
    for name in path.split('/') {
        if name.is_empty() {
            return Err("a path with an empty name");
        }
        if name.starts_with('.') {
            // `.`, `..` and hidden names alike.
            return Err("a path with a name starting with '.'");
        }
    }
    let mut first = path.chars();
    if let (Some(letter), Some(':')) = (first.next(), first.next())
        && letter.is_ascii_alphabetic()
    {
        return Err("a path that starts with a drive, as in C:");
    }
    Ok(())
}

/// Whether `mime` is a plain `type/subtype`, with no parameters.
fn plain_mime(mime: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    mime.len() <= 127
        && mime
            .split_once('/')
            .is_some_and(|(t, s)| token(t) && token(s))
}

#[cfg(test)]
mod tests;
