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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Query;

    fn query(json: &serde_json::Value) -> Query {
        Query::from_json(json.to_string().as_bytes(), &[]).expect("valid")
    }

    fn config(json: &serde_json::Value) -> SandstormConfig {
        let mut config = SandstormConfig::parse(
            json.to_string().as_bytes(),
            std::path::Path::new("sandstorm.json"),
        )
        .expect("valid");
        config.skills = [(
            "owasp".to_owned(),
            [("SKILL.md".to_owned(), Bytes::from_static(b"# OWASP"))].into(),
        )]
        .into();
        config
    }

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "tok-value-123".to_owned())
    }

    fn built(query: &Query, config: &SandstormConfig) -> (serde_json::Value, Agent) {
        let agent = build(query, config, &env, None).expect("built");
        let json = serde_json::from_slice(&agent.config).expect("json");
        (json, agent)
    }

    fn servers() -> serde_json::Value {
        serde_json::json!({
            "kept": {"type": "http", "url": "https://mcp.example.com", "headers": {"A": "Bearer ${TOKEN}"}},
            "unset": {"command": "npx", "env": {"K": "${NOT_SET}"}}
        })
    }

    #[test]
    fn a_name_that_is_not_there_is_refused_naming_it_and_the_names_there_are() {
        let config = config(&serde_json::json!({"mcp_servers": servers(),
            "agents": {"a": {"description": "d", "prompt": "p"}}}));
        for (field, name, there) in [
            ("allowed_mcp_servers", "kep", "kept, unset"),
            ("allowed_agents", "b", "a"),
            ("allowed_skills", "style", "owasp"),
        ] {
            let q = query(&serde_json::json!({"prompt": "p", field: ["kept", name]}));
            let q = match field {
                "allowed_mcp_servers" => q,
                _ => query(&serde_json::json!({"prompt": "p", field: [name],
                                              "allowed_mcp_servers": ["kept"]})),
            };
            let e = build(&q, &config, &env, None).expect_err("refused");
            let at = if field == "allowed_mcp_servers" { 1 } else { 0 };
            assert_eq!(e.field(), Some(format!("{field}[{at}]").as_str()), "{e}");
            let message = e.to_string();
            assert!(
                message.contains(name) && message.contains(there),
                "{message}"
            );
        }
    }

    #[test]
    fn placeholders_are_filled_only_for_the_servers_the_run_keeps() {
        let config = config(&serde_json::json!({"mcp_servers": servers()}));
        // Both servers: the unset variable stops the run, named.
        let e = build(
            &query(&serde_json::json!({"prompt": "p"})),
            &config,
            &env,
            None,
        )
        .expect_err("a variable is missing");
        assert!(matches!(e, ApiError::Config { .. }));
        assert!(e.to_string().contains("NOT_SET"), "{e}");
        // Only the one whose variable is set: filled, and its value kept
        // for redaction.
        let (json, agent) = built(
            &query(&serde_json::json!({"prompt": "p", "allowed_mcp_servers": ["kept"]})),
            &config,
        );
        assert_eq!(
            json["mcp_servers"],
            serde_json::json!({"kept": {"type": "http", "url": "https://mcp.example.com",
                                        "headers": {"A": "Bearer tok-value-123"}}})
        );
        assert_eq!(agent.secrets, ["tok-value-123"]);
        // None at all.
        let (json, _) = built(
            &query(&serde_json::json!({"prompt": "p", "allowed_mcp_servers": []})),
            &config,
        );
        assert_eq!(json["mcp_servers"], serde_json::json!({}));
    }

    #[test]
    fn extras_join_and_replace_and_skills_bring_the_skill_tool_to_config_tools() {
        let config = config(&serde_json::json!({
            "allowed_tools": ["Read"],
            "agents": {"a": {"description": "config a", "prompt": "p"}}
        }));
        let q = query(&serde_json::json!({"prompt": "p",
            "extra_agents": {"a": {"description": "request a", "prompt": "p"},
                             "b": {"description": "b", "prompt": "p"}},
            "extra_skills": {"style": "# Style"}}));
        let (json, agent) = built(&q, &config);
        assert_eq!(json["agents"]["a"]["description"], "request a");
        assert_eq!(json["agents"]["b"]["description"], "b");
        assert_eq!(json["allowed_tools"], serde_json::json!(["Read", "Skill"]));
        assert_eq!(json["has_skills"], true);
        let paths: Vec<&str> = agent.skill_files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/home/user/.claude/skills/owasp/SKILL.md",
                "/home/user/.claude/skills/style/SKILL.md"
            ]
        );
        // A request's own tools are taken as they are.
        let q = query(&serde_json::json!({"prompt": "p", "allowed_tools": ["Bash"]}));
        assert_eq!(
            built(&q, &config).0["allowed_tools"],
            serde_json::json!(["Bash"])
        );
        // Narrowed to no skills: none uploaded, no project settings.
        let q = query(&serde_json::json!({"prompt": "p", "allowed_skills": []}));
        let (json, agent) = built(&q, &config);
        assert!(agent.skill_files.is_empty());
        assert_eq!(json.get("has_skills"), None);
        assert_eq!(json["allowed_tools"], serde_json::json!(["Read"]));
    }

    #[test]
    fn the_request_s_output_format_wins_and_an_empty_one_turns_it_off() {
        let config = config(&serde_json::json!({
            "output_format": {"type": "json_schema", "schema": {"title": "config"}},
            "system_prompt": "Be brief.", "system_prompt_append": "Cite."
        }));
        let (json, _) = built(&query(&serde_json::json!({"prompt": "p"})), &config);
        assert_eq!(json["output_format"]["schema"]["title"], "config");
        assert_eq!(json["system_prompt"], "Be brief.\n\nCite.");
        let q = query(&serde_json::json!({"prompt": "p", "output_format":
            {"type": "json_schema", "schema": {"title": "request"}}}));
        assert_eq!(
            built(&q, &config).0["output_format"]["schema"]["title"],
            "request"
        );
        let q = query(&serde_json::json!({"prompt": "p", "output_format": {}}));
        assert_eq!(built(&q, &config).0.get("output_format"), None);
    }
}
