//! From a validated request to a [`RunPlan`]: the agent config, the files of
//! the one upload, the runner's argv and environment, and the deadline.

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;

use crate::config::{AgentDefinition, McpServer, OutputFormat, SandstormConfig};
use crate::events::Redactor;
use crate::keys::ResolvedKeys;
use crate::outputs::{DEFAULT_LIMITS, OutputRequest};
use crate::request::Query;
use crate::run::RunPlan;
use crate::sandbox::{ProcessSpec, SandboxFile, SandboxSpec};

/// Where the runner and its node_modules live in every sandbox.
pub const RUNNER_DIR: &str = "/opt/agent-runner";
/// The agent's home and working directory.
pub const HOME_DIR: &str = "/home/user";
/// The runner, embedded so the server always runs the runner it was built
/// with, whatever the E2B template holds.
pub const RUNNER_SCRIPT: &str = include_str!("../runner/runner.mjs");
/// The SDK's user settings, as the original writes them.
pub const SDK_SETTINGS: &str = r#"{
  "permissions": { "allow": [], "deny": [] },
  "env": { "CLAUDE_CODE_DISABLE_EXPERIMENTAL_BETAS": "1" }
}
"#;
/// How long the sandbox outlives the run's deadline on the provider's own
/// clock: the backstop that reaps it if this process dies mid-run.
const SANDBOX_GRACE: Duration = Duration::from_secs(60);
/// How long before a platform deadline (Lambda, Vercel) a run ends itself,
/// leaving time to send the error event and destroy the sandbox.
pub const PLATFORM_MARGIN: Duration = Duration::from_secs(10);

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
    system_prompt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_format: Option<&'a OutputFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agents: Option<&'a std::collections::BTreeMap<String, AgentDefinition>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mcp_servers: Option<&'a std::collections::BTreeMap<String, McpServer>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<OutputRequest<'a>>,
}

