//! How the model endpoint authenticates to the real provider: the
//! credential it holds for a route, and how a request carries it.

use std::time::SystemTime;

use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;

use super::X_API_KEY;
use super::sigv4::AwsSigner;
use super::vertex::VertexAuth;
use crate::secret::Secret;

/// How the upstream is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ModelAuth {
    /// `x-api-key: <key>`: Anthropic, and Azure AI Foundry (its Anthropic
    /// SDK sends the Foundry key in the same header).
    ApiKey(Secret),
    /// `Authorization: Bearer <token>`: a custom endpoint (OpenRouter), a
    /// Bedrock API key, a Foundry (Entra ID) token.
    Bearer(Secret),
    /// Amazon Bedrock with AWS keys: each request signed (SigV4).
    Bedrock(AwsSigner),
    /// Google Vertex AI: a service account's access token as bearer.
    Vertex(VertexAuth),
}

/// Why a credential could not go on a request; names no secret.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// The credential holds bytes a header may not.
    #[error("the configured model credential is not a valid header value")]
    NotAHeader,
    /// The AWS signer refused the request or the keys.
    #[error("the request could not be signed for Bedrock with the configured AWS keys")]
    Signing,
    /// The service account's token endpoint did not give a token.
    #[error("no Vertex access token could be had for the configured service account")]
    Token,
}

impl ModelAuth {
    /// Puts the credential on a request whose own credentials were removed.
    /// The method, URL and whole body are there for schemes that sign the
    /// request (SigV4).
    pub(crate) async fn apply(
        &self,
        method: &Method,
        url: &Url,
        headers: &mut HeaderMap,
        body: &[u8],
    ) -> Result<(), AuthError> {
        let (name, value) = match self {
            ModelAuth::ApiKey(key) => (
                HeaderName::from_static(X_API_KEY),
                HeaderValue::from_str(key.expose()),
            ),
            ModelAuth::Bearer(token) => (
                header::AUTHORIZATION,
                HeaderValue::try_from(format!("Bearer {}", token.expose())),
            ),
            ModelAuth::Bedrock(signer) => {
                return signer.sign(method, url, headers, body, SystemTime::now());
            }
            ModelAuth::Vertex(account) => (
                header::AUTHORIZATION,
                HeaderValue::try_from(format!("Bearer {}", account.token().await?)),
            ),
        };
        let mut value = value.map_err(|_| AuthError::NotAHeader)?;
        value.set_sensitive(true);
        headers.insert(name, value);
        Ok(())
    }
}
