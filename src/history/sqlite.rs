//! The history in an SQLite file: the embedded store of `ds serve` and the
//! CLI.
//!
//! One table of runs: the columns a list filters and orders by, and the
//! whole record as JSON beside them, so a new record field needs no
//! migration. A run's stored events (`SANDSTORM_STORE_EVENTS`) are a blob
//! in a table of their own, keyed by the run, read one run at a time and
//! never by a list; the sweep deletes them with their run.
//! Migrations go by SQLite's `user_version`. WAL lets `ds runs` read while
//! a server writes, and the busy timeout makes the two wait for each other
//! rather than fail. rusqlite is blocking: every call runs on Tokio's
//! blocking pool, one connection behind a mutex.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rusqlite::{Connection, OptionalExtension as _, params};

use super::recorders::{self, Recorder};
use super::{Filter, Page, RunEnding, RunRecord, RunStore, StoreError};

/// How long a write waits for another process's (`ds runs` reading while
/// `ds serve` writes).
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// The schema, one step per `user_version`: step `i` takes the file from
/// version `i` to `i + 1`. Steps are only ever added.
pub(super) const MIGRATIONS: &[&str] = &[
    "CREATE TABLE runs (
        run_id TEXT PRIMARY KEY NOT NULL,
        owner TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        status TEXT NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX runs_newest_first ON runs (owner, created_ms DESC, run_id DESC);
    CREATE INDEX runs_by_age ON runs (created_ms);",
    // No foreign key: `started` replaces a run's row, which a cascade would
    // take as a delete. The sweep deletes a run's events itself.
    "CREATE TABLE events (
        run_id TEXT PRIMARY KEY NOT NULL,
        events BLOB NOT NULL
    );",
    // The process relaying an attached run (`recorders`), so that another
    // can end the run when that process is gone; the index holds only the
    // runs still going.
    "ALTER TABLE runs ADD COLUMN recorder TEXT;
    CREATE INDEX runs_recorded_running ON runs (recorder) WHERE status = 'running';",
];

/// Run records in an SQLite file.
#[derive(Clone)]
pub(crate) struct SqliteStore {
    path: PathBuf,
    connection: Arc<Mutex<Connection>>,
    /// This process, when it records runs (see [`SqliteStore::recording`]).
    recorder: Option<Arc<Recorder>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (or creates) the history at `path`, making its folder, and
    /// brings its schema up to date.
    ///
    /// # Errors
    /// When the file cannot be made or opened, is not a database, or its
    /// schema is newer than this build knows.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder).map_err(|e| {
                StoreError::Backend(format!("cannot make {}: {e}", folder.display()))
            })?;
        }
        // Prompts are the users' words: the file is the server user's
        // alone, and SQLite gives its -wal and -shm files the same mode.
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        }
        let mut connection = Connection::open(path).map_err(backend)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        // WAL answers with the mode it is in; a file system that cannot
        // hold WAL's shared memory keeps the old journal, which still works.
        let _mode: String = connection
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(backend)?;
        connection
            .execute_batch("PRAGMA synchronous = NORMAL;")
            .map_err(backend)?;
        migrate(&mut connection)?;
        Ok(SqliteStore {
            path: path.to_owned(),
            connection: Arc::new(Mutex::new(connection)),
            recorder: None,
        })
    }

    /// The same store, with this process registered as a recorder (see
    /// [`recorders`]): the attached runs it records name it, so that
    /// another process can end them as `interrupted` once this one is
    /// gone.
    ///
    /// # Errors
    /// When the recorders' folder beside the file cannot be made, or this
    /// process's lock cannot be taken.
    pub(crate) fn recording(mut self) -> Result<Self, StoreError> {
        let folder = recorders::folder_of(&self.path);
        let recorder = Recorder::register(&folder).map_err(|e| {
            StoreError::Backend(format!("cannot register in {}: {e}", folder.display()))
        })?;
        self.recorder = Some(Arc::new(recorder));
        Ok(self)
    }

    /// Runs `work` on the connection, on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection
                .lock()
                .map_err(|_| StoreError::Backend("a history write panicked".into()))?;
            work(&mut connection)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("the history task failed: {e}")))?
    }
}

