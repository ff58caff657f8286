//! Which keys and provider variables a run's sandbox gets.
//!
//! Order, first wins: the request body (for the CLI: its flags), then the
//! environment, then `.env` (merged under the environment by the door), then
//! the AWS secret when one is configured. The result is the runner's
//! environment plus any credential file it needs (Vertex), and the sandbox
//! provider's credential.
//!
//! What comes from the environment is read once, at start-up, into a
//! [`KeyEnv`]; resolving the keys of a request never looks at the
//! environment or the disk.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;

use crate::env::switched_on;
use crate::error::ApiError;
use crate::request::RequestKeys;
use crate::sandbox::provider::Credential;
use crate::sandbox::{SandboxFile, layout};
use crate::secret::Secret;

/// The Anthropic key's variable (and AWS secret key).
pub(crate) const ANTHROPIC_KEY_VARIABLE: &str = "ANTHROPIC_API_KEY";
/// The OpenRouter key's variable (and AWS secret key).
pub(crate) const OPENROUTER_KEY_VARIABLE: &str = "OPENROUTER_API_KEY";

/// Provider variables forwarded from the server's environment into the
/// sandbox when set, exactly the original's list.
pub(crate) const PROVIDER_ENV_KEYS: &[&str] = &[
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
    // Microsoft Azure AI Foundry. Claude Code 2.1.332 reads the
    // ANTHROPIC_FOUNDRY_ names; the AZURE_ ones are the original's, which
    // the local sandbox's model endpoint takes as the same values.
    "CLAUDE_CODE_USE_FOUNDRY",
    "ANTHROPIC_FOUNDRY_RESOURCE",
    "ANTHROPIC_FOUNDRY_API_KEY",
    "AZURE_FOUNDRY_RESOURCE",
    "AZURE_API_KEY",
    // Each cloud's endpoint, when it is not the provider's own (a private
    // endpoint, a gateway). On a local sandbox these name the model
    // endpoint's upstream; the sandbox gets the endpoint's own.
    "ANTHROPIC_BEDROCK_BASE_URL",
    "ANTHROPIC_VERTEX_BASE_URL",
    "ANTHROPIC_FOUNDRY_BASE_URL",
    // Custom base URL (proxy, self-hosted, OpenRouter)
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_AUTH_TOKEN",
    // Model alias overrides
    "ANTHROPIC_DEFAULT_SONNET_MODEL",
    "ANTHROPIC_DEFAULT_OPUS_MODEL",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL",
];

/// The variables that carry the Anthropic credential (or a custom
/// endpoint's token).
const ANTHROPIC_CREDENTIALS: &[&str] = &[ANTHROPIC_KEY_VARIABLE, "ANTHROPIC_AUTH_TOKEN"];

/// The variables that carry a cloud provider's credential, or point at it
/// (the Vertex service-account file).
const CLOUD_CREDENTIALS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_BEARER_TOKEN_BEDROCK",
    "ANTHROPIC_FOUNDRY_API_KEY",
    "ANTHROPIC_FOUNDRY_AUTH_TOKEN",
    "AZURE_API_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
];

/// The credential variables of `runner_env` that will be in the sandbox:
/// those the provider's model endpoint does not hold instead. What the
/// run's `system` event reports as `sandstorm.credentials_in_sandbox`.
pub(crate) fn credentials_in_sandbox(
    runner_env: &BTreeMap<String, String>,
    anthropic_held: bool,
    cloud_held: bool,
) -> Vec<String> {
    let mut names: Vec<&str> = Vec::new();
    if !anthropic_held {
        names.extend(ANTHROPIC_CREDENTIALS);
    }
    if !cloud_held {
        names.extend(CLOUD_CREDENTIALS);
    }
    names
        .into_iter()
        .filter(|name| runner_env.get(*name).is_some_and(|v| !v.is_empty()))
        .map(str::to_owned)
        .collect()
}

/// Any of these selects a provider that authenticates without an
/// Anthropic key.
pub(crate) const PROVIDER_TOGGLES: &[&str] = &[
    "CLAUDE_CODE_USE_VERTEX",
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_FOUNDRY",
];

/// Names an operator may add to the forwarded set, comma-separated (for
/// example `HTTPS_PROXY`, or `CLAUDE_CODE_MAX_RETRIES` in tests).
pub(crate) const FORWARD_ENV_VAR: &str = "SANDSTORM_FORWARD_ENV";

/// Where the Vertex service-account file is placed, relative to the
/// sandbox's home.
const GCP_CREDENTIALS_FILE: &str = ".config/gcloud/service_account.json";

