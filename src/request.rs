//! The `POST /query` body and its validation.
//!
//! Parsing and every check happen here, before any sandbox exists, so a bad
//! request costs nothing and its error names the field at fault.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::error::ApiError;
use crate::secret::Secret;

/// The longest prompt, in characters (as the original).
pub const MAX_PROMPT_CHARS: usize = 1_000_000;
/// How many files one request may upload.
pub const MAX_FILES: usize = 20;
/// The total size of uploaded file contents, in bytes (10 MB, as the original).
pub const MAX_FILES_BYTES: usize = 10_000_000;
/// The allowed `timeout` range in seconds, and its default.
pub const TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 5..=3600;
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
/// Longest accepted upload path; the Linux limit.
const MAX_PATH_BYTES: usize = 4096;
const MAX_NAME_BYTES: usize = 255;

/// The body exactly as a client sends it. Unknown fields are refused so a
/// typo (`max_turn`) fails loudly instead of being silently ignored.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub prompt: String,
    #[serde(default)]
    pub anthropic_api_key: Option<Secret>,
    #[serde(default)]
    pub openrouter_api_key: Option<Secret>,
    #[serde(default)]
    pub e2b_api_key: Option<Secret>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default, deserialize_with = "whole_number")]
    pub max_turns: Option<u32>,
    #[serde(default, deserialize_with = "whole_number")]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub files: Option<BTreeMap<String, String>>,
    /// Globs (relative to /home/user) of files to send back after the run.
    #[serde(default)]
    pub outputs: Option<Vec<String>>,
}

/// Keys that came with the request (or, for the CLI, from its flags).
#[derive(Debug, Clone, Default)]
pub struct RequestKeys {
    pub anthropic: Option<Secret>,
    pub openrouter: Option<Secret>,
    pub e2b: Option<Secret>,
}

/// A validated request.
#[derive(Debug, Clone)]
pub struct Query {
    pub prompt: String,
    pub keys: RequestKeys,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub timeout: Duration,
    pub files: Vec<UserFile>,
    /// Output globs; `None` falls back to sandstorm.json's.
    pub outputs: Option<Vec<String>>,
}

/// One uploaded file, its path normalized and relative to `/home/user`.
#[derive(Clone)]
pub struct UserFile {
    pub path: String,
    pub content: String,
}

impl std::fmt::Debug for UserFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserFile")
            .field("path", &self.path)
            .field("bytes", &self.content.len())
            .finish()
    }
}

impl Query {
    /// Parses and validates a JSON body.
    pub fn from_json(body: &[u8]) -> Result<Query, ApiError> {
        // serde's derived struct visitor also takes a JSON array of fields
        // in order; the API only speaks objects.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::BadRequest {
                message: "request body must be a JSON object".into(),
            });
        }
        let de = &mut serde_json::Deserializer::from_slice(body);
        let raw: QueryRequest = serde_path_to_error::deserialize(de).map_err(json_error)?;
        raw.validate()
    }
}

impl QueryRequest {
    pub fn validate(self) -> Result<Query, ApiError> {
        let chars = self.prompt.chars().count();
        if chars == 0 {
            return Err(ApiError::invalid("prompt", "prompt must not be empty"));
        }
        if chars > MAX_PROMPT_CHARS {
            return Err(ApiError::TooLarge {
                field: Some("prompt".into()),
                message: format!("prompt has {chars} characters; the limit is {MAX_PROMPT_CHARS}"),
            });
        }
        if let Some(model) = &self.model
            && model.trim().is_empty()
        {
            return Err(ApiError::invalid(
                "model",
                "model must not be empty when given",
            ));
        }
        if self.max_turns == Some(0) {
            return Err(ApiError::invalid(
                "max_turns",
                "max_turns must be at least 1",
            ));
        }
        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if !TIMEOUT_RANGE.contains(&timeout) {
            return Err(ApiError::invalid(
                "timeout",
                format!(
                    "timeout must be between {} and {} seconds, got {timeout}",
                    TIMEOUT_RANGE.start(),
                    TIMEOUT_RANGE.end()
                ),
            ));
        }
        let files = validate_files(self.files.unwrap_or_default())?;
        if let Some(outputs) = &self.outputs {
            crate::outputs::validate_patterns(outputs)
                .map_err(|why| ApiError::invalid("outputs", why))?;
        }
        Ok(Query {
            prompt: self.prompt,
            keys: RequestKeys {
                anthropic: non_empty(self.anthropic_api_key),
                openrouter: non_empty(self.openrouter_api_key),
                e2b: non_empty(self.e2b_api_key),
            },
            model: self.model,
            max_turns: self.max_turns,
            timeout: Duration::from_secs(timeout),
            files,
            outputs: self.outputs,
        })
    }
}

