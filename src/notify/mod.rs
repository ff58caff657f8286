//! Completion webhooks: a signed POST to the run's `webhook_url` when a
//! run (or a follow-up turn of one) ends.
//!
//! Not to be confused with 0.9.2's use of the name: there, sandstorm.json's
//! `webhook_url` was the server's own address, where E2B sent its sandbox
//! lifecycle events. Here it is where Sandstorm tells a receiver of yours
//! that a run ended (see `docs/webhooks.md`).
//!
//! - [`notice`]: what the POST says, gathered from the run's own events;
//! - [`signing`]: Standard Webhooks' signature, under
//!   `SANDSTORM_WEBHOOK_SECRET`;
//! - [`delivery`]: the attempts and the retry schedule;
//! - [`address`]: the addresses a notice may not go to.
//!
//! **Who sends it.** It must not depend on a client staying connected.
//! - An attached run ends with its request (its client leaving ends it), so
//!   the task that runs it sends the notice ([`tap`]). On a serverless door
//!   the first attempt is made before the client gets `done`, while the
//!   invocation is sure to be alive; retries go on while the function's
//!   instance does.
//! - A detached run on `ds serve` is watched ([`watch_detached`]): a reader
//!   of its event log of its own, which reads to the turn's end whoever
//!   else reads or leaves, and sends the notice with the full retry
//!   schedule. The server's process is the one thing it needs.
//! - A detached run on a serverless door has no process that lives as long
//!   as it does; those are refused a `webhook_url` for now, with a message
//!   that says so.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, warn};

use crate::events::RunEvent;
use crate::run::detached::{Follow, reattach};
use crate::run::{EVENT_BUFFER, FINAL_EVENT_GRACE, RunHandle};
use crate::runs::registry::Registry;
use crate::sandbox::Sandbox;
use crate::shutdown::Shutdown;

pub(crate) mod address;
pub(crate) mod delivery;
pub(crate) mod notice;
pub(crate) mod signing;

pub(crate) use address::AddressPolicy;
pub(crate) use delivery::Target;
use delivery::{Delivery, Sender};
use notice::{Notice, NoticeRecorder, Subject};
pub(crate) use signing::WebhookSecret;

/// How long a serverless door holds a run's `done` for the notice's first
/// attempt: within the margin a run keeps before the platform's deadline.
const FIRST_ATTEMPT_BOUND: Duration = Duration::from_secs(5);
/// How long a watcher waits before it reads a run's log again, after a
/// read that ended before the turn did.
const REREAD_PAUSE: Duration = Duration::from_secs(5);

/// What a run's notice needs, from its plan.
#[derive(Debug, Clone)]
pub(crate) struct NoticePlan {
    /// Where it goes, signed how.
    pub target: Target,
    /// Which addresses it may go to.
    pub policy: AddressPolicy,
    /// The process stays once the run's response is over (`ds serve`); a
    /// serverless function may be frozen then, and `ds` exits.
    pub sender_stays: bool,
}

impl NoticePlan {
    /// Sends `notice`: its first attempt now (awaited), the rest on a task
    /// of their own.
    pub(crate) async fn send(&self, notice: &Notice) {
        let sender = match Sender::new(self.policy) {
            Ok(sender) => sender,
            Err(e) => {
                warn!(error = %e, "webhook not sent");
                return;
            }
        };
        let body = match serde_json::to_vec(notice) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                warn!(error = %e, "webhook not sent: its body could not be written");
                return;
            }
        };
        let mut delivery = Delivery::new(sender, self.target.clone(), notice.id(), body);
        if !self.sender_stays {
            // The first attempt while the process surely lives; cut
            // short, it counts as a failed one.
            if matches!(
                tokio::time::timeout(FIRST_ATTEMPT_BOUND, delivery.try_once()).await,
                Ok(true)
            ) {
                return;
            }
        }
        tokio::spawn(delivery.finish().in_current_span());
    }
}

/// A run whose end is to be told: what to send where.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    /// The notice's target.
    pub plan: NoticePlan,
    /// The run.
    pub subject: Subject,
}

/// An attached run's events on their way to its client, watched for its
/// end: its `done`, or the end of its stream without one (its client left,
/// which ends the run). The notice of a serverless door's run is attempted
/// before the client gets `done`.
pub(crate) fn tap(watch: Option<Watch>, handle: RunHandle) -> RunHandle {
    let Some(watch) = watch else {
        return handle;
    };
    let RunHandle {
        events: mut inner,
        finished,
    } = handle;
    let (tx, events) = mpsc::channel(EVENT_BUFFER);
    tokio::spawn(
        async move {
            let mut recorder = NoticeRecorder::default();
            let mut told = false;
            loop {
                let event = tokio::select! {
                    biased;
                    () = tx.closed() => break,
                    event = inner.recv() => event,
                };
                let Some(event) = event else { break };
                recorder.observe(&event);
                let done = matches!(event, RunEvent::Done(_));
                if done && !told {
                    told = true;
                    watch
                        .plan
                        .send(&recorder.notice(&watch.subject, false))
                        .await;
                }
                let last = done || matches!(event, RunEvent::Error(_));
                let sent = if last {
                    matches!(
                        tokio::time::timeout(FINAL_EVENT_GRACE, tx.send(event)).await,
                        Ok(Ok(()))
                    )
                } else {
                    tx.send(event).await.is_ok()
                };
                if !sent && !last {
                    break;
                }
            }
            // Dropping the run's receiver now tells it its client is gone;
            // the run then ends, and that is the end to tell.
            drop(inner);
            if !told {
                watch
                    .plan
                    .send(&recorder.notice(&watch.subject, true))
                    .await;
            }
        }
        .in_current_span(),
    );
    RunHandle { events, finished }
}

/// Watches a detached run's turn `follow.turn` to its end, on a task of
/// its own: it reads the run's log as any reader does, from the start, to
/// the turn's `done`, and sends its notice. A read that ends before the
/// turn does (the connection to the sandbox broke) is begun again, until
/// the sandbox's lifetime is over; a turn whose end was never read by then
/// is told as `expired`: its sandbox went before it could say.
pub(crate) fn watch_detached(
    sandbox: Arc<dyn Sandbox>,
    mut follow: Follow,
    registry: Registry,
    watch: Watch,
) {
    let ends_at = follow.ends_at();
    let span =
        tracing::info_span!("webhook.watch", request_id = %follow.request_id, turn = follow.turn);
    tokio::spawn(
        async move {
            loop {
                // This reader has no platform to detach it: it reads as
                // long as the sandbox lives.
                let left = ends_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                follow.deadline = Instant::now() + left;
                let handle = reattach(
                    sandbox.clone(),
                    follow.clone(),
                    Shutdown::never(),
                    registry.clone(),
                );
                let mut events = handle.events;
                let mut recorder = NoticeRecorder::default();
                while let Some(event) = events.recv().await {
                    recorder.observe(&event);
                    if recorder.saw_done() && recorder.turn() >= follow.turn {
                        break;
                    }
                }
                if recorder.saw_done() {
                    watch
                        .plan
                        .send(&recorder.notice(&watch.subject, false))
                        .await;
                    return;
                }
                if SystemTime::now() + REREAD_PAUSE >= ends_at {
                    watch
                        .plan
                        .send(&Notice::expired(&watch.subject, follow.turn))
                        .await;
                    return;
                }
                tokio::time::sleep(REREAD_PAUSE).await;
            }
        }
        .instrument(span),
    );
}