/// Carries the Vertex service-account file's contents in a run's
/// environment to a sandbox provider whose model endpoint holds the cloud
/// providers' credentials
/// ([`ProviderDeclaration::keeps_cloud_credentials`]): the local sandbox's
/// endpoint, or the E2B model proxy it is handed to, takes it out before
/// the process starts, and trades it for access tokens itself.
///
/// [`ProviderDeclaration::keeps_cloud_credentials`]: crate::sandbox::provider::ProviderDeclaration::keeps_cloud_credentials
pub(crate) const VERTEX_SERVICE_ACCOUNT_VARIABLE: &str = "SANDSTORM_VERTEX_SERVICE_ACCOUNT";

/// A source of keys consulted after the environment (AWS Secrets Manager).
/// Values are looked up by variable name.
#[async_trait::async_trait]
pub trait KeySource: Send + Sync {
    /// The value stored under `name`, if any.
    async fn get(&self, name: &str) -> Result<Option<Secret>, KeySourceError>;
}

/// Why a [`KeySource`] could not answer; the message names what to fix and
/// holds no secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct KeySourceError(pub String);

/// What key resolution needs from the environment, read once at start-up.
#[derive(Clone, Default)]
pub struct KeyEnv {
    /// Keys by variable: the model keys and every provider's credential.
    keys: BTreeMap<&'static str, Secret>,
    /// The provider variables and `SANDSTORM_FORWARD_ENV`'s, with values.
    forwarded: BTreeMap<String, String>,
    /// Vertex, Bedrock or Foundry is switched on: no Anthropic key needed.
    alternate_provider: bool,
    /// With Vertex: the service-account file's bytes, or why it could not
    /// be read (reported on each query, like an invalid sandstorm.json).
    vertex_credentials: Option<Result<Bytes, String>>,
}

impl std::fmt::Debug for KeyEnv {
    // Values are keys: names only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEnv")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("forwarded", &self.forwarded.keys().collect::<Vec<_>>())
            .field("alternate_provider", &self.alternate_provider)
            .field(
                "vertex_credentials",
                &self.vertex_credentials.as_ref().map(|r| r.is_ok()),
            )
            .finish()
    }
}

