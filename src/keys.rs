//! Which keys and provider variables a run's sandbox gets.
//!
//! Order, first wins: the request body (for the CLI: its flags), then the
//! environment, then `.env` (already merged under the environment in
//! [`EnvVars`]), then the AWS secret when one is configured. The result is
//! the runner's environment plus any credential file it needs (Vertex).

use std::collections::BTreeMap;
use std::path::Path;

use crate::env::EnvVars;
use crate::error::ApiError;
use crate::request::RequestKeys;
use crate::sandbox::SandboxFile;
use crate::secret::Secret;

/// Provider variables forwarded from the server's environment into the
/// sandbox when set, exactly the original's list.
pub const PROVIDER_ENV_KEYS: &[&str] = &[
    // Google Vertex AI
    "CLAUDE_CODE_USE_VERTEX",
    "CLOUD_ML_REGION",
    "ANTHROPIC_VERTEX_PROJECT_ID",
    // Amazon Bedrock
    "CLAUDE_CODE_USE_BEDROCK",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    // Microsoft Azure AI Foundry
    "CLAUDE_CODE_USE_FOUNDRY",
    "AZURE_FOUNDRY_RESOURCE",
    "AZURE_API_KEY",
    // Custom base URL (proxy, self-hosted, OpenRouter)
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_AUTH_TOKEN",
    // Model alias overrides
    "ANTHROPIC_DEFAULT_SONNET_MODEL",
    "ANTHROPIC_DEFAULT_OPUS_MODEL",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL",
];

/// Any of these selects a provider that authenticates without an
/// Anthropic key.
const PROVIDER_TOGGLES: &[&str] = &[
    "CLAUDE_CODE_USE_VERTEX",
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_FOUNDRY",
];

/// Names an operator may add to the forwarded set, comma-separated (for
/// example `HTTPS_PROXY`, or `CLAUDE_CODE_MAX_RETRIES` in tests).
pub const FORWARD_ENV_VAR: &str = "SANDSTORM_FORWARD_ENV";

/// Where the Vertex service-account file is placed in the sandbox.
pub const GCP_CREDENTIALS_PATH: &str = "/home/user/.config/gcloud/service_account.json";

