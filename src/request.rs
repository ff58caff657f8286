//! The `POST /query` body and its validation.
//!
//! Parsing and every check happen here, before any sandbox exists, so a bad
//! request costs nothing and its error names the field at fault.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};

use crate::error::ApiError;
use crate::json_field;
use crate::sandbox::provider::Credential;
use crate::secret::Secret;

/// The longest prompt, in characters (as the original).
pub(crate) const MAX_PROMPT_CHARS: usize = 1_000_000;
/// How many files one request may upload.
pub const MAX_FILES: usize = 20;
/// The total size of uploaded file contents, in bytes (10 MB, as the original).
pub const MAX_FILES_BYTES: usize = 10_000_000;
/// The allowed `timeout` range in seconds, and its default.
pub(crate) const TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 5..=3600;
pub(crate) const DEFAULT_TIMEOUT_SECS: u64 = 300;
/// The longest `keep_alive`, in seconds: a day, E2B's longest sandbox
/// lifetime. A run's own lifetime (`SANDSTORM_RUN_MAX_LIFETIME`) bounds it
/// further.
pub(crate) const MAX_KEEP_ALIVE_SECS: u64 = 86_400;
/// Longest accepted upload path; the Linux limit.
const MAX_PATH_BYTES: usize = 4096;
const MAX_NAME_BYTES: usize = 255;

/// The body exactly as a client sends it, less the sandbox providers'
/// credential fields (each provider declares its own; see
/// [`Query::from_json`]). Unknown fields are refused so a typo (`max_turn`)
/// fails loudly instead of being silently ignored.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryRequest {
    /// The task.
    pub prompt: String,
    /// The Anthropic key, overriding the environment's.
    #[serde(default)]
    pub anthropic_api_key: Option<Secret>,
    /// The OpenRouter key, overriding the environment's.
    #[serde(default)]
    pub openrouter_api_key: Option<Secret>,
    /// The sandbox providers' credentials by field name; filled from the
    /// declared credential fields, never by serde.
    #[serde(skip)]
    pub sandbox_keys: BTreeMap<String, Secret>,
    /// The model, overriding sandstorm.json's.
    #[serde(default)]
    pub model: Option<String>,
    /// Maximum conversation turns, overriding sandstorm.json's.
    #[serde(default, deserialize_with = "whole_number")]
    pub max_turns: Option<u32>,
    /// Seconds the run may take.
    #[serde(default, deserialize_with = "whole_number")]
    pub timeout: Option<u64>,
    /// Text files to upload, by path relative to the sandbox's home.
    #[serde(default)]
    pub files: Option<BTreeMap<String, String>>,
    /// Globs (relative to /home/user) of files to send back after the run.
    #[serde(default)]
    pub outputs: Option<Vec<String>>,
    /// Whether the run goes on when its client goes away.
    #[serde(default)]
    pub detach: Option<bool>,
    /// Seconds the sandbox is kept after a turn for a follow-up.
    #[serde(default, deserialize_with = "whole_number")]
    pub keep_alive: Option<u64>,
    /// The run this request is a follow-up turn of (0.9.2's field).
    #[serde(default)]
    pub resume: Option<String>,
    /// With `resume`: a new run whose SDK session branches from that run's.
    #[serde(default)]
    pub fork_session: Option<bool>,
}

/// Redacted: keys show as `***` and sandbox keys by field name only; files
/// by path and size, as [`UserFile`] does.
impl std::fmt::Debug for QueryRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |key: &Option<Secret>| key.as_ref().map(|_| "***");
        let files = self.files.as_ref().map(|files| {
            files
                .iter()
                .map(|(path, content)| (path.as_str(), content.len()))
                .collect::<BTreeMap<_, _>>()
        });
        f.debug_struct("QueryRequest")
            .field("prompt", &self.prompt)
            .field("anthropic_api_key", &redacted(&self.anthropic_api_key))
            .field("openrouter_api_key", &redacted(&self.openrouter_api_key))
            .field(
                "sandbox_keys",
                &self.sandbox_keys.keys().collect::<Vec<_>>(),
            )
            .field("model", &self.model)
            .field("max_turns", &self.max_turns)
            .field("timeout", &self.timeout)
            .field("files", &files)
            .field("outputs", &self.outputs)
            .field("detach", &self.detach)
            .field("keep_alive", &self.keep_alive)
            .field("resume", &self.resume.as_ref().map(|_| "***"))
            .field("fork_session", &self.fork_session)
            .finish()
    }
}

/// Keys that came with the request (or, for the CLI, from its flags).
#[derive(Debug, Clone, Default)]
pub struct RequestKeys {
    /// `anthropic_api_key`.
    pub anthropic: Option<Secret>,
    /// `openrouter_api_key`.
    pub openrouter: Option<Secret>,
    /// Sandbox provider credentials, by their declared request field.
    sandbox: BTreeMap<String, Secret>,
}

impl RequestKeys {
    /// The sandbox credential sent in `field`, if any.
    pub fn sandbox(&self, field: &str) -> Option<&Secret> {
        self.sandbox.get(field)
    }

