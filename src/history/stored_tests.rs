//! A run's stored events (`SANDSTORM_STORE_EVENTS`) in the SQLite store.

use std::time::{Duration, SystemTime};

use super::sqlite::SqliteStore;
use super::tests::record;
use super::*;

fn store(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("history.db")).expect("open")
}

/// How many runs' events the file holds, read past the store.
fn rows(dir: &tempfile::TempDir) -> i64 {
    rusqlite::Connection::open(dir.path().join("history.db"))
        .expect("open")
        .query_row("SELECT count(*) FROM events", [], |row| row.get(0))
        .expect("count")
}

#[tokio::test]
async fn a_runs_events_are_kept_beside_its_record_for_its_owner_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir);
    store
        .started(&record("run_a", "me", 1_000))
        .await
        .expect("start");
    store.keep_events("run_a", b"blob").await.expect("keep");
    // A run the history never saw gets none.
    store.keep_events("run_b", b"blob").await.expect("keep");
    assert_eq!(rows(&dir), 1);
    let kept = store.kept_events("me", "run_a").await.expect("read");
    assert_eq!(kept.as_deref(), Some(&b"blob"[..]));
    assert_eq!(store.kept_events("you", "run_a").await.expect("read"), None);
    assert_eq!(store.kept_events("me", "run_b").await.expect("read"), None);
    // A record written again (the same run's start) keeps its events.
    store
        .started(&record("run_a", "me", 1_000))
        .await
        .expect("start");
    let kept = store.kept_events("me", "run_a").await.expect("read");
    assert_eq!(kept.as_deref(), Some(&b"blob"[..]));
}

#[tokio::test]
async fn a_shorter_snapshot_never_replaces_a_longer_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir);
    store
        .started(&record("run_a", "me", 1_000))
        .await
        .expect("start");
    store.keep_events("run_a", b"turn 1").await.expect("keep");
    store
        .keep_events("run_a", b"turn 1, turn 2")
        .await
        .expect("keep");
    // A reader that stopped after turn 1.
    store.keep_events("run_a", b"turn 1").await.expect("keep");
    let kept = store.kept_events("me", "run_a").await.expect("read");
    assert_eq!(kept.as_deref(), Some(&b"turn 1, turn 2"[..]));
}

#[tokio::test]
async fn the_sweep_deletes_a_runs_events_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir);
    for (run_id, created_ms) in [("run_old", 1_000), ("run_new", 9_000)] {
        store
            .started(&record(run_id, "me", created_ms))
            .await
            .expect("start");
        store.keep_events(run_id, b"blob").await.expect("keep");
    }
    assert_eq!(rows(&dir), 2);
    let deleted = store
        .sweep(SystemTime::UNIX_EPOCH + Duration::from_millis(5_000))
        .await
        .expect("sweep");
    assert_eq!(deleted, 1);
    assert_eq!(rows(&dir), 1, "the old run's events are gone with it");
    assert!(
        store
            .kept_events("me", "run_new")
            .await
            .expect("read")
            .is_some()
    );
}

#[tokio::test]
async fn a_file_of_the_first_schema_gains_the_events_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("history.db");
    {
        // What the build before stored events made.
        let connection = rusqlite::Connection::open(&path).expect("open");
        connection
            .execute_batch(sqlite::MIGRATIONS[0])
            .expect("the first schema");
        connection
            .execute_batch("PRAGMA user_version = 1")
            .expect("version");
    }
    let store = SqliteStore::open(&path).expect("open");
    store
        .started(&record("run_a", "me", 1_000))
        .await
        .expect("start");
    store.keep_events("run_a", b"blob").await.expect("keep");
    assert_eq!(rows(&dir), 1);
    let version: i64 = rusqlite::Connection::open(&path)
        .expect("open")
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .expect("version");
    assert_eq!(version, 2);
}
