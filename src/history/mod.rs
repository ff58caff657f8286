//! Run history: a record of every run, kept after its stream and its
//! sandbox are gone (issue 17).
//!
//! The handler stays stateless: the history lives in a database behind one
//! small trait, [`RunStore`]. SQLite ([`sqlite`]) is the embedded one for
//! `ds serve` and the CLI; DynamoDB (`dynamodb`, feature `aws-dynamodb`) is
//! the serverless doors' table, shared by every instance. Hence the trait's
//! async methods and a cursor that is a string the store alone reads.
//!
//! A run never waits on its history: [`History`] hands each write to one
//! writer task through a bounded queue and goes on. A full queue, a store
//! that is down or slow, a write that fails: each is logged (without the
//! record, which may hold a prompt) and the run carries on as if there
//! were no history at all. One writer keeps a run's writes in order, so
//! its end never lands before its start.
//!
//! With `SANDSTORM_STORE_EVENTS` on, a run's events are kept beside its
//! record ([`events`]): the tap compresses them as they pass, and hands
//! each `done`'s snapshot to the same writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

pub(crate) mod api;
#[cfg(feature = "aws-dynamodb")]
pub(crate) mod dynamodb;
pub(crate) mod events;
pub(crate) mod expiry;
pub(crate) mod record;
mod recorders;
pub(crate) mod sqlite;
pub(crate) mod tap;

pub(crate) use record::{RecordStatus, RunEnding, RunRecord};

/// Why a store could not answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// A cursor this store did not hand out.
    #[error("cursor is not one this server handed out")]
    BadCursor,
    /// The database failed.
    #[error("the history store failed: {0}")]
    Backend(String),
}

/// Which runs a list wants. Every field narrows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Filter {
    /// Only runs in this status.
    pub(crate) status: Option<RecordStatus>,
    /// Only runs started at or after this time.
    pub(crate) since: Option<SystemTime>,
    /// Only runs with these labels, by name.
    pub(crate) labels: std::collections::BTreeMap<String, String>,
}

/// One page of a list, newest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct Page {
    /// The runs.
    pub(crate) runs: Vec<RunRecord>,
    /// Where the next page starts, when there is one: opaque to callers.
    pub(crate) next: Option<String>,
}

