//! Runs that outlive their request: `POST /query {"detach": true}` and
//! `GET /runs/{id}/events`.
//!
//! A detached run's state lives in its sandbox, not here: the event log
//! ([`log`]) and the sandbox's metadata (the run id's digest, its owner's,
//! its request id and when it expires). Any instance can therefore read any
//! run: it finds the sandbox by a metadata query, connects to it and
//! follows the log from its start. The one thing kept in the process is the
//! [`registry`] of runs started here, which is what serves providers that
//! cannot be reached from elsewhere (local sandboxes).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use futures::StreamExt;
use serde::Deserialize;
use subtle::ConstantTimeEq as _;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::events::{Redactor, RunStarted};
use crate::keys;
use crate::outputs::{OutputLimits, OutputPlan};
use crate::plan::DETACH_MARGIN;
use crate::request::RequestKeys;
use crate::run::detached::Follow;
use crate::run_id::{self, RunId};
use crate::sandbox::{Sandbox, SandboxError, SandboxProvider, SandboxSpec, SandboxSummary, layout};
use crate::secret::Secret;
use crate::settings::Settings;

pub mod log;
pub(crate) mod registry;
pub(crate) mod status;
pub(crate) mod turn;

use registry::Registry;
use status::{RunInfo, Status};

/// The metadata key of the run's expiry (RFC 3339).
pub(crate) const EXPIRES_KEY: &str = "sandstorm_expires_at";
/// The metadata key of when the run started (RFC 3339).
pub(crate) const CREATED_KEY: &str = "sandstorm_created_at";
/// The metadata key of the request id that started the run.
pub(crate) const REQUEST_KEY: &str = "sandstorm_request_id";
/// The metadata key of how long the run is kept after a turn (seconds),
/// when it is.
pub(crate) const KEEP_ALIVE_KEY: &str = "sandstorm_keep_alive";
/// The metadata key set (`1`) when the run's sandbox is paused while idle.
pub(crate) const PAUSES_KEY: &str = "sandstorm_pauses";
/// The prefix of a run label's metadata key (`sandstorm_label_team_id`).
pub(crate) const LABEL_PREFIX: &str = "sandstorm_label_";
/// Metadata: the credential variables in the sandbox, comma-separated
/// (names, never values).
pub(crate) const CREDENTIALS_KEY: &str = "sandstorm_credentials_in_sandbox";

