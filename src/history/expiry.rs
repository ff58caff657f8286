//! A run whose sandbox ended while its record still said `running`: E2B's
//! lifecycle webhook told us (see `crate::lifecycle`), and nothing else
//! will, since no reader saw the run end.
//!
//! The webhook names the sandbox and hands back its metadata. A detached
//! run's metadata names the run only by digests (see `run_id`): its
//! owner's and its id's, beside when it started, to the millisecond, as
//! its record does. So the record is found by its owner and its start, and
//! told from a run of the same owner begun in the same millisecond by the
//! id's digest. The record is then marked `expired` in one conditional
//! write: a run that ended meanwhile keeps its ending.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::{History, RecordStatus, RunEnding, RunRecord, StoreError};
use crate::run_id::{self, RunId};

/// The `error_type` of a run its sandbox's end cut off.
pub(crate) const SANDBOX_KILLED: &str = "sandbox_killed";

/// The detached run a sandbox's metadata names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SandboxRun {
    /// The digest of who started it.
    owner: String,
    /// When it started, in milliseconds since 1970.
    created_ms: u64,
    /// The digest of its id.
    run_digest: String,
}

impl SandboxRun {
    /// The digest of the run's id.
    pub(crate) fn run_digest(&self) -> &str {
        &self.run_digest
    }

    /// The run `metadata` names; `None` for a sandbox that holds no
    /// detached run of ours (an attached run's, or someone else's).
    pub(crate) fn of(metadata: &BTreeMap<String, String>) -> Option<Self> {
        let created = metadata.get(crate::runs::CREATED_KEY)?;
        let created_ms = humantime::parse_rfc3339_weak(created)
            .ok()?
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .and_then(|d| u64::try_from(d.as_millis()).ok())?;
        Some(SandboxRun {
            owner: metadata.get(run_id::OWNER_KEY)?.clone(),
            created_ms,
            run_digest: metadata.get(run_id::RUN_KEY)?.clone(),
        })
    }
}

/// Marks the run `run` names `expired`, as of `ended` (when its sandbox
/// was killed), if its record is still `running`: the record as it now
/// is, or `None` when the history is off, has no record of the run, or the
/// run had ended. The write is made here, not queued, so that the caller
/// knows.
///
/// # Errors
/// When the store fails.
pub(crate) async fn expired(
    history: &History,
    run: &SandboxRun,
    ended: SystemTime,
) -> Result<Option<RunRecord>, StoreError> {
    let Some(store) = history.store() else {
        return Ok(None);
    };
    let Some(run_id) = run_id(history, run).await? else {
        return Ok(None);
    };
    let started_at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(run.created_ms);
    let ending = RunEnding {
        status: Some(RecordStatus::Expired),
        ended_at: humantime::format_rfc3339_millis(ended).to_string(),
        duration_ms: ended
            .duration_since(started_at)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        error_type: Some(SANDBOX_KILLED.to_owned()),
        ..RunEnding::default()
    };
    store.end_if_running(&run_id, &ending).await
}