#[allow(clippy::needless_pass_by_value)] // map_err hands it over owned
fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(backend)?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if version > known {
        return Err(StoreError::Backend(format!(
            "the history file's schema is version {version}, newer than this build's {known}"
        )));
    }
    let from = usize::try_from(version).unwrap_or(0);
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(from) {
        let tx = connection.transaction().map_err(backend)?;
        tx.execute_batch(sql).map_err(backend)?;
        // PRAGMA takes no parameters; the number is ours.
        tx.execute_batch(&format!("PRAGMA user_version = {}", step + 1))
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
    }
    Ok(())
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Where a page starts: the last run of the page before, by its start and
/// its id (ids break ties between runs started in the same millisecond).
fn cursor_of(record: &RunRecord) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", record.created_ms(), record.run_id))
}

fn read_cursor(cursor: &str) -> Result<(i64, String), StoreError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::BadCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| StoreError::BadCursor)?;
    let (ms, run_id) = text.split_once(':').ok_or(StoreError::BadCursor)?;
    let ms = ms.parse().map_err(|_| StoreError::BadCursor)?;
    if run_id.is_empty() {
        return Err(StoreError::BadCursor);
    }
    Ok((ms, run_id.to_owned()))
}

fn decode(text: &str) -> Result<RunRecord, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Backend(format!("a record is unreadable: {e}")))
}

fn encode(record: &RunRecord) -> Result<String, StoreError> {
    // The owner is never serialized for clients; the store keeps it in its
    // own column.
    serde_json::to_string(record).map_err(|e| StoreError::Backend(e.to_string()))
}

/// Reads a record and its owner back from a row's `owner` and `record`.
fn row_record(owner: String, text: &str) -> Result<RunRecord, StoreError> {
    let mut record = decode(text)?;
    record.owner = owner;
    Ok(record)
}

