//! The AWS SDK's configuration, as the doors build it for every AWS client
//! they make (Secrets Manager for keys, DynamoDB for the run history).
//!
//! The SDK's usual chain finds the region and credentials (on Lambda: the
//! function's role). Where the door's snapshot of the environment sets
//! `AWS_REGION` (or `AWS_DEFAULT_REGION`) or `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY` (with `AWS_SESSION_TOKEN`), those win, so the
//! snapshot a door took is what counts. Each service's endpoint can be
//! pointed elsewhere (moto in the tests) by its own variable, as the SDKs
//! name them, or by `AWS_ENDPOINT_URL` for all of them.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;

use crate::env::EnvVars;

/// The SDK configuration from `env`, each operation (its retries
/// included) bounded by `operation_timeout`, so that an AWS service that
/// does not answer fails the call rather than hanging it.
pub(crate) async fn sdk_config(env: &EnvVars, operation_timeout: Duration) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
        TimeoutConfig::builder()
            .operation_timeout(operation_timeout)
            .build(),
    );
    if let Some(region) = env
        .get("AWS_REGION")
        .or_else(|| env.get("AWS_DEFAULT_REGION"))
    {
        loader = loader.region(Region::new(region.to_owned()));
    }
    if let (Some(id), Some(key)) = (
        env.get("AWS_ACCESS_KEY_ID"),
        env.get("AWS_SECRET_ACCESS_KEY"),
    ) {
        loader = loader.credentials_provider(Credentials::new(
            id,
            key,
            env.get("AWS_SESSION_TOKEN").map(str::to_owned),
            None,
            "environment",
        ));
    }
    loader.load().await
}

/// Where one service's requests go when the environment says:
/// `service_variable` (such as `AWS_ENDPOINT_URL_DYNAMODB`), else
/// `AWS_ENDPOINT_URL`.
pub(crate) fn endpoint<'a>(env: &'a EnvVars, service_variable: &str) -> Option<&'a str> {
    env.get(service_variable)
        .or_else(|| env.get("AWS_ENDPOINT_URL"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_services_own_endpoint_wins_over_the_shared_one() {
        let env = EnvVars::from_pairs([
            ("AWS_ENDPOINT_URL", "http://shared"),
            ("AWS_ENDPOINT_URL_DYNAMODB", "http://dynamodb"),
        ]);
        assert_eq!(
            endpoint(&env, "AWS_ENDPOINT_URL_DYNAMODB"),
            Some("http://dynamodb")
        );
        assert_eq!(
            endpoint(&env, "AWS_ENDPOINT_URL_SECRETS_MANAGER"),
            Some("http://shared")
        );
        assert_eq!(endpoint(&EnvVars::default(), "AWS_ENDPOINT_URL"), None);
    }
}
