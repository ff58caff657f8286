//! Amazon Bedrock's request signature (SigV4), made on the host so the AWS
//! keys never enter the sandbox.
//!
//! The signing itself is the AWS SDK's own `aws-sigv4`; this module only
//! chooses what goes into it. `tests/fixtures/sigv4/` holds vectors made
//! by botocore, an independent signer, and the tests hold ours to them.

use std::fmt;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;

use super::upstream::AuthError;
use crate::secret::Secret;

/// The signing name of both Bedrock endpoints: the runtime
/// (`bedrock-runtime.{region}`, invocations) and the control plane
/// (`bedrock.{region}`, the inference-profile list Claude Code reads).
const SERVICE: &str = "bedrock";

/// An AWS key pair, with its session token when it is temporary, and the
/// region requests are signed for.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AwsSigner {
    pub(crate) region: String,
    pub(crate) access_key_id: Secret,
    pub(crate) secret_access_key: Secret,
    pub(crate) session_token: Option<Secret>,
}

impl fmt::Debug for AwsSigner {
    // The key id is no secret to AWS, but it names an account's user:
    // the region only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsSigner")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl AwsSigner {
    /// Signs a request for Bedrock at `time`, adding `authorization`,
    /// `x-amz-date` and, with temporary keys, `x-amz-security-token`.
    ///
    /// Only `host` (from `url`), `content-type` and the `x-amz-*` headers
    /// (the client's, such as the AWS SDK's `x-amz-user-agent`, and the
    /// signer's own) are signed, which is what AWS requires: the rest of
    /// what the agent sent (`anthropic-beta`, `x-stainless-*`,
    /// `accept-encoding`) passes unsigned, so the HTTP client or a proxy on
    /// the way may add to or rewrite them without breaking the signature.
    pub(crate) fn sign(
        &self,
        method: &Method,
        url: &Url,
        headers: &mut HeaderMap,
        body: &[u8],
        time: SystemTime,
    ) -> Result<(), AuthError> {
        for name in ["x-amz-date", "x-amz-security-token", "x-amz-content-sha256"] {
            headers.remove(name);
        }
        let identity = Credentials::new(
            self.access_key_id.expose(),
            self.secret_access_key.expose(),
            self.session_token.as_ref().map(|t| t.expose().to_owned()),
            None,
            "sandstorm",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(SERVICE)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|_| AuthError::Signing)?
            .into();
        let signed: Vec<(&str, &str)> = headers
            .iter()
            .filter(|(name, _)| {
                *name == header::CONTENT_TYPE || name.as_str().starts_with("x-amz-")
            })
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
            .collect();
        let request = SignableRequest::new(
            method.as_str(),
            url.as_str(),
            signed.into_iter(),
            SignableBody::Bytes(body),
        )
        .map_err(|_| AuthError::Signing)?;
        let (instructions, _signature) = sign(request, &params)
            .map_err(|_| AuthError::Signing)?
            .into_parts();
        let (added, _params) = instructions.into_parts();
        for added in added {
            let name = HeaderName::from_bytes(added.name().as_bytes())
                .map_err(|_| AuthError::NotAHeader)?;
            let mut value =
                HeaderValue::from_str(added.value()).map_err(|_| AuthError::NotAHeader)?;
            value.set_sensitive(added.sensitive() || name == header::AUTHORIZATION);
            headers.insert(name, value);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "sigv4_tests.rs"]
mod tests;
