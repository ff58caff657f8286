//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): what
//! lets a receiver know a notice is ours, whole, and fresh.
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`, the
//! signature `v1,` and the base64 of its HMAC-SHA256 under the secret's
//! bytes. The secret is written as the standard writes it: `whsec_` and
//! the base64 of its bytes, which is what every official verifier takes.
//! Each attempt is signed again with its own timestamp, as verifiers
//! refuse one more than five minutes away from their clock.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};

/// The variable that holds the secret.
pub(crate) const SECRET_VARIABLE: &str = "SANDSTORM_WEBHOOK_SECRET";
/// What the standard's secrets start with.
const PREFIX: &str = "whsec_";
/// The sizes the standard asks of a secret, in bytes.
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// Base64 as the official verifiers read a secret: with or without its
/// padding.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The key notices are signed with. `Debug` never shows it. Shared: the
/// key holds a whole HMAC state, and every run's plan carries one.
#[derive(Clone)]
pub(crate) struct WebhookSecret(Arc<hmac::Key>);

impl WebhookSecret {
    /// Reads `whsec_<base64>`, or the base64 alone.
    ///
    /// # Errors
    /// A message naming [`SECRET_VARIABLE`] when it is not base64 or not
    /// 24 to 64 bytes.
    pub(crate) fn parse(value: &str) -> Result<Self, String> {
        let encoded = value.trim();
        let encoded = encoded.strip_prefix(PREFIX).unwrap_or(encoded);
        let how = format!("make one with: echo \"{PREFIX}$(openssl rand -base64 32)\"");
        let bytes = LENIENT.decode(encoded).map_err(|_| {
            format!(
                "{SECRET_VARIABLE} must be {PREFIX} followed by base64, as Standard Webhooks \
                 writes secrets; {how}"
            )
        })?;
        if !SECRET_BYTES.contains(&bytes.len()) {
            return Err(format!(
                "{SECRET_VARIABLE} holds {} bytes; Standard Webhooks asks for {} to {}; {how}",
                bytes.len(),
                SECRET_BYTES.start(),
                SECRET_BYTES.end()
            ));
        }
        Ok(WebhookSecret(Arc::new(hmac::Key::new(
            hmac::HMAC_SHA256,
            &bytes,
        ))))
    }

    /// The `webhook-signature` of `body`, sent as message `id` at
    /// `timestamp` (Unix seconds).
    pub(crate) fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(format!("{id}.{timestamp}.").as_bytes());
        context.update(body);
        format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
    }

    /// The HMAC of `message` under this key, for what is not a notice (a
    /// run's call-back token, the key that seals its URL): a notice's
    /// signed content always holds two dots before its body, and each
    /// such message names its purpose and has none.
    pub(crate) fn tag(&self, message: &str) -> [u8; 32] {
        let tag = hmac::sign(&self.0, message.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reference vector: the official Python library (`standardwebhooks`,
    /// `Webhook.sign`) signs this id, timestamp and body under this secret
    /// to this signature.
    #[test]
    fn signs_as_the_standard_s_reference_does() {
        let secret =
            WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let signature = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn the_prefix_and_the_padding_are_optional() {
        let with = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let without = WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        assert_eq!(with.sign("a", 1, b"b"), without.sign("a", 1, b"b"));
        // 32 bytes, whose base64 ends in one `=`, read without it.
        let padded = STANDARD.encode([7u8; 32]);
        let unpadded = padded.trim_end_matches('=');
        assert_ne!(padded, unpadded);
        let a = WebhookSecret::parse(&padded).expect("padded");
        let b = WebhookSecret::parse(unpadded).expect("unpadded");
        assert_eq!(a.sign("a", 1, b"b"), b.sign("a", 1, b"b"));
    }

    #[test]
    fn a_bad_secret_is_refused_naming_the_variable_never_showing_it() {
        for bad in ["whsec_not base64!", "whsec_c2hvcnQ=", ""] {
            let error = WebhookSecret::parse(bad).expect_err(bad);
            assert!(error.contains(SECRET_VARIABLE), "{error}");
            assert!(error.contains("openssl rand"), "{error}");
            if bad.len() > 6 {
                assert!(!error.contains(&bad[6..]), "{error}");
            }
        }
        let secret = WebhookSecret::parse(&STANDARD.encode([1u8; 24])).expect("24 bytes");
        assert_eq!(format!("{secret:?}"), "WebhookSecret(***)");
    }

    #[test]
    fn another_body_id_or_time_signs_otherwise() {
        let secret = WebhookSecret::parse(&STANDARD.encode([9u8; 32])).expect("secret");
        let base = secret.sign("id", 10, b"body");
        assert_ne!(base, secret.sign("id", 10, b"bodY"));
        assert_ne!(base, secret.sign("iD", 10, b"body"));
        assert_ne!(base, secret.sign("id", 11, b"body"));
    }
}
