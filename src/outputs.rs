//! Output files: the files the agent made, streamed back as `file` events.
//!
//! A request (or sandstorm.json) names globs relative to `/home/user`. After
//! the agent's `result`, the runner sends each matching file as
//! `{"type":"file","path","size","mime","content_base64"}` and each file over
//! a limit as a `warning` that names it. The relay checks the same limits
//! again, because the runner lives inside the sandbox the agent controls.

use serde::Serialize;

/// How many patterns one request may give.
pub(crate) const MAX_PATTERNS: usize = 32;
const MAX_PATTERN_BYTES: usize = 1024;

/// The limits on what comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
}

/// The relay's count of what has gone out, to hold the runner to the limits.
#[derive(Debug)]
pub(crate) struct OutputBudget {
    limits: OutputLimits,
    files: usize,
    bytes: usize,
}

impl OutputBudget {
    /// A budget with nothing spent yet.
    pub(crate) fn new(limits: OutputLimits) -> Self {
        OutputBudget {
            limits,
            files: 0,
            bytes: 0,
        }
    }

    /// Admits a `file` line of `line_len` bytes, or says which limit it
    /// breaks. The base64 content is 4/3 of the file; the rest of the line
    /// is a little JSON.
    pub(crate) fn admit(&mut self, line_len: usize) -> Result<(), String> {
        let content = line_len.saturating_sub(512) / 4 * 3;
        if self.files >= self.limits.max_files {
            return Err(format!(
                "the limit is {} output files",
                self.limits.max_files
            ));
        }
        if content > self.limits.max_file_bytes {
            return Err(format!(
                "the per-file limit is {} bytes",
                self.limits.max_file_bytes
            ));
        }
        if self.bytes + content > self.limits.max_total_bytes {
            return Err(format!(
                "the total limit is {} bytes",
                self.limits.max_total_bytes
            ));
        }
        self.files += 1;
        self.bytes += content;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_checked_one_by_one() {
        assert!(validate_patterns(&["output/**".into(), "*.png".into()]).is_ok());
        for bad in ["", "/etc/*", "../x", "a/../../b", "a\0"] {
            let e = validate_patterns(&[bad.to_owned()]).expect_err(bad);
            assert!(e.contains("output pattern"), "{e}");
        }
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("f{i}")).collect();
        assert!(validate_patterns(&many).is_err());
    }

    #[test]
    fn the_budget_holds_the_runner_to_the_limits() {
        let mut budget = OutputBudget::new(OutputLimits {
            max_files: 2,
            max_file_bytes: 3000,
            max_total_bytes: 4000,
        });
        // A line of N bytes carries about (N - 512) * 3 / 4 bytes of file.
        assert!(budget.admit(4000).is_ok());
        let per_file = budget.admit(5000).expect_err("per file");
        assert!(per_file.contains("per-file"), "{per_file}");
        let total = budget.admit(2500).expect_err("total");
        assert!(total.contains("total"), "{total}");
        assert!(budget.admit(1000).is_ok());
        assert!(
            budget
                .admit(600)
                .expect_err("count")
                .contains("2 output files")
        );
    }
}
