//! Keys from an AWS Secrets Manager secret (feature `aws-secrets`).
//!
//! `SANDSTORM_SECRET_ID` names one secret whose `SecretString` is a JSON
//! object such as `infra/secret-shape.json`:
//! `{"ANTHROPIC_API_KEY": "...", "E2B_API_KEY": "...",
//! "OPENROUTER_API_KEY": "...", "SANDSTORM_API_TOKEN": "..."}`.
//! Every key is optional; the request and the environment come first (see
//! [`keys`](crate::keys)).
//!
//! A warm function must not call Secrets Manager on every request (it costs
//! latency and money, and is rate limited), so the parsed secret is kept in
//! the process for `SANDSTORM_SECRET_TTL` seconds (300 by default, as AWS's
//! own Parameters and Secrets extension does). Concurrent requests that find
//! the cache empty or stale wait for one `GetSecretValue`, not one each.
//! A failure is not cached: the next request tries again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::env::EnvVars;
use crate::keys::{KeySource, KeySourceError};
use crate::secret::Secret;

/// How long a fetched secret is used before it is read again.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// The names a secret may hold. Other fields are allowed and ignored.
pub const SECRET_KEYS: &[&str] = &[
    crate::keys::ANTHROPIC_KEY_VARIABLE,
    crate::sandbox::e2b::CREDENTIAL.variable,
    crate::keys::OPENROUTER_KEY_VARIABLE,
    crate::auth::TOKEN_VARIABLES[0],
    crate::auth::TOKEN_VARIABLES[1],
    crate::settings::E2B_WEBHOOK_SECRET_VARIABLE,
];

/// An upper bound on one `GetSecretValue` with its retries, so that an
/// unreachable Secrets Manager fails the request instead of hanging it.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the secret could not be used. Each message names the secret id and
/// what to fix; none contains a value from the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No secret has that id in this region.
    #[error(
        "AWS secret {id:?} was not found: check SANDSTORM_SECRET_ID and that the function runs \
         in the secret's region"
    )]
    NotFound {
        /// The secret id, as `SANDSTORM_SECRET_ID` gave it.
        id: String,
    },
    /// The function's role may not read or decrypt the secret.
    #[error(
        "access to AWS secret {id:?} was denied: the function's role needs \
         secretsmanager:GetSecretValue on it, and kms:Decrypt when it is encrypted with a \
         customer-managed key (see infra/iam-policy.json)"
    )]
    AccessDenied {
        /// The secret id, as `SANDSTORM_SECRET_ID` gave it.
        id: String,
    },
    /// The secret was read but does not hold a JSON object of strings.
    #[error(
        "AWS secret {id:?} is not a JSON object of strings ({reason}); store it as in \
         infra/secret-shape.json"
    )]
    NotJson {
        /// The secret id, as `SANDSTORM_SECRET_ID` gave it.
        id: String,
        /// What is wrong with its shape, naming positions and fields only.
        reason: String,
    },
    /// Anything else: the network, a timeout, throttling.
    #[error("could not read AWS secret {id:?}: {reason}")]
    Unavailable {
        /// The secret id, as `SANDSTORM_SECRET_ID` gave it.
        id: String,
        /// The AWS SDK's account of the failure.
        reason: String,
    },
}

/// A [`KeySource`] over one Secrets Manager secret, cached for a TTL.
pub struct SecretsManagerSource {
    client: Client,
    secret_id: String,
    ttl: Duration,
    cache: Mutex<Option<Cached>>,
    fetches: AtomicU64,
}

struct Cached {
    fetched: Instant,
    values: Arc<BTreeMap<String, Secret>>,
}