fn update(
    connection: &mut Connection,
    run_id: &str,
    change: impl FnOnce(&mut RunRecord),
) -> Result<(), StoreError> {
    let tx = connection.transaction().map_err(backend)?;
    let found: Option<(String, String)> = tx
        .query_row(
            "SELECT owner, record FROM runs WHERE run_id = ?1",
            params![run_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(backend)?;
    let Some((owner, text)) = found else {
        return Ok(());
    };
    let mut record = row_record(owner, &text)?;
    change(&mut record);
    tx.execute(
        "UPDATE runs SET status = ?2, record = ?3 WHERE run_id = ?1",
        params![run_id, record.status.as_str(), encode(&record)?],
    )
    .map_err(backend)?;
    tx.commit().map_err(backend)
}

#[async_trait::async_trait]
impl RunStore for SqliteStore {
    async fn started(&self, record: &RunRecord) -> Result<(), StoreError> {
        let record = record.clone();
        // A detached run lives in its sandbox, and any process may read it
        // to its end: only an attached one is this process's to relay.
        let recorder = (!record.detached)
            .then(|| self.recorder.as_ref().map(|r| r.id().to_owned()))
            .flatten();
        self.with(move |connection| {
            connection
                .execute(
                    "INSERT OR REPLACE INTO runs (run_id, owner, created_ms, status, record, recorder)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        record.run_id,
                        record.owner,
                        to_i64(record.created_ms()),
                        record.status.as_str(),
                        encode(&record)?,
                        recorder
                    ],
                )
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn ended(&self, run_id: &str, ending: &RunEnding) -> Result<(), StoreError> {
        let (run_id, ending) = (run_id.to_owned(), ending.clone());
        self.with(move |connection| update(connection, &run_id, |record| record.end(ending)))
            .await
    }

    async fn sandbox(&self, run_id: &str, sandbox_id: &str) -> Result<(), StoreError> {
        let (run_id, sandbox_id) = (run_id.to_owned(), sandbox_id.to_owned());
        self.with(move |connection| {
            update(connection, &run_id, |record| {
                record.sandbox_id = Some(sandbox_id);
            })
        })
        .await
    }

    async fn get(&self, owner: &str, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let (owner, run_id) = (owner.to_owned(), run_id.to_owned());
        self.with(move |connection| {
            let text: Option<String> = connection
                .query_row(
                    "SELECT record FROM runs WHERE run_id = ?1 AND owner = ?2",
                    params![run_id, owner],
                    |row| row.get(0),
                )
                .optional()
                .map_err(backend)?;
            text.map(|text| row_record(owner, &text)).transpose()
        })
        .await
    }

    async fn list(
        &self,
        owner: &str,
        filter: &Filter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let after = cursor.map(read_cursor).transpose()?;
        let owner = owner.to_owned();
        let filter = filter.clone();
        self.with(move |connection| {
            let mut sql = String::from("SELECT owner, record FROM runs WHERE owner = ?");
            let mut values: Vec<rusqlite::types::Value> = vec![owner.into()];
            if let Some(status) = filter.status {
                sql.push_str(" AND status = ?");
                values.push(status.as_str().to_owned().into());
            }
            if let Some(since) = filter.since {
                let ms = since
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                sql.push_str(" AND created_ms >= ?");
                values.push(to_i64(ms).into());
            }
            for (name, value) in &filter.labels {
                // The path is bound, not spliced: a label name is data.
                sql.push_str(" AND json_extract(record, ?) = ?");
                values.push(format!("$.labels.\"{}\"", name.replace('"', "")).into());
                values.push(value.clone().into());
            }
            if let Some((ms, run_id)) = after {
                sql.push_str(" AND (created_ms < ? OR (created_ms = ? AND run_id < ?))");
                values.push(ms.into());
                values.push(ms.into());
                values.push(run_id.into());
            }
            sql.push_str(" ORDER BY created_ms DESC, run_id DESC LIMIT ?");
            // One more than asked: whether there is a next page.
            values.push(to_i64(limit as u64 + 1).into());
            let mut statement = connection.prepare(&sql).map_err(backend)?;
            let rows = statement
                .query_map(rusqlite::params_from_iter(values), |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })
                .map_err(backend)?;
            let mut runs = Vec::with_capacity(limit + 1);
            for row in rows {
                let (owner, text) = row.map_err(backend)?;
                runs.push(row_record(owner, &text)?);
            }
            let next = if runs.len() > limit {
                runs.truncate(limit);
                runs.last().map(cursor_of)
            } else {
                None
            };
            Ok(Page { runs, next })
        })
        .await
    }

    async fn sweep(&self, before: SystemTime) -> Result<u64, StoreError> {
        let ms = before
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.with(move |connection| {
            let tx = connection.transaction().map_err(backend)?;
            tx.execute(
                "DELETE FROM events WHERE run_id IN (SELECT run_id FROM runs WHERE created_ms < ?1)",
                params![to_i64(ms)],
            )
            .map_err(backend)?;
            let deleted = tx
                .execute(
                    "DELETE FROM runs WHERE created_ms < ?1",
                    params![to_i64(ms)],
                )
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(deleted as u64)
        })
        .await
    }

    async fn keep_events(&self, run_id: &str, blob: &[u8]) -> Result<(), StoreError> {
        let (run_id, blob) = (run_id.to_owned(), blob.to_vec());
        self.with(move |connection| {
            // Only beside a record, and never over a longer blob (see the
            // trait).
            connection
                .execute(
                    "INSERT INTO events (run_id, events)
                     SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM runs WHERE run_id = ?1)
                     ON CONFLICT (run_id) DO UPDATE SET events = excluded.events
                     WHERE length(excluded.events) >= length(events.events)",
                    params![run_id, blob],
                )
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn kept_events(&self, owner: &str, run_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (owner, run_id) = (owner.to_owned(), run_id.to_owned());
        self.with(move |connection| {
            connection
                .query_row(
                    "SELECT events.events FROM events JOIN runs USING (run_id)
                     WHERE run_id = ?1 AND runs.owner = ?2",
                    params![run_id, owner],
                    |row| row.get(0),
                )
                .optional()
                .map_err(backend)
        })
        .await
    }

    async fn started_at(&self, owner: &str, created_ms: u64) -> Result<Vec<String>, StoreError> {
        let owner = owner.to_owned();
        self.with(move |connection| {
            // `runs_newest_first` (owner, created_ms, ...) answers this.
            let mut statement = connection
                .prepare("SELECT run_id FROM runs WHERE owner = ?1 AND created_ms = ?2")
                .map_err(backend)?;
            let rows = statement
                .query_map(params![owner, to_i64(created_ms)], |row| row.get(0))
                .map_err(backend)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(backend)
        })
        .await
    }

    async fn end_if_running(
        &self,
        run_id: &str,
        ending: &RunEnding,
    ) -> Result<Option<RunRecord>, StoreError> {
        let (run_id, ending) = (run_id.to_owned(), ending.clone());
        self.with(move |connection| {
            let tx = connection.transaction().map_err(backend)?;
            let found: Option<(String, String)> = tx
                .query_row(
                    "SELECT owner, record FROM runs WHERE run_id = ?1 AND status = 'running'",
                    params![run_id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(backend)?;
            let Some((owner, text)) = found else {
                return Ok(None);
            };
            let mut record = row_record(owner, &text)?;
            record.end(ending);
            // The condition again: the write is what decides, whatever
            // another process wrote since the read.
            let changed = tx
                .execute(
                    "UPDATE runs SET status = ?2, record = ?3
                     WHERE run_id = ?1 AND status = 'running'",
                    params![run_id, record.status.as_str(), encode(&record)?],
                )
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok((changed == 1).then_some(record))
        })
        .await
    }

    async fn end_interrupted(&self) -> Result<u64, StoreError> {
        let folder = recorders::folder_of(&self.path);
        let me = self.recorder.as_ref().map(|r| r.id().to_owned());
        self.with(move |connection| {
            let named: Vec<String> = {
                let mut statement = connection
                    .prepare(
                        "SELECT DISTINCT recorder FROM runs
                         WHERE status = 'running' AND recorder IS NOT NULL",
                    )
                    .map_err(backend)?;
                let rows = statement.query_map([], |row| row.get(0)).map_err(backend)?;
                rows.collect::<Result<_, _>>().map_err(backend)?
            };
            let mut ended = 0;
            for gone in named
                .iter()
                .filter(|id| Some(id.as_str()) != me.as_deref())
                .filter(|id| recorders::is_gone(&folder, id))
            {
                ended += end_runs_of(connection, gone)?;
            }
            recorders::remove_gone(&folder, me.as_deref());
            Ok(ended)
        })
        .await
    }
}

/// Ends the runs still `running` that the gone recorder `recorder`
/// relayed, each as `interrupted`; how many.
fn end_runs_of(connection: &mut Connection, recorder: &str) -> Result<u64, StoreError> {
    let tx = connection.transaction().map_err(backend)?;
    let found: Vec<(String, String)> = {
        let mut statement = tx
            .prepare("SELECT owner, record FROM runs WHERE status = 'running' AND recorder = ?1")
            .map_err(backend)?;
        let rows = statement
            .query_map(params![recorder], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)?
    };
    let mut ended = 0;
    for (owner, text) in found {
        let mut record = row_record(owner, &text)?;
        record.interrupt();
        ended += tx
            .execute(
                "UPDATE runs SET status = ?2, record = ?3
                 WHERE run_id = ?1 AND status = 'running'",
                params![record.run_id, record.status.as_str(), encode(&record)?],
            )
            .map_err(backend)? as u64;
    }
    tx.commit().map_err(backend)?;
    Ok(ended)
}