/// Builds the plan of one run. `platform_deadline` is when the hosting
/// platform cuts the response (Lambda's invocation deadline, Vercel's
/// maxDuration), if it has one.
pub fn build(
    request_id: String,
    query: &Query,
    config: &SandstormConfig,
    keys: ResolvedKeys,
    platform_deadline: Option<Instant>,
) -> RunPlan {
    let now = Instant::now();
    let (deadline, deadline_reason) = match platform_deadline {
        Some(platform)
            if platform.saturating_duration_since(now) < query.timeout + PLATFORM_MARGIN =>
        {
            (
                platform.checked_sub(PLATFORM_MARGIN).unwrap_or(now),
                "the run reached the hosting platform's time limit".to_owned(),
            )
        }
        _ => (
            now + query.timeout,
            format!(
                "the run exceeded its timeout of {} s",
                query.timeout.as_secs()
            ),
        ),
    };
    let budget = deadline.saturating_duration_since(now);

    // Request values override sandstorm.json.
    let outputs = query
        .outputs
        .as_deref()
        .or(config.outputs.as_deref())
        .filter(|patterns| !patterns.is_empty());
    let agent_config = AgentConfig {
        prompt: &query.prompt,
        cwd: HOME_DIR,
        model: query.model.as_deref().or(config.model.as_deref()),
        max_turns: query.max_turns.or(config.max_turns),
        system_prompt: config.system_prompt.as_deref(),
        output_format: config.output_format.as_ref(),
        agents: config.agents.as_ref(),
        mcp_servers: config.mcp_servers.as_ref(),
        outputs: outputs.map(|patterns| OutputRequest {
            patterns,
            limits: DEFAULT_LIMITS,
        }),
    };
    let output_limits = outputs.map(|_| DEFAULT_LIMITS);
    let agent_config = serde_json::to_vec(&agent_config).unwrap_or_default();

    let mut files = Vec::with_capacity(query.files.len() + 3 + keys.files.len());
    files.push(SandboxFile {
        path: format!("{RUNNER_DIR}/runner.mjs"),
        content: Bytes::from_static(RUNNER_SCRIPT.as_bytes()),
    });
    files.push(SandboxFile {
        path: format!("{RUNNER_DIR}/agent_config.json"),
        content: agent_config.into(),
    });
    files.push(SandboxFile {
        path: format!("{HOME_DIR}/.claude/settings.json"),
        content: Bytes::from_static(SDK_SETTINGS.as_bytes()),
    });
    files.extend(keys.files);
    files.extend(query.files.iter().map(|f| SandboxFile {
        path: format!("{HOME_DIR}/{}", f.path),
        content: Bytes::from(f.content.clone()),
    }));

    let mut secrets: Vec<&str> = keys.runner_env.values().map(String::as_str).collect();
    secrets.extend(
        [
            &query.keys.anthropic,
            &query.keys.openrouter,
            &query.keys.e2b,
            &keys.e2b,
        ]
        .into_iter()
        .flatten()
        .map(|s| s.expose()),
    );
    let redactor = Redactor::new(secrets);

    RunPlan {
        sandbox: SandboxSpec {
            lifetime: budget + SANDBOX_GRACE,
            metadata: [("sandstorm_request_id".to_owned(), request_id.clone())].into(),
            api_key: keys.e2b,
        },
        files,
        process: ProcessSpec {
            cmd: "node".into(),
            args: vec![format!("{RUNNER_DIR}/runner.mjs")],
            envs: keys.runner_env,
            cwd: HOME_DIR.into(),
            // A backstop behind the run's own deadline.
            timeout: Some(budget + Duration::from_secs(5)),
        },
        deadline,
        deadline_reason,
        redactor,
        output_limits,
        request_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::QueryRequest;

    fn query(json: serde_json::Value) -> Query {
        Query::from_json(json.to_string().as_bytes()).expect("valid")
    }

    fn agent_config(plan: &RunPlan) -> serde_json::Value {
        let file = plan
            .files
            .iter()
            .find(|f| f.path.ends_with("agent_config.json"))
            .expect("config uploaded");
        serde_json::from_slice(&file.content).expect("json")
    }

    #[test]
    fn request_values_override_the_config() {
        let config = SandstormConfig {
            model: Some("opus".into()),
            max_turns: Some(20),
            system_prompt: Some("be brief".into()),
            ..Default::default()
        };
        let q = query(serde_json::json!({"prompt":"p","model":"haiku"}));
        let plan = build("r".into(), &q, &config, ResolvedKeys::default(), None);
        let c = agent_config(&plan);
        assert_eq!(c["model"], "haiku");
        assert_eq!(c["max_turns"], 20);
        assert_eq!(c["system_prompt"], "be brief");
        assert_eq!(c["prompt"], "p");
        assert_eq!(c["cwd"], "/home/user");
    }

    #[test]
    fn one_upload_carries_runner_config_settings_and_files() {
        let q = query(serde_json::json!({"prompt":"p","files":{"a.txt":"1","d/b.txt":"2"}}));
        let plan = build(
            "r".into(),
            &q,
            &SandstormConfig::default(),
            ResolvedKeys::default(),
            None,
        );
        let paths: Vec<&str> = plan.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/opt/agent-runner/runner.mjs",
                "/opt/agent-runner/agent_config.json",
                "/home/user/.claude/settings.json",
                "/home/user/a.txt",
                "/home/user/d/b.txt",
            ]
        );
    }

    #[test]
    fn the_runner_is_started_as_argv() {
        let q = QueryRequest {
            prompt: "p; rm -rf /".into(),
            ..Default::default()
        }
        .validate()
        .expect("valid");
        let plan = build(
            "r".into(),
            &q,
            &SandstormConfig::default(),
            ResolvedKeys::default(),
            None,
        );
        assert_eq!(plan.process.cmd, "node");
        assert_eq!(plan.process.args, ["/opt/agent-runner/runner.mjs"]);
        assert_eq!(plan.process.cwd, "/home/user");
    }

    #[test]
    fn the_timeout_sets_the_deadline_unless_the_platform_ends_sooner() {
        let q = query(serde_json::json!({"prompt":"p","timeout":100}));
        let before = Instant::now();
        let plan = build(
            "r".into(),
            &q,
            &SandstormConfig::default(),
            ResolvedKeys::default(),
            None,
        );
        assert!(plan.deadline >= before + Duration::from_secs(100));
        assert!(plan.deadline_reason.contains("100 s"));

        let platform = Instant::now() + Duration::from_secs(30);
        let plan = build(
            "r".into(),
            &q,
            &SandstormConfig::default(),
            ResolvedKeys::default(),
            Some(platform),
        );
        assert_eq!(plan.deadline, platform - PLATFORM_MARGIN);
        assert!(plan.deadline_reason.contains("platform"));
        assert!(plan.sandbox.lifetime >= Duration::from_secs(20));
    }
}
