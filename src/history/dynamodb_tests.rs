//! The DynamoDB store against `moto_server` (PyPI `moto[server]`, which
//! scripts/setup installs into `.venv`) on loopback: the SDK's real
//! requests, the table as template.yaml makes it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use super::*;
use crate::history::{Filter, RecordStatus, RunEnding, RunRecord, RunStore, StoreError};

/// `moto_server` on a port of its choosing; killed when dropped.
struct Moto {
    url: String,
    _child: tokio::process::Child,
}

fn moto_server() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    if venv.is_file() {
        return venv;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("moto_server"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "moto_server is not installed; install it with scripts/setup (PyPI moto[server])"
            )
        })
}

/// Starts moto and waits for the address it prints
/// (` * Running on http://127.0.0.1:PORT`).
async fn start_moto() -> Moto {
    let mut child = tokio::process::Command::new(moto_server())
        .args(["-H", "127.0.0.1", "-p", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start moto_server");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for out in [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = rx.recv().await {
            if let Some((_, rest)) = line.split_once("Running on ")
                && let Some(url) = rest.split_whitespace().next()
            {
                return url.to_owned();
            }
        }
        panic!("moto_server ended before it said where it listens");
    })
    .await
    .expect("moto_server starts within a minute");
    Moto { url, _child: child }
}

fn client(endpoint: &str) -> Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .build();
    Client::from_conf(config)
}

/// The table as template.yaml declares it.
async fn create_table(client: &Client, table: &str) {
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("attribute")
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .expect("key")
    };
    client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute(KEY))
        .attribute_definitions(attribute(OWNER))
        .attribute_definitions(attribute(CREATED))
        .key_schema(key(KEY, KeyType::Hash))
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(INDEX)
                .key_schema(key(OWNER, KeyType::Hash))
                .key_schema(key(CREATED, KeyType::Range))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .expect("index"),
        )
        .send()
        .await
        .expect("create the table in moto");
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name(EXPIRES)
                .enabled(true)
                .build()
                .expect("ttl"),
        )
        .send()
        .await
        .expect("turn TTL on");
}

async fn store(moto: &Moto, retention: Option<Duration>) -> (DynamoDbStore, Client) {
    let client = client(&moto.url);
    create_table(&client, "runs").await;
    (
        DynamoDbStore::new(client.clone(), "runs", retention),
        client,
    )
}

/// The history tests' record, with a config deep and numbered enough to
/// show it comes back as it went in.
fn record(run_id: &str, owner: &str, created_ms: u64) -> RunRecord {
    RunRecord {
        config: serde_json::json!({"model": "asked", "max_turns": 1.0, "deep": {"a": [1, {"b": null}]}}),
        ..crate::history::tests::record(run_id, owner, created_ms)
    }
}

/// Now, as milliseconds since 1970: records here start in the present, so
/// that retention does not hide them.
fn now_ms() -> u64 {
    millis(SystemTime::now())
}

fn ids(page: &Page) -> Vec<&str> {
    page.runs.iter().map(|r| r.run_id.as_str()).collect()
}

