//! A snapshot of the process environment plus `.env`, taken once at the door.
//!
//! Library code never calls `std::env::var`: doors take the snapshot
//! (`EnvVars::from_pairs(std::env::vars())`, plus `.env` for `ds`) and
//! pass it down, so tests can say exactly what the environment holds without
//! touching global state.

use std::collections::BTreeMap;
use std::path::Path;

/// Environment variables as the product sees them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EnvVars {
    vars: BTreeMap<String, String>,
}

impl std::fmt::Debug for EnvVars {
    // Values include API keys: print names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.vars.keys()).finish()
    }
}

/// A `.env` file that exists but could not be read or parsed.
#[derive(Debug, thiserror::Error)]
#[error("could not read {path}: {message}")]
pub struct DotenvError {
    /// The file.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

impl EnvVars {
    /// Exactly these variables: `std::env::vars()` at a door, a list in tests.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        EnvVars {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Adds the variables of a `.env` file that are not set yet. A missing
    /// file is fine; an unreadable or malformed one is an error, because a
    /// silently ignored `.env` leads to a confusing "key missing" later.
    pub fn fill_from_dotenv(&mut self, path: &Path) -> Result<(), DotenvError> {
        if !path.exists() {
            return Ok(());
        }
        let error = |message: String| DotenvError {
            path: path.display().to_string(),
            message,
        };
        let iter = dotenvy::from_path_iter(path).map_err(|e| error(e.to_string()))?;
        for item in iter {
            let (key, value) = item.map_err(|e| error(e.to_string()))?;
            self.vars.entry(key).or_insert(value);
        }
        Ok(())
    }

    /// The value of `name`, treating an empty value as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Whether `name` is set to something other than empty, `0` or `false`.
    pub fn flag(&self, name: &str) -> bool {
        self.get(name).is_some_and(switched_on)
    }

    /// Sets `name`, replacing any value it had.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(name.into(), value.into());
    }
}

/// Whether a set variable's value turns a switch on: anything but `0`,
/// `false` or `no`, in any case.
pub(crate) fn switched_on(value: &str) -> bool {
    !matches!(value.to_ascii_lowercase().as_str(), "0" | "false" | "no")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_wins_over_dotenv() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(".env"), "A=from-file\nB=from-file\n").expect("write");
        let mut env = EnvVars::from_pairs([("A", "from-env")]);
        env.fill_from_dotenv(&dir.path().join(".env"))
            .expect("reads");
        assert_eq!(env.get("A"), Some("from-env"));
        assert_eq!(env.get("B"), Some("from-file"));
    }

    #[test]
    fn empty_values_count_as_unset() {
        let env = EnvVars::from_pairs([("A", ""), ("F", "0"), ("T", "1")]);
        assert_eq!(env.get("A"), None);
        assert!(!env.flag("F"));
        assert!(env.flag("T"));
    }

    #[test]
    fn malformed_dotenv_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(".env");
        std::fs::write(&path, "A='unterminated\n").expect("write");
        let err = EnvVars::default()
            .fill_from_dotenv(&path)
            .expect_err("malformed");
        assert!(err.to_string().contains(".env"), "{err}");
    }

    #[test]
    fn debug_shows_names_not_values() {
        let env = EnvVars::from_pairs([("ANTHROPIC_API_KEY", "sk-secret")]);
        let shown = format!("{env:?}");
        assert!(shown.contains("ANTHROPIC_API_KEY") && !shown.contains("sk-secret"));
    }
}
