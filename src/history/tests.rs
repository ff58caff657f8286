use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use super::sqlite::SqliteStore;
use super::*;

/// A running record of `owner`'s, started `created_ms` after the epoch.
pub(crate) fn record(run_id: &str, owner: &str, created_ms: u64) -> RunRecord {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(created_ms);
    RunRecord {
        run_id: run_id.to_owned(),
        owner: owner.to_owned(),
        status: RecordStatus::Running,
        detached: false,
        created_at: humantime::format_rfc3339_millis(at).to_string(),
        ended_at: None,
        duration_ms: None,
        request_id: "req".into(),
        model: Some("asked".into()),
        turns: None,
        total_cost_usd: None,
        usage: None,
        spend: None,
        prompt: "hello".into(),
        prompt_truncated: false,
        config: serde_json::json!({"model": "asked"}),
        outputs: Vec::new(),
        session_id: None,
        error_type: None,
        labels: BTreeMap::new(),
        sandbox_id: None,
        request: None,
        replay_of: None,
        result: None,
        webhook_url: None,
    }
}

fn store(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("nested/history.db")).expect("open")
}

#[tokio::test]
async fn a_record_survives_reopening_the_file_with_its_ending() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = store(&dir);
        store
            .started(&record("run_a", "me", 1_000))
            .await
            .expect("start");
        store.sandbox("run_a", "sbx-1").await.expect("sandbox");
        let ending = RunEnding {
            status: Some(RecordStatus::Succeeded),
            ended_at: "2026-01-01T00:00:01.000Z".into(),
            duration_ms: 1000,
            model: Some("claude-x".into()),
            turns: Some(3),
            total_cost_usd: Some(0.25),
            session_id: Some("s".into()),
            ..RunEnding::default()
        };
        store.ended("run_a", &ending).await.expect("end");
        // A run this store never saw is no error.
        store
            .ended("run_unknown", &ending)
            .await
            .expect("end of another");
    }
    let store = store(&dir);
    let got = store.get("me", "run_a").await.expect("get").expect("found");
    assert_eq!(got.status, RecordStatus::Succeeded);
    assert_eq!(got.model.as_deref(), Some("claude-x"));
    assert_eq!(got.turns, Some(3));
    assert_eq!(got.total_cost_usd, Some(0.25));
    assert_eq!(got.sandbox_id.as_deref(), Some("sbx-1"));
    assert_eq!(got.duration_ms, Some(1000));
    assert!(
        store
            .get("someone else", "run_a")
            .await
            .expect("get")
            .is_none()
    );
}

#[tokio::test]
async fn lists_go_newest_first_by_pages_and_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir);
    for i in 0..5u64 {
        let mut r = record(&format!("run_{i}"), "me", 1_000 + i * 10);
        if i % 2 == 0 {
            r.status = RecordStatus::Failed;
            r.labels.insert("team_id".into(), "blue".into());
        }
        store.started(&r).await.expect("start");
    }
    store
        .started(&record("run_x", "other", 5_000))
        .await
        .expect("start");

    let first = store
        .list("me", &Filter::default(), None, 2)
        .await
        .expect("list");
    let ids = |page: &Page| {
        page.runs
            .iter()
            .map(|r| r.run_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&first), ["run_4", "run_3"]);
    let second = store
        .list("me", &Filter::default(), first.next.as_deref(), 2)
        .await
        .expect("list");
    assert_eq!(ids(&second), ["run_2", "run_1"]);
    let third = store
        .list("me", &Filter::default(), second.next.as_deref(), 2)
        .await
        .expect("list");
    assert_eq!(ids(&third), ["run_0"]);
    assert!(third.next.is_none());

    let failed = Filter {
        status: Some(RecordStatus::Failed),
        ..Filter::default()
    };
    let page = store.list("me", &failed, None, 10).await.expect("list");
    assert_eq!(ids(&page), ["run_4", "run_2", "run_0"]);
    let blue = Filter {
        labels: BTreeMap::from([("team_id".to_owned(), "blue".to_owned())]),
        since: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_020)),
        ..Filter::default()
    };
    let page = store.list("me", &blue, None, 10).await.expect("list");
    assert_eq!(ids(&page), ["run_4", "run_2"]);

    for bad in ["", "not base64!", "bm9jb2xvbg", "eDpydW5fMQ"] {
        let e = store
            .list("me", &Filter::default(), Some(bad), 2)
            .await
            .expect_err(bad);
        assert!(matches!(e, StoreError::BadCursor), "{bad}: {e}");
    }
}