/// The credential variables a run's metadata says are in its sandbox.
pub(crate) fn credentials_in_sandbox(metadata: &BTreeMap<String, String>) -> Vec<String> {
    metadata
        .get(CREDENTIALS_KEY)
        .map(|names| {
            names
                .split(',')
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The run labels (`team_id`, ...) in a sandbox's metadata, by name.
pub(crate) fn labels(metadata: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    metadata
        .iter()
        .filter_map(|(key, value)| {
            let name = key.strip_prefix(LABEL_PREFIX)?;
            Some((name.to_owned(), value.clone()))
        })
        .collect()
}

/// Who owns runs started without a credential of the caller's own: every
/// holder of the endpoint's bearer token (or anyone, on an open endpoint)
/// is the same principal, so a token rotation leaves their runs theirs.
const ENDPOINT_OWNER: &str = "sandstorm-endpoint";

/// Who a request acts as: the sandbox credential it brought itself (runs
/// made with a tenant's own E2B key are that tenant's alone), else the
/// endpoint.
pub(crate) fn owner(brought: Option<&Secret>) -> Secret {
    brought.map_or_else(|| Secret::new(ENDPOINT_OWNER), Clone::clone)
}

/// The sandbox credential a request brought: in the body for `/query`, in
/// a header named after the body field (`x-e2b-api-key`) for `/runs`.
pub(crate) fn brought_credential(settings: &Settings, keys: &RequestKeys) -> Option<Secret> {
    let field = settings.sandbox.provider.credential?.field;
    keys.sandbox(field).cloned()
}

fn credential_header(settings: &Settings, headers: &HeaderMap) -> Option<Secret> {
    let field = settings.sandbox.provider.credential?.field;
    let name = format!("x-{}", field.replace('_', "-"));
    headers
        .get(name.as_str())
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(Secret::new)
}

/// Where a reader starts: after `Last-Event-ID` (the header a browser's
/// `EventSource` resends) or `?after=N`.
pub(crate) fn after(headers: &HeaderMap, query: Option<&str>) -> Result<u64, ApiError> {
    if let Some(value) = headers.get("last-event-id") {
        let refused = || ApiError::BadRequest {
            message: format!(
                "Last-Event-ID must be an event id (a whole number), got {:?}",
                String::from_utf8_lossy(value.as_bytes())
            ),
        };
        let text = value.to_str().map_err(|_| refused())?.trim();
        // An empty one counts as not sent, as EventSource's first request.
        if !text.is_empty() {
            return text.parse().map_err(|_| refused());
        }
    }
    let Some(query) = query else { return Ok(0) };
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name == "after" {
            return value.parse().map_err(|_| {
                ApiError::invalid(
                    "after",
                    format!("after must be an event id (a whole number), got {value:?}"),
                )
            });
        }
    }
    Ok(0)
}

/// A run found again, ready to be read.
pub(crate) struct Found {
    pub sandbox: Arc<dyn Sandbox>,
    pub follow: Follow,
}

/// Who is asking, as far as runs go.
pub(crate) struct Caller {
    /// The sandbox credential the request brought itself, if any.
    brought: Option<Secret>,
    /// The owner it acts as, and its digest.
    owner: Secret,
    owner_digest: String,
}

impl Caller {
    /// A `/runs` request's caller: its credential comes in a header.
    pub(crate) fn of(settings: &Settings, headers: &HeaderMap) -> Self {
        Caller::bringing(credential_header(settings, headers))
    }

    /// A caller that brought `brought` (a `/query` body's own credential).
    pub(crate) fn bringing(brought: Option<Secret>) -> Self {
        let owner = owner(brought.as_ref());
        let owner_digest = run_id::owner_digest(&owner);
        Caller {
            brought,
            owner,
            owner_digest,
        }
    }

    /// The owner it acts as.
    pub(crate) fn owner(&self) -> &Secret {
        &self.owner
    }

    /// The digest of the owner it acts as: whose history it reads.
    pub(crate) fn owner_digest(&self) -> &str {
        &self.owner_digest
    }

    /// The sandbox credential it brought itself, if any.
    pub(crate) fn brought(&self) -> Option<&Secret> {
        self.brought.as_ref()
    }

    fn owns(&self, owner_digest: &str) -> bool {
        bool::from(self.owner_digest.as_bytes().ct_eq(owner_digest.as_bytes()))
    }

    /// The provider credential for this caller: its own, else the server's.
    async fn credential(&self, settings: &Settings) -> Result<Option<Secret>, ApiError> {
        keys::sandbox_credential(
            self.brought.as_ref(),
            &settings.keys,
            settings.key_source.as_deref(),
            settings.sandbox.provider.credential,
        )
        .await
    }

    /// What a provider's failure means to this caller: a key of its own
    /// that the provider refuses is not the server's fault, and the answer
    /// must say no more than for a run that is not theirs.
    fn refusal(&self, e: &SandboxError) -> ApiError {
        match e.cause() {
            SandboxError::Unsupported { .. } => ApiError::NoSuchRun,
            SandboxError::Unauthorized { .. } if self.brought.is_some() => ApiError::NoSuchRun,
            _ => provider_error(e),
        }
    }
}

/// Finds the run `id` for a caller: in this process's registry, else
/// through the provider. A malformed id, an unknown one, a foreign one and
/// one whose sandbox is gone are all [`ApiError::NoSuchRun`]. A stream of
/// it ends (detaches) shortly before `stream_deadline`.
pub(crate) async fn find(
    settings: &Settings,
    provider: &dyn SandboxProvider,
    registry: &Registry,
    id: &str,
    caller: &Caller,
    stream_deadline: Option<Instant>,
) -> Result<Found, ApiError> {
    let run = RunId::parse(id).map_err(|_| ApiError::NoSuchRun)?;
    let deadline =
        stream_deadline.map(|d| d.checked_sub(DETACH_MARGIN).unwrap_or_else(Instant::now));
    if let Some(registered) = registry.get(&run.digest()) {
        if !caller.owns(&registered.owner) {
            return Err(ApiError::NoSuchRun);
        }
        let mut follow = registered.follow;
        follow.deadline = deadline.unwrap_or(registered.expires);
        return Ok(Found {
            sandbox: registered.sandbox,
            follow,
        });
    }
    let credential = caller.credential(settings).await?;
    let summary = run_id::find(provider, &run, &caller.owner, credential.clone())
        .await
        .map_err(|e| caller.refusal(&e))?
        .ok_or(ApiError::NoSuchRun)?;
    if reap(provider, &summary, credential.clone()).await {
        return Err(ApiError::NoSuchRun);
    }
    reach(
        settings, provider, caller, &run, &summary, credential, deadline,
    )
    .await
}

/// Run `run`, found for its own sandbox's call-back (see
/// [`crate::notify::callback`]): by its id alone, with the server's own
/// sandbox credential. The caller proved it is the run's with the run's
/// token, not with an owner's credential.
pub(crate) async fn find_for_callback(
    settings: &Settings,
    provider: &dyn SandboxProvider,
    registry: &Registry,
    run: &RunId,
) -> Result<Found, ApiError> {
    if let Some(registered) = registry.get(&run.digest()) {
        return Ok(Found {
            sandbox: registered.sandbox,
            follow: registered.follow,
        });
    }
    let caller = Caller::bringing(None);
    let wanted = BTreeMap::from([(run_id::RUN_KEY.to_owned(), run.digest())]);
    let summary = provider
        .list(&wanted, None)
        .await
        .map_err(|e| caller.refusal(&e))?
        .into_iter()
        .next()
        .ok_or(ApiError::NoSuchRun)?;
    reach(settings, provider, &caller, run, &summary, None, None).await
}

/// The runs a caller owns that still have a sandbox, newest first: those
/// of this process's registry, and those the provider lists by the owner's
/// digest (their ids unsealed with the caller's credential).
pub(crate) async fn list(
    settings: &Settings,
    provider: &dyn SandboxProvider,
    registry: &Registry,
    headers: &HeaderMap,
) -> Result<Vec<RunInfo>, ApiError> {
    let caller = Caller::of(settings, headers);
    let mut found: Vec<Found> = registry
        .all()
        .into_iter()
        .filter(|registered| caller.owns(&registered.owner))
        .map(|registered| Found {
            sandbox: registered.sandbox,
            follow: registered.follow,
        })
        .collect();
    let credential = caller.credential(settings).await?;
    let wanted = BTreeMap::from([(run_id::OWNER_KEY.to_owned(), caller.owner_digest.clone())]);
    let listed = match provider.list(&wanted, credential.clone()).await {
        Ok(listed) => listed,
        Err(e) => match caller.refusal(&e) {
            ApiError::NoSuchRun => Vec::new(),
            error => return Err(error),
        },
    };
    for summary in listed {
        let Some(run) = unsealed(&summary, credential.as_ref()) else {
            continue;
        };
        if found.iter().any(|f| f.follow.digest == run.digest())
            || reap(provider, &summary, credential.clone()).await
        {
            continue;
        }
        // A sandbox that went away since it was listed is not a run any
        // more; the others are still worth listing.
        if let Ok(run) = reach(
            settings,
            provider,
            &caller,
            &run,
            &summary,
            credential.clone(),
            None,
        )
        .await
        {
            found.push(run);
        }
    }
    let mut runs = Vec::with_capacity(found.len());
    for run in found {
        if let Ok(info) = status::read(run.sandbox.as_ref(), &run.follow).await {
            runs.push(info);
        }
    }
    // RFC 3339 in UTC, to the millisecond, sorts as text.
    runs.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    Ok(runs)
}

/// Whether a listed run's sandbox is paused while it is idle.
fn pauses(summary: &SandboxSummary) -> bool {
    summary.metadata.get(PAUSES_KEY).is_some_and(|v| v == "1")
}

/// Ends a listed run's sandbox that has been paused past its `keep_alive`,
/// or past the run's lifetime: nothing else ends a paused sandbox, so
/// whichever instance finds one so does. E2B lists a paused sandbox's
/// `endAt` as when it was paused, which is after its turn ended, so the
/// run is never ended early. `true` when it was ended.
async fn reap(
    provider: &dyn SandboxProvider,
    summary: &SandboxSummary,
    credential: Option<Secret>,
) -> bool {
    if !summary.paused || !pauses(summary) {
        return false;
    }
    let now = std::time::SystemTime::now();
    let at = |text: &str| humantime::parse_rfc3339_weak(text).ok();
    let keep_alive = Duration::from_secs(
        summary
            .metadata
            .get(KEEP_ALIVE_KEY)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let idle_over = at(&summary.end_at).is_some_and(|paused| paused + keep_alive < now);
    let run_over = summary
        .metadata
        .get(EXPIRES_KEY)
        .and_then(|expires| at(expires))
        .is_some_and(|expires| expires < now);
    if !(idle_over || run_over) {
        return false;
    }
    match provider.kill(&summary.id, credential).await {
        Ok(()) => {
            tracing::info!(sandbox = %summary.id, "ended a run's sandbox paused past its keep_alive");
            true
        }
        Err(e) => {
            tracing::warn!(sandbox = %summary.id, error = %e, "could not end a run's sandbox paused past its keep_alive");
            false
        }
    }
}

/// How long a reader resumes a paused run's sandbox for: time to read it;
/// the end of that lifetime pauses it again.
const RESUMED_FOR_READING: Duration = Duration::from_secs(30);

/// The run id a listed sandbox's metadata holds sealed, if `key` opens it.
fn unsealed(summary: &SandboxSummary, key: Option<&Secret>) -> Option<RunId> {
    let sealed = summary.metadata.get(run_id::SEALED_KEY)?;
    let digest = summary.metadata.get(run_id::RUN_KEY)?;
    run_id::unseal(sealed, digest, key?)
}

/// Connects to a run's sandbox, found through the provider, and gathers
/// what reading it takes.
async fn reach(
    settings: &Settings,
    provider: &dyn SandboxProvider,
    caller: &Caller,
    run: &RunId,
    summary: &SandboxSummary,
    credential: Option<Secret>,
    deadline: Option<Instant>,
) -> Result<Found, ApiError> {
    let metadata = |key: &str| summary.metadata.get(key).cloned().unwrap_or_default();
    let expires_at = metadata(EXPIRES_KEY);
    let expires = Instant::now()
        + humantime::parse_rfc3339(&expires_at)
            .ok()
            .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok())
            .unwrap_or_default();
    // Reading a run must not lengthen its sandbox's life (a finished run's
    // linger above all). E2B's connect only ever lengthens a running
    // sandbox's timeout, so asking for a second leaves it as it is. (Zero
    // would mean the provider's default, five minutes.) A paused one is
    // resumed for long enough to be read, and pauses again after.
    let spec = SandboxSpec {
        credential,
        lifetime: if summary.paused {
            RESUMED_FOR_READING
        } else {
            Duration::from_secs(1)
        },
        ..SandboxSpec::default()
    };
    let sandbox = provider
        .connect(&summary.id, spec)
        .await
        .map_err(|e| caller.refusal(&e))?;
    let outputs = outputs_of(sandbox.as_ref()).await;
    let follow = Follow {
        run: RunStarted {
            run_id: run.to_string(),
            expires_at,
        },
        created_at: metadata(CREATED_KEY),
        request_id: metadata(REQUEST_KEY),
        // The values `${VAR}` filled into MCP servers too: the run's agent
        // could print them into the log, as it could a key.
        redactor: Redactor::new(
            settings
                .keys
                .values()
                .chain(settings.config_env.values().map(Secret::expose))
                .chain(caller.brought.as_ref().map(Secret::expose)),
        ),
        outputs,
        deadline: deadline.unwrap_or(expires),
        digest: run.digest(),
        linger: settings.run_linger,
        keep_alive: Duration::from_secs(metadata(KEEP_ALIVE_KEY).parse().unwrap_or(0)),
        turn: 1,
        pauses: pauses(summary),
        labels: labels(&summary.metadata),
        credentials_in_sandbox: credentials_in_sandbox(&summary.metadata),
        notice: crate::notify::NoticePlan::recalled(settings, &run.digest(), &summary.metadata),
    };
    Ok(Found { sandbox, follow })
}

/// How long a cancel waits for the runner to end before it ends the
/// sandbox anyway: `timeout`'s own kill comes 5 s after its TERM.
const CANCEL_WAIT: Duration = Duration::from_secs(15);

/// Cancels a run: a cancel record in its log (so every reader ends with a
/// `cancelled` error), TERM to the runner, and once the runner is gone the
/// sandbox ends as a finished run's does. An idle run (kept for a
/// follow-up) ends at once: its sandbox is destroyed. A run that is over
/// already is left as it is. Answers with the run's status.
pub(crate) async fn cancel(found: Found, registry: &Registry) -> Result<RunInfo, ApiError> {
    let Found { sandbox, follow } = found;
    let (mut before, tally) = status::read_tallied(sandbox.as_ref(), &follow)
        .await
        .map_err(|e| provider_error(&e))?;
    if before.status == Status::Idle {
        registry.remove(&follow.digest);
        sandbox.destroy().await.map_err(|e| provider_error(&e))?;
        before.status = Status::Cancelled;
        return Ok(before);
    }
    if before.status != Status::Running {
        return Ok(before);
    }
    let mut canceller = sandbox
        .start(log::canceller(tally.turns))
        .await
        .map_err(|e| provider_error(&e))?;
    while canceller.next().await.is_some() {}
    let until = Instant::now() + CANCEL_WAIT;
    let mut after = before;
    while after.status == Status::Running && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(info) = status::read(sandbox.as_ref(), &follow).await {
            after = info;
        }
    }
    if after.status == Status::Running {
        // The runner would not go; its sandbox goes instead.
        registry.remove(&follow.digest);
        if let Err(e) = sandbox.destroy().await {
            tracing::warn!(error = %e, "destroying a cancelled run's sandbox failed");
        }
        after.status = Status::Cancelled;
        return Ok(after);
    }
    crate::run::detached::linger(sandbox, &follow, registry).await;
    Ok(after)
}

/// What a failure to reach a found run's sandbox means to the caller: a
/// sandbox that has gone since (another instance ended the run) is no run.
pub(crate) fn provider_error(e: &SandboxError) -> ApiError {
    if e.sandbox_gone() {
        return ApiError::NoSuchRun;
    }
    ApiError::Provider {
        message: format!("could not reach the run's sandbox: {e}"),
    }
}

/// The output files a run asked for, from the config its runner read: the
/// relay holds a reader to the same patterns and limits as the first.
async fn outputs_of(sandbox: &dyn Sandbox) -> Option<OutputPlan> {
    #[derive(Deserialize)]
    struct Config {
        outputs: Option<Outputs>,
    }
    #[derive(Deserialize)]
    struct Outputs {
        patterns: Vec<String>,
        #[serde(flatten)]
        limits: OutputLimits,
    }
    let bytes = sandbox.read_file(layout::AGENT_CONFIG).await.ok()?;
    let config: Config = serde_json::from_slice(&bytes).ok()?;
    config.outputs.map(|o| OutputPlan {
        patterns: o.patterns,
        limits: o.limits,
        // The runner's business: the relay checks every file it sends
        // against the same globs and limits either way.
        changed_only: false,
    })
}