/// A database of run records.
#[async_trait::async_trait]
pub(crate) trait RunStore: Send + Sync + std::fmt::Debug {
    /// Writes a run's record when it starts (or replaces it).
    async fn started(&self, record: &RunRecord) -> Result<(), StoreError>;
    /// Lays a run's ending over its record; a run it has no record of is
    /// left alone (it started on an instance with another store).
    async fn ended(&self, run_id: &str, ending: &RunEnding) -> Result<(), StoreError>;
    /// Notes the sandbox a run got.
    async fn sandbox(&self, run_id: &str, sandbox_id: &str) -> Result<(), StoreError>;
    /// The record of `run_id`, if `owner` (a digest) owns it.
    async fn get(&self, owner: &str, run_id: &str) -> Result<Option<RunRecord>, StoreError>;
    /// `owner`'s runs that `filter` wants, newest first, at most `limit`,
    /// from `cursor` (a [`Page::next`] of this store) on.
    async fn list(
        &self,
        owner: &str,
        filter: &Filter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError>;
    /// Deletes the runs started before `before`, and their events; how
    /// many runs it deleted.
    async fn sweep(&self, before: SystemTime) -> Result<u64, StoreError>;
    /// Keeps `blob` (see [`events`]) as `run_id`'s events, unless what it
    /// keeps of them is longer: every snapshot of a run extends the one
    /// before, so a shorter one is an older one (a reader that stopped
    /// between two turns). A run it has no record of is left alone.
    async fn keep_events(&self, run_id: &str, blob: &[u8]) -> Result<(), StoreError>;
    /// The events kept of `run_id`, if `owner` (a digest) owns it.
    async fn kept_events(&self, owner: &str, run_id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// The ids of `owner`'s runs started at `created_ms` (milliseconds
    /// since 1970): how a sandbox's metadata, which names its run only by
    /// digests and its start, leads to the run's record (see [`expiry`]).
    async fn started_at(&self, owner: &str, created_ms: u64) -> Result<Vec<String>, StoreError>;
    /// Lays `ending` over `run_id`'s record only while it is `running`, in
    /// one conditional write, so that a run that ended meanwhile keeps its
    /// ending; the record as it now is, or `None` when it was not running
    /// (or the store never saw it).
    async fn end_if_running(
        &self,
        run_id: &str,
        ending: &RunEnding,
    ) -> Result<Option<RunRecord>, StoreError>;
    /// Ends as `failed`, error type `interrupted`, each attached run still
    /// `running` whose relaying process is gone for sure (killed or crashed
    /// before it could write the end); how many. A store that cannot tell
    /// leaves them: on the serverless doors a run's end is written before
    /// its `done` (see [`History::settling_ends`]).
    async fn end_interrupted(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// How many writes may wait for the store before new ones are dropped
/// (and logged): a store that has stopped answering must not hold memory
/// without bound.
const QUEUE: usize = 256;
/// How long one write may take before the writer gives up on it and goes
/// on with the next.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the writer sweeps out runs past the retention.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// How often the writer looks for runs whose relaying process is gone
/// (first when it starts): how long a killed server's runs may still say
/// `running` while another serves.
const INTERRUPTED_EVERY: Duration = Duration::from_secs(60);
/// How many bytes of events may wait for the store: [`QUEUE`] writes of a
/// whole capped run each would be hundreds of megabytes.
const QUEUED_EVENT_BYTES: usize = 64 << 20;

/// One write for the writer task.
#[derive(Debug)]
enum Write {
    Started(Box<RunRecord>),
    Sandbox {
        run_id: String,
        sandbox_id: String,
    },
    Ended {
        run_id: String,
        ending: Box<RunEnding>,
    },
    Events {
        run_id: String,
        blob: QueuedBlob,
    },
    /// Answered once every write before it is done.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The history as runs and handlers see it: a store, or none (history is
/// off). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct History {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn RunStore>,
    writes: mpsc::Sender<Write>,
    /// How long a run's `done` waits for its end's write, if it waits.
    settle_ends: Option<Duration>,
    /// The cap of a run's stored events, when they are stored.
    events_cap: Option<usize>,
    /// The bytes of events waiting in the queue.
    queued_event_bytes: Arc<AtomicUsize>,
}

/// A run's events on their way to the store, counted in
/// [`Inner::queued_event_bytes`] until they are written or dropped.
#[derive(Debug)]
struct QueuedBlob {
    blob: Vec<u8>,
    queued: Arc<AtomicUsize>,
}

impl Drop for QueuedBlob {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.blob.len(), Ordering::Relaxed);
    }
}

impl History {
    /// No history: nothing is written, lists show live runs only.
    pub(crate) fn off() -> Self {
        History::default()
    }

    /// A history kept in `store`, its writes made by a task spawned here
    /// (so this needs a Tokio runtime), which also sweeps out runs older
    /// than `retention` when one is given.
    pub(crate) fn spawn(store: Arc<dyn RunStore>, retention: Option<Duration>) -> Self {
        let (writes, queue) = mpsc::channel(QUEUE);
        tokio::spawn(write(store.clone(), queue, retention));
        History {
            inner: Some(Arc::new(Inner {
                store,
                writes,
                settle_ends: None,
                events_cap: None,
                queued_event_bytes: Arc::new(AtomicUsize::new(0)),
            })),
        }
    }

    /// The same history, where a run's end is written before its client
    /// gets its `done`, waiting at most `within`: for a door whose platform
    /// may freeze the process once a response is over. Call it on a
    /// history just spawned.
    pub(crate) fn settling_ends(mut self, within: Duration) -> Self {
        if let Some(inner) = self.inner.as_mut().and_then(Arc::get_mut) {
            inner.settle_ends = Some(within);
        }
        self
    }

    /// The same history, where a finished run's events are kept, each
    /// run's up to `cap` bytes (see [`events`]); `None` keeps none. Call it
    /// on a history just spawned.
    pub(crate) fn storing_events(mut self, cap: Option<usize>) -> Self {
        if let Some(inner) = self.inner.as_mut().and_then(Arc::get_mut) {
            inner.events_cap = cap;
        }
        self
    }

    /// The cap of a run's stored events, when they are stored.
    pub(crate) fn events_cap(&self) -> Option<usize> {
        self.inner.as_ref().and_then(|inner| inner.events_cap)
    }

    /// Waits for the writes so far when this history settles ends (see
    /// [`History::settling_ends`]).
    pub(crate) async fn settle_end(&self) {
        if let Some(within) = self.inner.as_ref().and_then(|inner| inner.settle_ends) {
            self.settle(within).await;
        }
    }

    /// The store, when history is on.
    pub(crate) fn store(&self) -> Option<&Arc<dyn RunStore>> {
        self.inner.as_ref().map(|inner| &inner.store)
    }

    fn send(&self, write: Write) {
        let Some(inner) = &self.inner else { return };
        if let Err(e) = inner.writes.try_send(write) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "its queue is full",
                mpsc::error::TrySendError::Closed(_) => "its writer has stopped",
            };
            tracing::warn!(why, "run history: a write was dropped; the run goes on");
        }
    }

