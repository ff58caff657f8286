//! Who may reach a run that outlives its request (issue 14).
//!
//! A detached run's id is its capability: 128 random bits from the system's
//! generator (a UUID v4 has only 122), written `run_` and 32 lowercase hex
//! digits. Its sandbox's metadata holds only the id's SHA-256 and that of
//! the credential that made it. So a caller who can list the team's
//! sandboxes, or who knows a sandbox's id, still cannot reach the run; a
//! run is found by a metadata query on the digest, which any instance can
//! make with nothing kept between requests; and an unknown id, a foreign
//! one and a wrong credential all look the same: no such run.

use std::collections::BTreeMap;
use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use subtle::ConstantTimeEq as _;

use crate::sandbox::{SandboxError, SandboxProvider, SandboxSummary};
use crate::secret::Secret;

/// The metadata key of the run id's digest.
pub const RUN_KEY: &str = "sandstorm_run";
/// The metadata key of the creating credential's digest.
pub const OWNER_KEY: &str = "sandstorm_owner";

const PREFIX: &str = "run_";
const RANDOM_BYTES: usize = 16;

/// A run's id. Its `Debug` shows only the prefix and the first hex digits:
/// the whole id is a credential, and logs are not the place for it.
#[derive(Clone, PartialEq, Eq)]
pub struct RunId(String);

impl RunId {
    /// A fresh id from the system's randomness.
    ///
    /// # Errors
    /// When the system has no randomness to give (no `getrandom`).
    pub fn generate() -> Result<Self, RunIdError> {
        let mut bytes = [0u8; RANDOM_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| RunIdError::NoRandomness)?;
        Ok(RunId(format!("{PREFIX}{}", crate::hex::encode(&bytes))))
    }

    /// An id as a client sends it back: exactly `run_` and 32 lowercase hex
    /// digits, so nothing else ever reaches a metadata query.
    ///
    /// # Errors
    /// [`RunIdError::Malformed`], which callers answer as "no such run".
    pub fn parse(text: &str) -> Result<Self, RunIdError> {
        let digits = text.strip_prefix(PREFIX).ok_or(RunIdError::Malformed)?;
        let well_formed = digits.len() == RANDOM_BYTES * 2
            && digits
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if well_formed {
            Ok(RunId(text.to_owned()))
        } else {
            Err(RunIdError::Malformed)
        }
    }

    /// The id as clients see it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the sandbox's metadata keeps instead of the id.
    pub fn digest(&self) -> String {
        sha256_hex(self.0.as_bytes())
    }
}

impl fmt::Debug for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.0.get(..PREFIX.len() + 4).unwrap_or(PREFIX);
        write!(f, "RunId({shown}...)")
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a run id could not be made or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RunIdError {
    /// Not an id this server hands out.
    #[error("a run id is run_ followed by 32 lowercase hex digits")]
    Malformed,
    /// The system's random generator failed.
    #[error("the system's random number generator is unavailable")]
    NoRandomness,
}

/// The metadata that ties a sandbox to `run` and to the credential that
/// started it (the request's API token, or its E2B key when it brought
/// one), to be merged into the sandbox's own.
pub fn metadata(run: &RunId, owner: &Secret) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RUN_KEY.to_owned(), run.digest()),
        (OWNER_KEY.to_owned(), owner_digest(owner)),
    ])
}

/// The sandbox of `run`, if it still exists and `owner` is the credential
/// that started it. `None` for every other case alike, so a caller cannot
/// tell a foreign run from one that never was.
///
/// # Errors
/// When the provider cannot list (it is down, or refuses the key).
pub async fn find(
    provider: &dyn SandboxProvider,
    run: &RunId,
    owner: &Secret,
    credential: Option<Secret>,
) -> Result<Option<SandboxSummary>, SandboxError> {
    let wanted = BTreeMap::from([(RUN_KEY.to_owned(), run.digest())]);
    let expected = owner_digest(owner);
    let found = provider
        .list(&wanted, credential)
        .await?
        .into_iter()
        .find(|sandbox| {
            sandbox
                .metadata
                .get(OWNER_KEY)
                .is_some_and(|got| bool::from(got.as_bytes().ct_eq(expected.as_bytes())))
        });
    Ok(found)
}

/// The metadata key of the run id, sealed (see [`seal`]).
pub const SEALED_KEY: &str = "sandstorm_run_sealed";

/// The run id, encrypted (AES-256-GCM) under a key derived from `key`, the
/// provider credential that made the sandbox, and bound to the id's digest:
/// listing a caller's runs must give their ids back, and whoever could
/// unseal this can already reach the sandbox with the same credential.
///
/// # Errors
/// When the system has no randomness for the nonce.
pub fn seal(run: &RunId, key: &Secret) -> Result<String, RunIdError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| RunIdError::NoRandomness)?;
    let mut sealed = run.0.as_bytes().to_vec();
    seal_key(key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(run.digest().as_bytes()),
            &mut sealed,
        )
        .map_err(|_| RunIdError::NoRandomness)?;
    Ok(format!(
        "{}{}",
        crate::hex::encode(&nonce),
        crate::hex::encode(&sealed)
    ))
}

