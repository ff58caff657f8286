//! What a run's sandbox keeps of its webhook, for a server that has no
//! memory of the run (a serverless function, another instance): the URL,
//! sealed, in the sandbox's metadata, and the token the sandbox calls back
//! with when a turn ends.
//!
//! Both come from `SANDSTORM_WEBHOOK_SECRET`, which never enters a
//! sandbox. The URL is sealed (AES-256-GCM, bound to the run id's digest)
//! because it may hold the receiver's token, and metadata is listed by
//! anyone with the E2B key. The call-back token is an HMAC of the run id:
//! it names one run, so a sandbox (or an agent that got root in it) can
//! ask for its own run's notice, never for another's, and the notice is
//! read from the run's log and signed by the server.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use subtle::ConstantTimeEq as _;

use super::WebhookSecret;

/// The metadata key of the sealed webhook URL.
pub(crate) const URL_KEY: &str = "sandstorm_webhook_sealed";

/// `url` sealed for the run whose id's digest is `digest`; `None` when the
/// system has no randomness for the nonce.
pub(crate) fn seal_url(secret: &WebhookSecret, digest: &str, url: &str) -> Option<String> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).ok()?;
    let mut sealed = url.as_bytes().to_vec();
    key(secret)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(digest.as_bytes()),
            &mut sealed,
        )
        .ok()?;
    Some(format!(
        "{}{}",
        crate::hex::encode(&nonce),
        crate::hex::encode(&sealed)
    ))
}

/// The URL [`seal_url`] sealed for `digest`; `None` for anything else (a
/// value sealed under another secret, or for another run).
pub(crate) fn unseal_url(secret: &WebhookSecret, digest: &str, sealed: &str) -> Option<String> {
    let bytes = crate::hex::decode(sealed)?;
    let (nonce, ciphertext) = bytes.split_at_checked(NONCE_LEN)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buffer = ciphertext.to_vec();
    let plain = key(secret)
        .open_in_place(nonce, Aad::from(digest.as_bytes()), &mut buffer)
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

/// The token run `run_id`'s sandbox calls back with.
pub(crate) fn callback_token(secret: &WebhookSecret, run_id: &str) -> String {
    crate::hex::encode(&secret.tag(&format!("sandstorm run ended v1\0{run_id}")))
}

/// Whether `token` is run `run_id`'s call-back token, compared in constant
/// time.
pub(crate) fn is_callback_token(secret: &WebhookSecret, run_id: &str, token: &str) -> bool {
    let expected = callback_token(secret, run_id);
    bool::from(expected.as_bytes().ct_eq(token.as_bytes()))
}

/// The call run `run_id`'s sandbox makes when turn `turn` ends: to the
/// server's public address (`SANDSTORM_PUBLIC_URL`), with the run's token.
/// `None` without an address.
pub(crate) fn callback(
    settings: &crate::settings::Settings,
    secret: &WebhookSecret,
    run_id: &str,
    turn: u32,
) -> Option<crate::sandbox::Callback> {
    let base = settings.notify.public_url.as_ref()?;
    let base = base.as_str().trim_end_matches('/');
    Some(crate::sandbox::Callback {
        url: format!("{base}/runs/{run_id}/ended?turn={turn}"),
        token: crate::secret::Secret::new(callback_token(secret, run_id)),
    })
}

/// The call a detached run's sandbox makes when turn `turn` ends, on a
/// door that stays for nothing after its response (Lambda, Vercel): nothing
/// of the door is alive then to see the end. Wanted when the run has a
/// notice to tell (`has_notice`), or when the door keeps a history table,
/// whose record would otherwise learn the end only from a later reader.
/// `None` on a door that stays, or without the webhook secret the call is
/// signed under, or without `SANDSTORM_PUBLIC_URL`.
pub(crate) fn turn_callback(
    settings: &crate::settings::Settings,
    has_notice: bool,
    run_id: &str,
    turn: u32,
) -> Option<crate::sandbox::Callback> {
    if settings.stays_after_response || !(has_notice || settings.history.table.is_some()) {
        return None;
    }
    let Some(Ok(secret)) = &settings.notify.secret else {
        return None;
    };
    callback(settings, secret, run_id, turn)
}

/// The sealing key: the secret's HMAC of a label no notice signs (a
/// notice's signed content holds two dots before its body).
fn key(secret: &WebhookSecret) -> LessSafeKey {
    let derived = secret.tag("sandstorm webhook url seal v1");
    let unbound = UnboundKey::new(&AES_256_GCM, &derived)
        .unwrap_or_else(|_| unreachable!("a 32-byte key is an AES-256 key"));
    LessSafeKey::new(unbound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> WebhookSecret {
        use base64::Engine as _;
        WebhookSecret::parse(&base64::engine::general_purpose::STANDARD.encode([byte; 32]))
            .expect("a secret")
    }

    #[test]
    fn a_sealed_url_opens_for_its_run_under_its_secret_only() {
        let url = "https://hooks.example.com/x?token=receiver-token";
        let sealed = seal_url(&secret(1), "digest-a", url).expect("sealed");
        assert!(!sealed.contains("receiver-token") && !sealed.contains("hooks"));
        assert_eq!(
            unseal_url(&secret(1), "digest-a", &sealed).as_deref(),
            Some(url)
        );
        assert_eq!(unseal_url(&secret(2), "digest-a", &sealed), None);
        assert_eq!(unseal_url(&secret(1), "digest-b", &sealed), None);
        assert_eq!(unseal_url(&secret(1), "digest-a", "zz"), None);
        // Two seals of one URL differ (a fresh nonce each).
        assert_ne!(
            sealed,
            seal_url(&secret(1), "digest-a", url).expect("sealed")
        );
    }

    #[test]
    fn a_call_back_token_names_one_run() {
        let token = callback_token(&secret(1), "run_a");
        assert!(is_callback_token(&secret(1), "run_a", &token));
        assert!(!is_callback_token(&secret(1), "run_b", &token));
        assert!(!is_callback_token(&secret(2), "run_a", &token));
        assert!(!is_callback_token(&secret(1), "run_a", ""));
        assert_eq!(token.len(), 64);
    }
}