    /// Records a run's start.
    pub(crate) fn started(&self, record: RunRecord) {
        self.send(Write::Started(Box::new(record)));
    }

    /// Records the sandbox a run got.
    pub(crate) fn sandbox(&self, run_id: &str, sandbox_id: &str) {
        self.send(Write::Sandbox {
            run_id: run_id.to_owned(),
            sandbox_id: sandbox_id.to_owned(),
        });
    }

    /// Waits, up to `within`, for the writes queued so far to land: for a
    /// process that is about to exit (`ds` after its run), or a serverless
    /// run before its `done` (see [`History::settling_ends`]).
    pub(crate) async fn settle(&self, within: Duration) {
        let Some(inner) = &self.inner else { return };
        let (done, landed) = tokio::sync::oneshot::channel();
        let settled = async {
            if inner.writes.send(Write::Flush(done)).await.is_ok() {
                let _ = landed.await;
            }
        };
        if tokio::time::timeout(within, settled).await.is_err() {
            // `ds` about to exit, or a serverless run about to send its
            // `done`: either way the writes go on without waiting.
            tracing::warn!(
                ?within,
                "run history: the writes queued so far did not land in time"
            );
        }
    }

    /// Records that a cancel ended the run started at `created_at` (RFC
    /// 3339): an idle run's cancel ends it with no event for a tap to see.
    pub(crate) fn cancelled(&self, run_id: &str, created_at: &str) {
        let now = SystemTime::now();
        let started = humantime::parse_rfc3339_weak(created_at).unwrap_or(now);
        self.ended(
            run_id,
            RunEnding {
                status: Some(RecordStatus::Cancelled),
                ended_at: humantime::format_rfc3339_millis(now).to_string(),
                duration_ms: now
                    .duration_since(started)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                error_type: Some("cancelled".to_owned()),
                ..RunEnding::default()
            },
        );
    }

    /// Records a run's end.
    pub(crate) fn ended(&self, run_id: &str, ending: RunEnding) {
        self.send(Write::Ended {
            run_id: run_id.to_owned(),
            ending: Box::new(ending),
        });
    }

    /// Keeps a run's events, `blob` (see [`events`]), unless too many bytes
    /// of events already wait for the store.
    pub(crate) fn keep_events(&self, run_id: &str, blob: Vec<u8>) {
        let Some(inner) = &self.inner else { return };
        let queued = inner.queued_event_bytes.clone();
        let before = queued.fetch_add(blob.len(), Ordering::Relaxed);
        // Counted from here on: dropped, the blob gives its bytes back.
        let blob = QueuedBlob { blob, queued };
        if before + blob.blob.len() > QUEUED_EVENT_BYTES {
            tracing::warn!(
                bytes = blob.blob.len(),
                "run history: a run's events were not kept: too many wait for the store"
            );
            return;
        }
        self.send(Write::Events {
            run_id: run_id.to_owned(),
            blob,
        });
    }
}