/// A whole number, also when written `14.0`: JSON Schema's `integer` (and
/// the original's pydantic) accept that, so clients that send every number
/// as a float keep working. `14.5` is still refused.
pub(crate) fn whole_number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
            .map(|f| f as u64)
    });
    match whole {
        Some(n) => T::try_from(n)
            .map(Some)
            .map_err(|_| D::Error::custom(format!("{number} is too large"))),
        None => Err(D::Error::custom(format!(
            "expected a whole number of at least 0, got {number}"
        ))),
    }
}

/// An empty key means "not given", as in the original.
fn non_empty(key: Option<Secret>) -> Option<Secret> {
    key.filter(|k| !k.is_empty())
}

fn validate_files(files: BTreeMap<String, String>) -> Result<Vec<UserFile>, ApiError> {
    if files.len() > MAX_FILES {
        return Err(ApiError::TooLarge {
            field: Some("files".into()),
            message: format!("too many files: {} (the limit is {MAX_FILES})", files.len()),
        });
    }
    let total: usize = files.values().map(String::len).sum();
    if total > MAX_FILES_BYTES {
        return Err(ApiError::TooLarge {
            field: Some("files".into()),
            message: format!("files total {total} bytes; the limit is {MAX_FILES_BYTES} bytes"),
        });
    }
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::with_capacity(files.len());
    for (raw, content) in files {
        let path =
            normalize_path(&raw).map_err(|why| ApiError::invalid(format!("files.{raw}"), why))?;
        if let Some(first) = seen.insert(path.clone(), raw.clone()) {
            return Err(ApiError::invalid(
                format!("files.{raw}"),
                format!("files {first:?} and {raw:?} name the same path {path:?}"),
            ));
        }
        out.push(UserFile { path, content });
    }
    Ok(out)
}

/// Normalizes an upload path relative to `/home/user`: folds `.` and empty
/// components, resolves `..` inside the path, and refuses anything that is
/// absolute, escapes upward, is empty, or holds a NUL byte.
pub fn normalize_path(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err("file path must not be empty".into());
    }
    if raw.contains('\0') {
        return Err("file path must not contain a NUL byte".into());
    }
    if raw.starts_with('/') {
        return Err(format!(
            "file path {raw:?} is absolute; give a path relative to /home/user"
        ));
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(format!("file path is longer than {MAX_PATH_BYTES} bytes"));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("file path {raw:?} escapes /home/user with '..'"));
                }
            }
            name if name.len() > MAX_NAME_BYTES => {
                return Err(format!(
                    "a name in file path {raw:?} is longer than {MAX_NAME_BYTES} bytes"
                ));
            }
            name => parts.push(name),
        }
    }
    if parts.is_empty() {
        return Err(format!("file path {raw:?} names no file"));
    }
    Ok(parts.join("/"))
}

/// Turns a serde error into one that names the field at fault.
fn json_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let message = inner.to_string();
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::BadRequest {
            message: format!("request body is not valid JSON: {message}"),
        };
    }
    // serde reports unknown and missing fields at the parent's path; the
    // field's own name is the first `quoted` word of its message.
    let named = message
        .split('`')
        .nth(1)
        .filter(|_| message.starts_with("unknown field") || message.starts_with("missing field"));
    let field = match named {
        Some(name) if path == "." => name.to_owned(),
        // Unknown fields are reported at their own path already.
        Some(name) if path == name || path.ends_with(&format!(".{name}")) => path,
        Some(name) => format!("{path}.{name}"),
        None if path == "." => {
            return ApiError::BadRequest {
                message: format!("request body must be a JSON object: {message}"),
            };
        }
        None => path,
    };
    ApiError::invalid(
        field.clone(),
        format!("{field}: {}", strip_position(&message)),
    )
}

/// serde_json appends " at line L column C"; for a one-line body it only adds
/// noise to a message that already names the field.
fn strip_position(message: &str) -> &str {
    message
        .rfind(" at line ")
        .map_or(message, |at| &message[..at])
}

#[cfg(test)]
mod tests;