    /// Sets the sandbox credential of `field`; an empty key counts as not
    /// given.
    pub(crate) fn set_sandbox(&mut self, field: &str, key: Secret) {
        if !key.is_empty() {
            self.sandbox.insert(field.to_owned(), key);
        }
    }

    /// Every key the request carries.
    pub fn all(&self) -> impl Iterator<Item = &Secret> {
        [&self.anthropic, &self.openrouter]
            .into_iter()
            .flatten()
            .chain(self.sandbox.values())
    }
}

/// A validated request.
#[derive(Debug, Clone)]
pub struct Query {
    /// The task, 1 to [`MAX_PROMPT_CHARS`] characters.
    pub prompt: String,
    /// The keys it brought.
    pub keys: RequestKeys,
    /// The model, overriding sandstorm.json's.
    pub model: Option<String>,
    /// Maximum turns, overriding sandstorm.json's.
    pub max_turns: Option<u32>,
    /// How long the run may take.
    pub timeout: Duration,
    /// The files to upload.
    pub files: Vec<UserFile>,
    /// Output globs; `None` falls back to sandstorm.json's.
    pub outputs: Option<Vec<String>>,
    /// Detach; `None` falls back to sandstorm.json's, then to no.
    pub detach: Option<bool>,
    /// Keep the sandbox after a turn; `None` falls back to sandstorm.json's,
    /// then to 0 (not kept).
    pub keep_alive: Option<Duration>,
    /// The run to continue (or, with `fork_session`, to branch from).
    pub resume: Option<String>,
    /// Branch from `resume`'s session in a new run instead of continuing it.
    pub fork_session: bool,
}

/// One uploaded file, its path normalized and relative to `/home/user`.
#[derive(Clone)]
pub struct UserFile {
    /// The normalized path, relative to the sandbox's home.
    pub path: String,
    /// The text.
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

/// How validation messages name what is at fault: the body's fields for the
/// API, the command line's flags for `ds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Naming {
    /// `timeout`, `max_turns`, `outputs`: the JSON body's field names.
    Fields,
    /// `--timeout`, `--max-turns`, `--outputs`: `ds`'s flags.
    Flags,
}

impl Naming {
    fn name(self, field: &'static str) -> &'static str {
        match (self, field) {
            (Naming::Fields, field) => field,
            (Naming::Flags, "timeout") => "--timeout",
            (Naming::Flags, "max_turns") => "--max-turns",
            (Naming::Flags, "model") => "--model",
            (Naming::Flags, "outputs") => "--outputs",
            (Naming::Flags, "files") => "-f",
            (Naming::Flags, "keep_alive") => "--keep-alive",
            (Naming::Flags, field) => field,
        }
    }
}

impl Query {
    /// Parses and validates a JSON body. `credentials` are the sandbox
    /// providers' declared credential fields, accepted besides
    /// [`QueryRequest`]'s own.
    pub fn from_json(body: &[u8], credentials: &[Credential]) -> Result<Query, ApiError> {
        // serde's derived struct visitor also takes a JSON array of fields
        // in order; the API only speaks objects.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::BadRequest {
                message: "request body must be a JSON object".into(),
            });
        }
        let de = &mut serde_json::Deserializer::from_slice(body);
        let Fields(mut fields) =
            serde_path_to_error::deserialize(&mut *de).map_err(|e| json_error(&e))?;
        // A second document, or anything else after the object, is a client
        // bug that would otherwise be ignored.
        de.end().map_err(|e| ApiError::Invalid {
            field: None,
            message: format!(
                "request body has data after the JSON object ({})",
                json_field::strip_position(&e.to_string())
            ),
        })?;
        let mut sandbox_keys = BTreeMap::new();
        for credential in credentials {
            if let Some(value) = fields.remove(credential.field) {
                let key = Option::<Secret>::deserialize(value).map_err(|e| {
                    ApiError::invalid(credential.field, format!("{}: {e}", credential.field))
                })?;
                if let Some(key) = key {
                    sandbox_keys.insert(credential.field.to_owned(), key);
                }
            }
        }
        let value = serde_json::Value::Object(fields);
        let mut raw: QueryRequest =
            serde_path_to_error::deserialize(value).map_err(|e| json_error(&e))?;
        raw.sandbox_keys = sandbox_keys;
        raw.validate(Naming::Fields)
    }
}

/// A JSON object read field by field, refusing a key given twice at any
/// depth: a later `prompt`, or a second `files` entry for the same path,
/// must not silently replace the first.
struct Fields(serde_json::Map<String, serde_json::Value>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_map(StrictVisitor)? {
            serde_json::Value::Object(fields) => Ok(Fields(fields)),
            _ => Err(de::Error::custom("expected a JSON object")),
        }
    }
}