/// The id of the run `run` names, if the history has its record.
///
/// # Errors
/// When the store fails.
pub(crate) async fn run_id(
    history: &History,
    run: &SandboxRun,
) -> Result<Option<String>, StoreError> {
    let Some(store) = history.store() else {
        return Ok(None);
    };
    let started = store.started_at(&run.owner, run.created_ms).await?;
    Ok(started
        .into_iter()
        .find(|id| RunId::parse(id).is_ok_and(|id| id.digest() == run.run_digest)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::history::sqlite::SqliteStore;
    use crate::history::tests::record;
    use crate::secret::Secret;

    /// A record of `owner`'s run `id`, started at `created_ms`, and the
    /// metadata its sandbox would carry.
    fn run(id: &RunId, owner: &Secret, created_ms: u64) -> (RunRecord, BTreeMap<String, String>) {
        let owner_digest = run_id::owner_digest(owner);
        let record = record(id.as_str(), &owner_digest, created_ms);
        let mut metadata = run_id::metadata(id, owner);
        metadata.insert(
            crate::runs::CREATED_KEY.to_owned(),
            record.created_at.clone(),
        );
        (record, metadata)
    }

    fn history(dir: &tempfile::TempDir) -> History {
        let store = SqliteStore::open(&dir.path().join("history.db")).expect("open");
        History::spawn(Arc::new(store), None)
    }

    #[tokio::test]
    async fn a_running_run_is_found_by_its_sandbox_s_metadata_and_expired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let history = history(&dir);
        let store = history.store().expect("a store").clone();
        let owner = Secret::new("the caller's token");
        let id = RunId::generate().expect("an id");
        let (record, metadata) = run(&id, &owner, 1_733_000_000_123);
        store.started(&record).await.expect("start");
        // Another run of the same owner, begun in the same millisecond.
        let twin = RunId::generate().expect("an id");
        store
            .started(&run(&twin, &owner, 1_733_000_000_123).0)
            .await
            .expect("start");

        let sandbox_run = SandboxRun::of(&metadata).expect("a detached run's metadata");
        let ended = SystemTime::UNIX_EPOCH + Duration::from_millis(1_733_000_060_123);
        let expired = expired(&history, &sandbox_run, ended)
            .await
            .expect("the store answers")
            .expect("the run was running");
        assert_eq!(expired.run_id, id.as_str());
        assert_eq!(expired.status, RecordStatus::Expired);
        assert_eq!(expired.duration_ms, Some(60_000));
        assert_eq!(expired.error_type.as_deref(), Some(SANDBOX_KILLED));
        assert_eq!(
            expired.ended_at.as_deref(),
            Some("2024-11-30T20:54:20.123Z")
        );
        let owner_digest = run_id::owner_digest(&owner);
        let kept = store
            .get(&owner_digest, id.as_str())
            .await
            .expect("read")
            .expect("a record");
        assert_eq!(kept.status, RecordStatus::Expired);
        let twin_kept = store
            .get(&owner_digest, twin.as_str())
            .await
            .expect("read")
            .expect("a record");
        assert_eq!(
            twin_kept.status,
            RecordStatus::Running,
            "only the named run"
        );

        // Once ended, a second event changes nothing.
        assert_eq!(
            expired_again(&history, &sandbox_run).await,
            None,
            "an expired run is not expired twice"
        );
    }

    async fn expired_again(history: &History, run: &SandboxRun) -> Option<RunRecord> {
        expired(history, run, SystemTime::now())
            .await
            .expect("the store answers")
    }

    #[tokio::test]
    async fn a_run_that_ended_keeps_its_ending() {
        let dir = tempfile::tempdir().expect("tempdir");
        let history = history(&dir);
        let store = history.store().expect("a store").clone();
        let owner = Secret::new("owner");
        let id = RunId::generate().expect("an id");
        let (record, metadata) = run(&id, &owner, 5_000);
        store.started(&record).await.expect("start");
        let succeeded = RunEnding {
            status: Some(RecordStatus::Succeeded),
            ended_at: "1970-01-01T00:00:06.000Z".into(),
            duration_ms: 1_000,
            result: Some("done".into()),
            ..RunEnding::default()
        };
        store.ended(id.as_str(), &succeeded).await.expect("end");
        let sandbox_run = SandboxRun::of(&metadata).expect("metadata");
        assert_eq!(expired_again(&history, &sandbox_run).await, None);
        let kept = store
            .get(&run_id::owner_digest(&owner), id.as_str())
            .await
            .expect("read")
            .expect("a record");
        assert_eq!(kept.status, RecordStatus::Succeeded);
        assert_eq!(kept.result.as_deref(), Some("done"));
        assert_eq!(kept.error_type, None);
    }

    #[tokio::test]
    async fn metadata_of_another_owner_or_start_or_run_finds_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let history = history(&dir);
        let store = history.store().expect("a store").clone();
        let owner = Secret::new("owner");
        let id = RunId::generate().expect("an id");
        let (record, metadata) = run(&id, &owner, 5_000);
        store.started(&record).await.expect("start");
        let other_id = RunId::generate().expect("an id");
        for (key, value) in [
            (
                run_id::OWNER_KEY,
                run_id::owner_digest(&Secret::new("someone else")),
            ),
            (
                crate::runs::CREATED_KEY,
                "1970-01-01T00:00:05.001Z".to_owned(),
            ),
            (run_id::RUN_KEY, other_id.digest()),
        ] {
            let mut changed = metadata.clone();
            changed.insert(key.to_owned(), value);
            let sandbox_run = SandboxRun::of(&changed).expect("metadata");
            assert_eq!(expired_again(&history, &sandbox_run).await, None, "{key}");
        }
        // A sandbox with no run of ours in it.
        assert_eq!(SandboxRun::of(&BTreeMap::new()), None);
        let mut attached = BTreeMap::new();
        attached.insert(crate::runs::REQUEST_KEY.to_owned(), "req".to_owned());
        assert_eq!(SandboxRun::of(&attached), None);
        // And without a history there is nothing to expire.
        let sandbox_run = SandboxRun::of(&metadata).expect("metadata");
        assert_eq!(expired_again(&History::off(), &sandbox_run).await, None);
        let kept = store
            .get(&run_id::owner_digest(&owner), id.as_str())
            .await
            .expect("read")
            .expect("a record");
        assert_eq!(kept.status, RecordStatus::Running);
    }
}