/// A source of keys consulted after the environment (AWS Secrets Manager).
/// Values are looked up by variable name.
#[async_trait::async_trait]
pub trait KeySource: Send + Sync {
    async fn get(&self, name: &str) -> Result<Option<Secret>, KeySourceError>;
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct KeySourceError(pub String);

/// What the sandbox of one run gets.
#[derive(Debug, Default)]
pub struct ResolvedKeys {
    /// The runner's environment (keys and provider variables).
    pub runner_env: BTreeMap<String, String>,
    /// Files to upload with the run (the Vertex credentials).
    pub files: Vec<SandboxFile>,
    /// The E2B key, when one is set anywhere.
    pub e2b: Option<Secret>,
}

/// Looks a key up: request value, environment, then the key source.
async fn lookup(
    given: Option<&Secret>,
    name: &str,
    env: &EnvVars,
    source: Option<&dyn KeySource>,
) -> Result<Option<Secret>, ApiError> {
    if let Some(key) = given {
        return Ok(Some(key.clone()));
    }
    if let Some(value) = env.get(name) {
        return Ok(Some(Secret::new(value)));
    }
    match source {
        Some(source) => source
            .get(name)
            .await
            .map_err(|e| ApiError::Config { message: e.0 }),
        None => Ok(None),
    }
}

/// Resolves the keys of one run.
///
/// `needs_e2b` is false for local sandboxes, which need no E2B key.
pub async fn resolve(
    given: &RequestKeys,
    env: &EnvVars,
    source: Option<&dyn KeySource>,
    cwd: &Path,
    needs_e2b: bool,
) -> Result<ResolvedKeys, ApiError> {
    let anthropic = lookup(given.anthropic.as_ref(), "ANTHROPIC_API_KEY", env, source).await?;
    let openrouter = lookup(given.openrouter.as_ref(), "OPENROUTER_API_KEY", env, source).await?;
    let e2b = lookup(given.e2b.as_ref(), "E2B_API_KEY", env, source).await?;

    let mut runner_env = BTreeMap::new();
    if let Some(key) = &anthropic {
        runner_env.insert("ANTHROPIC_API_KEY".to_owned(), key.expose().to_owned());
    }
    let forwarded: Vec<&str> = env
        .get(FORWARD_ENV_VAR)
        .map(|names| {
            names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .collect()
        })
        .unwrap_or_default();
    for name in PROVIDER_ENV_KEYS.iter().copied().chain(forwarded) {
        if let Some(value) = env.get(name) {
            runner_env.insert(name.to_owned(), value.to_owned());
        }
    }
    // OpenRouter speaks Anthropic's API with a bearer token.
    if let Some(key) = &openrouter {
        runner_env.insert("ANTHROPIC_AUTH_TOKEN".to_owned(), key.expose().to_owned());
    }
    let custom_base_url = runner_env.contains_key("ANTHROPIC_BASE_URL");
    // With a custom endpoint and a token, a real Anthropic key must not
    // reach the SDK: it would send it as x-api-key to the proxy, and check
    // model names against Anthropic's list.
    if custom_base_url && runner_env.contains_key("ANTHROPIC_AUTH_TOKEN") {
        runner_env.insert("ANTHROPIC_API_KEY".to_owned(), String::new());
    }

    let alternate_provider = PROVIDER_TOGGLES.iter().any(|t| env.flag(t));
    if anthropic.is_none() && !alternate_provider && !custom_base_url {
        let message = if openrouter.is_some() {
            "an OpenRouter key needs ANTHROPIC_BASE_URL=https://openrouter.ai/api in the \
             environment; or set anthropic_api_key in the request body or ANTHROPIC_API_KEY \
             in the environment"
        } else {
            "anthropic_api_key is required: set it in the request body, or ANTHROPIC_API_KEY \
             in the environment or .env (or configure OpenRouter, Vertex, Bedrock or Azure)"
        };
        return Err(ApiError::MissingKey {
            field: "anthropic_api_key".into(),
            message: message.into(),
        });
    }
    if needs_e2b && e2b.is_none() {
        return Err(ApiError::MissingKey {
            field: "e2b_api_key".into(),
            message: "e2b_api_key is required: set it in the request body, or E2B_API_KEY in \
                      the environment or .env"
                .into(),
        });
    }

    let mut files = Vec::new();
    if env.flag("CLAUDE_CODE_USE_VERTEX") {
        files.push(vertex_credentials(env, cwd)?);
        runner_env.insert(
            "GOOGLE_APPLICATION_CREDENTIALS".to_owned(),
            GCP_CREDENTIALS_PATH.to_owned(),
        );
    }
    Ok(ResolvedKeys {
        runner_env,
        files,
        e2b,
    })
}

/// Reads the service-account file named by GOOGLE_APPLICATION_CREDENTIALS
/// (relative paths from the working directory) for upload into the sandbox.
fn vertex_credentials(env: &EnvVars, cwd: &Path) -> Result<SandboxFile, ApiError> {
    let Some(path) = env.get("GOOGLE_APPLICATION_CREDENTIALS") else {
        return Err(ApiError::Config {
            message: "GOOGLE_APPLICATION_CREDENTIALS is required when CLAUDE_CODE_USE_VERTEX is \
                      set: point it at your GCP service account JSON key"
                .into(),
        });
    };
    let full = cwd.join(path);
    let content = std::fs::read(&full).map_err(|e| ApiError::Config {
        message: format!("cannot read GOOGLE_APPLICATION_CREDENTIALS file {path}: {e}"),
    })?;
    Ok(SandboxFile {
        path: GCP_CREDENTIALS_PATH.to_owned(),
        content: content.into(),
    })
}

#[cfg(test)]
mod tests;
