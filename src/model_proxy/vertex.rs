//! Google Vertex AI's credential: the host holds the service account and
//! trades it for short-lived access tokens, so neither the key file nor a
//! token's source enters the sandbox.
//!
//! The trade is `gcp_auth`'s: a JWT signed with the account's key (RS256)
//! goes to the key file's own `token_uri` (the OAuth 2.0 JWT-bearer grant),
//! and the access token that comes back is cached until shortly before it
//! expires. One [`VertexAuth`] per service account is shared by every run
//! ([`Accounts`]), so runs do not each fetch a token.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gcp_auth::{CustomServiceAccount, TokenProvider};

use super::upstream::AuthError;

/// What the token may do: Vertex AI's calls need the cloud-platform scope.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// How long one token fetch may take. `gcp_auth`'s own client has no
/// deadline, and a model request must not hang on it.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// One service account's token source.
#[derive(Clone)]
pub(crate) struct VertexAuth {
    account: Arc<CustomServiceAccount>,
}

impl fmt::Debug for VertexAuth {
    // The account's email is an identity, and its key a secret: neither.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VertexAuth").finish_non_exhaustive()
    }
}

/// The same account's source is the same source: routes of one service
/// account share their tokens.
impl PartialEq for VertexAuth {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.account, &other.account)
    }
}

impl Eq for VertexAuth {}

impl VertexAuth {
    /// A current access token, fetched when the cached one is near its end.
    pub(crate) async fn token(&self) -> Result<String, AuthError> {
        let token = tokio::time::timeout(TOKEN_TIMEOUT, self.account.token(&[SCOPE]))
            .await
            .map_err(|_| AuthError::Token)?
            // The error may quote the token endpoint's answer; the log gets
            // it, the agent a plain sentence.
            .map_err(|e| {
                tracing::warn!(error = %e, "no Vertex access token");
                AuthError::Token
            })?;
        Ok(token.as_str().to_owned())
    }
}

/// The token sources of the service accounts seen so far, by their key
/// file's contents. A server has one account (the operator's), so this
/// holds one entry.
#[derive(Default)]
pub(crate) struct Accounts {
    by_file: Mutex<HashMap<String, VertexAuth>>,
}

impl fmt::Debug for Accounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accounts")
            .field("accounts", &crate::sync::lock(&self.by_file).len())
            .finish()
    }
}

impl Accounts {
    /// The token source of the service account whose key file is `json`.
    /// The error names no part of the file: a parse error could quote the
    /// private key.
    pub(crate) fn get(&self, json: &str) -> Result<VertexAuth, String> {
        let mut by_file = crate::sync::lock(&self.by_file);
        if let Some(auth) = by_file.get(json) {
            return Ok(auth.clone());
        }
        let account = CustomServiceAccount::from_json(json).map_err(|e| {
            format!(
                "the Vertex service account (GOOGLE_APPLICATION_CREDENTIALS) cannot be used: {}",
                what_failed(&e)
            )
        })?;
        let auth = VertexAuth {
            account: Arc::new(account),
        };
        by_file.insert(json.to_owned(), auth.clone());
        Ok(auth)
    }
}

/// What went wrong, in `gcp_auth`'s own fixed words only: the errors' sources
/// (a JSON parse error, say) may quote the key file.
fn what_failed(error: &gcp_auth::Error) -> &'static str {
    match error {
        gcp_auth::Error::Http(what, _)
        | gcp_auth::Error::Io(what, _)
        | gcp_auth::Error::Json(what, _)
        | gcp_auth::Error::Other(what, _)
        | gcp_auth::Error::Str(what) => what,
        gcp_auth::Error::NoAuthMethod(..) => "no authentication method",
    }
}
