//! The agent of one run: sandstorm.json's config with the request's
//! choices over it, as `agent_config.json` for the runner, and the skill
//! files that go with it into the same upload.
//!
//! Python Sandstorm 0.9.2's order: the request's `extra_*` join the
//! config's agents and skills (replacing one of the same name), then the
//! `allowed_*` lists narrow them. Unlike 0.9.2, a name in an `allowed_*`
//! list that matches nothing is refused: a typo must not silently run an
//! agent without the server it was meant to have.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;

use crate::config::placeholders;
use crate::config::prompt::{self, SystemPrompt};
use crate::config::{AgentDefinition, McpServer, OutputFormat, SandstormConfig};
use crate::error::ApiError;
use crate::outputs::OutputRequest;
use crate::request::{OutputFormatChoice, Query};
use crate::sandbox::{SandboxFile, layout};

/// Where the SDK looks for a project's skills, under the run's cwd.
const SKILLS_DIR: &str = ".claude/skills";
/// The SDK's tool that loads a skill.
const SKILL_TOOL: &str = "Skill";

/// What `runner.mjs` reads from `agent_config.json`.
#[derive(Debug, Serialize)]
struct AgentConfig<'a> {
    prompt: &'a str,
    cwd: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_turns: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_prompt: Option<SystemPrompt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_format: Option<&'a OutputFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agents: Option<BTreeMap<&'a str, &'a AgentDefinition>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mcp_servers: Option<BTreeMap<&'a str, McpServer>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_tools: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_budget_usd: Option<f64>,
    /// The SDK reads the project's settings (and so its skills).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    has_skills: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<OutputRequest<'a>>,
}

/// The agent part of a run's plan.
#[derive(Debug)]
pub(crate) struct Agent {
    /// `agent_config.json`.
    pub config: Bytes,
    /// The skills' files, under the SDK's skills folder.
    pub skill_files: Vec<SandboxFile>,
    /// Values filled into MCP servers from the environment: scrubbed from
    /// what the client sees, as keys are.
    pub secrets: Vec<String>,
}

/// Builds the agent of a run. `env` looks up the variables MCP servers'
/// placeholders name.
pub(crate) fn build(
    query: &Query,
    config: &SandstormConfig,
    env: &dyn Fn(&str) -> Option<String>,
    outputs: Option<OutputRequest<'_>>,
) -> Result<Agent, ApiError> {
    let choices = &query.agent;

    let mut skills: BTreeMap<&str, Vec<(&str, Bytes)>> = config
        .skills
        .iter()
        .map(|(name, files)| {
            let files = files
                .iter()
                .map(|(path, content)| (path.as_str(), content.clone()))
                .collect();
            (name.as_str(), files)
        })
        .collect();
    for (name, text) in &choices.extra_skills {
        skills.insert(
            name,
            vec![("SKILL.md", Bytes::copy_from_slice(text.as_bytes()))],
        );
    }
    narrow(
        &mut skills,
        "allowed_skills",
        choices.allowed_skills.as_deref(),
    )?;
    let has_skills = !skills.is_empty() || config.template_skills == Some(true);

    let mut servers: BTreeMap<&str, &McpServer> = config
        .mcp_servers
        .iter()
        .flatten()
        .map(|(name, server)| (name.as_str(), server))
        .collect();
    narrow(
        &mut servers,
        "allowed_mcp_servers",
        choices.allowed_mcp_servers.as_deref(),
    )?;
    let mut secrets = Vec::new();
    let mut mcp_servers = BTreeMap::new();
    for (name, server) in servers {
        let resolved = placeholders::resolve(name, server, env)
            .map_err(|message| ApiError::Config { message })?;
        secrets.extend(resolved.values);
        mcp_servers.insert(name, resolved.server);
    }

    let mut agents: BTreeMap<&str, &AgentDefinition> = config
        .agents
        .iter()
        .flatten()
        .chain(&choices.extra_agents)
        .map(|(name, agent)| (name.as_str(), agent))
        .collect();
    narrow(
        &mut agents,
        "allowed_agents",
        choices.allowed_agents.as_deref(),
    )?;

    // The Skill tool comes with skills when the tools are sandstorm.json's,
    // which cannot know which skills a request brings; a request's own
    // list is taken as it is.
    let allowed_tools = match (&choices.allowed_tools, &config.allowed_tools) {
        (Some(tools), _) => Some(tools.iter().map(String::as_str).collect()),
        (None, Some(tools)) => {
            let mut tools: Vec<&str> = tools.iter().map(String::as_str).collect();
            if has_skills && !tools.contains(&SKILL_TOOL) {
                tools.push(SKILL_TOOL);
            }
            Some(tools)
        }
        (None, None) => None,
    };

    let output_format = match &choices.output_format {
        Some(OutputFormatChoice::Off) => None,
        Some(OutputFormatChoice::Format(format)) => Some(format),
        None => config.output_format.as_ref(),
    };

    let agent_config = AgentConfig {
        prompt: &query.prompt,
        cwd: layout::HOME,
        model: query.model.as_deref().or(config.model.as_deref()),
        max_turns: query.max_turns.or(config.max_turns),
        system_prompt: prompt::effective(
            config.system_prompt.as_ref(),
            config.system_prompt_append.as_deref(),
        ),
        output_format,
        agents: (!agents.is_empty() || config.agents.is_some()).then_some(agents),
        mcp_servers: (!mcp_servers.is_empty() || config.mcp_servers.is_some())
            .then_some(mcp_servers),
        allowed_tools,
        max_budget_usd: choices.max_budget_usd,
        has_skills,
        outputs,
    };
    // Serializing plain strings, numbers and maps cannot fail.
    let config_bytes = serde_json::to_vec(&agent_config).unwrap_or_default().into();
    let skill_files = skills
        .into_iter()
        .flat_map(|(name, files)| {
            files.into_iter().map(move |(path, content)| SandboxFile {
                path: layout::home_path(&format!("{SKILLS_DIR}/{name}/{path}")),
                content,
            })
        })
        .collect();
    Ok(Agent {
        config: config_bytes,
        skill_files,
        secrets,
    })
}

/// Keeps the entries `allowed` names (all when `None`). A name that is not
/// there is refused, with the names there are.
fn narrow<T>(
    entries: &mut BTreeMap<&str, T>,
    field: &str,
    allowed: Option<&[String]>,
) -> Result<(), ApiError> {
    let Some(allowed) = allowed else {
        return Ok(());
    };
    for (index, name) in allowed.iter().enumerate() {
        if !entries.contains_key(name.as_str()) {
            let known: Vec<&str> = entries.keys().copied().collect();
            return Err(ApiError::invalid(
                format!("{field}[{index}]"),
                format!(
                    "{field}[{index}]: there is no {name:?} (there {})",
                    match known.as_slice() {
                        [] => "are none".to_owned(),
                        known => format!("are: {}", known.join(", ")),
                    }
                ),
            ));
        }
    }
    entries.retain(|name, _| allowed.iter().any(|a| a == name));
    Ok(())
}