/// Any JSON value, with no key given twice in any of its objects.
struct StrictValue(serde_json::Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

/// Builds a [`serde_json::Value`] like serde_json's own visitor, except that
/// an object's duplicate key is an error naming it.
struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(items.into())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = serde_json::Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let StrictValue(value) = map.next_value()?;
            if fields.contains_key(&name) {
                return Err(de::Error::custom(format_args!("duplicate field `{name}`")));
            }
            fields.insert(name, value);
        }
        Ok(fields.into())
    }
}

impl QueryRequest {
    /// Checks every limit and normalizes the files; messages name fields as
    /// `naming` says.
    pub(crate) fn validate(self, naming: Naming) -> Result<Query, ApiError> {
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
                format!("{} must not be empty when given", naming.name("model")),
            ));
        }
        if self.max_turns == Some(0) {
            return Err(ApiError::invalid(
                "max_turns",
                format!("{} must be at least 1", naming.name("max_turns")),
            ));
        }
        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if !TIMEOUT_RANGE.contains(&timeout) {
            return Err(ApiError::invalid(
                "timeout",
                format!(
                    "{} must be between {} and {} seconds, got {timeout}",
                    naming.name("timeout"),
                    TIMEOUT_RANGE.start(),
                    TIMEOUT_RANGE.end()
                ),
            ));
        }
        if let Some(keep_alive) = self.keep_alive
            && keep_alive > MAX_KEEP_ALIVE_SECS
        {
            return Err(ApiError::invalid(
                "keep_alive",
                format!(
                    "{} must be between 0 and {MAX_KEEP_ALIVE_SECS} seconds, got {keep_alive}",
                    naming.name("keep_alive")
                ),
            ));
        }
        if self.keep_alive.is_some_and(|k| k > 0) && self.detach == Some(false) {
            return Err(ApiError::invalid(
                "keep_alive",
                format!(
                    "{} keeps a run for follow-ups, which only a detached run has; \
                     leave out detach or set it to true",
                    naming.name("keep_alive")
                ),
            ));
        }
        if let Some(resume) = &self.resume
            && resume.trim().is_empty()
        {
            return Err(ApiError::invalid(
                "resume",
                format!("{} must be a run id when given", naming.name("resume")),
            ));
        }
        if self.fork_session == Some(true) && self.resume.is_none() {
            return Err(ApiError::invalid(
                "fork_session",
                format!(
                    "{} branches from the run given as {}, and none was",
                    naming.name("fork_session"),
                    naming.name("resume")
                ),
            ));
        }
        let files = validate_files(self.files.unwrap_or_default())?;
        if let Some(outputs) = &self.outputs {
            crate::outputs::validate_patterns(outputs).map_err(|why| {
                let message = match naming {
                    Naming::Fields => why,
                    Naming::Flags => format!("{}: {why}", naming.name("outputs")),
                };
                ApiError::invalid("outputs", message)
            })?;
        }
        let mut keys = RequestKeys {
            anthropic: non_empty(self.anthropic_api_key),
            openrouter: non_empty(self.openrouter_api_key),
            sandbox: BTreeMap::new(),
        };
        for (field, key) in self.sandbox_keys {
            keys.set_sandbox(&field, key);
        }
        Ok(Query {
            prompt: self.prompt,
            keys,
            model: self.model,
            max_turns: self.max_turns,
            timeout: Duration::from_secs(timeout),
            files,
            outputs: self.outputs,
            detach: self.detach,
            keep_alive: self.keep_alive.map(Duration::from_secs),
            resume: self.resume,
            fork_session: self.fork_session.unwrap_or(false),
        })
    }
}

/// A whole number, also when written `14.0`: JSON Schema's `integer` (and
/// the original's pydantic) accept that, so clients that send every number
/// as a float keep working. `14.5` is still refused.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "the float is checked whole and within 0..=u64::MAX just before the cast"
)]
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
    refuse_clashes(&seen)?;
    Ok(out)
}

/// Refuses a file that another file's path runs through (`a` next to
/// `a/b`): one of the two uploads would fail inside the sandbox, after the
/// run had started. `paths` maps each normalized path to the one the client
/// sent.
fn refuse_clashes(paths: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for (path, raw) in paths {
        let mut folder = String::new();
        for part in path.split('/') {
            if let Some(file) = paths.get(&folder).filter(|_| !folder.is_empty()) {
                return Err(ApiError::invalid(
                    format!("files.{raw}"),
                    format!(
                        "files {file:?} and {raw:?} clash: {folder:?} cannot be both a file \
                         and a folder"
                    ),
                ));
            }
            if !folder.is_empty() {
                folder.push('/');
            }
            folder.push_str(part);
        }
    }
    Ok(())
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
fn json_error(err: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = err.inner();
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::BadRequest {
            message: format!("request body is not valid JSON: {inner}"),
        };
    }
    let message = inner.to_string();
    match json_field::field_at_fault(err.path(), &message) {
        Some(field) => ApiError::invalid(
            field.clone(),
            format!("{field}: {}", json_field::strip_position(&message)),
        ),
        None => ApiError::BadRequest {
            message: format!("request body must be a JSON object: {message}"),
        },
    }
}

#[cfg(test)]
mod tests;
