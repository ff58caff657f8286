//! Completion webhooks: a signed POST to the run's `webhook_url` when a
//! run (or a follow-up turn of one) ends.
//!
//! Not to be confused with 0.9.2's use of the name: there, sandstorm.json's
//! `webhook_url` was the server's own address, where E2B sent its sandbox
//! lifecycle events. Here it is where Sandstorm tells a receiver of yours
//! that a run ended (see `docs/webhooks.md`).
//!
//! - [`notice`]: what the POST says, gathered from the run's own events
//!   (or from its history record, for a run whose end nobody read);
//! - [`signing`]: Standard Webhooks' signature, under
//!   `SANDSTORM_WEBHOOK_SECRET`;
//! - [`delivery`]: the attempts and the retry schedule;
//! - [`outbox`]: the notices in flight, which a stopping server settles;
//! - [`address`]: the addresses a notice may not go to.
//!
//! **Who sends it.** It must not depend on a client staying connected.
//! - An attached run ends with its request (its client leaving ends it), so
//!   the task that runs it sends the notice ([`tap`]). On a serverless door
//!   and in `ds` the first attempt is made before the client gets `done`,
//!   while the process is sure to be alive; retries go on while it does.
//! - A detached run on `ds serve` is read to each turn's end by a reader of
//!   the server's own ([`crate::run::watch`]), whoever else reads or
//!   leaves, which sends the notice with the full retry schedule.
//! - A detached run on a serverless door has no process that lives as long
//!   as it does; those are refused a `webhook_url` for now, with a message
//!   that says so.
//! - A run whose end no reader saw (its sandbox was killed) is told from
//!   its history record ([`tell_from_record`]).

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{Instrument, warn};

use crate::events::RunEvent;
use crate::run::{FINAL_EVENT_GRACE, RunHandle, TAP_BUFFER};

pub(crate) mod address;
pub(crate) mod callback;
pub(crate) mod delivery;
pub(crate) mod notice;
pub(crate) mod outbox;
pub(crate) mod seal;
pub(crate) mod signing;

pub(crate) use address::AddressPolicy;
pub(crate) use delivery::Target;
use delivery::{Delivery, Sender};
use notice::{Notice, NoticeRecorder, Subject};
pub(crate) use outbox::Outbox;
pub(crate) use signing::WebhookSecret;

/// How long a serverless door holds a run's `done` for the notice's first
/// attempt: within the margin a run keeps before the platform's deadline.
const FIRST_ATTEMPT_BOUND: Duration = Duration::from_secs(5);

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
    /// The process's notices in flight.
    pub outbox: Outbox,
}