#[tokio::test]
async fn a_record_takes_its_sandbox_and_ending_in_place() {
    let moto = start_moto().await;
    let (store, client) = store(&moto, None).await;
    let mut started = record("run_a", "me", now_ms());
    started.error_type = Some("an earlier turn's".into());
    started.labels.insert("team_id".into(), "blue".into());
    store.started(&started).await.expect("start");
    store.sandbox("run_a", "sbx-1").await.expect("sandbox");
    let ending = RunEnding {
        status: Some(RecordStatus::Succeeded),
        ended_at: "2026-01-01T00:00:01.000Z".into(),
        duration_ms: 1000,
        model: None,
        turns: Some(3),
        total_cost_usd: Some(0.25),
        usage: Some(crate::history::record::TokenUsage {
            input_tokens: 10,
            output_tokens: 3,
            ..Default::default()
        }),
        outputs: vec!["out/report.md".into()],
        session_id: Some("s".into()),
        ..RunEnding::default()
    };
    store.ended("run_a", &ending).await.expect("end");

    let got = store.get("me", "run_a").await.expect("get").expect("found");
    // What the store read back is what the same ending does in memory.
    let mut expected = started.clone();
    expected.sandbox_id = Some("sbx-1".into());
    expected.end(ending.clone());
    assert_eq!(got, expected);
    assert_eq!(
        got.model.as_deref(),
        Some("asked"),
        "kept: the ending had none"
    );
    assert_eq!(got.error_type, None, "cleared: the ending had none");
    // The config is the JSON it was, numbers and all.
    assert_eq!(got.config, started.config);
    assert_eq!(got.config["max_turns"].as_f64(), Some(1.0));

    // Someone else's, or no one's: nothing.
    assert!(store.get("other", "run_a").await.expect("get").is_none());
    assert!(store.get("me", "run_none").await.expect("get").is_none());

    // An ending or a sandbox of a run the table never saw creates nothing.
    store
        .ended("run_unknown", &ending)
        .await
        .expect("end of another");
    store
        .sandbox("run_unknown", "sbx-2")
        .await
        .expect("sandbox of another");
    let item = client
        .get_item()
        .table_name("runs")
        .key(KEY, AttributeValue::S("run_unknown".into()))
        .send()
        .await
        .expect("get item");
    assert!(item.item().is_none(), "{item:?}");
}

#[tokio::test]
async fn lists_go_newest_first_by_pages_and_filters_for_their_owner_alone() {
    let moto = start_moto().await;
    let (store, _) = store(&moto, Some(Duration::from_secs(86_400))).await;
    let base = now_ms() - 60_000;
    for i in 0..7u64 {
        let mut r = record(&format!("run_{i}"), "me", base + i * 10);
        if i % 2 == 0 {
            r.status = RecordStatus::Failed;
            r.labels.insert("team_id".into(), "blue".into());
        }
        store.started(&r).await.expect("start");
    }
    // Two runs in one millisecond: the id orders them.
    store
        .started(&record("run_tie_a", "me", base + 100))
        .await
        .expect("start");
    store
        .started(&record("run_tie_b", "me", base + 100))
        .await
        .expect("start");
    store
        .started(&record("run_x", "other", base + 1_000))
        .await
        .expect("start");

    // Page after page, each from the cursor of the one before.
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store
            .list("me", &Filter::default(), cursor.as_deref(), 3)
            .await
            .expect("list");
        assert!(page.runs.len() <= 3);
        all.extend(ids(&page).into_iter().map(str::to_owned));
        pages += 1;
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(pages < 10, "the pages never end");
    }
    assert_eq!(
        all,
        [
            "run_tie_b",
            "run_tie_a",
            "run_6",
            "run_5",
            "run_4",
            "run_3",
            "run_2",
            "run_1",
            "run_0"
        ]
    );
    assert_eq!(pages, 3, "nine runs, three a page, and no empty page after");

    // Filters: status, a label, since; each page of them full.
    let failed = Filter {
        status: Some(RecordStatus::Failed),
        ..Filter::default()
    };
    let first = store.list("me", &failed, None, 2).await.expect("list");
    assert_eq!(ids(&first), ["run_6", "run_4"]);
    let second = store
        .list("me", &failed, first.next.as_deref(), 2)
        .await
        .expect("list");
    assert_eq!(ids(&second), ["run_2", "run_0"]);
    assert!(second.next.is_none());
    let mut blue = Filter::default();
    blue.labels.insert("team_id".into(), "blue".into());
    let page = store.list("me", &blue, None, 10).await.expect("list");
    assert_eq!(ids(&page), ["run_6", "run_4", "run_2", "run_0"]);
    blue.labels.insert("user_id".into(), "u-1".into());
    let page = store.list("me", &blue, None, 10).await.expect("list");
    assert!(page.runs.is_empty() && page.next.is_none());
    let since = Filter {
        since: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(base + 50)),
        ..Filter::default()
    };
    let page = store.list("me", &since, None, 10).await.expect("list");
    assert_eq!(ids(&page), ["run_tie_b", "run_tie_a", "run_6", "run_5"]);
    // A cursor from before `since` leaves nothing to list.
    let old = store
        .list("me", &Filter::default(), None, 8)
        .await
        .expect("list");
    let page = store
        .list("me", &since, old.next.as_deref(), 10)
        .await
        .expect("list");
    assert!(page.runs.is_empty(), "{:?}", ids(&page));

    // Someone else sees their own, and my cursor shows them nothing of mine.
    let theirs = store
        .list("other", &Filter::default(), None, 10)
        .await
        .expect("list");
    assert_eq!(ids(&theirs), ["run_x"]);
    let page = store
        .list("other", &Filter::default(), cursor.as_deref(), 10)
        .await
        .expect("list");
    assert!(page.runs.iter().all(|r| r.owner == "other"));

    // A cursor that is not ours is refused.
    for bad in ["nope!", "bm90IG91cnM", ""] {
        let refused = store.list("me", &Filter::default(), Some(bad), 3).await;
        assert!(matches!(refused, Err(StoreError::BadCursor)), "{bad:?}");
    }
}

