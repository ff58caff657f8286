//! How the model endpoint authenticates to the real provider: the
//! credential it holds for a route, and how a request carries it.

use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;

use super::X_API_KEY;
use crate::secret::Secret;

/// How the upstream is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ModelAuth {
    /// `x-api-key: <key>` (Anthropic).
    ApiKey(Secret),
    /// `Authorization: Bearer <token>` (a custom endpoint, OpenRouter).
    Bearer(Secret),
}

/// Why a credential could not go on a request; names no secret.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// The credential holds bytes a header may not.
    #[error("the configured model credential is not a valid header value")]
    NotAHeader,
}

impl ModelAuth {
    /// Puts the credential on a request whose own credentials were removed.
    /// The method, URL and whole body are there for schemes that sign the
    /// request (SigV4).
    // Async for the schemes that fetch a token first (Vertex).
    #[allow(clippy::unused_async)]
    pub(crate) async fn apply(
        &self,
        _method: &Method,
        _url: &Url,
        headers: &mut HeaderMap,
        _body: &[u8],
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
        };
        let mut value = value.map_err(|_| AuthError::NotAHeader)?;
        value.set_sensitive(true);
        headers.insert(name, value);
        Ok(())
    }
}