impl NoticePlan {
    /// The plan of a run found again, from the URL sealed in its sandbox's
    /// metadata (`metadata`); `None` when it has none, or this server
    /// cannot open it (it has no secret, or another).
    pub(crate) fn recalled(
        settings: &crate::settings::Settings,
        digest: &str,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Option<NoticePlan> {
        let sealed = metadata.get(seal::URL_KEY)?;
        let Some(Ok(secret)) = &settings.notify.secret else {
            return None;
        };
        let url = seal::unseal_url(secret, digest, sealed)?;
        let url = reqwest::Url::parse(&url).ok()?;
        Some(NoticePlan {
            target: Target {
                url,
                secret: secret.clone(),
                delays: settings.notify.delays.clone(),
            },
            policy: settings.notify.policy,
            sender_stays: settings.stays_after_response,
            outbox: settings.notify.outbox.clone(),
        })
    }

    /// One attempt at `notice`, now, and nothing more: for a caller that
    /// will ask again (a run's sandbox calling back); `true` when the
    /// receiver took it.
    pub(crate) async fn attempt_once(&self, notice: &Notice) -> bool {
        let sender = match Sender::new(self.policy) {
            Ok(sender) => sender,
            Err(e) => {
                warn!(error = %e, "webhook not sent");
                return false;
            }
        };
        let Ok(body) = serde_json::to_vec(notice) else {
            return false;
        };
        let mut delivery = Delivery::new(
            sender,
            self.target.clone(),
            notice.id(),
            Bytes::from(body),
            &Outbox::default(),
        );
        delivery.try_once().await
    }

    /// Sends `notice`: its first attempt now (awaited), the rest on a task
    /// of their own.
    pub(crate) async fn send(&self, notice: &Notice) {
        let id = notice.id();
        if !self.outbox.claim(&id) {
            tracing::debug!(notice = %id, "webhook told already by another reader");
            return;
        }
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
        let mut delivery =
            Delivery::new(sender, self.target.clone(), notice.id(), body, &self.outbox);
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

/// Tells `record`'s completion webhook, if the run has one, that turn
/// `turn` (1 when not known) ended as the record says: for a run whose
/// end no reader saw, once its record says how it ended (E2B killed its
/// sandbox while it ran: `expired`). The notice has the id a reader's
/// notice of the same turn would have, so a receiver told both drops
/// one. Nothing is sent, and the log says why, when the server has no
/// usable `SANDSTORM_WEBHOOK_SECRET`.
pub(crate) async fn tell_from_record(
    settings: &crate::settings::Settings,
    record: &crate::history::RunRecord,
    turn: u32,
) {
    let Some(url) = record.webhook_url.as_deref() else {
        return;
    };
    let secret = match &settings.notify.secret {
        Some(Ok(secret)) => secret.clone(),
        _ => {
            warn!(
                variable = signing::SECRET_VARIABLE,
                "a run's webhook is not told: the server has no key to sign with"
            );
            return;
        }
    };
    let Ok(url) = reqwest::Url::parse(url) else {
        warn!("a run's webhook is not told: its recorded URL does not parse");
        return;
    };
    let plan = NoticePlan {
        target: Target {
            url,
            secret,
            delays: settings.notify.delays.clone(),
        },
        policy: settings.notify.policy,
        sender_stays: settings.stays_after_response,
        outbox: settings.notify.outbox.clone(),
    };
    plan.send(&Notice::from_record(record, turn)).await;
}

/// A run whose end is to be told: what to send where.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    /// The notice's target.
    pub plan: NoticePlan,
    /// The run.
    pub subject: Subject,
}

/// A run's events on their way to its reader, watched for each turn's
/// `done`, whose notice goes out then (a serverless door's and `ds`'s
/// first attempt before the reader gets the `done`). A notice told already
/// by another reader of this process is not told again ([`Outbox`]).
/// `ends_with_reader`: the run is attached, and the end of the stream
/// without a `done` (its client left) ends it, which is told too.
pub(crate) fn tap(watch: Option<Watch>, handle: RunHandle, ends_with_reader: bool) -> RunHandle {
    let Some(watch) = watch else {
        return handle;
    };
    let RunHandle {
        events: mut inner,
        finished,
    } = handle;
    let (tx, events) = mpsc::channel(TAP_BUFFER);
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
                if done {
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
            // Dropping the run's receiver now tells it its reader is gone;
            // an attached run then ends, and that is the end to tell.
            drop(inner);
            if ends_with_reader && !told {
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

/// A receiver on loopback for the module's tests.
#[cfg(test)]
pub(crate) mod test_receiver {
    use std::sync::{Arc, Mutex};

    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use bytes::Bytes;
    use reqwest::Url;

    /// What it got: each POST's headers and body.
    pub(crate) type Got = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

    /// A receiver that answers each POST to `/hook` with the next status
    /// of `answers` (then 200); its URL (with a token in its query) and
    /// what it got.
    pub(crate) async fn receiver(answers: Vec<u16>) -> (Url, Got) {
        let got: Got = Arc::default();
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        let kept = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: Bytes| {
                let kept = kept.clone();
                let answers = answers.clone();
                async move {
                    kept.lock().expect("lock").push((headers, body));
                    let status = answers.lock().expect("lock").next().unwrap_or(200);
                    StatusCode::from_u16(status).expect("a status")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = Url::parse(&format!("http://{address}/hook?token=abc")).expect("url");
        (url, got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::RecordStatus;

    fn settings() -> crate::settings::Settings {
        let choice = crate::settings::SandboxChoice {
            catalog: crate::doors::PROVIDERS,
            requested: Some("local"),
            setup: crate::sandbox::provider::Setup::CheckOnly,
            executable: None,
        };
        let env = crate::env::EnvVars::from_pairs([
            (
                "SANDSTORM_WEBHOOK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
            ("SANDSTORM_WEBHOOK_RETRY_SCHEDULE", "none"),
        ]);
        crate::settings::Settings::build(
            &env,
            std::path::Path::new("/nonexistent"),
            crate::settings::Profile::Server,
            choice,
        )
        .expect("settings")
    }

    #[tokio::test]
    async fn a_killed_run_s_record_tells_its_webhook_as_a_reader_would_have() {
        let (url, got) = test_receiver::receiver(Vec::new()).await;
        let mut record =
            crate::history::tests::record("run_0123456789abcdef0123456789abcdef", "o", 1);
        record.status = RecordStatus::Expired;
        record.error_type = Some("sandbox_gone".into());
        record.turns = Some(4);
        record.webhook_url = Some(url.to_string());
        let settings = settings();
        tell_from_record(&settings, &record, 2).await;
        settings.notify.outbox.settle(Duration::from_secs(10)).await;
        let first = got.lock().expect("lock").clone();
        assert_eq!(first.len(), 1);
        let (headers, body) = &first[0];
        assert_eq!(
            headers["webhook-id"],
            notice::notice_id("run_0123456789abcdef0123456789abcdef", 2).as_str()
        );
        let notice: serde_json::Value = serde_json::from_slice(body).expect("json");
        assert_eq!(notice["data"]["status"], "expired", "{notice}");
        assert_eq!(notice["data"]["turn"], 2, "{notice}");
        assert_eq!(notice["data"]["turns"], 4, "{notice}");
        assert_eq!(notice["data"]["error"]["type"], "sandbox_gone", "{notice}");

        // No URL, nothing sent; nor without a key.
        record.webhook_url = None;
        tell_from_record(&settings, &record, 1).await;
        let mut unsigned = settings.clone();
        unsigned.notify.secret = None;
        record.webhook_url = Some(url.to_string());
        tell_from_record(&unsigned, &record, 1).await;
        assert_eq!(got.lock().expect("lock").len(), 1);
    }
}