impl KeyEnv {
    /// Reads the keys, the forwarded variables and the Vertex credentials
    /// file through `lookup` (the door's snapshot of the environment; empty
    /// values count as unset). `credentials` are the sandbox providers'.
    pub(crate) fn resolve<'a>(
        lookup: impl Fn(&str) -> Option<&'a str>,
        credentials: &[Credential],
        cwd: &Path,
    ) -> Self {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let flag = |name: &str| get(name).is_some_and(switched_on);
        let keys = [ANTHROPIC_KEY_VARIABLE, OPENROUTER_KEY_VARIABLE]
            .into_iter()
            .chain(credentials.iter().map(|c| c.variable))
            .filter_map(|name| get(name).map(|v| (name, Secret::new(v))))
            .collect();
        let extra: Vec<&str> = get(FORWARD_ENV_VAR)
            .map(|names| {
                names
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let forwarded = PROVIDER_ENV_KEYS
            .iter()
            .copied()
            .chain(extra)
            .filter_map(|name| get(name).map(|v| (name.to_owned(), v.to_owned())))
            .collect();
        let vertex_credentials = flag("CLAUDE_CODE_USE_VERTEX")
            .then(|| vertex_credentials(get("GOOGLE_APPLICATION_CREDENTIALS"), cwd));
        KeyEnv {
            keys,
            forwarded,
            alternate_provider: PROVIDER_TOGGLES.iter().any(|t| flag(t)),
            vertex_credentials,
        }
    }

    /// Every value it holds that a run's environment can carry, for a
    /// reader of a run that this request did not start to scrub.
    pub(crate) fn values(&self) -> impl Iterator<Item = &str> {
        self.keys
            .values()
            .map(Secret::expose)
            .chain(self.forwarded.values().map(String::as_str))
    }
}

/// The sandbox provider's credential for a request that makes no run (one
/// that reads a run again): the request's own, else the environment's or
/// the key source's.
pub(crate) async fn sandbox_credential(
    given: Option<&Secret>,
    env: &KeyEnv,
    source: Option<&dyn KeySource>,
    credential: Option<Credential>,
) -> Result<Option<Secret>, ApiError> {
    match credential {
        Some(credential) => lookup(given, credential.variable, env, source).await,
        None => Ok(None),
    }
}

/// What the sandbox of one run gets.
#[derive(Debug, Default)]
pub(crate) struct ResolvedKeys {
    /// The runner's environment (keys and provider variables).
    pub runner_env: BTreeMap<String, String>,
    /// Files to upload with the run (the Vertex credentials).
    pub files: Vec<SandboxFile>,
    /// The sandbox provider's credential, when it needs one.
    pub sandbox: Option<Secret>,
    /// Every secret value the run holds, to scrub from what the client sees:
    /// the keys, and the Vertex credentials file's contents.
    pub secrets: Vec<Secret>,
}

/// Looks a key up: request value, environment, then the key source.
async fn lookup(
    given: Option<&Secret>,
    name: &str,
    env: &KeyEnv,
    source: Option<&dyn KeySource>,
) -> Result<Option<Secret>, ApiError> {
    if let Some(key) = given {
        return Ok(Some(key.clone()));
    }
    if let Some(value) = env.keys.get(name) {
        return Ok(Some(value.clone()));
    }
    match source {
        Some(source) => source
            .get(name)
            .await
            .map_err(|e| ApiError::Config { message: e.0 }),
        None => Ok(None),
    }
}

/// Resolves the keys of one run. `sandbox` is the chosen provider's
/// credential, if it needs one; `cloud_keys_held` says the provider's
/// model endpoint holds the cloud providers' credentials (the local
/// sandbox, E2B with its model proxy;
/// [`ProviderDeclaration::keeps_cloud_credentials`]), so the
/// Vertex key file is handed to it in the environment instead of uploaded.
///
/// [`ProviderDeclaration::keeps_cloud_credentials`]: crate::sandbox::provider::ProviderDeclaration::keeps_cloud_credentials
pub(crate) async fn resolve(
    given: &RequestKeys,
    env: &KeyEnv,
    source: Option<&dyn KeySource>,
    sandbox: Option<Credential>,
    cloud_keys_held: bool,
) -> Result<ResolvedKeys, ApiError> {
    let anthropic = lookup(
        given.anthropic.as_ref(),
        ANTHROPIC_KEY_VARIABLE,
        env,
        source,
    )
    .await?;
    let openrouter = lookup(
        given.openrouter.as_ref(),
        OPENROUTER_KEY_VARIABLE,
        env,
        source,
    )
    .await?;
    let sandbox_key = match sandbox {
        Some(credential) => {
            lookup(
                given.sandbox(credential.field),
                credential.variable,
                env,
                source,
            )
            .await?
        }
        None => None,
    };

    let mut runner_env = BTreeMap::new();
    if let Some(key) = &anthropic {
        runner_env.insert(ANTHROPIC_KEY_VARIABLE.to_owned(), key.expose().to_owned());
    }
    runner_env.extend(env.forwarded.clone());
    // OpenRouter speaks Anthropic's API with a bearer token.
    if let Some(key) = &openrouter {
        runner_env.insert("ANTHROPIC_AUTH_TOKEN".to_owned(), key.expose().to_owned());
    }
    let custom_base_url = runner_env.contains_key("ANTHROPIC_BASE_URL");
    // With a custom endpoint and a token, a real Anthropic key must not
    // reach the SDK: it would send it as x-api-key to the proxy, and check
    // model names against Anthropic's list.
    if custom_base_url && runner_env.contains_key("ANTHROPIC_AUTH_TOKEN") {
        runner_env.insert(ANTHROPIC_KEY_VARIABLE.to_owned(), String::new());
    }

    if anthropic.is_none() && !env.alternate_provider && !custom_base_url {
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
    if let Some(credential) = sandbox
        && sandbox_key.is_none()
    {
        return Err(ApiError::MissingKey {
            field: credential.field.into(),
            message: format!(
                "{} is required: set it in the request body, or {} in the environment or .env",
                credential.field, credential.variable
            ),
        });
    }

    let mut secrets: Vec<Secret> = [&anthropic, &openrouter, &sandbox_key]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    secrets.extend(given.all().cloned());
    let mut files = Vec::new();
    if let Some(credentials) = &env.vertex_credentials {
        let content = credentials
            .clone()
            .map_err(|message| ApiError::Config { message })?;
        let json = String::from_utf8_lossy(&content).into_owned();
        secrets.push(Secret::new(json.as_str()));
        if cloud_keys_held {
            runner_env.insert(VERTEX_SERVICE_ACCOUNT_VARIABLE.to_owned(), json);
        } else {
            files.push(SandboxFile {
                path: layout::home_path(GCP_CREDENTIALS_FILE),
                content,
            });
            runner_env.insert(
                "GOOGLE_APPLICATION_CREDENTIALS".to_owned(),
                layout::home_path(GCP_CREDENTIALS_FILE),
            );
        }
    }
    Ok(ResolvedKeys {
        runner_env,
        files,
        sandbox: sandbox_key,
        secrets,
    })
}

/// Reads the service-account file named by GOOGLE_APPLICATION_CREDENTIALS
/// (relative paths from the working directory) for upload into the sandbox.
fn vertex_credentials(path: Option<&str>, cwd: &Path) -> Result<Bytes, String> {
    let Some(path) = path else {
        return Err(
            "GOOGLE_APPLICATION_CREDENTIALS is required when CLAUDE_CODE_USE_VERTEX is \
                    set: point it at your GCP service account JSON key"
                .into(),
        );
    };
    std::fs::read(cwd.join(path))
        .map(Bytes::from)
        .map_err(|e| format!("cannot read GOOGLE_APPLICATION_CREDENTIALS file {path}: {e}"))
}

#[cfg(test)]
mod tests;
