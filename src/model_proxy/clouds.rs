//! The cloud providers' side of [`keyless`](super::keyless): Amazon
//! Bedrock, Google Vertex AI and Azure AI Foundry, each told apart by
//! Claude Code's own switches.
//!
//! What Claude Code reads was taken from the CLI the runner pins
//! (`@anthropic-ai/claude-agent-sdk` 0.3.332, Claude Code 2.1.332), by
//! reading its bundled code and by running it against a loopback server:
//!
//! - It picks the provider in this order: `CLAUDE_CODE_USE_BEDROCK`, then
//!   `CLAUDE_CODE_USE_FOUNDRY`, then `CLAUDE_CODE_USE_VERTEX`.
//! - Each provider has a base URL variable, `ANTHROPIC_BEDROCK_BASE_URL`,
//!   `ANTHROPIC_VERTEX_BASE_URL`, `ANTHROPIC_FOUNDRY_BASE_URL`, that
//!   replaces the provider's endpoint and keeps its path prefix; and a
//!   switch, `CLAUDE_CODE_SKIP_BEDROCK_AUTH`, `CLAUDE_CODE_SKIP_VERTEX_AUTH`,
//!   `CLAUDE_CODE_SKIP_FOUNDRY_AUTH`, with which it signs nothing and
//!   fetches no token.
//! - With both, it sends no credential at all (Foundry sends
//!   `Authorization: Bearer skip-foundry-auth`). So the placeholder token
//!   travels in the base URL's path, `/sandstorm/<token>/...`, which the
//!   endpoint strips ([`super::PATH_TOKEN_PREFIX`]).
//! - Bedrock: `POST /model/{id}/invoke` and `/invoke-with-response-stream`
//!   under `https://bedrock-runtime.{region}.amazonaws.com`, and `GET
//!   /inference-profiles?type=SYSTEM_DEFINED` under the control plane
//!   `https://bedrock.{region}.amazonaws.com` (the same base URL variable
//!   serves both). The region is `AWS_REGION`, else `AWS_DEFAULT_REGION`,
//!   else `us-east-1`. `AWS_BEARER_TOKEN_BEDROCK`, when set, is sent as a
//!   bearer token even with the skip switch: it must not go in.
//! - Vertex: `POST /projects/{p}/locations/{r}/publishers/anthropic/models/
//!   {m}:streamRawPredict` under `https://{r}-aiplatform.googleapis.com/v1`
//!   (`aiplatform.googleapis.com` for `global`, `aiplatform.{us,eu}.rep.
//!   googleapis.com` for `us` and `eu`), `r` being `CLOUD_ML_REGION`, or
//!   a model's own `VERTEX_REGION_CLAUDE_*` (same base URL, another
//!   location in the path).
//! - Foundry: Anthropic's own `POST /v1/messages` under
//!   `https://{resource}.services.ai.azure.com/anthropic`, the resource
//!   from `ANTHROPIC_FOUNDRY_RESOURCE`, the key from
//!   `ANTHROPIC_FOUNDRY_API_KEY` sent as `x-api-key`. The resource and the
//!   base URL may not both be set. It reads neither `AZURE_API_KEY` nor
//!   `AZURE_FOUNDRY_RESOURCE` (the names Sandstorm forwarded first); the
//!   host takes them as the same values, and keeps them out too.

use std::collections::BTreeMap;

use reqwest::Url;

use super::sigv4::AwsSigner;
use super::upstream::ModelAuth;
use super::vertex::Accounts;
use crate::env::switched_on;
use crate::secret::Secret;

/// One cloud provider's variables, as Claude Code names them.
pub(super) struct Cloud {
    /// Its switch, e.g. `CLAUDE_CODE_USE_BEDROCK`.
    pub(super) switch: &'static str,
    /// The switch that makes the CLI skip its own authentication.
    pub(super) skip_auth: &'static str,
    /// The variable that replaces its endpoint: the upstream on the host,
    /// the endpoint's port with the token in the sandbox.
    pub(super) base_url: &'static str,
    /// Credentials and what only the model endpoint needs: never in the
    /// sandbox's process.
    pub(super) host_only: &'static [&'static str],
    /// What else [`route`] reads of it, and the process keeps: its region.
    pub(super) settings: &'static [&'static str],
}

/// Every cloud, in the order the CLI picks one.
const CLOUDS: [&Cloud; 3] = [&BEDROCK, &FOUNDRY, &VERTEX];

pub(super) const BEDROCK: Cloud = Cloud {
    switch: "CLAUDE_CODE_USE_BEDROCK",
    skip_auth: "CLAUDE_CODE_SKIP_BEDROCK_AUTH",
    base_url: "ANTHROPIC_BEDROCK_BASE_URL",
    host_only: &[
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_BEARER_TOKEN_BEDROCK",
    ],
    settings: &["AWS_REGION", "AWS_DEFAULT_REGION"],
};