impl std::fmt::Debug for SecretsManagerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsManagerSource")
            .field("secret_id", &self.secret_id)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl SecretsManagerSource {
    /// A source over `secret_id` that reads it again after `ttl`.
    pub fn new(client: Client, secret_id: impl Into<String>, ttl: Duration) -> Self {
        SecretsManagerSource {
            client,
            secret_id: secret_id.into(),
            ttl,
            cache: Mutex::new(None),
            fetches: AtomicU64::new(0),
        }
    }

    /// The source `SANDSTORM_SECRET_ID` names, or `None` when it is unset.
    ///
    /// The AWS SDK's usual chain finds the region and credentials (on Lambda:
    /// the function's role). Where `env` sets `AWS_REGION`,
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`,
    /// `AWS_ENDPOINT_URL_SECRETS_MANAGER` or `AWS_ENDPOINT_URL`, those win, so
    /// the snapshot a door took is what counts.
    pub async fn from_env(env: &EnvVars) -> Result<Option<Self>, String> {
        let Some(secret_id) = env.get("SANDSTORM_SECRET_ID") else {
            return Ok(None);
        };
        let ttl = match env.get("SANDSTORM_SECRET_TTL") {
            Some(v) => Duration::from_secs(v.trim().parse().map_err(|_| {
                format!("SANDSTORM_SECRET_TTL must be a whole number of seconds, got {v:?}")
            })?),
            None => DEFAULT_TTL,
        };
        let config = super::aws::sdk_config(env, OPERATION_TIMEOUT).await;
        if config.region().is_none() {
            return Err(format!(
                "SANDSTORM_SECRET_ID is set to {secret_id:?} but no AWS region is configured; \
                 set AWS_REGION"
            ));
        }
        let mut client = aws_sdk_secretsmanager::config::Builder::from(&config);
        if let Some(url) = super::aws::endpoint(env, "AWS_ENDPOINT_URL_SECRETS_MANAGER") {
            client = client.endpoint_url(url);
        }
        Ok(Some(Self::new(
            Client::from_conf(client.build()),
            secret_id,
            ttl,
        )))
    }

    /// The secret this source reads.
    pub fn secret_id(&self) -> &str {
        &self.secret_id
    }

    /// How many `GetSecretValue` calls this source has made: what the TTL
    /// cache saves is visible in tests and debugging.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The secret's values, from the cache while it is fresh.
    pub async fn values(&self) -> Result<Arc<BTreeMap<String, Secret>>, SecretError> {
        // Held across the fetch on purpose: concurrent first uses wait for
        // the one call in flight instead of each making their own.
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref()
            && cached.fetched.elapsed() < self.ttl
        {
            return Ok(cached.values.clone());
        }
        let values = Arc::new(self.fetch().await.inspect_err(|error| {
            tracing::error!(%error, "reading the AWS secret failed");
        })?);
        *cache = Some(Cached {
            fetched: Instant::now(),
            values: values.clone(),
        });
        Ok(values)
    }

    async fn fetch(&self) -> Result<BTreeMap<String, Secret>, SecretError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let output = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| classify(&self.secret_id, &e))?;
        let Some(text) = output.secret_string() else {
            return Err(SecretError::NotJson {
                id: self.secret_id.clone(),
                reason: "it holds binary data, not a SecretString".into(),
            });
        };
        parse(&self.secret_id, text)
    }
}

#[async_trait::async_trait]
impl KeySource for SecretsManagerSource {
    async fn get(&self, name: &str) -> Result<Option<Secret>, KeySourceError> {
        let values = self
            .values()
            .await
            .map_err(|e| KeySourceError(e.to_string()))?;
        Ok(values.get(name).cloned())
    }
}

fn classify(id: &str, error: &SdkError<GetSecretValueError>) -> SecretError {
    let id = id.to_owned();
    if let SdkError::ServiceError(service) = error {
        let err = service.err();
        if err.is_resource_not_found_exception() {
            return SecretError::NotFound { id };
        }
        if matches!(err.code(), Some("AccessDeniedException" | "AccessDenied"))
            || err.is_decryption_failure()
        {
            return SecretError::AccessDenied { id };
        }
    }
    // The SDK's error chain names the failure (a code and AWS's message, a
    // connection error, a timeout); it never holds the secret's value,
    // which only a successful response carries.
    SecretError::Unavailable {
        id,
        reason: DisplayErrorContext(error).to_string(),
    }
}

/// Parses a secret's JSON. Error reasons name positions and fields, never
/// values: a serde message may quote the text it failed on.
pub fn parse(id: &str, text: &str) -> Result<BTreeMap<String, Secret>, SecretError> {
    let not_json = |reason: String| SecretError::NotJson {
        id: id.to_owned(),
        reason,
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        not_json(format!(
            "it is not valid JSON: the error is at line {}, column {}",
            e.line(),
            e.column()
        ))
    })?;
    let serde_json::Value::Object(fields) = value else {
        return Err(not_json("it is JSON but not an object".into()));
    };
    let mut values = BTreeMap::new();
    for (name, value) in fields {
        match value {
            // Empty means unset, as in the environment: the shape's
            // placeholders can stay.
            serde_json::Value::String(s) if s.is_empty() => {}
            serde_json::Value::String(s) => {
                values.insert(name, Secret::new(s));
            }
            _ if SECRET_KEYS.contains(&name.as_str()) => {
                return Err(not_json(format!("the field {name} is not a string")));
            }
            _ => {}
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_object_of_strings_is_read() {
        let values = parse(
            "s",
            r#"{"ANTHROPIC_API_KEY":"sk-1","E2B_API_KEY":"e2b_2","OPENROUTER_API_KEY":"","note":{"x":1}}"#,
        )
        .expect("parses");
        assert_eq!(values["ANTHROPIC_API_KEY"].expose(), "sk-1");
        assert_eq!(values["E2B_API_KEY"].expose(), "e2b_2");
        assert!(!values.contains_key("OPENROUTER_API_KEY"), "empty is unset");
        assert!(!values.contains_key("note"));
    }

    #[test]
    fn parse_errors_name_the_secret_and_never_its_value() {
        for text in [
            "sk-ant-not-json-at-all",
            r#"["sk-ant-in-an-array"]"#,
            r#"{"ANTHROPIC_API_KEY": 12345678}"#,
            r#"{"ANTHROPIC_API_KEY": "sk-ant-cut"#,
        ] {
            let err = parse("prod/sandstorm", text).expect_err(text);
            assert!(matches!(err, SecretError::NotJson { .. }), "{err:?}");
            let shown = err.to_string();
            assert!(shown.contains("\"prod/sandstorm\""), "{shown}");
            for fragment in ["sk-ant", "12345678"] {
                assert!(!shown.contains(fragment), "{shown}");
            }
        }
    }

    #[test]
    fn each_failure_says_what_to_fix() {
        let id = || "arn:aws:secretsmanager:eu-west-1:1:secret:s".to_owned();
        let not_found = SecretError::NotFound { id: id() }.to_string();
        assert!(not_found.contains("not found") && not_found.contains("SANDSTORM_SECRET_ID"));
        let denied = SecretError::AccessDenied { id: id() }.to_string();
        assert!(denied.contains("secretsmanager:GetSecretValue"), "{denied}");
        assert!(denied.contains(&id()), "{denied}");
    }

    #[tokio::test]
    async fn an_unset_secret_id_means_no_source_and_a_bad_ttl_is_an_error() {
        assert!(
            SecretsManagerSource::from_env(&EnvVars::default())
                .await
                .expect("fine")
                .is_none()
        );
        let env = EnvVars::from_pairs([
            ("SANDSTORM_SECRET_ID", "s"),
            ("SANDSTORM_SECRET_TTL", "five minutes"),
        ]);
        let err = SecretsManagerSource::from_env(&env)
            .await
            .expect_err("bad ttl");
        assert!(err.contains("SANDSTORM_SECRET_TTL"), "{err}");
    }
}
