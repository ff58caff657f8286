//! Whether a lifecycle event came from whoever holds the secret.
//!
//! Two schemes sign `e2b-signature`, and both are accepted:
//! - E2B's own: the unpadded base64 of SHA-256 over the secret's bytes and
//!   then the raw body (not an HMAC; `e2b_wire::events`);
//! - Python Sandstorm 0.9.2's: `sha256=` and the hex HMAC-SHA256 of the
//!   body under the secret, which its `ds webhook test` sends (0.9.2 also
//!   took the hex alone), so its tooling keeps working.
//!
//! Both compare in constant time. Which branch is tried depends only on
//! the header's shape, which the sender chose, never on the secret.

use aws_lc_rs::hmac;

use crate::secret::Secret;

/// How an event was signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// E2B's SHA-256 over secret and body.
    E2b,
    /// 0.9.2's `sha256=` hex HMAC.
    Hmac,
}

/// The scheme `header` signs `body` under `secret` with, if it does.
pub(crate) fn verify(secret: &Secret, body: &[u8], header: &str) -> Option<Scheme> {
    let header = header.trim();
    let secret = secret.expose().as_bytes();
    if let Some(hex) = header.strip_prefix("sha256=") {
        return hmac_matches(secret, body, hex).then_some(Scheme::Hmac);
    }
    if e2b_wire::events::signature_matches(secret, body, header) {
        return Some(Scheme::E2b);
    }
    hmac_matches(secret, body, header).then_some(Scheme::Hmac)
}

fn hmac_matches(secret: &[u8], body: &[u8], hex: &str) -> bool {
    let Some(tag) = unhex(hex) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, body, &tag).is_ok()
}

/// 64 hex digits, either case, as the 32 bytes they stand for.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    crate::hex::decode(text)
}

/// 0.9.2's signature of `body`, as its `ds webhook test` made it: for tests.
#[cfg(test)]
pub(crate) fn hmac_header(secret: &Secret, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes());
    let tag = hmac::sign(&key, body);
    format!("sha256={}", crate::hex::encode(tag.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed apart from this code, with Python:
    /// `base64.b64encode(hashlib.sha256(secret + body).digest()).rstrip(b"=")`
    /// and `hmac.new(secret, body, hashlib.sha256).hexdigest()`.
    const SECRET: &str = "e2b-webhook-secret";
    const BODY: &[u8] = br#"{"type":"sandbox.lifecycle.killed","sandbox_id":"sbx1"}"#;
    const E2B: &str = "L0Iwg0BPBb788Zkat7CSfg8SGqgU3hlruxj03SzgM/o";
    const E2B_URL_SAFE: &str = "L0Iwg0BPBb788Zkat7CSfg8SGqgU3hlruxj03SzgM_o";
    const HMAC_HEX: &str = "8be5c8a2a131687cadd6117d5386845d0f37d02849aba8900baa21a754423566";

    /// What 0.9.2's `ds webhook test` sends, signed under its secret
    /// (Python's hmac, as above).
    const LEGACY_SECRET: &str = "the-0.9.2-secret";
    const LEGACY_BODY: &[u8] = br#"{"type":"sandbox.lifecycle.test","sandboxId":"test-sandbox-000","eventData":{"sandbox_metadata":{"request_id":"test0000"}}}"#;
    const LEGACY_HMAC: &str = "993f6bdb89840cec881df494d1e9f1ebfba9a1f11553f41a3987d29747693beb";

    fn secret() -> Secret {
        Secret::new(SECRET)
    }

    #[test]
    fn e2b_s_signature_is_accepted_in_either_alphabet() {
        assert_eq!(verify(&secret(), BODY, E2B), Some(Scheme::E2b));
        assert_eq!(verify(&secret(), BODY, E2B_URL_SAFE), Some(Scheme::E2b));
        assert_eq!(
            verify(&secret(), BODY, &format!(" {E2B}= ")),
            Some(Scheme::E2b)
        );
    }

    #[test]
    fn the_0_9_2_hmac_is_accepted_with_or_without_its_prefix() {
        assert_eq!(
            verify(&secret(), BODY, &format!("sha256={HMAC_HEX}")),
            Some(Scheme::Hmac)
        );
        assert_eq!(verify(&secret(), BODY, HMAC_HEX), Some(Scheme::Hmac));
        assert_eq!(
            verify(
                &secret(),
                BODY,
                &format!("sha256={}", HMAC_HEX.to_uppercase())
            ),
            Some(Scheme::Hmac)
        );
        let legacy = Secret::new(LEGACY_SECRET);
        assert_eq!(
            verify(&legacy, LEGACY_BODY, &format!("sha256={LEGACY_HMAC}")),
            Some(Scheme::Hmac)
        );
        assert_eq!(
            hmac_header(&legacy, LEGACY_BODY),
            format!("sha256={LEGACY_HMAC}")
        );
    }

    #[test]
    fn anything_else_is_refused() {
        let mut other_body = BODY.to_vec();
        other_body.push(b'\n');
        for (secret, body, header) in [
            (secret(), &other_body[..], E2B.to_owned()),
            (Secret::new("another"), BODY, E2B.to_owned()),
            (secret(), &other_body[..], format!("sha256={HMAC_HEX}")),
            (Secret::new("another"), BODY, format!("sha256={HMAC_HEX}")),
            // E2B's digest where an HMAC is named, and the other way round.
            (secret(), BODY, format!("sha256={E2B}")),
            (secret(), BODY, String::new()),
            (secret(), BODY, "sha256=".to_owned()),
            (secret(), BODY, format!("sha256={}", &HMAC_HEX[..62])),
            (secret(), BODY, "not a signature".to_owned()),
        ] {
            assert_eq!(verify(&secret, body, &header), None, "{header:?}");
        }
    }
}
