//! The `POST /query` body and its validation.
//!
//! Parsing and every check happen here, before any sandbox exists, so a bad
//! request costs nothing and its error names the field at fault.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};

use crate::config::{AgentDefinition, OutputFormat, skills};
use crate::error::ApiError;
use crate::json_field;
use crate::outputs::Outputs;
use crate::sandbox::provider::Credential;
use crate::secret::Secret;
use crate::spend::Caps;

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
/// The longest run label (`team_id`, `user_id`, `channel_id`), in bytes.
pub(crate) const MAX_LABEL_BYTES: usize = 128;
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
    /// Files to send back after the run: `"auto"`, or globs relative to
    /// /home/user.
    #[serde(default)]
    pub outputs: Option<Outputs>,
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
    /// Structured output, over sandstorm.json's; `{}` turns it off.
    #[serde(default)]
    pub output_format: Option<OutputFormatChoice>,
    /// The only tools the model sees, over sandstorm.json's.
    #[serde(default)]
    pub allowed_tools: Option<Vec<String>>,
    /// The MCP servers of sandstorm.json this run gets, by name.
    #[serde(default)]
    pub allowed_mcp_servers: Option<Vec<String>>,
    /// The skills (sandstorm.json's and `extra_skills`) this run gets.
    #[serde(default)]
    pub allowed_skills: Option<Vec<String>>,
    /// The subagents (sandstorm.json's and `extra_agents`) this run gets.
    #[serde(default)]
    pub allowed_agents: Option<Vec<String>>,
    /// Subagents of this run only, beside sandstorm.json's.
    #[serde(default)]
    pub extra_agents: Option<BTreeMap<String, AgentDefinition>>,
    /// Skills of this run only: name to `SKILL.md` text.
    #[serde(default)]
    pub extra_skills: Option<BTreeMap<String, String>>,
    /// The most the run may spend, in US dollars, as the SDK counts it.
    #[serde(default)]
    pub max_budget_usd: Option<f64>,
    /// The most the run's model calls may cost, in US dollars, as the
    /// model endpoint counts them: a hard cap the agent cannot get around.
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    /// The most tokens the run's model calls may use, input, output and
    /// cache together; enforced like `max_cost_usd`.
    #[serde(default, deserialize_with = "whole_number")]
    pub max_tokens: Option<u64>,
    /// A label recorded with the run (Python Sandstorm's team scope).
    #[serde(default)]
    pub team_id: Option<String>,
    /// A label recorded with the run (Python Sandstorm's user scope).
    #[serde(default)]
    pub user_id: Option<String>,
    /// A label recorded with the run (Python Sandstorm's Slack channel).
    #[serde(default)]
    pub channel_id: Option<String>,
    /// Python Sandstorm's memory; refused with why.
    #[serde(default)]
    pub remember: Option<serde_json::Value>,
    /// Where to tell that the run ended (a completion webhook), over
    /// sandstorm.json's.
    #[serde(default)]
    pub webhook_url: Option<String>,
}

/// `output_format` in a request: a format, or `{}` to turn off
/// sandstorm.json's (as Python Sandstorm 0.9.2 reads an empty object).
#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormatChoice {
    /// No structured output, whatever sandstorm.json says.
    Off,
    /// This format.
    Format(OutputFormat),
}

impl<'de> Deserialize<'de> for OutputFormatChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        if value.as_object().is_some_and(serde_json::Map::is_empty) {
            return Ok(OutputFormatChoice::Off);
        }
        OutputFormat::deserialize(value)
            .map(OutputFormatChoice::Format)
            .map_err(de::Error::custom)
    }
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
            .field("max_cost_usd", &self.max_cost_usd)
            .field("max_tokens", &self.max_tokens)
            .field("files", &files)
            .field("outputs", &self.outputs)
            .field("detach", &self.detach)
            .field("keep_alive", &self.keep_alive)
            .field("resume", &self.resume.as_ref().map(|_| "***"))
            .field("fork_session", &self.fork_session)
            .field("output_format", &self.output_format.is_some())
            .field("allowed_tools", &self.allowed_tools)
            .field("allowed_mcp_servers", &self.allowed_mcp_servers)
            .field("allowed_skills", &self.allowed_skills)
            .field("allowed_agents", &self.allowed_agents)
            .field(
                "extra_agents",
                &self
                    .extra_agents
                    .as_ref()
                    .map(|a| a.keys().collect::<Vec<_>>()),
            )
            .field(
                "extra_skills",
                &self
                    .extra_skills
                    .as_ref()
                    .map(|s| s.keys().collect::<Vec<_>>()),
            )
            .field("max_budget_usd", &self.max_budget_usd)
            .field("team_id", &self.team_id)
            .field("user_id", &self.user_id)
            .field("channel_id", &self.channel_id)
            .field("remember", &self.remember.is_some())
            // It may carry a token in its path or query.
            .field("webhook_url", &self.webhook_url.is_some())
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
    /// How long the run may take; `None` falls back to sandstorm.json's,
    /// then to [`DEFAULT_TIMEOUT_SECS`].
    pub timeout: Option<Duration>,
    /// The files to upload.
    pub files: Vec<UserFile>,
    /// Output files; `None` falls back to sandstorm.json's.
    pub outputs: Option<Outputs>,
    /// Detach; `None` falls back to sandstorm.json's, then to no.
    pub detach: Option<bool>,
    /// Keep the sandbox after a turn; `None` falls back to sandstorm.json's,
    /// then to 0 (not kept).
    pub keep_alive: Option<Duration>,
    /// The run to continue (or, with `fork_session`, to branch from).
    pub resume: Option<String>,
    /// Branch from `resume`'s session in a new run instead of continuing it.
    pub fork_session: bool,
    /// What the request says about the agent, over sandstorm.json.
    pub agent: AgentChoices,
    /// The request's caps on model spend; sandstorm.json's may be stricter.
    pub caps: Caps,
    /// Labels recorded with the run, by name (`team_id`, ...).
    pub labels: BTreeMap<&'static str, String>,
    /// Where to tell that the run ended, over sandstorm.json's: an http or
    /// https URL, held as a secret because many receivers' URLs carry
    /// their token.
    pub webhook_url: Option<Secret>,
}