#[tokio::test]
async fn retention_is_the_ttl_attribute_and_an_expired_run_is_hidden() {
    let moto = start_moto().await;
    let (store, client) = store(&moto, Some(Duration::from_secs(7 * 86_400))).await;
    let created = now_ms();
    store
        .started(&record("run_kept", "me", created))
        .await
        .expect("start");
    let item = client
        .get_item()
        .table_name("runs")
        .key(KEY, AttributeValue::S("run_kept".into()))
        .send()
        .await
        .expect("get item");
    let expires = match item.item().and_then(|i| i.get(EXPIRES)) {
        Some(AttributeValue::N(n)) => n.parse::<u64>().expect("seconds"),
        other => panic!("no TTL attribute: {other:?}"),
    };
    assert_eq!(expires, created / 1000 + 7 * 86_400);

    // Started longer ago than the retention: TTL's to delete, and until
    // it does, no read shows it.
    let old = now_ms() - 8 * 86_400 * 1000;
    store
        .started(&record("run_old", "me", old))
        .await
        .expect("start");
    assert!(store.get("me", "run_old").await.expect("get").is_none());
    let page = store
        .list("me", &Filter::default(), None, 10)
        .await
        .expect("list");
    assert_eq!(ids(&page), ["run_kept"]);
    assert_eq!(store.sweep(SystemTime::now()).await.expect("sweep"), 0);

    // No retention, no TTL attribute.
    let forever = DynamoDbStore::new(client.clone(), "runs", None);
    forever
        .started(&record("run_forever", "me", old))
        .await
        .expect("start");
    let item = client
        .get_item()
        .table_name("runs")
        .key(KEY, AttributeValue::S("run_forever".into()))
        .send()
        .await
        .expect("get item");
    assert!(item.item().is_some_and(|i| !i.contains_key(EXPIRES)));
    assert!(
        forever
            .get("me", "run_forever")
            .await
            .expect("get")
            .is_some()
    );
}