#[tokio::test]
async fn the_sweep_deletes_only_runs_past_the_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir);
    store
        .started(&record("run_old", "me", 1_000))
        .await
        .expect("start");
    store
        .started(&record("run_new", "me", 9_000))
        .await
        .expect("start");
    let deleted = store
        .sweep(SystemTime::UNIX_EPOCH + Duration::from_millis(5_000))
        .await
        .expect("sweep");
    assert_eq!(deleted, 1);
    assert!(store.get("me", "run_old").await.expect("get").is_none());
    assert!(store.get("me", "run_new").await.expect("get").is_some());
}

#[tokio::test]
async fn an_attached_run_whose_process_is_gone_is_ended_interrupted_and_no_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("history.db");
    // Two processes recording into one file: the first relays an attached
    // run, a detached one and one that ends; a third run has no recorder
    // (written before recorders were).
    let first = SqliteStore::open(&path)
        .and_then(SqliteStore::recording)
        .expect("open");
    let second = SqliteStore::open(&path)
        .and_then(SqliteStore::recording)
        .expect("open");
    first
        .started(&record("run_attached", "me", 1_000))
        .await
        .expect("start");
    let mut detached = record("run_detached", "me", 2_000);
    detached.detached = true;
    first.started(&detached).await.expect("start");
    first
        .started(&record("run_ends", "me", 3_000))
        .await
        .expect("start");
    let ending = RunEnding {
        status: Some(RecordStatus::Succeeded),
        ended_at: "2026-01-01T00:00:04.000Z".into(),
        duration_ms: 1_000,
        ..RunEnding::default()
    };
    first.ended("run_ends", &ending).await.expect("end");
    SqliteStore::open(&path)
        .expect("open")
        .started(&record("run_unnamed", "me", 4_000))
        .await
        .expect("start");
    let status = |store: &SqliteStore, run_id: &'static str| {
        let store = store.clone();
        async move {
            let record = store
                .get("me", run_id)
                .await
                .expect("get")
                .expect("a record");
            (record.status, record.error_type, record.ended_at)
        }
    };

    // The first is alive: its runs go on, whoever looks.
    assert_eq!(second.end_interrupted().await.expect("check"), 0);
    assert_eq!(first.end_interrupted().await.expect("check"), 0);
    assert_eq!(
        status(&second, "run_attached").await.0,
        RecordStatus::Running
    );

    // Gone (its lock released, as the kernel does for a killed process).
    drop(first);
    assert_eq!(second.end_interrupted().await.expect("check"), 1);
    assert_eq!(
        status(&second, "run_attached").await,
        (
            RecordStatus::Failed,
            Some(record::INTERRUPTED.to_owned()),
            None
        )
    );
    for (run_id, wanted) in [
        ("run_detached", RecordStatus::Running),
        ("run_ends", RecordStatus::Succeeded),
        ("run_unnamed", RecordStatus::Running),
    ] {
        assert_eq!(status(&second, run_id).await.0, wanted, "{run_id}");
    }
    // Once is enough; and the gone recorder's file is gone too.
    assert_eq!(second.end_interrupted().await.expect("check"), 0);
    let files = std::fs::read_dir(dir.path().join("history.db-recorders"))
        .expect("the recorders' folder")
        .count();
    assert_eq!(files, 1, "only the second's file is left");
}

#[test]
fn the_file_is_readable_by_its_owner_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("history.db");
    drop(SqliteStore::open(&path).expect("open"));
    let mode = std::fs::metadata(&path)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
}

#[test]
fn a_path_that_cannot_hold_a_database_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A folder where the file should be.
    let e = SqliteStore::open(dir.path()).expect_err("a folder");
    assert!(matches!(e, StoreError::Backend(_)));
    // A file that is not a database.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'x'; 4096]).expect("write");
    assert!(SqliteStore::open(&junk).is_err());
    // A schema from a newer build.
    let newer = dir.path().join("newer.db");
    drop(SqliteStore::open(&newer).expect("open"));
    let connection = rusqlite::Connection::open(&newer).expect("open");
    connection
        .execute_batch("PRAGMA user_version = 99")
        .expect("pragma");
    drop(connection);
    assert!(SqliteStore::open(&newer).is_err());
}

