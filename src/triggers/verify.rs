//! Whether a call to a webhook trigger comes from who knows its secret.
//!
//! Two ways are accepted: Python Sandstorm 0.9.2's shared-secret header
//! `X-Sandstorm-Trigger-Secret`, and GitHub's `X-Hub-Signature-256`
//! (`sha256=` and the hex HMAC-SHA256 of the raw body under the secret),
//! which GitHub sends when a webhook has a secret, so a GitHub webhook
//! points at a trigger with no proxy between. Both compare in constant
//! time.

use aws_lc_rs::hmac;
use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// The shared-secret header.
pub const SECRET_HEADER: &str = "x-sandstorm-trigger-secret";
/// GitHub's signature header.
pub const GITHUB_SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Why a call was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Neither header was sent.
    Missing,
    /// A header was sent, and it does not match.
    Wrong,
}

/// Checks `headers` and the raw `body` against `secret`.
pub fn check(secret: &Secret, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
    if let Some(sent) = headers.get(SECRET_HEADER) {
        let matches: bool = sent.as_bytes().ct_eq(secret.expose().as_bytes()).into();
        return if matches { Ok(()) } else { Err(Refusal::Wrong) };
    }
    if let Some(sent) = headers.get(GITHUB_SIGNATURE_HEADER) {
        let Some(hex) = sent.as_bytes().strip_prefix(b"sha256=") else {
            return Err(Refusal::Wrong);
        };
        let expected = github_signature(secret.expose().as_bytes(), body);
        // The hex GitHub sends is lower case; so is ours.
        let matches: bool = hex.ct_eq(expected.as_bytes()).into();
        return if matches { Ok(()) } else { Err(Refusal::Wrong) };
    }
    Err(Refusal::Missing)
}

/// The lower-case hex HMAC-SHA256 of `body` under `key`, as GitHub writes
/// it after `sha256=`.
pub fn github_signature(key: &[u8], body: &[u8]) -> String {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), body);
    crate::hex::encode(tag.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("a header value"));
        }
        map
    }

    #[test]
    fn githubs_documented_example_verifies() {
        // From GitHub's "Validating webhook deliveries": secret "It's a
        // Secret to Everybody", payload "Hello, World!".
        assert_eq!(
            github_signature(b"It's a Secret to Everybody", b"Hello, World!"),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        let secret = Secret::new("It's a Secret to Everybody");
        let signed = headers(&[(
            GITHUB_SIGNATURE_HEADER,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(check(&secret, &signed, b"Hello, World!"), Ok(()));
        // The same signature over another body is refused.
        assert_eq!(
            check(&secret, &signed, b"Hello, World?"),
            Err(Refusal::Wrong)
        );
    }

    #[test]
    fn the_shared_secret_header_must_match_exactly() {
        let secret = Secret::new("s3cret");
        assert_eq!(
            check(&secret, &headers(&[(SECRET_HEADER, "s3cret")]), b""),
            Ok(())
        );
        for wrong in ["s3cre", "s3cret ", "S3CRET", ""] {
            assert_eq!(
                check(&secret, &headers(&[(SECRET_HEADER, wrong)]), b""),
                Err(Refusal::Wrong),
                "{wrong:?}"
            );
        }
        assert_eq!(check(&secret, &headers(&[]), b""), Err(Refusal::Missing));
        assert_eq!(
            check(
                &secret,
                &headers(&[(GITHUB_SIGNATURE_HEADER, "sha1=abc")]),
                b""
            ),
            Err(Refusal::Wrong)
        );
    }
}