#[tokio::test]
async fn a_filter_that_keeps_few_reads_on_until_the_page_is_full() {
    let moto = start_moto().await;
    let (store, _) = store(&moto, None).await;
    let base = now_ms() - 600_000;
    // 250 runs, every 50th failed: more than one query's read.
    for i in 0..250u64 {
        let mut r = record(&format!("run_{i:03}"), "me", base + i);
        if i % 50 == 0 {
            r.status = RecordStatus::Failed;
        }
        store.started(&r).await.expect("start");
    }
    let failed = Filter {
        status: Some(RecordStatus::Failed),
        ..Filter::default()
    };
    let page = store.list("me", &failed, None, 4).await.expect("list");
    assert_eq!(ids(&page), ["run_200", "run_150", "run_100", "run_050"]);
    let rest = store
        .list("me", &failed, page.next.as_deref(), 4)
        .await
        .expect("list");
    assert_eq!(ids(&rest), ["run_000"]);
    assert!(rest.next.is_none());
}

#[tokio::test]
async fn a_store_that_is_gone_is_an_error_not_a_hang() {
    let moto = start_moto().await;
    let (store, _) = store(&moto, None).await;
    drop(moto);
    let failed = tokio::time::timeout(
        Duration::from_secs(30),
        store.started(&record("run_a", "me", now_ms())),
    )
    .await
    .expect("an answer");
    assert!(matches!(failed, Err(StoreError::Backend(_))), "{failed:?}");
}

/// Bytes that do not compress or repeat: a blob of stored events as
/// large as a cap lets it be.
fn noise(len: usize) -> Vec<u8> {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed.to_le_bytes()[0]
        })
        .collect()
}

async fn item_of_key(client: &Client, key: &str) -> Option<HashMap<String, AttributeValue>> {
    client
        .get_item()
        .table_name("runs")
        .key(KEY, AttributeValue::S(key.to_owned()))
        .send()
        .await
        .expect("get item")
        .item
}

