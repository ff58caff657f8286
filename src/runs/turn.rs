//! Follow-up turns: `POST /runs/{id}/messages` and `POST /query {"resume":
//! "<run id>"}`, and a fork (`"fork_session": true`).
//!
//! A follow-up runs in the run's own sandbox. Its runner resumes the SDK
//! session of the turn before, whose transcript the SDK keeps in the
//! sandbox's `~/.claude`, so the model sees the whole conversation and the
//! agent finds the files earlier turns left. It claims its turn in the log
//! (so of two follow-ups only one begins it), appends to the same log, and
//! its stream is the run's stream from its `turn` event on: the ids go on
//! from the turn before, and a reader that replays the run gets every turn.
//!
//! A fork is a new run in a new sandbox whose SDK session branches from
//! the old run's: the old transcript is copied across, the old run is left
//! as it is, and its files are not copied.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use tokio::time::Instant;

use super::status::{self, Status};
use super::{Found, log, provider_error};
use crate::error::ApiError;
use crate::plan::{self, DETACH_MARGIN, RunPlan};
use crate::request::Query;
use crate::run::RunHandle;
use crate::run::detached::reattach;
use crate::runs::registry::Registry;
use crate::sandbox::{ProcessEvent, Sandbox, SandboxFile, layout};
use crate::secret::Secret;
use crate::settings::Settings;
use crate::shutdown::Shutdown;

/// The least of the run's lifetime a follow-up turn must have left.
const LEAST_TURN: Duration = Duration::from_secs(10);
/// How long a turn's sandbox outlives the turn's own timeout: time for its
/// readers to read the end before the run is kept or lingers.
const TURN_GRACE: Duration = Duration::from_secs(60);

/// A follow-up turn that has begun.
pub(crate) struct Begun {
    /// Its events: the run's, read from the start.
    pub handle: RunHandle,
    /// The id of the run's last event before the turn: its stream starts
    /// after it.
    pub after: u64,
    /// The run's id.
    pub run_id: String,
}

/// What a follow-up needs besides the run and the request.
pub(crate) struct Context<'a> {
    pub settings: &'a Settings,
    pub registry: Registry,
    pub shutdown: Shutdown,
    pub platform_deadline: Option<Instant>,
    /// Where the turn's end is recorded.
    pub history: crate::history::History,
}

/// Begins the next turn of `found` with `query`'s prompt and files: 409
/// while a turn runs, 410 when the run takes no more turns.
pub(crate) async fn follow_up(
    context: Context<'_>,
    found: Found,
    mut query: Query,
    request_id: String,
) -> Result<Begun, ApiError> {
    refuse_run_fields(&query)?;
    let Found {
        sandbox,
        mut follow,
    } = found;
    let tally = status::tally_of(sandbox.as_ref(), &follow)
        .await
        .map_err(|e| provider_error(&e))?;
    let info = status::info(&follow, &tally, String::new());
    let run_id = follow.run.run_id.clone();
    match info.status {
        Status::Idle => {}
        Status::Running => {
            return Err(ApiError::TurnRunning {
                message: format!(
                    "run {run_id} has a turn running; follow it (GET /runs/{run_id}/events) \
                     and send the next one when it is done, or cancel it"
                ),
            });
        }
        _ if follow.keep_alive.is_zero() => {
            return Err(ApiError::RunOver {
                message: format!(
                    "run {run_id} was started without keep_alive, so its sandbox is not kept \
                     for another turn; start runs with keep_alive (seconds) to send follow-ups"
                ),
            });
        }
        status => {
            return Err(ApiError::RunOver {
                message: format!("run {run_id} is over ({status:?}) and takes no more turns")
                    .to_lowercase(),
            });
        }
    }
    let left = follow
        .ends_at()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    if left < LEAST_TURN {
        return Err(ApiError::RunOver {
            message: format!(
                "run {run_id} reaches the end of its lifetime at {}; start a new run",
                follow.run.expires_at
            ),
        });
    }
    // The turn and its readers' grace fit in what is left of the run.
    let config = context
        .settings
        .config
        .as_ref()
        .map_err(|e| ApiError::Config {
            message: format!("sandstorm.json is invalid: {e}"),
        })?;
    let timeout =
        plan::timeout_of(&query, config).min(left.saturating_sub(TURN_GRACE).max(LEAST_TURN));
    // Its sandbox stays `keep_alive` past the turn's latest end even when
    // no reader sees the end to set that.
    let lifetime = (timeout + TURN_GRACE.max(follow.keep_alive)).min(left);
    query.timeout = Some(timeout);
    let overrides = ConfigOverrides {
        model: query.model.clone(),
        max_turns: query.max_turns,
    };
    let plan = plan::prepare(context.settings, query, request_id.clone(), None, None).await?;

    let turn = tally.turns + 1;
    begin(&sandbox, turn, &request_id, SystemTime::now() + lifetime).await?;
    // The turn is in the log from here on: a failure must end it there.
    if let Err(e) = sandbox.expire_in(lifetime).await {
        tracing::warn!(error = %e, "could not give the follow-up turn its lifetime");
    }
    context.registry.set_expiry(&follow.digest, lifetime);
    let session = tally.session_id.as_deref().filter(|s| is_session_id(s));
    let (share, redactor) = TurnFiles::of(plan);
    // On a serverless door the turn's sandbox says when it ends.
    let callback = crate::notify::seal::turn_callback(
        context.settings,
        follow.notice.is_some(),
        &run_id,
        turn,
    );
    let started = start_runner(&sandbox, share, turn, session, overrides, timeout, callback);
    if let Err(e) = started.await {
        let message = format!("could not start turn {turn}: {e}");
        end_in_log(&sandbox, &message).await;
        return Err(provider_error(&e));
    }
    tracing::info!(%run_id, turn, "follow-up turn started");

    follow.turn = turn;
    follow.redactor = redactor;
    follow.deadline = context.platform_deadline.map_or_else(
        || Instant::now() + lifetime,
        |platform| {
            platform
                .checked_sub(DETACH_MARGIN)
                .unwrap_or_else(Instant::now)
        },
    );
    // The run's webhook, where this process started the run and knows it.
    let watch = follow.notice.clone().map(|plan| crate::notify::Watch {
        plan,
        subject: crate::notify::notice::Subject::of(&follow),
    });
    let recording = context.history.reading(&run_id, &follow.created_at);
    let digest = follow.digest.clone();
    let handle = reattach(sandbox, follow, context.shutdown, context.registry.clone());
    // The turn's reader reads the run from its start: its last `done` says
    // how the run stands, summed over every turn.
    let handle = crate::history::tap::tap(recording.clone(), handle);
    let handle = crate::notify::tap(watch.clone(), handle, false);
    // Read to the turn's end by this process, where it stays, whoever
    // else reads or leaves.
    let handle = if context.settings.stays_after_response {
        let reread = crate::run::watch::Reread {
            registry: context.registry,
            digest,
            turn,
            recording,
            watch,
        };
        crate::run::watch::keep_reading(handle, reread)
    } else {
        handle
    };
    Ok(Begun {
        handle,
        after: info.last_event_id,
        run_id,
    })
}

