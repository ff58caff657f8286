//! A run's stored events (`SANDSTORM_STORE_EVENTS`) in the SQLite store,
//! and the tap that keeps them.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::events::{Reader, Stored};
use super::sqlite::SqliteStore;
use super::tests::{Slow, Stuck, record, tapped};
use super::*;
use crate::events::RunEvent;

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
    // And on to the newest schema (the runs' recorders).
    assert_eq!(version, 3);
}

fn agent(json: &str) -> RunEvent {
    RunEvent::Agent(bytes::Bytes::copy_from_slice(json.as_bytes()))
}

fn done() -> RunEvent {
    RunEvent::Done(crate::events::Done {
        status: crate::events::DoneStatus::Success,
        request_id: "r".into(),
        sandstorm: None,
    })
}

/// Sends `events` through a tap of `history` and reads them all back out,
/// as its client would.
async fn through_the_tap(history: &History, events: Vec<RunEvent>) {
    let (tx, mut handle) = tapped(history);
    let sent = tokio::spawn(async move {
        for event in events {
            tx.send(event).await.expect("send");
        }
    });
    while handle.events.recv().await.is_some() {}
    sent.await.expect("sent");
    history.settle(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_tap_keeps_what_the_client_got_when_events_are_stored_and_nothing_else() {
    let events = || {
        vec![
            RunEvent::Progress(crate::events::Phase::CreatingSandbox),
            agent(r#"{"type":"system","subtype":"init"}"#),
            RunEvent::Stderr("a warning".into()),
            done(),
        ]
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = std::sync::Arc::new(store(&dir));
    let history = History::spawn(store.clone(), None).storing_events(Some(1 << 20));
    through_the_tap(&history, events()).await;
    let blob = store
        .kept_events("me", "run_a")
        .await
        .expect("read")
        .expect("events kept");
    let items: Vec<Stored> = Reader::new(blob)
        .expect("ours")
        .collect::<Result<_, _>>()
        .expect("items");
    let sent = events();
    assert_eq!(
        items,
        [
            Stored::Event {
                id: 1,
                json: sent[1].to_json().to_vec()
            },
            Stored::Event {
                id: 2,
                json: sent[2].to_json().to_vec()
            },
            Stored::Event {
                id: 3,
                json: sent[3].to_json().to_vec()
            },
        ]
    );

    // Off, as by default: the record, and no events.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = std::sync::Arc::new(self::store(&dir));
    let history = History::spawn(store.clone(), None);
    through_the_tap(&history, events()).await;
    assert!(store.get("me", "run_a").await.expect("read").is_some());
    assert_eq!(store.kept_events("me", "run_a").await.expect("read"), None);
}

#[tokio::test(start_paused = true)]
async fn a_settling_history_lands_a_runs_events_before_its_client_gets_done() {
    // What a serverless door asks for: once the response is over, the
    // platform may freeze the process before a later write.
    let slow = std::sync::Arc::new(Slow::default());
    let history = History::spawn(slow.clone(), None)
        .settling_ends(Duration::from_secs(2))
        .storing_events(Some(1 << 20));
    let (tx, mut handle) = tapped(&history);
    tx.send(agent(r#"{"type":"result"}"#)).await.expect("send");
    tx.send(done()).await.expect("send");
    while let Some(event) = handle.events.recv().await {
        if matches!(event, RunEvent::Done(_)) {
            break;
        }
    }
    assert_eq!(slow.landed(), ["start", "end", "events"]);
}

#[tokio::test(start_paused = true)]
async fn events_waiting_for_a_stuck_store_take_a_bounded_memory() {
    let history =
        History::spawn(std::sync::Arc::new(Stuck::default()), None).storing_events(Some(16 << 20));
    let queued = || {
        history
            .inner
            .as_ref()
            .map(|inner| inner.queued_event_bytes.load(Ordering::SeqCst))
    };
    const BLOB: usize = 8 << 20;
    for _ in 0..12 {
        history.keep_events("run_a", vec![0; BLOB]);
    }
    // The writer holds one, the queue the rest that fit; the others were
    // dropped at once.
    let waiting = queued().expect("history is on");
    assert!(waiting <= QUEUED_EVENT_BYTES, "{waiting} bytes wait");
    assert!(waiting >= QUEUED_EVENT_BYTES - BLOB, "{waiting} bytes wait");
    // Each write gives up in time, and gives its bytes back.
    tokio::time::sleep(WRITE_TIMEOUT * 12).await;
    assert_eq!(queued(), Some(0));
}