/// A store that never answers, counting the writes it was asked for.
#[derive(Debug, Default)]
pub(super) struct Stuck {
    asked: AtomicUsize,
}

#[async_trait::async_trait]
impl RunStore for Stuck {
    async fn started(&self, _: &RunRecord) -> Result<(), StoreError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
    async fn ended(&self, _: &str, _: &RunEnding) -> Result<(), StoreError> {
        std::future::pending().await
    }
    async fn sandbox(&self, _: &str, _: &str) -> Result<(), StoreError> {
        std::future::pending().await
    }
    async fn get(&self, _: &str, _: &str) -> Result<Option<RunRecord>, StoreError> {
        std::future::pending().await
    }
    async fn list(
        &self,
        _: &str,
        _: &Filter,
        _: Option<&str>,
        _: usize,
    ) -> Result<Page, StoreError> {
        std::future::pending().await
    }
    async fn sweep(&self, _: SystemTime) -> Result<u64, StoreError> {
        std::future::pending().await
    }
    async fn keep_events(&self, _: &str, _: &[u8]) -> Result<(), StoreError> {
        std::future::pending().await
    }
    async fn kept_events(&self, _: &str, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
        std::future::pending().await
    }
    async fn started_at(&self, _: &str, _: u64) -> Result<Vec<String>, StoreError> {
        std::future::pending().await
    }
    async fn end_if_running(
        &self,
        _: &str,
        _: &RunEnding,
    ) -> Result<Option<RunRecord>, StoreError> {
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_stuck_store_never_holds_up_the_writes_of_a_run() {
    let stuck = std::sync::Arc::new(Stuck::default());
    let history = History::spawn(stuck.clone(), None);
    // Far more writes than the queue holds: every call returns at once.
    let began = tokio::time::Instant::now();
    for i in 0..(QUEUE * 4) {
        history.started(record(&format!("run_{i}"), "me", 1));
        history.ended(&format!("run_{i}"), RunEnding::default());
    }
    assert_eq!(began.elapsed(), Duration::ZERO);
    // The writer gives up on each write after its timeout and goes on.
    tokio::time::sleep(WRITE_TIMEOUT * 3 + Duration::from_millis(10)).await;
    assert!(stuck.asked.load(Ordering::SeqCst) >= 2);
}

#[test]
fn a_live_run_keeps_its_records_start_to_the_millisecond_and_its_order() {
    // Two runs started in one second: the later one is listed first, though
    // the sandbox of the earlier (still live) one tells its start to the
    // second only.
    let earlier = record("run_early", "me", 5_100);
    let later = record("run_late", "me", 5_900);
    let live = crate::runs::status::RunInfo {
        run_id: "run_early".into(),
        status: crate::runs::status::Status::Running,
        created_at: "1970-01-01T00:00:05Z".into(),
        expires_at: "1970-01-01T01:00:05Z".into(),
        turns: None,
        total_cost_usd: None,
        last_event_id: 3,
        model: None,
        prompt: "hel".into(),
        labels: BTreeMap::new(),
    };
    let shown = api::shown(Some(&earlier), Some(&live));
    assert_eq!(shown["created_at"], earlier.created_at);
    assert_eq!(shown["prompt"], "hello");
    assert_eq!(shown["last_event_id"], 3);

    let page = Page {
        runs: vec![later, earlier],
        next: None,
    };
    let listed = api::merged(
        vec![live],
        page,
        &api::ListQuery::parse(None).expect("none"),
    );
    let order: Vec<&str> = listed["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|run| run["run_id"].as_str())
        .collect();
    assert_eq!(order, ["run_late", "run_early"]);
}

/// A store whose writes take a while, noting each once it has landed.
#[derive(Debug, Default)]
pub(super) struct Slow {
    landed: std::sync::Mutex<Vec<&'static str>>,
}

impl Slow {
    pub(super) fn landed(&self) -> Vec<&'static str> {
        self.landed.lock().map(|l| l.clone()).unwrap_or_default()
    }

    async fn land(&self, after: Duration, what: &'static str) -> Result<(), StoreError> {
        tokio::time::sleep(after).await;
        if let Ok(mut landed) = self.landed.lock() {
            landed.push(what);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl RunStore for Slow {
    async fn started(&self, _: &RunRecord) -> Result<(), StoreError> {
        self.land(Duration::from_millis(50), "start").await
    }
    async fn ended(&self, _: &str, _: &RunEnding) -> Result<(), StoreError> {
        self.land(Duration::from_millis(200), "end").await
    }
    async fn sandbox(&self, _: &str, _: &str) -> Result<(), StoreError> {
        self.land(Duration::ZERO, "sandbox").await
    }
    async fn get(&self, _: &str, _: &str) -> Result<Option<RunRecord>, StoreError> {
        Ok(None)
    }
    async fn list(
        &self,
        _: &str,
        _: &Filter,
        _: Option<&str>,
        _: usize,
    ) -> Result<Page, StoreError> {
        Ok(Page::default())
    }
    async fn sweep(&self, _: SystemTime) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn keep_events(&self, _: &str, _: &[u8]) -> Result<(), StoreError> {
        self.land(Duration::from_millis(100), "events").await
    }
    async fn kept_events(&self, _: &str, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    async fn started_at(&self, _: &str, _: u64) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    async fn end_if_running(
        &self,
        _: &str,
        _: &RunEnding,
    ) -> Result<Option<RunRecord>, StoreError> {
        Ok(None)
    }
}

/// The tap of a run whose events the test sends.
pub(super) fn tapped(
    history: &History,
) -> (mpsc::Sender<crate::events::RunEvent>, crate::run::RunHandle) {
    let recording = history.begin(Some(record("run_a", "me", 1)));
    let (events, inner) = mpsc::channel(4);
    let handle = crate::run::RunHandle {
        events: inner,
        finished: tokio::spawn(async {}),
    };
    (events, tap::tap(recording, handle))
}

fn done() -> crate::events::RunEvent {
    crate::events::RunEvent::Done(crate::events::Done {
        status: crate::events::DoneStatus::Success,
        request_id: "r".into(),
        sandstorm: None,
    })
}

#[tokio::test(start_paused = true)]
async fn a_settling_history_lands_a_runs_end_before_its_client_gets_done() {
    // What a serverless door asks for: the platform may freeze the process
    // once the response is over, so the end must have landed by then.
    let slow = std::sync::Arc::new(Slow::default());
    let history = History::spawn(slow.clone(), None).settling_ends(Duration::from_secs(2));
    let (events, mut handle) = tapped(&history);
    events.send(done()).await.expect("send");
    let got = handle.events.recv().await.expect("the done");
    assert!(matches!(got, crate::events::RunEvent::Done(_)));
    assert_eq!(slow.landed(), ["start", "end"]);

    // A server's history does not wait: the done comes first.
    let slow = std::sync::Arc::new(Slow::default());
    let history = History::spawn(slow.clone(), None);
    let (events, mut handle) = tapped(&history);
    events.send(done()).await.expect("send");
    handle.events.recv().await.expect("the done");
    assert!(!slow.landed().contains(&"end"), "{:?}", slow.landed());
}

#[tokio::test(start_paused = true)]
async fn a_store_that_is_down_holds_a_done_no_longer_than_the_bound() {
    let history = History::spawn(std::sync::Arc::new(Stuck::default()), None)
        .settling_ends(Duration::from_secs(2));
    let began = tokio::time::Instant::now();
    history.ended("run_a", RunEnding::default());
    history.settle_end().await;
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[tokio::test]
async fn a_run_s_webhook_is_kept_for_its_teller_and_never_shown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir);
    let mut told = record("run_w", "me", 1_000);
    told.webhook_url = Some("https://hooks.example.com/x?token=secret-token".into());
    store.started(&told).await.expect("start");
    let ending = RunEnding {
        status: Some(RecordStatus::Expired),
        ended_at: "2026-01-01T00:00:01.000Z".into(),
        ..RunEnding::default()
    };
    store.ended("run_w", &ending).await.expect("end");
    let got = store.get("me", "run_w").await.expect("get").expect("found");
    assert_eq!(got.webhook_url, told.webhook_url);
    let shown = api::shown(Some(&got), None).to_string();
    assert!(
        !shown.contains("secret-token") && !shown.contains("webhook_url"),
        "{shown}"
    );
    let page = store
        .list("me", &Filter::default(), None, 10)
        .await
        .expect("list");
    let wanted = api::ListQuery::parse(None).expect("no filter");
    let listed = api::merged(Vec::new(), page, &wanted).to_string();
    assert!(!listed.contains("secret-token"), "{listed}");
}
