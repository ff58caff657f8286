//! `sandstorm.json`: the agent's standing configuration.
//!
//! Read once when a door starts. Unlike the Python original, which logged a
//! warning and dropped a field it could not read, an invalid file is an
//! error that names the field and the type it should have: a config that is
//! silently half-applied (a missing system prompt, a dropped MCP server) is
//! worse than one that refuses to load.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub(crate) mod placeholders;
pub(crate) mod prompt;
pub(crate) mod sandbox;
pub(crate) mod skills;
pub(crate) mod triggers;

pub use prompt::{PresetPrompt, SystemPrompt};
pub use sandbox::{LimitsConfig, NetworkConfig};
pub use skills::{SkillFiles, Skills};

/// The file name looked up in the working directory.
pub(crate) const FILE_NAME: &str = "sandstorm.json";

/// sandstorm.json: the agent's defaults for every run served from this folder.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SandstormConfig {
    /// The agent's system prompt: a string in place of the SDK's default,
    /// or the SDK's Claude Code preset with text appended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<SystemPrompt>,
    /// Text added to the system prompt (or, alone, the whole of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt_append: Option<String>,
    /// The model, unless a request names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Maximum conversation turns, unless a request gives them.
    #[serde(
        default,
        deserialize_with = "crate::request::whole_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_turns: Option<u32>,
    /// Seconds a run may take, unless a request says (5 to 3600).
    #[serde(
        default,
        deserialize_with = "crate::request::whole_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<u64>,
    /// The most a run's model calls may cost, in US dollars; a request may
    /// lower it, never raise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    /// The most tokens a run's model calls may use; a request may lower
    /// it, never raise it.
    #[serde(
        default,
        deserialize_with = "crate::request::whole_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_tokens: Option<u64>,
    /// The only tools the model sees, unless a request names its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_tools: Option<Vec<String>>,
    /// Structured output the agent's answer must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_format: Option<OutputFormat>,
    /// Subagents by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<BTreeMap<String, AgentDefinition>>,
    /// MCP servers by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_servers: Option<BTreeMap<String, McpServer>>,
    /// Default output globs for requests that give none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<crate::outputs::Outputs>,
    /// Caps on each run's sandbox, over the server's `SANDSTORM_SANDBOX_*`
    /// settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsConfig>,
    /// The domains each run's sandbox may reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    /// The folder of skills, relative to sandstorm.json's folder; by
    /// default `.claude/skills` there, when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skills_dir: Option<String>,
    /// The sandbox's image already holds skills: the SDK looks for them
    /// even when no skill is uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_skills: Option<bool>,
    /// Where to tell that a run ended (a completion webhook), unless a
    /// request says otherwise; see [`SandstormConfig::completion_webhook_url`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Runs fired by webhooks and schedules (see [`crate::triggers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggers: Option<Vec<Value>>,
    /// This server's public URL for E2B's lifecycle webhooks (0.9.2's
    /// `webhook_url`): `ds serve` registers it with E2B at start and
    /// deletes it at exit (`/webhooks/e2b` is appended when missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2b_webhook_url: Option<String>,
    /// Whether runs are detached unless a request says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detach: Option<bool>,
    /// Seconds a run's sandbox is kept after a turn for a follow-up,
    /// unless a request says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<u64>,
    /// The skills read from `skills_dir` when the file was loaded.
    #[serde(skip)]
    pub skills: Skills,
}

/// Structured output: the SDK validates the agent's answer against `schema`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputFormat {
    /// Always `json_schema`.
    #[serde(rename = "type")]
    pub kind: OutputFormatKind,
    /// The JSON Schema of the answer.
    pub schema: serde_json::Map<String, Value>,
}

/// The kind of structured output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum OutputFormatKind {
    /// A JSON Schema.
    #[serde(rename = "json_schema")]
    JsonSchema,
}

/// A subagent the main agent may delegate to.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDefinition {
    /// When the main agent should delegate to it.
    pub description: String,
    /// Its system prompt.
    pub prompt: String,
    /// The tools it may use; the SDK's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// Its model; the SDK's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Tools it may not use.
    #[serde(
        default,
        rename = "disallowedTools",
        skip_serializing_if = "Option::is_none"
    )]
    pub disallowed_tools: Option<Vec<String>>,
    /// Skills loaded into its context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skills: Option<Vec<String>>,
    /// Its own turn limit.
    #[serde(
        default,
        rename = "maxTurns",
        deserialize_with = "crate::request::whole_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_turns: Option<u32>,
}