/// What a request narrows or adds to sandstorm.json's agent. Names in the
/// `allowed_*` lists are checked against the config when the run is
/// planned; everything else here is checked already.
#[derive(Debug, Clone, Default)]
pub struct AgentChoices {
    /// Structured output, over sandstorm.json's.
    pub output_format: Option<OutputFormatChoice>,
    /// The only tools the model sees, over sandstorm.json's.
    pub allowed_tools: Option<Vec<String>>,
    /// sandstorm.json's MCP servers to keep, by name.
    pub allowed_mcp_servers: Option<Vec<String>>,
    /// Skills to keep, by name.
    pub allowed_skills: Option<Vec<String>>,
    /// Subagents to keep, by name.
    pub allowed_agents: Option<Vec<String>>,
    /// The request's own subagents.
    pub extra_agents: BTreeMap<String, AgentDefinition>,
    /// The request's own skills: name to `SKILL.md` text.
    pub extra_skills: BTreeMap<String, String>,
    /// The SDK's spending cap for the run, in US dollars.
    pub max_budget_usd: Option<f64>,
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
            (Naming::Flags, "max_cost_usd") => "--max-cost-usd",
            (Naming::Flags, "max_tokens") => "--max-tokens",
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
        let caps = Caps {
            max_cost_usd: validate_cost_cap(naming.name("max_cost_usd"), self.max_cost_usd)?,
            max_tokens: match self.max_tokens {
                Some(0) => {
                    return Err(ApiError::invalid(
                        "max_tokens",
                        format!("{} must be at least 1", naming.name("max_tokens")),
                    ));
                }
                tokens => tokens,
            },
        };
        if self.remember.is_some() {
            return Err(ApiError::invalid(
                "remember",
                "remember (Python Sandstorm's memory) is not supported: text remembered from \
                 one run and put into the prompts of later ones is a standing prompt \
                 injection, and there is no store to keep it per tenant yet",
            ));
        }
        let timeout = self.timeout;
        if let Some(timeout) = timeout
            && !TIMEOUT_RANGE.contains(&timeout)
        {
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
        let labels = validate_labels([
            ("team_id", self.team_id),
            ("user_id", self.user_id),
            ("channel_id", self.channel_id),
        ])?;
        let agent = AgentChoices {
            output_format: self.output_format,
            allowed_tools: validate_names("allowed_tools", self.allowed_tools, |_| true)?,
            allowed_mcp_servers: validate_names(
                "allowed_mcp_servers",
                self.allowed_mcp_servers,
                |_| true,
            )?,
            allowed_skills: validate_names(
                "allowed_skills",
                self.allowed_skills,
                skills::valid_name,
            )?,
            allowed_agents: validate_names("allowed_agents", self.allowed_agents, |_| true)?,
            extra_agents: validate_extra_agents(self.extra_agents.unwrap_or_default())?,
            extra_skills: validate_extra_skills(self.extra_skills.unwrap_or_default())?,
            max_budget_usd: validate_budget(self.max_budget_usd)?,
        };
        let extra_skill_bytes: usize = agent.extra_skills.values().map(String::len).sum();
        let files_bytes: usize = self.files.iter().flatten().map(|(_, c)| c.len()).sum();
        if extra_skill_bytes + files_bytes > MAX_FILES_BYTES && extra_skill_bytes > 0 {
            return Err(ApiError::TooLarge {
                field: Some("extra_skills".into()),
                message: format!(
                    "files and extra_skills total {} bytes; the limit is {MAX_FILES_BYTES} bytes",
                    extra_skill_bytes + files_bytes
                ),
            });
        }
        let files = validate_files(self.files.unwrap_or_default())?;
        let webhook_url = match self.webhook_url {
            None => None,
            Some(url) => Some(validate_webhook_url(&url).map_err(|why| {
                ApiError::invalid(
                    "webhook_url",
                    format!("{} {why}", naming.name("webhook_url")),
                )
            })?),
        };
        if let Some(outputs) = &self.outputs {
            outputs.validate().map_err(|why| {
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
            timeout: timeout.map(Duration::from_secs),
            files,
            outputs: self.outputs,
            detach: self.detach,
            keep_alive: self.keep_alive.map(Duration::from_secs),
            resume: self.resume,
            fork_session: self.fork_session.unwrap_or(false),
            agent,
            caps,
            labels,
            webhook_url,
        })
    }
}

/// The longest `webhook_url`, in bytes.
pub(crate) const MAX_WEBHOOK_URL_BYTES: usize = 2048;

/// Checks a `webhook_url`: an absolute http or https URL with a host, at
/// most [`MAX_WEBHOOK_URL_BYTES`]. The reason never repeats the URL,
/// which may hold a token.
fn validate_webhook_url(url: &str) -> Result<Secret, String> {
    if url.len() > MAX_WEBHOOK_URL_BYTES {
        return Err(format!(
            "is {} bytes long; the limit is {MAX_WEBHOOK_URL_BYTES}",
            url.len()
        ));
    }
    crate::config::triggers::check_webhook_url(url)?;
    Ok(Secret::new(url))
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

/// A list of names: each non-empty, and (`valid`) of the right shape.
fn validate_names(
    field: &'static str,
    names: Option<Vec<String>>,
    valid: impl Fn(&str) -> bool,
) -> Result<Option<Vec<String>>, ApiError> {
    for (index, name) in names.iter().flatten().enumerate() {
        if name.trim().is_empty() || !valid(name) {
            return Err(ApiError::invalid(
                format!("{field}[{index}]"),
                format!("{field}[{index}]: {name:?} is not a valid name"),
            ));
        }
    }
    Ok(names)
}

/// The name of an inline agent or skill (`kind`) in `field`: a folder name
/// in the sandbox for a skill, and the same rule for both.
fn inline_name(field: &str, kind: &str, name: &str) -> Result<(), ApiError> {
    if skills::valid_name(name) {
        return Ok(());
    }
    Err(ApiError::invalid(
        format!("{field}.{name}"),
        format!(
            "{field}: {name:?} is not a valid {kind} name (1 to 64 letters, digits, '-' or '_')"
        ),
    ))
}

/// Inline subagents: named like sandstorm.json's, each with a description
/// and a prompt (serde checked their shape).
fn validate_extra_agents(
    agents: BTreeMap<String, AgentDefinition>,
) -> Result<BTreeMap<String, AgentDefinition>, ApiError> {
    for (name, agent) in &agents {
        inline_name("extra_agents", "agent", name)?;
        if agent.description.trim().is_empty() || agent.prompt.trim().is_empty() {
            return Err(ApiError::invalid(
                format!("extra_agents.{name}"),
                format!("extra_agents.{name}: description and prompt must not be empty"),
            ));
        }
        if agent.max_turns == Some(0) {
            return Err(ApiError::invalid(
                format!("extra_agents.{name}.maxTurns"),
                format!("extra_agents.{name}.maxTurns must be at least 1"),
            ));
        }
    }
    Ok(agents)
}

/// Inline skills: each a valid folder name with a non-empty `SKILL.md`.
fn validate_extra_skills(
    skills: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ApiError> {
    for (name, text) in &skills {
        inline_name("extra_skills", "skill", name)?;
        if text.trim().is_empty() {
            return Err(ApiError::invalid(
                format!("extra_skills.{name}"),
                format!("extra_skills.{name}: the SKILL.md text must not be empty"),
            ));
        }
    }
    Ok(skills)
}

/// A spending cap: a finite amount above zero.
fn validate_budget(budget: Option<f64>) -> Result<Option<f64>, ApiError> {
    match budget {
        Some(usd) if !usd.is_finite() || usd <= 0.0 => Err(ApiError::invalid(
            "max_budget_usd",
            format!("max_budget_usd must be more than 0 US dollars, got {usd}"),
        )),
        budget => Ok(budget),
    }
}

/// A cost cap (`max_cost_usd`, or its flag): a finite amount above zero.
pub(crate) fn validate_cost_cap(name: &str, usd: Option<f64>) -> Result<Option<f64>, ApiError> {
    match usd {
        Some(usd) if !usd.is_finite() || usd <= 0.0 => Err(ApiError::invalid(
            "max_cost_usd",
            format!("{name} must be more than 0 US dollars, got {usd}"),
        )),
        usd => Ok(usd),
    }
}

/// Labels: short, printable, and not empty when given; they end up in
/// sandbox metadata and run listings.
fn validate_labels(
    labels: [(&'static str, Option<String>); 3],
) -> Result<BTreeMap<&'static str, String>, ApiError> {
    let mut valid = BTreeMap::new();
    for (field, value) in labels {
        let Some(value) = value else { continue };
        if value.is_empty() || value.len() > MAX_LABEL_BYTES || value.chars().any(char::is_control)
        {
            return Err(ApiError::invalid(
                field,
                format!(
                    "{field} must be 1 to {MAX_LABEL_BYTES} bytes of printable text, got {} bytes",
                    value.len()
                ),
            ));
        }
        valid.insert(field, value);
    }
    Ok(valid)
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