pub(super) const FOUNDRY: Cloud = Cloud {
    switch: "CLAUDE_CODE_USE_FOUNDRY",
    skip_auth: "CLAUDE_CODE_SKIP_FOUNDRY_AUTH",
    base_url: "ANTHROPIC_FOUNDRY_BASE_URL",
    // The resource names the host's upstream; the CLI refuses it beside a
    // base URL.
    host_only: &[
        "ANTHROPIC_FOUNDRY_API_KEY",
        "ANTHROPIC_FOUNDRY_AUTH_TOKEN",
        "AZURE_API_KEY",
        "ANTHROPIC_FOUNDRY_RESOURCE",
        "AZURE_FOUNDRY_RESOURCE",
    ],
    settings: &[],
};

pub(super) const VERTEX: Cloud = Cloud {
    switch: "CLAUDE_CODE_USE_VERTEX",
    skip_auth: "CLAUDE_CODE_SKIP_VERTEX_AUTH",
    base_url: "ANTHROPIC_VERTEX_BASE_URL",
    host_only: &["GOOGLE_APPLICATION_CREDENTIALS"],
    settings: &["CLOUD_ML_REGION"],
};

/// Every variable [`route`] reads: what a model endpoint elsewhere (the
/// E2B sandbox's model proxy) needs to make the same route.
pub(super) fn variables() -> impl Iterator<Item = &'static str> {
    CLOUDS.into_iter().flat_map(|cloud| {
        [cloud.switch, cloud.base_url]
            .into_iter()
            .chain(cloud.host_only.iter().copied())
            .chain(cloud.settings.iter().copied())
    })
}

/// Every cloud's credentials: none stays with the process, whichever
/// cloud it uses.
pub(super) fn credentials() -> impl Iterator<Item = &'static str> {
    CLOUDS
        .into_iter()
        .flat_map(|cloud| cloud.host_only.iter().copied())
}

/// A cloud's route: which cloud, its upstream, its credential.
type Found = Option<(&'static Cloud, Url, ModelAuth)>;

/// A variable's value; empty counts as unset, as in the CLI.
type Lookup<'a> = dyn Fn(&str) -> Option<&'a str> + 'a;

/// The cloud provider's route for an environment, and which cloud it is:
/// `None` when no cloud is switched on, or the one that is has no
/// credential here (the process then runs as it would without the
/// endpoint). `service_account` is the Vertex key file's contents, which
/// only the host has.
pub(super) fn route(
    envs: &BTreeMap<String, String>,
    service_account: Option<&str>,
    accounts: &Accounts,
) -> Result<Found, String> {
    let value = |name: &str| envs.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let on = |cloud: &Cloud| value(cloud.switch).is_some_and(switched_on);
    if on(&BEDROCK) {
        bedrock(&value)
    } else if on(&FOUNDRY) {
        foundry(&value)
    } else if on(&VERTEX) {
        // Without the key file's contents (a provider that uploads the
        // file instead) the CLI authenticates itself, as before.
        match service_account {
            Some(json) => vertex(&value, json, accounts),
            None => Ok(None),
        }
    } else {
        Ok(None)
    }
}

/// Bedrock: SigV4 with the AWS keys, or a Bedrock API key as bearer.
fn bedrock(value: &Lookup<'_>) -> Result<Found, String> {
    let region = value("AWS_REGION")
        .or_else(|| value("AWS_DEFAULT_REGION"))
        .unwrap_or("us-east-1");
    if !is_aws_region(region) {
        return Err("AWS_REGION is not an AWS region name such as us-east-1".to_owned());
    }
    let auth = if let Some(token) = value("AWS_BEARER_TOKEN_BEDROCK") {
        ModelAuth::Bearer(Secret::new(token))
    } else {
        match (value("AWS_ACCESS_KEY_ID"), value("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => ModelAuth::Bedrock(AwsSigner {
                region: region.to_owned(),
                access_key_id: Secret::new(id),
                secret_access_key: Secret::new(secret),
                session_token: value("AWS_SESSION_TOKEN").map(Secret::new),
            }),
            _ => return Ok(None),
        }
    };
    let url = match configured(&BEDROCK, value)? {
        Some(url) => url,
        None => known(&format!("https://bedrock-runtime.{region}.amazonaws.com"))?,
    };
    Ok(Some((&BEDROCK, url, auth)))
}

/// Foundry: its key as `x-api-key`, or an Entra ID token as bearer.
fn foundry(value: &Lookup<'_>) -> Result<Found, String> {
    let auth = if let Some(token) = value("ANTHROPIC_FOUNDRY_AUTH_TOKEN") {
        ModelAuth::Bearer(Secret::new(token))
    } else {
        match value("ANTHROPIC_FOUNDRY_API_KEY").or_else(|| value("AZURE_API_KEY")) {
            Some(key) => ModelAuth::ApiKey(Secret::new(key)),
            None => return Ok(None),
        }
    };
    let url = match configured(&FOUNDRY, value)? {
        Some(url) => url,
        None => {
            let resource = value("ANTHROPIC_FOUNDRY_RESOURCE")
                .or_else(|| value("AZURE_FOUNDRY_RESOURCE"))
                .ok_or("Foundry needs ANTHROPIC_FOUNDRY_RESOURCE or ANTHROPIC_FOUNDRY_BASE_URL")?;
            if !is_foundry_resource(resource) {
                return Err("ANTHROPIC_FOUNDRY_RESOURCE is not a Foundry resource name \
                            (letters, digits and hyphens)"
                    .to_owned());
            }
            known(&format!(
                "https://{resource}.services.ai.azure.com/anthropic"
            ))?
        }
    };
    Ok(Some((&FOUNDRY, url, auth)))
}