/// An MCP server, in the SDK's own shape: `stdio` (the default when `type`
/// is absent) runs a command in the sandbox; `http` and `sse` reach a URL.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
#[serde(remote = "Self")]
pub enum McpServer {
    /// A command run in the sandbox, spoken to over stdin and stdout.
    Stdio {
        /// The program.
        command: String,
        /// Its arguments.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        args: Vec<String>,
        /// Environment variables for it.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
    },
    /// Streamable HTTP at `url`.
    Http {
        /// The server's URL.
        url: String,
        /// HTTP headers sent with every request.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
    },
    /// Server-sent events at `url`.
    Sse {
        /// The server's URL.
        url: String,
        /// HTTP headers sent with every request.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
    },
}

impl<'de> Deserialize<'de> for McpServer {
    // The SDK (and the original's README) let stdio servers omit `type`;
    // serde's internally tagged enums need it, so supply the default first.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut value = Value::deserialize(d)?;
        if let Value::Object(map) = &mut value {
            map.entry("type").or_insert_with(|| Value::from("stdio"));
        }
        McpServer::deserialize(value).map_err(serde::de::Error::custom)
    }
}

impl Serialize for McpServer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        McpServer::serialize(self, s)
    }
}

/// Why sandstorm.json could not be used; each names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Unreadable {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The file is not JSON.
    #[error("{path} is not valid JSON: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's error.
        message: String,
    },
    /// A field has the wrong shape or is unknown.
    #[error("{path}: field `{field}`: {message}")]
    Field {
        /// The file.
        path: String,
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl SandstormConfig {
    /// Where to look: `explicit` (from `SANDSTORM_CONFIG`) or `sandstorm.json`
    /// in `cwd`. An explicit path must exist; the default may be absent.
    pub fn load(explicit: Option<&Path>, cwd: &Path) -> Result<Self, ConfigError> {
        let (path, required) = match explicit {
            Some(p) => (p.to_path_buf(), true),
            None => (cwd.join(FILE_NAME), false),
        };
        let mut config = match std::fs::read(&path) {
            Ok(bytes) => Self::parse(&bytes, &path)?,
            // No sandstorm.json, no skills either: a `.claude/skills` in
            // whatever folder ds runs in (a home folder's own, say) is not
            // meant for every sandbox.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default());
            }
            Err(e) => {
                return Err(ConfigError::Unreadable {
                    path: path.display().to_string(),
                    message: e.to_string(),
                });
            }
        };
        let folder = path.parent().unwrap_or(cwd);
        config.skills = config.read_skills(folder, &path)?;
        Ok(config)
    }

    /// The skills of `skills_dir`, relative to `folder` (sandstorm.json's);
    /// without one, those of `.claude/skills` there, if it exists.
    fn read_skills(&self, folder: &Path, path: &Path) -> Result<Skills, ConfigError> {
        let field_error = |message: String| ConfigError::Field {
            path: path.display().to_string(),
            field: "skills_dir".into(),
            message,
        };
        let (dir, shown) = match &self.skills_dir {
            Some(dir) => (folder.join(dir), dir.as_str()),
            None => (folder.join(skills::DEFAULT_DIR), skills::DEFAULT_DIR),
        };
        if !dir.is_dir() {
            return match &self.skills_dir {
                Some(_) => Err(field_error(format!(
                    "{shown} is not a folder (it is read relative to {})",
                    folder.display()
                ))),
                None => Ok(Skills::new()),
            };
        }
        skills::load(&dir, shown).map_err(field_error)
    }

    /// Where to tell that a run ended, unless a request says: `webhook_url`,
    /// unless it is 0.9.2's other meaning of the name (the server's own
    /// `/webhooks/e2b`, where E2B sent its lifecycle events), which would
    /// have every run's notice posted to the server itself.
    pub fn completion_webhook_url(&self) -> Option<&str> {
        let url = self.webhook_url.as_deref()?;
        let path = reqwest::Url::parse(url)
            .ok()?
            .path()
            .trim_end_matches('/')
            .to_owned();
        (!path.ends_with("/webhooks/e2b")).then_some(url)
    }

    /// The fields that are read but do nothing yet, each with why; the
    /// server warns of them at start-up.
    pub fn inert_fields(&self) -> Vec<(&'static str, &'static str)> {
        let mut inert = Vec::new();
        if self.webhook_url.is_some() && self.completion_webhook_url().is_none() {
            inert.push((
                "webhook_url",
                "it ends in /webhooks/e2b, Python Sandstorm 0.9.2's address for E2B's \
                 sandbox lifecycle events; here webhook_url is where to tell that a run \
                 ended, and no run's notice is sent there. E2B's lifecycle webhooks are \
                 registered with e2b_webhook_url or ds webhook register (see \
                 docs/webhooks.md)",
            ));
        }
        inert
    }

    /// Parses and checks sandstorm.json's bytes; `path` names the file in
    /// errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let value: Value = serde_json::from_slice(bytes).map_err(|e| ConfigError::Syntax {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        if !value.is_object() {
            return Err(ConfigError::Syntax {
                path: shown,
                message: format!("expected a JSON object, found {}", kind_of(&value)),
            });
        }
        // Python Sandstorm 0.9.2's Slack channels: named, so the refusal
        // says why rather than calling the field unknown.
        if value.get("channels").is_some() {
            return Err(ConfigError::Field {
                path: shown,
                field: "channels".into(),
                message: "Slack channels are not supported yet; remove `channels` \
                          (see docs/migrating-from-python.md)"
                    .into(),
            });
        }
        let config: Self = serde_path_to_error::deserialize(&value).map_err(|e| {
            let message = e.inner().to_string();
            let field = crate::json_field::field_at_fault(e.path(), &message)
                .unwrap_or_else(|| ".".to_owned());
            ConfigError::Field {
                path: shown.clone(),
                field,
                message: explain(&message),
            }
        })?;
        config.check(&shown)?;
        Ok(config)
    }

    /// Rules serde's types cannot say.
    fn check(&self, path: &str) -> Result<(), ConfigError> {
        let field_error = |field: String, message: &str| ConfigError::Field {
            path: path.to_owned(),
            field,
            message: message.to_owned(),
        };
        if self.max_turns == Some(0) {
            return Err(field_error("max_turns".into(), "must be at least 1"));
        }
        if self.max_tokens == Some(0) {
            return Err(field_error("max_tokens".into(), "must be at least 1"));
        }
        if let Some(usd) = self.max_cost_usd
            && (!usd.is_finite() || usd <= 0.0)
        {
            return Err(field_error(
                "max_cost_usd".into(),
                &format!("must be more than 0 US dollars, got {usd}"),
            ));
        }
        if let Some(timeout) = self.timeout
            && !crate::request::TIMEOUT_RANGE.contains(&timeout)
        {
            return Err(field_error(
                "timeout".into(),
                &format!(
                    "must be between {} and {} seconds, got {timeout}",
                    crate::request::TIMEOUT_RANGE.start(),
                    crate::request::TIMEOUT_RANGE.end()
                ),
            ));
        }
        if let Some(model) = &self.model
            && model.trim().is_empty()
        {
            return Err(field_error("model".into(), "must not be empty"));
        }
        for (name, agent) in self.agents.iter().flatten() {
            if agent.max_turns == Some(0) {
                return Err(field_error(
                    format!("agents.{name}.maxTurns"),
                    "must be at least 1",
                ));
            }
        }
        for (index, tool) in self.allowed_tools.iter().flatten().enumerate() {
            if tool.trim().is_empty() {
                return Err(field_error(
                    format!("allowed_tools[{index}]"),
                    "must be a tool name",
                ));
            }
        }
        if let Some(url) = &self.webhook_url {
            triggers::check_webhook_url(url)
                .map_err(|why| field_error("webhook_url".into(), &why))?;
        }
        if let Some(url) = &self.e2b_webhook_url {
            triggers::check_webhook_url(url)
                .map_err(|why| field_error("e2b_webhook_url".into(), &why))?;
        }
        if let Some(list) = &self.triggers {
            crate::triggers::definition::parse(list)
                .map_err(|(field, why)| field_error(field, &why))?;
        }
        if let Some(keep_alive) = self.keep_alive
            && keep_alive > crate::request::MAX_KEEP_ALIVE_SECS
        {
            return Err(field_error(
                "keep_alive".into(),
                &format!(
                    "must be between 0 and {} seconds, got {keep_alive}",
                    crate::request::MAX_KEEP_ALIVE_SECS
                ),
            ));
        }
        if let Some(outputs) = &self.outputs {
            outputs
                .validate()
                .map_err(|why| field_error("outputs".into(), &why))?;
        }
        if let Some(limits) = &self.limits {
            limits
                .check()
                .map_err(|(key, why)| field_error(format!("limits.{key}"), &why))?;
        }
        if let Some(network) = &self.network {
            network.check().map_err(|(index, why)| {
                let field = match index {
                    Some(index) => format!("network.allow[{index}]"),
                    None => "network.allow".to_owned(),
                };
                field_error(field, &why)
            })?;
        }
        for (name, server) in self.mcp_servers.iter().flatten() {
            match server {
                McpServer::Stdio { command, .. } if command.trim().is_empty() => {
                    return Err(field_error(
                        format!("mcp_servers.{name}.command"),
                        "must not be empty",
                    ));
                }
                McpServer::Http { url, .. } | McpServer::Sse { url, .. }
                    if !(url.starts_with("http://") || url.starts_with("https://")) =>
                {
                    return Err(field_error(
                        format!("mcp_servers.{name}.url"),
                        "must be an http:// or https:// URL",
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// serde's messages say "invalid type: integer `3`, expected a string";
/// keep them, but untagged MCP servers need the list of valid types.
fn explain(message: &str) -> String {
    if message.starts_with("unknown variant") && message.contains("stdio") {
        format!("{message} (mcp server `type` must be \"stdio\", \"http\" or \"sse\")")
    } else {
        message.to_owned()
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
