//! A detached run read to each turn's end on a server that stays
//! (`ds serve`), whoever else reads it or leaves.
//!
//! A detached run goes on when its client leaves, and only a reader that
//! sees a turn end records that end in the run history and tells the run's
//! completion webhook: a run whose clients all left would stay `running`
//! in the history for good, and its webhook would never hear. So on a
//! server that stays, the stream that begins a turn (the run's first, or a
//! follow-up's) is read to the turn's `done` even once its client has
//! gone ([`keep_reading`]): the history's and the webhook's taps inside it
//! see the end as a client would have. One reader of this process per
//! turn, which ends the sandbox at the run's end as any reader does.
//!
//! That stream can end before the turn does: the server's own deadline,
//! or the connection to the sandbox broke. A reader of its own then
//! follows the run from its log to the turn's end ([`reread`]), bounded by
//! the run's lifetime, begun again when a read breaks, and tells the turn
//! as `expired` when the sandbox went before the turn could end.
//!
//! A serverless function cannot: nothing of it runs once its response is
//! over. Its detached runs are recorded by whoever reads them to the end.

use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::detached::reattach;
use super::{RunHandle, TAP_BUFFER};
use crate::events::RunEvent;
use crate::history::tap::Recording;
use crate::notify::Watch;
use crate::notify::notice::{Notice, NoticeRecorder};
use crate::runs::registry::Registry;
use crate::shutdown::Shutdown;

/// How long a reader waits before it reads the run again, after a read
/// that ended before the turn did.
const REREAD_PAUSE: Duration = Duration::from_secs(5);

/// What reading a turn again from the run's log takes.
#[derive(Debug, Clone)]
pub(crate) struct Reread {
    /// The detached runs of this process, where the run's sandbox and how
    /// to read it are found by its digest.
    pub registry: Registry,
    /// The run id's digest.
    pub digest: String,
    /// The turn to read to the end of.
    pub turn: u32,
    /// Where the turn's end is recorded, when the history is on.
    pub recording: Option<Recording>,
    /// Where the turn's end is told, when the run has a webhook.
    pub watch: Option<Watch>,
}

/// The turn's stream, passed on to its client while it reads, and read
/// to the turn's end when it leaves. A stream that ends without the
/// turn's `done` is followed by a [`reread`].
pub(crate) fn keep_reading(handle: RunHandle, reread: Reread) -> RunHandle {
    let RunHandle {
        events: mut inner,
        finished,
    } = handle;
    let (tx, events) = mpsc::channel(TAP_BUFFER);
    tokio::spawn(
        async move {
            let mut client = Some(tx);
            // A follow-up's stream reads the turns before it too: only its
            // own turn's `done` ends it.
            let mut turn = 1;
            let mut done = false;
            while let Some(event) = inner.recv().await {
                match &event {
                    RunEvent::Turn(started) => turn = started.turn,
                    RunEvent::Done(_) => done |= turn >= reread.turn,
                    _ => {}
                }
                if let Some(to) = &client
                    && to.send(event).await.is_err()
                {
                    tracing::info!("client went away; reading the turn to its end");
                    client = None;
                }
            }
            if !done {
                spawn_reread(reread);
            }
        }
        .in_current_span(),
    );
    RunHandle { events, finished }
}

/// Reads the turn again from the run's log, to its end, on a task of its
/// own, as the module doc says.
pub(crate) fn spawn_reread(reread: Reread) {
    let span = tracing::info_span!("run.reread", turn = reread.turn);
    tokio::spawn(self::reread(reread).instrument(span));
}

async fn reread(reread: Reread) {
    let Reread {
        registry,
        digest,
        turn,
        recording,
        watch,
    } = reread;
    loop {
        // The run is no longer this process's: its sandbox ended here (a
        // cancel, or the end of its lifetime).
        let Some(registered) = registry.get(&digest) else {
            if let Some(watch) = &watch {
                tracing::warn!("the run's sandbox went before its turn was seen to end");
                watch
                    .plan
                    .send(&Notice::expired(&watch.subject, turn))
                    .await;
            }
            return;
        };
        let mut follow = registered.follow;
        follow.turn = turn;
        let ends_at = follow.ends_at();
        // No platform cuts this reader: it reads as long as the sandbox may
        // live.
        follow.deadline = Instant::now()
            + ends_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
        let handle = reattach(
            registered.sandbox,
            follow,
            Shutdown::never(),
            registry.clone(),
        );
        let handle = crate::history::tap::tap(recording.clone(), handle);
        let handle = crate::notify::tap(watch.clone(), handle, false);
        let mut events = handle.events;
        let mut recorder = NoticeRecorder::default();
        while let Some(event) = events.recv().await {
            recorder.observe(&event);
        }
        if recorder.saw_done() && recorder.turn() >= turn {
            return;
        }
        if SystemTime::now() + REREAD_PAUSE >= ends_at {
            tracing::warn!("the run's sandbox went before its turn was seen to end");
            if let Some(watch) = &watch {
                watch
                    .plan
                    .send(&Notice::expired(&watch.subject, turn))
                    .await;
            }
            return;
        }
        tokio::time::sleep(REREAD_PAUSE).await;
    }
}