/// Vertex: the service account's access tokens as bearer.
fn vertex(value: &Lookup<'_>, json: &str, accounts: &Accounts) -> Result<Found, String> {
    let auth = ModelAuth::Vertex(accounts.get(json)?);
    let url = match configured(&VERTEX, value)? {
        Some(url) => url,
        None => {
            let region = value("CLOUD_ML_REGION")
                .ok_or("Vertex needs CLOUD_ML_REGION, the region of its endpoint")?;
            let host = vertex_host(region)
                .ok_or("CLOUD_ML_REGION is not a Google Cloud region such as us-east5")?;
            known(&format!("https://{host}/v1"))?
        }
    };
    Ok(Some((&VERTEX, url, auth)))
}

/// The operator's own base URL for `cloud`, when one is set.
fn configured(cloud: &Cloud, value: &Lookup<'_>) -> Result<Option<Url>, String> {
    value(cloud.base_url)
        .map(|v| base(cloud.base_url, v))
        .transpose()
}

/// On a cloud's own endpoint, the host that answers `path` when it is not
/// the base URL's:
///
/// - Bedrock's inference-profile and model lists go to its control plane,
///   `bedrock.{region}`, not the runtime, `bedrock-runtime.{region}`.
/// - A Vertex call goes to the host of the location its path names
///   (`/projects/{p}/locations/{r}/...`): the CLI sends a model with a
///   region of its own (`VERTEX_REGION_CLAUDE_*`) there, through its one
///   base URL.
///
/// An operator's own base URL answers everything.
pub(super) fn host_for(base: &Url, path: &str) -> Option<String> {
    let host = base.host_str()?;
    if let Some(rest) = host
        .strip_prefix("bedrock-runtime.")
        .filter(|rest| rest.ends_with(".amazonaws.com"))
    {
        let control = ["/inference-profiles", "/foundation-models"]
            .iter()
            .any(|prefix| path.starts_with(prefix));
        return control.then(|| format!("bedrock.{rest}"));
    }
    let vertex = host == "aiplatform.googleapis.com"
        || host.ends_with("-aiplatform.googleapis.com")
        || matches!(
            host,
            "aiplatform.us.rep.googleapis.com" | "aiplatform.eu.rep.googleapis.com"
        );
    if !vertex {
        return None;
    }
    let mut segments = path.split(['/', '?']);
    segments.find(|segment| *segment == "locations")?;
    let wanted = vertex_host(segments.next()?)?;
    (wanted != host).then_some(wanted)
}

/// Vertex AI's host for a region, as the CLI's Vertex client picks it;
/// `None` for what is not a region name.
fn vertex_host(region: &str) -> Option<String> {
    match region {
        "global" => Some("aiplatform.googleapis.com".to_owned()),
        "us" | "eu" => Some(format!("aiplatform.{region}.rep.googleapis.com")),
        _ if is_gcp_region(region) => Some(format!("{region}-aiplatform.googleapis.com")),
        _ => None,
    }
}

/// The operator's base URL for a provider, which must be http(s). The
/// error does not quote it: it may hold credentials.
fn base(variable: &str, value: &str) -> Result<Url, String> {
    match Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(url),
        Ok(_) | Err(_) => Err(format!(
            "{variable} is not an http(s) URL, so no model endpoint can be made for the \
             sandbox; fix it in the server's environment"
        )),
    }
}

/// A provider's own endpoint, its host made from a checked name.
fn known(url: &str) -> Result<Url, String> {
    Url::parse(url).map_err(|_| "the provider's endpoint is not a valid URL".to_owned())
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`: the CLI's own pattern.
fn is_aws_region(region: &str) -> bool {
    let mut parts = region.split('-');
    let first = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    let Some((number, middle)) = rest.split_last() else {
        return false;
    };
    first.len() >= 2
        && first.bytes().all(|b| b.is_ascii_lowercase())
        && !middle.is_empty()
        && middle
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && (1..=2).contains(&number.len())
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// `us-east5`, `europe-west1`: lowercase letters, digits and hyphens.
fn is_gcp_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 63
        && !region.starts_with('-')
        && !region.ends_with('-')
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// 2 to 64 letters, digits and hyphens, not at either end: the CLI's rule.
fn is_foundry_resource(name: &str) -> bool {
    (2..=64).contains(&name.len())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}