/// A new run whose SDK session branches from `found`'s: `query` planned as
/// any run (detached as it says, for `owner`), with the old run's session
/// transcript among its files. The old run is only read.
pub(crate) async fn fork(
    settings: &Settings,
    found: Found,
    query: Query,
    request_id: String,
    platform_deadline: Option<Instant>,
    owner: &Secret,
) -> Result<RunPlan, ApiError> {
    let Found { sandbox, follow } = found;
    let tally = status::tally_of(sandbox.as_ref(), &follow)
        .await
        .map_err(|e| provider_error(&e))?;
    let run_id = &follow.run.run_id;
    let gone = || ApiError::RunOver {
        message: format!("run {run_id} has no SDK session to branch from"),
    };
    let session = tally
        .session_id
        .filter(|s| is_session_id(s))
        .ok_or_else(gone)?;
    let path = transcript(&session);
    let transcript = sandbox.read_file(&path).await.map_err(|_| gone())?;
    let mut plan =
        plan::prepare(settings, query, request_id, platform_deadline, Some(owner)).await?;
    plan.files.push(SandboxFile {
        path,
        content: transcript,
    });
    for file in &mut plan.files {
        if file.path == layout::AGENT_CONFIG {
            let mut config: serde_json::Value =
                serde_json::from_slice(&file.content).unwrap_or_default();
            config["resume"] = serde_json::Value::String(session.clone());
            config["fork_session"] = serde_json::Value::Bool(true);
            file.content = Bytes::from(serde_json::to_vec(&config).unwrap_or_default());
        }
    }
    Ok(plan)
}

/// Where the SDK keeps a session's transcript: its projects folder, named
/// after the working folder with `/` as `-`.
fn transcript(session: &str) -> String {
    let project = layout::HOME.replace('/', "-");
    layout::home_path(&format!(".claude/projects/{project}/{session}.jsonl"))
}