/// The history `settings` ask for: the SQLite file opened (made if need
/// be) and its writer started. A file that cannot be opened is logged and
/// leaves history off: the server serves runs all the same.
pub(crate) fn open(settings: &crate::settings::HistorySettings) -> History {
    let Some(path) = &settings.path else {
        return History::off();
    };
    match sqlite::SqliteStore::open(path) {
        Ok(store) => {
            let store = match store.clone().recording() {
                Ok(recording) => recording,
                Err(e) => {
                    tracing::warn!(error = %e, "run history: runs this process relays cannot be told interrupted should it be killed");
                    store
                }
            };
            tracing::info!(path = %path.display(), events = settings.store_events.is_some(), "run history: recording runs");
            History::spawn(Arc::new(store), settings.retention)
                .storing_events(settings.store_events)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "run history: the store cannot be opened; runs go unrecorded");
            History::off()
        }
    }
}

/// The writer: one write at a time, each bounded by [`WRITE_TIMEOUT`], and
/// the retention sweep between them.
async fn write(
    store: Arc<dyn RunStore>,
    mut queue: mpsc::Receiver<Write>,
    retention: Option<Duration>,
) {
    let mut sweeps = tokio::time::interval(SWEEP_EVERY);
    let mut interrupted = tokio::time::interval(INTERRUPTED_EVERY);
    interrupted.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let write = tokio::select! {
            _ = interrupted.tick() => {
                end_interrupted(store.as_ref()).await;
                continue;
            }
            write = queue.recv() => match write {
                Some(write) => write,
                None => return,
            },
            _ = sweeps.tick(), if retention.is_some() => {
                if let Some(keep) = retention {
                    sweep(store.as_ref(), keep).await;
                }
                continue;
            }
        };
        let write = match write {
            // Every write before it is done: the writer is in order.
            Write::Flush(answer) => {
                let _ = answer.send(());
                continue;
            }
            write => write,
        };
        let what = match &write {
            Write::Started(_) => "start",
            Write::Sandbox { .. } => "sandbox",
            Write::Ended { .. } => "end",
            Write::Events { .. } => "events",
            Write::Flush(_) => "flush",
        };
        let done = async {
            match &write {
                Write::Started(record) => store.started(record).await,
                Write::Sandbox { run_id, sandbox_id } => store.sandbox(run_id, sandbox_id).await,
                Write::Ended { run_id, ending } => store.ended(run_id, ending).await,
                Write::Events { run_id, blob } => store.keep_events(run_id, &blob.blob).await,
                Write::Flush(_) => Ok(()),
            }
        };
        match tokio::time::timeout(WRITE_TIMEOUT, done).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(what, error = %e, "run history: the store failed a write; the run goes on");
            }
            Err(_) => tracing::warn!(
                what,
                timeout = ?WRITE_TIMEOUT,
                "run history: the store did not answer a write in time; the run goes on"
            ),
        }
    }
}

async fn end_interrupted(store: &dyn RunStore) {
    match tokio::time::timeout(WRITE_TIMEOUT, store.end_interrupted()).await {
        Ok(Ok(0)) => {}
        Ok(Ok(ended)) => tracing::warn!(
            ended,
            "run history: runs whose process was gone before they ended are recorded failed (interrupted)"
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "run history: the check for interrupted runs failed")
        }
        Err(_) => {
            tracing::warn!("run history: the check for interrupted runs did not finish in time")
        }
    }
}

async fn sweep(store: &dyn RunStore, keep: Duration) {
    let Some(before) = SystemTime::now().checked_sub(keep) else {
        return;
    };
    match tokio::time::timeout(WRITE_TIMEOUT, store.sweep(before)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(deleted)) => {
            tracing::info!(deleted, "run history: swept out runs past the retention")
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "run history: the retention sweep failed"),
        Err(_) => tracing::warn!("run history: the retention sweep did not finish in time"),
    }
}

#[cfg(test)]
pub(crate) mod tests;

#[cfg(test)]
mod stored_tests;