#[tokio::test]
async fn stored_events_go_in_chunks_with_the_records_ttl_for_its_owner_alone() {
    let moto = start_moto().await;
    let (store, client) = store(&moto, Some(Duration::from_secs(7 * 86_400))).await;
    store
        .started(&record("run_a", "me", now_ms()))
        .await
        .expect("start");
    // Over two items' worth: three chunks.
    let blob = noise(2 * events::CHUNK + 1000);
    store.keep_events("run_a", &blob).await.expect("keep");
    let kept = store.kept_events("me", "run_a").await.expect("read");
    assert!(kept.as_ref() == Some(&blob), "the blob came back changed");

    let record_item = item_of_key(&client, "run_a").await.expect("the record");
    for n in 0..3 {
        let chunk = item_of_key(&client, &events::chunk_key("run_a", n))
            .await
            .unwrap_or_else(|| panic!("chunk {n}"));
        assert_eq!(chunk.get(EXPIRES), record_item.get(EXPIRES), "chunk {n}");
        assert!(!chunk.contains_key(OWNER), "chunk {n} is in no list");
    }
    assert!(
        item_of_key(&client, &events::chunk_key("run_a", 3))
            .await
            .is_none()
    );
    // The record is as it was, and lists show the run once.
    assert!(store.get("me", "run_a").await.expect("get").is_some());
    let page = store
        .list("me", &Filter::default(), None, 10)
        .await
        .expect("list");
    assert_eq!(ids(&page), ["run_a"]);

    // Someone else's, or no one's: nothing.
    assert_eq!(store.kept_events("you", "run_a").await.expect("read"), None);
    assert_eq!(store.kept_events("me", "run_b").await.expect("read"), None);
    // A run the table never saw gets none.
    store.keep_events("run_b", b"blob").await.expect("keep");
    assert!(
        item_of_key(&client, &events::chunk_key("run_b", 0))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_shorter_snapshot_never_cuts_down_a_longer_one() {
    let moto = start_moto().await;
    let (store, _) = store(&moto, None).await;
    store
        .started(&record("run_a", "me", now_ms()))
        .await
        .expect("start");
    let whole = noise(events::CHUNK + 5000);
    // Turn 1's snapshot, then the whole run's, then a reader that stopped
    // after turn 1 writes turn 1's again.
    let turn_1 = &whole[..events::CHUNK / 2];
    store.keep_events("run_a", turn_1).await.expect("keep");
    assert_eq!(
        store
            .kept_events("me", "run_a")
            .await
            .expect("read")
            .as_deref(),
        Some(turn_1)
    );
    store.keep_events("run_a", &whole).await.expect("keep");
    store.keep_events("run_a", turn_1).await.expect("keep");
    let kept = store.kept_events("me", "run_a").await.expect("read");
    assert!(kept.as_ref() == Some(&whole), "cut down or changed");
}

#[tokio::test]
async fn stored_events_that_do_not_match_their_description_are_an_error() {
    let moto = start_moto().await;
    let (store, client) = store(&moto, None).await;
    store
        .started(&record("run_a", "me", now_ms()))
        .await
        .expect("start");
    store
        .keep_events("run_a", &noise(events::CHUNK + 10))
        .await
        .expect("keep");
    // Chunk 1 replaced behind the store's back.
    client
        .put_item()
        .table_name("runs")
        .item(KEY, AttributeValue::S(events::chunk_key("run_a", 1)))
        .item("events", AttributeValue::B(vec![0; 10].into()))
        .send()
        .await
        .expect("put");
    let read = store.kept_events("me", "run_a").await;
    assert!(matches!(read, Err(StoreError::Backend(_))), "{read:?}");
}

#[tokio::test]
async fn a_sandbox_s_run_is_found_by_its_start_and_expired_only_while_running() {
    let moto = start_moto().await;
    let (store, client) = store(&moto, None).await;
    let at = now_ms();
    for (run_id, owner, created_ms) in [
        ("run_a", "me", at),
        ("run_b", "me", at),
        ("run_c", "me", at + 1),
        ("run_d", "you", at),
    ] {
        store
            .started(&record(run_id, owner, created_ms))
            .await
            .expect("start");
    }
    let mut found = store.started_at("me", at).await.expect("query");
    found.sort();
    assert_eq!(found, ["run_a", "run_b"], "that owner's, that millisecond");
    assert!(
        store
            .started_at("me", at + 2)
            .await
            .expect("query")
            .is_empty()
    );

    let expiry = RunEnding {
        status: Some(RecordStatus::Expired),
        ended_at: "2026-01-01T00:01:00.000Z".into(),
        duration_ms: 60_000,
        error_type: Some("sandbox_killed".into()),
        ..RunEnding::default()
    };
    let expired = store
        .end_if_running("run_a", &expiry)
        .await
        .expect("update")
        .expect("it was running");
    let mut expected = record("run_a", "me", at);
    expected.end(expiry.clone());
    assert_eq!(expired, expected, "the item as the write left it");
    assert_eq!(store.get("me", "run_a").await.expect("get"), Some(expected));
    // Not again, and not over another ending.
    assert_eq!(
        store
            .end_if_running("run_a", &expiry)
            .await
            .expect("update"),
        None
    );
    let succeeded = RunEnding {
        status: Some(RecordStatus::Succeeded),
        ended_at: "2026-01-01T00:00:30.000Z".into(),
        duration_ms: 30_000,
        result: Some("done".into()),
        ..RunEnding::default()
    };
    store.ended("run_b", &succeeded).await.expect("end");
    assert_eq!(
        store
            .end_if_running("run_b", &expiry)
            .await
            .expect("update"),
        None
    );
    let kept = store.get("me", "run_b").await.expect("get").expect("found");
    assert_eq!(kept.status, RecordStatus::Succeeded);
    assert_eq!(kept.result.as_deref(), Some("done"));
    // A run the table never saw is not created.
    assert_eq!(
        store
            .end_if_running("run_unknown", &expiry)
            .await
            .expect("update"),
        None
    );
    let item = client
        .get_item()
        .table_name("runs")
        .key(KEY, AttributeValue::S("run_unknown".into()))
        .send()
        .await
        .expect("get item");
    assert!(item.item().is_none(), "{item:?}");
}