/// An SDK session id as the SDK makes them (a UUID); anything else read
/// from a log is not used as one, nor as a path.
fn is_session_id(session: &str) -> bool {
    !session.is_empty()
        && session.len() <= 128
        && session
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// What is set when a run starts and a follow-up cannot change.
fn refuse_run_fields(query: &Query) -> Result<(), ApiError> {
    let fixed = [
        ("outputs", query.outputs.is_some()),
        ("keep_alive", query.keep_alive.is_some()),
        ("detach", query.detach == Some(false)),
        ("fork_session", query.fork_session),
        // Labels are the run's, in its sandbox's metadata.
        ("team_id", query.labels.contains_key("team_id")),
        ("user_id", query.labels.contains_key("user_id")),
        ("channel_id", query.labels.contains_key("channel_id")),
        // Its notices go where the run's first request said.
        ("webhook_url", query.webhook_url.is_some()),
    ];
    match fixed.into_iter().find(|(_, given)| *given) {
        Some((field, _)) => Err(ApiError::invalid(
            field,
            format!("{field} is set when a run starts; a follow-up turn cannot change it"),
        )),
        None => Ok(()),
    }
}

/// Claims turn `turn` and writes its record: 409 when another follow-up
/// claimed it first.
async fn begin(
    sandbox: &Arc<dyn Sandbox>,
    turn: u32,
    request_id: &str,
    lifetime_ends: SystemTime,
) -> Result<(), ApiError> {
    let mut beginner = sandbox
        .start(log::turn_beginner(turn, request_id, lifetime_ends))
        .await
        .map_err(|e| provider_error(&e))?;
    let mut code = None;
    while let Some(event) = beginner.next().await {
        match event {
            Ok(ProcessEvent::Exited(status)) => code = status.code,
            Ok(_) => {}
            Err(e) => return Err(provider_error(&e)),
        }
    }
    match code {
        Some(0) => Ok(()),
        Some(log::TURN_TAKEN) => Err(ApiError::TurnRunning {
            message: format!("another follow-up began turn {turn} of this run first"),
        }),
        _ => Err(ApiError::Provider {
            message: format!("could not begin turn {turn} in the run's sandbox"),
        }),
    }
}

/// What a follow-up request may change of the agent's config.
struct ConfigOverrides {
    model: Option<String>,
    max_turns: Option<u32>,
}

/// Uploads the turn's files and its config (the run's, with the new
/// prompt and the session to resume) and starts its runner under the log's
/// wrapper.
async fn start_runner(
    sandbox: &Arc<dyn Sandbox>,
    plan: TurnFiles,
    turn: u32,
    session: Option<&str>,
    overrides: ConfigOverrides,
    timeout: Duration,
    callback: Option<crate::sandbox::Callback>,
) -> Result<(), crate::sandbox::SandboxError> {
    let first = sandbox.read_file(layout::AGENT_CONFIG).await?;
    let mut config: serde_json::Value = serde_json::from_slice(&first).unwrap_or_default();
    let mut asked: serde_json::Value = serde_json::from_slice(&plan.config).unwrap_or_default();
    config["prompt"] = asked["prompt"].take();
    if let Some(model) = overrides.model {
        config["model"] = serde_json::Value::String(model);
    }
    if let Some(max_turns) = overrides.max_turns {
        config["max_turns"] = max_turns.into();
    }
    if let Some(config) = config.as_object_mut() {
        config.remove("fork_session");
        match session {
            Some(session) => config.insert("resume".to_owned(), session.into()),
            None => config.remove("resume"),
        };
    }
    let path = format!("{}/turn-{turn}.json", layout::RUNNER_DIR);
    let mut files = plan.files;
    files.push(SandboxFile {
        path: path.clone(),
        content: Bytes::from(serde_json::to_vec(&config).unwrap_or_default()),
    });
    let mut runner = plan.process;
    runner.args.push(path);
    runner.callback = callback;
    // Together where the provider can: the turn's runner waits for its files.
    let mut output = sandbox
        .upload_and_start(files, log::wrapper(runner, timeout, turn))
        .await?;
    // Nobody reads the wrapper: the log is the turn's output.
    tokio::spawn(async move { while output.next().await.is_some() {} });
    Ok(())
}

/// Ends a turn that could not start, in the log: every reader sees it fail.
async fn end_in_log(sandbox: &Arc<dyn Sandbox>, message: &str) {
    match sandbox.start(log::turn_failed(message)).await {
        Ok(mut done) => while done.next().await.is_some() {},
        Err(e) => tracing::warn!(error = %e, "could not end the failed turn in the log"),
    }
}

/// A turn's share of a plan: its files (the agent config apart) and its
/// runner.
struct TurnFiles {
    files: Vec<SandboxFile>,
    config: Bytes,
    process: crate::sandbox::ProcessSpec,
}

impl TurnFiles {
    /// The turn's share of `plan`, and what its stream redacts.
    fn of(plan: RunPlan) -> (Self, crate::events::Redactor) {
        let (config, files): (Vec<_>, Vec<_>) = plan
            .files
            .into_iter()
            .partition(|f| f.path == layout::AGENT_CONFIG);
        let share = TurnFiles {
            files,
            config: config
                .into_iter()
                .next()
                .map(|f| f.content)
                .unwrap_or_default(),
            process: plan.process,
        };
        (share, plan.redactor)
    }
}