/// The run id [`seal`] sealed under `key` for the run whose digest is
/// `digest`; `None` for anything else.
pub fn unseal(sealed: &str, digest: &str, key: &Secret) -> Option<RunId> {
    let bytes = crate::hex::decode(sealed)?;
    let (nonce, ciphertext) = bytes.split_at_checked(NONCE_LEN)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buffer = ciphertext.to_vec();
    let plain = seal_key(key)
        .open_in_place(nonce, Aad::from(digest.as_bytes()), &mut buffer)
        .ok()?;
    let run = RunId::parse(std::str::from_utf8(plain).ok()?).ok()?;
    (run.digest() == digest).then_some(run)
}

const NONCE_LEN: usize = 12;

fn seal_key(key: &Secret) -> LessSafeKey {
    let mut material = b"sandstorm run id seal v1\0".to_vec();
    material.extend_from_slice(key.expose().as_bytes());
    let derived = digest(&SHA256, &material);
    // A SHA-256 digest is exactly an AES-256 key.
    let unbound = UnboundKey::new(&AES_256_GCM, derived.as_ref())
        .unwrap_or_else(|_| unreachable!("a 32-byte key is an AES-256 key"));
    LessSafeKey::new(unbound)
}

/// What the sandbox's metadata keeps of the credential that made a run.
pub fn owner_digest(owner: &Secret) -> String {
    sha256_hex(owner.expose().as_bytes())
}

fn sha256_hex(bytes: &[u8]) -> String {
    crate::hex::encode(digest(&SHA256, bytes).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_128_random_bits_and_never_repeat() {
        let ids: std::collections::BTreeSet<String> = (0..1000)
            .map(|_| RunId::generate().expect("randomness").0)
            .collect();
        assert_eq!(ids.len(), 1000);
        for id in ids.iter().take(5) {
            assert_eq!(RunId::parse(id).expect("its own ids parse").as_str(), id);
            assert_eq!(id.len(), PREFIX.len() + 32);
        }
    }

    #[test]
    fn only_well_formed_ids_parse() {
        let good = "run_0123456789abcdef0123456789abcdef";
        assert!(RunId::parse(good).is_ok());
        for bad in [
            "",
            "run_",
            "0123456789abcdef0123456789abcdef",
            "run_0123456789ABCDEF0123456789abcdef",
            "run_0123456789abcdef0123456789abcde",
            "run_0123456789abcdef0123456789abcdef0",
            "run_0123456789abcdef0123456789abcdeg",
            "run_0123456789abcdef0123456789abcd&f",
        ] {
            assert_eq!(RunId::parse(bad), Err(RunIdError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn the_metadata_holds_digests_not_the_id_or_the_key() {
        let run = RunId::parse("run_0123456789abcdef0123456789abcdef").expect("valid");
        let key = Secret::new("e2b_secretsecret");
        let metadata = metadata(&run, &key);
        let all: String = metadata.values().cloned().collect();
        assert!(!all.contains("0123456789abcdef0123456789abcdef"));
        assert!(!all.contains("secretsecret"));
        assert_eq!(metadata[RUN_KEY], run.digest());
        assert_eq!(metadata[RUN_KEY].len(), 64);
        assert_ne!(metadata[OWNER_KEY], metadata[RUN_KEY]);
    }

    #[test]
    fn digests_are_sha_256_in_lowercase_hex() {
        // FIPS 180-2's first example.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_sealed_id_opens_only_with_its_key_and_for_its_own_run() {
        let run = RunId::generate().expect("randomness");
        let other = RunId::generate().expect("randomness");
        let key = Secret::new("e2b_team_one_key");
        let sealed = seal(&run, &key).expect("sealed");
        assert!(!sealed.contains(&run.as_str()[4..]));
        assert_eq!(unseal(&sealed, &run.digest(), &key), Some(run.clone()));
        assert_eq!(
            unseal(&sealed, &run.digest(), &Secret::new("e2b_team_two_key")),
            None
        );
        assert_eq!(unseal(&sealed, &other.digest(), &key), None);
        assert_eq!(unseal("zz", &run.digest(), &key), None);
        assert_eq!(unseal(&sealed[..20], &run.digest(), &key), None);
        assert_ne!(
            seal(&run, &key).expect("sealed"),
            sealed,
            "a fresh nonce each time"
        );
    }

    #[test]
    fn debug_hides_the_id() {
        let run = RunId::parse("run_0123456789abcdef0123456789abcdef").expect("valid");
        assert_eq!(format!("{run:?}"), "RunId(run_0123...)");
    }
}
