//! Bearer-token authentication of `/query`.
//!
//! A deployed endpoint spends its owner's API money and runs arbitrary
//! agent code, so when a token is configured (`SANDSTORM_API_TOKEN`, from
//! the environment or the AWS secret) every query must carry it. During a
//! rotation `SANDSTORM_API_TOKEN_PREVIOUS` is accepted too. Python
//! Sandstorm's names for the two (`SANDSTORM_API_KEY`,
//! `SANDSTORM_API_KEY_PREVIOUS`) count the same.

use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::keys::KeySource;
use crate::secret::Secret;
use crate::settings::AuthSettings;

/// The variables (and AWS secret keys) that hold the accepted bearer tokens:
/// the current one and, during a rotation, the previous one. The one list of
/// their names.
pub(crate) const TOKEN_VARIABLES: [&str; 2] =
    ["SANDSTORM_API_TOKEN", "SANDSTORM_API_TOKEN_PREVIOUS"];

/// Python Sandstorm 0.9.2's names for the same two tokens, in the same
/// order: a deployment moved over with them set must not become an open
/// endpoint.
pub(crate) const TOKEN_ALIASES: [&str; 2] = ["SANDSTORM_API_KEY", "SANDSTORM_API_KEY_PREVIOUS"];

/// The shortest bearer token accepted, as Python Sandstorm 0.9.2 has it: a
/// token anyone could guess makes auth a formality.
pub(crate) const MIN_TOKEN_CHARS: usize = 32;

/// Refuses a token shorter than [`MIN_TOKEN_CHARS`]; the message names
/// the variable it came from, never the token.
pub(crate) fn long_enough(variable: &str, token: &str) -> Result<(), String> {
    let chars = token.chars().count();
    if chars < MIN_TOKEN_CHARS {
        return Err(format!(
            "{variable} must be at least {MIN_TOKEN_CHARS} characters long, and it has {chars}; \
             make one with `openssl rand -hex 32`"
        ));
    }
    Ok(())
}

/// Admits or refuses one request, before its body is read.
pub(crate) async fn check(
    settings: &AuthSettings,
    headers: &HeaderMap,
    source: Option<&dyn KeySource>,
) -> Result<(), ApiError> {
    let mut tokens = settings.tokens.clone();
    if tokens.is_empty()
        && let Some(source) = source
    {
        for (name, alias) in TOKEN_VARIABLES.into_iter().zip(TOKEN_ALIASES) {
            let mut token = source
                .get(name)
                .await
                .map_err(|e| ApiError::Config { message: e.0 })?;
            let mut given = name;
            if token.is_none() {
                token = source
                    .get(alias)
                    .await
                    .map_err(|e| ApiError::Config { message: e.0 })?;
                given = alias;
            }
            if let Some(token) = &token {
                long_enough(given, token.expose())
                    .map_err(|message| ApiError::Config { message })?;
            }
            tokens.extend(token);
        }
    }
    if tokens.is_empty() {
        return if settings.allow_anonymous {
            Ok(())
        } else {
            Err(ApiError::Config {
                message: "this endpoint has no SANDSTORM_API_TOKEN configured and anonymous \
                          access is off; set SANDSTORM_API_TOKEN (or SANDSTORM_ALLOW_ANONYMOUS=1)"
                    .into(),
            })
        };
    }
    let presented = bearer(headers).ok_or(ApiError::Unauthorized)?;
    if tokens.iter().any(|t| matches(t, presented)) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Constant time in the token's content, so response timing does not reveal
/// how much of a guess was right. (A length mismatch returns early; the
/// length of a token is not a secret worth protecting.)
pub(crate) fn matches(expected: &Secret, presented: &str) -> bool {
    bool::from(expected.expose().as_bytes().ct_eq(presented.as_bytes()))
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, a.parse().expect("header"));
        }
        h
    }

    fn settings(tokens: &[&str], anonymous: bool) -> AuthSettings {
        AuthSettings {
            tokens: tokens.iter().map(|t| Secret::from(*t)).collect(),
            allow_anonymous: anonymous,
        }
    }

    #[tokio::test]
    async fn the_current_and_the_previous_token_are_accepted() {
        let s = settings(&["new-token", "old-token"], false);
        assert!(
            check(&s, &headers(Some("Bearer new-token")), None)
                .await
                .is_ok()
        );
        assert!(
            check(&s, &headers(Some("bearer old-token")), None)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn missing_or_wrong_tokens_are_unauthorized() {
        let s = settings(&["new-token"], true);
        for h in [
            None,
            Some("Bearer wrong"),
            Some("Basic new-token"),
            Some("Bearer "),
            Some("new-token"),
        ] {
            assert!(
                matches!(
                    check(&s, &headers(h), None).await,
                    Err(ApiError::Unauthorized)
                ),
                "{h:?}"
            );
        }
    }

    #[tokio::test]
    async fn without_a_token_anonymous_access_is_a_setting() {
        assert!(
            check(&settings(&[], true), &headers(None), None)
                .await
                .is_ok()
        );
        let refused = check(&settings(&[], false), &headers(None), None).await;
        assert!(matches!(refused, Err(ApiError::Config { .. })));
    }
}
