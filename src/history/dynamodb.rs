//! The history in a DynamoDB table: the store of the serverless doors
//! (feature `aws-dynamodb`, `SANDSTORM_HISTORY_TABLE`), shared by every
//! instance of a function.
//!
//! # The table
//! One item per run, keyed by its id alone: `run_id` (S) is the table's
//! partition key. [`RunStore::ended`] and [`RunStore::sandbox`] name a run by
//! its id and nothing else, so an id key lets each be one `UpdateItem`,
//! with `attribute_exists` as its condition so that a run this table never
//! saw is left alone rather than created half-empty. [`RunStore::get`] is one
//! strongly consistent `GetItem`, and answers only the record's owner.
//!
//! A list wants one owner's runs newest first. The global secondary index
//! [`INDEX`] has the partition key `owner` (S) and the sort key `created`
//! (S): the start in milliseconds since 1970, zero-padded to 20 digits,
//! then `#` and the run id. Strings of digits of one width sort as their
//! numbers do, and the id breaks ties between runs of one millisecond, as
//! SQLite's order does. `since` is then a bound on the sort key, and a list
//! is a `Query` read backwards. The index projects every attribute, so a
//! list needs no `GetItem` per run. An index is eventually consistent: a run
//! may reach a list a moment after its write, which a history can afford.
//!
//! A sandbox's lifecycle event names its detached run by its owner's digest
//! and its start, to the millisecond ([`RunStore::started_at`]): a `Query`
//! of the same index for the sort keys that begin with that start. The run
//! is then marked expired ([`RunStore::end_if_running`]) by one
//! `UpdateItem` whose condition is its `running` status, so a run that
//! ended meanwhile keeps its ending; it answers the item as it became.
//!
//! The other filters (status, labels) are on attributes outside the keys:
//! DynamoDB applies them after it has read a page, so a page can come back
//! with fewer runs than asked for, or none. The store reads on, page after
//! page, until it has the runs asked for or the index ends, and gives up
//! after [`MAX_QUERIES`] queries so that a filter that matches nothing in a
//! long history costs a bounded read; its cursor then goes on from where
//! it stopped.
//!
//! The cursor is DynamoDB's `LastEvaluatedKey` less what the caller already
//! knows: the key of the index (`owner`, the caller's own, never sent to a
//! client) and of the table (`run_id`, the tail of `created`) leave only
//! `created`, base64url. One that does not decode to that shape is refused
//! as [`StoreError::BadCursor`]; since the owner comes from the caller, a
//! cursor cannot reach anyone else's runs.
//!
//! # Retention
//! DynamoDB's TTL deletes an item some time after the epoch second in its
//! [`EXPIRES`] attribute: its start plus the retention, written with the
//! record. So [`RunStore::sweep`] has nothing to do and deletes nothing
//! (returns 0). TTL deletes within days, not at the second: reads hide an
//! expired run the table still holds.
//!
//! # Stored events
//! A run's events (`SANDSTORM_STORE_EVENTS`) are items of their own beside
//! its record's, in chunks under 400 KB, with the record's TTL:
//! `dynamodb_events.rs` says how.
//!
//! # The record's attributes
//! Each field of [`RunRecord`] is an attribute of its own, so that an ending
//! can be laid over the record in place (`SET` what the ending tells,
//! `REMOVE` an error type it clears), as [`RunRecord::end`] does in memory.
//! The config snapshot and the replayable request are kept as JSON text:
//! they are any JSON a user wrote, which DynamoDB would renumber (`1.0`
//! becomes `1`) or refuse (maps nested deeper than 32). An item holds at
//! most 400 KB; a record past that (a 64 KiB prompt and a 64 KiB request
//! leave the config over 250 KB) fails its write, which is logged like any
//! store failure, and the run goes on.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::{Filter, Page, RecordStatus, RunEnding, RunRecord, RunStore, StoreError};

/// The table's partition key: the run's id.
pub(crate) const KEY: &str = "run_id";
/// The digest of the run's owner: the index's partition key.
pub(crate) const OWNER: &str = "owner";
/// The index's sort key: `<start ms, 20 digits>#<run id>`.
pub(crate) const CREATED: &str = "created";
/// The index that lists an owner's runs by their start.
pub(crate) const INDEX: &str = "by-owner";
/// The TTL attribute: when DynamoDB may delete the run, in seconds since
/// 1970.
pub(crate) const EXPIRES: &str = "expires_at";
/// The record fields kept as JSON text (see the module doc).
const JSON_TEXT: [&str; 2] = ["config", "request"];

/// The most queries one list makes (see the module doc).
const MAX_QUERIES: usize = 8;
/// How many items a filtered list asks DynamoDB to read per query at
/// least: a filter may keep few of them, and each query is a round trip.
const FILTERED_READ: usize = 100;

/// Run records in a DynamoDB table.
#[derive(Debug, Clone)]
pub(crate) struct DynamoDbStore {
    client: Client,
    table: String,
    retention: Option<Duration>,
}

impl DynamoDbStore {
    /// The store over `table` (made as template.yaml makes it), whose
    /// records expire `retention` after their start, or never.
    pub(crate) fn new(
        client: Client,
        table: impl Into<String>,
        retention: Option<Duration>,
    ) -> Self {
        DynamoDbStore {
            client,
            table: table.into(),
            retention,
        }
    }
}

fn backend<E: std::error::Error + 'static, R: std::fmt::Debug>(
    what: &str,
    error: &SdkError<E, R>,
) -> StoreError {
    // The SDK's chain names the failure (a code and AWS's message, a
    // connection refused, a timeout), never an item's contents.
    StoreError::Backend(format!("DynamoDB {what}: {}", DisplayErrorContext(error)))
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now_secs() -> u64 {
    millis(SystemTime::now()) / 1000
}

/// The index's sort key of a run started at `ms`.
fn sort_key(ms: u64, run_id: &str) -> String {
    format!("{ms:020}#{run_id}")
}

/// The part of a sort key a bound on the start compares with: every run
/// started at or after `ms` sorts at or after it.
fn sort_bound(ms: u64) -> String {
    format!("{ms:020}")
}

fn cursor_of(created: &str) -> String {
    URL_SAFE_NO_PAD.encode(created)
}

/// A cursor's sort key and run id, if it is one of ours.
fn read_cursor(cursor: &str) -> Result<(String, String), StoreError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::BadCursor)?;
    let created = String::from_utf8(bytes).map_err(|_| StoreError::BadCursor)?;
    let (ms, run_id) = created.split_once('#').ok_or(StoreError::BadCursor)?;
    if ms.len() != 20 || !ms.bytes().all(|b| b.is_ascii_digit()) || run_id.is_empty() {
        return Err(StoreError::BadCursor);
    }
    let run_id = run_id.to_owned();
    Ok((created, run_id))
}

/// A JSON value as an attribute; `None` for null, which a record leaves
/// out rather than stores.
fn to_attribute(value: &Value) -> Option<AttributeValue> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) => AttributeValue::N(n.to_string()),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(items) => AttributeValue::L(
            items
                .iter()
                .map(|v| to_attribute(v).unwrap_or(AttributeValue::Null(true)))
                .collect(),
        ),
        Value::Object(fields) => AttributeValue::M(
            fields
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), to_attribute(v)?)))
                .collect(),
        ),
    })
}

/// An attribute as JSON. Kinds a record never writes (binary, sets) read
/// as null.
fn from_attribute(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::N(n) => number(n),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::L(items) => Value::Array(items.iter().map(from_attribute).collect()),
        AttributeValue::M(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), from_attribute(v)))
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// DynamoDB's number text as a JSON number: a whole number stays whole
/// (the record's counts are integers), anything else is a float.
fn number(text: &str) -> Value {
    if let Ok(n) = text.parse::<u64>() {
        return n.into();
    }
    if let Ok(n) = text.parse::<i64>() {
        return n.into();
    }
    text.parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// A record as the item that holds it.
fn item_of(
    record: &RunRecord,
    retention: Option<Duration>,
) -> Result<HashMap<String, AttributeValue>, StoreError> {
    let Value::Object(fields) =
        serde_json::to_value(record).map_err(|e| StoreError::Backend(e.to_string()))?
    else {
        return Err(StoreError::Backend("a record is not a JSON object".into()));
    };
    let mut item: HashMap<String, AttributeValue> = fields
        .iter()
        .filter_map(|(name, value)| {
            let attribute = if JSON_TEXT.contains(&name.as_str()) {
                AttributeValue::S(value.to_string())
            } else {
                to_attribute(value)?
            };
            Some((name.clone(), attribute))
        })
        .collect();
    let ms = record.created_ms();
    item.insert(OWNER.into(), AttributeValue::S(record.owner.clone()));
    item.insert(
        CREATED.into(),
        AttributeValue::S(sort_key(ms, &record.run_id)),
    );
    if let Some(keep) = retention {
        let expires = (ms / 1000).saturating_add(keep.as_secs());
        item.insert(EXPIRES.into(), AttributeValue::N(expires.to_string()));
    }
    Ok(item)
}

/// Whether TTL has passed for an item, which DynamoDB may not have deleted
/// yet.
fn expired(item: &HashMap<String, AttributeValue>, now: u64) -> bool {
    match item.get(EXPIRES) {
        Some(AttributeValue::N(at)) => at.parse::<u64>().is_ok_and(|at| at <= now),
        _ => false,
    }
}

fn text<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(s)) => Some(s.as_str()),
        _ => None,
    }
}

/// The record an item holds.
fn record_of(item: &HashMap<String, AttributeValue>) -> Result<RunRecord, StoreError> {
    let mut fields = serde_json::Map::new();
    for (name, value) in item {
        let value = match name.as_str() {
            OWNER | CREATED | EXPIRES => continue,
            name if JSON_TEXT.contains(&name) => match value {
                AttributeValue::S(json) => serde_json::from_str(json).unwrap_or_default(),
                _ => Value::Null,
            },
            _ => from_attribute(value),
        };
        fields.insert(name.clone(), value);
    }
    let mut record: RunRecord = serde_json::from_value(Value::Object(fields))
        .map_err(|e| StoreError::Backend(format!("a record is unreadable: {e}")))?;
    record.owner = text(item, OWNER).unwrap_or_default().to_owned();
    Ok(record)
}

/// An update expression built up one attribute at a time, every name and
/// value a placeholder (`status`, `owner` and others are reserved words).
#[derive(Default)]
struct Update {
    set: Vec<String>,
    remove: Vec<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Update {
    fn name(&mut self, attribute: &str) -> String {
        let placeholder = format!("#a{}", self.names.len());
        self.names.insert(placeholder.clone(), attribute.to_owned());
        placeholder
    }

    fn set(&mut self, attribute: &str, value: AttributeValue) {
        let name = self.name(attribute);
        let placeholder = format!(":v{}", self.values.len());
        self.set.push(format!("{name} = {placeholder}"));
        self.values.insert(placeholder, value);
    }

    /// Sets `attribute` to `value` as JSON; null (or a value that is no
    /// JSON) leaves it as it was.
    fn set_json(&mut self, attribute: &str, value: impl serde::Serialize) {
        if let Some(value) = serde_json::to_value(value)
            .ok()
            .as_ref()
            .and_then(to_attribute)
        {
            self.set(attribute, value);
        }
    }

    fn remove(&mut self, attribute: &str) {
        let name = self.name(attribute);
        self.remove.push(name);
    }

    fn expression(&self) -> String {
        let mut expression = format!("SET {}", self.set.join(", "));
        if !self.remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", self.remove.join(", ")));
        }
        expression
    }
}

/// The update that lays `ending` over a record, as [`RunRecord::end`] does
/// in memory: what the ending does not tell keeps what the record knew,
/// but the error type is always the ending's.
fn ending_update(ending: &RunEnding) -> Update {
    let mut update = Update::default();
    if let Some(status) = ending.status {
        update.set("status", AttributeValue::S(status.as_str().to_owned()));
    }
    update.set("ended_at", AttributeValue::S(ending.ended_at.clone()));
    update.set(
        "duration_ms",
        AttributeValue::N(ending.duration_ms.to_string()),
    );
    update.set_json("model", &ending.model);
    update.set_json("turns", ending.turns);
    update.set_json("total_cost_usd", ending.total_cost_usd);
    update.set_json("usage", ending.usage);
    update.set_json("spend", &ending.spend);
    if !ending.outputs.is_empty() {
        update.set_json("outputs", &ending.outputs);
    }
    update.set_json("session_id", &ending.session_id);
    update.set_json("result", &ending.result);
    match &ending.error_type {
        Some(error_type) => update.set("error_type", AttributeValue::S(error_type.clone())),
        None => update.remove("error_type"),
    }
    update
}

impl DynamoDbStore {
    /// Applies `update` to `run_id`'s item, if the table has one.
    async fn update(&self, run_id: &str, mut update: Update, what: &str) -> Result<(), StoreError> {
        let key = update.name(KEY);
        let sent = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, AttributeValue::S(run_id.to_owned()))
            .update_expression(update.expression())
            .condition_expression(format!("attribute_exists({key})"))
            .set_expression_attribute_names(Some(update.names))
            .set_expression_attribute_values(Some(update.values))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            // A run this table never saw (it started on an instance with
            // another store): left alone, as the trait says.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(backend(what, &e)),
        }
    }
}

#[async_trait::async_trait]
impl RunStore for DynamoDbStore {
    async fn started(&self, record: &RunRecord) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_of(record, self.retention)?))
            .send()
            .await
            .map_err(|e| backend("PutItem", &e))?;
        Ok(())
    }

    async fn ended(&self, run_id: &str, ending: &RunEnding) -> Result<(), StoreError> {
        self.update(run_id, ending_update(ending), "UpdateItem (end)")
            .await
    }

    async fn sandbox(&self, run_id: &str, sandbox_id: &str) -> Result<(), StoreError> {
        let mut update = Update::default();
        update.set("sandbox_id", AttributeValue::S(sandbox_id.to_owned()));
        self.update(run_id, update, "UpdateItem (sandbox)").await
    }

    async fn get(&self, owner: &str, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, AttributeValue::S(run_id.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| backend("GetItem", &e))?;
        let Some(item) = output.item() else {
            return Ok(None);
        };
        if text(item, OWNER) != Some(owner) || expired(item, now_secs()) {
            return Ok(None);
        }
        record_of(item).map(Some)
    }

    async fn list(
        &self,
        owner: &str,
        filter: &Filter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let after = cursor.map(read_cursor).transpose()?;
        let since = filter.since.map(|at| sort_bound(millis(at)));
        if let (Some((created, _)), Some(since)) = (&after, &since)
            && created < since
        {
            // The cursor is past the oldest run `since` wants (a cursor of
            // a list with another `since`): nothing is left.
            return Ok(Page::default());
        }
        let mut names = HashMap::from([
            ("#owner".to_owned(), OWNER.to_owned()),
            ("#expires".to_owned(), EXPIRES.to_owned()),
        ]);
        let mut values = HashMap::from([
            (":owner".to_owned(), AttributeValue::S(owner.to_owned())),
            (":now".to_owned(), AttributeValue::N(now_secs().to_string())),
        ]);
        let mut key = "#owner = :owner".to_owned();
        if let Some(since) = since {
            names.insert("#created".into(), CREATED.into());
            values.insert(":since".into(), AttributeValue::S(since));
            key.push_str(" AND #created >= :since");
        }
        // Runs TTL has not deleted yet are hidden, as `get` hides them.
        let mut wanted = vec!["(attribute_not_exists(#expires) OR #expires > :now)".to_owned()];
        if let Some(status) = filter.status {
            names.insert("#status".into(), "status".into());
            values.insert(":status".into(), AttributeValue::S(status.as_str().into()));
            wanted.push("#status = :status".into());
        }
        if !filter.labels.is_empty() {
            names.insert("#labels".into(), "labels".into());
        }
        for (i, (name, value)) in filter.labels.iter().enumerate() {
            // Label names are data: placeholders, never spliced in.
            names.insert(format!("#label{i}"), name.clone());
            values.insert(format!(":label{i}"), AttributeValue::S(value.clone()));
            wanted.push(format!("#labels.#label{i} = :label{i}"));
        }
        let filtered = filter.status.is_some() || !filter.labels.is_empty();

        let mut start = after.map(|(created, run_id)| {
            HashMap::from([
                (KEY.to_owned(), AttributeValue::S(run_id)),
                (OWNER.to_owned(), AttributeValue::S(owner.to_owned())),
                (CREATED.to_owned(), AttributeValue::S(created)),
            ])
        });
        // Each run with its sort key, for the cursor after it.
        let mut runs: Vec<(RunRecord, String)> = Vec::new();
        for _ in 0..MAX_QUERIES {
            // One more than asked: whether there is a next page.
            let missing = limit + 1 - runs.len();
            let read = if filtered {
                missing.max(FILTERED_READ)
            } else {
                missing
            };
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(INDEX)
                .key_condition_expression(&key)
                .filter_expression(wanted.join(" AND "))
                .set_expression_attribute_names(Some(names.clone()))
                .set_expression_attribute_values(Some(values.clone()))
                .scan_index_forward(false)
                .limit(i32::try_from(read).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| backend("Query", &e))?;
            for item in output.items() {
                let created = text(item, CREATED).unwrap_or_default().to_owned();
                runs.push((record_of(item)?, created));
            }
            start = output.last_evaluated_key().cloned();
            if start.is_none() || runs.len() > limit {
                break;
            }
        }
        let next = if runs.len() > limit {
            runs.truncate(limit);
            runs.last().map(|(_, created)| cursor_of(created))
        } else {
            // Out of queries before the index ended: go on from where the
            // last one stopped.
            start
                .as_ref()
                .and_then(|key| text(key, CREATED))
                .map(cursor_of)
        };
        Ok(Page {
            runs: runs.into_iter().map(|(record, _)| record).collect(),
            next,
        })
    }

    /// Nothing: DynamoDB's TTL deletes expired runs (see the module doc).
    async fn sweep(&self, _before: SystemTime) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn keep_events(&self, run_id: &str, blob: &[u8]) -> Result<(), StoreError> {
        self.put_events(run_id, blob).await
    }

    async fn kept_events(&self, owner: &str, run_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_events(owner, run_id).await
    }

    /// A `Query` of the owner's index for the sort keys that begin with
    /// the start (`<ms, 20 digits>#`): exactly the runs of that
    /// millisecond.
    async fn started_at(&self, owner: &str, created_ms: u64) -> Result<Vec<String>, StoreError> {
        let names = HashMap::from([
            ("#owner".to_owned(), OWNER.to_owned()),
            ("#created".to_owned(), CREATED.to_owned()),
            ("#run".to_owned(), KEY.to_owned()),
        ]);
        let values = HashMap::from([
            (":owner".to_owned(), AttributeValue::S(owner.to_owned())),
            (
                ":start".to_owned(),
                AttributeValue::S(format!("{}#", sort_bound(created_ms))),
            ),
        ]);
        let mut runs = Vec::new();
        let mut start = None;
        for _ in 0..MAX_QUERIES {
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(INDEX)
                .key_condition_expression("#owner = :owner AND begins_with(#created, :start)")
                .projection_expression("#run")
                .set_expression_attribute_names(Some(names.clone()))
                .set_expression_attribute_values(Some(values.clone()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| backend("Query (start)", &e))?;
            runs.extend(
                output
                    .items()
                    .iter()
                    .filter_map(|item| text(item, KEY).map(str::to_owned)),
            );
            start = output.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        Ok(runs)
    }

    /// One `UpdateItem` whose condition is the record's `running` status,
    /// answering the item as it became.
    async fn end_if_running(
        &self,
        run_id: &str,
        ending: &RunEnding,
    ) -> Result<Option<RunRecord>, StoreError> {
        let mut update = ending_update(ending);
        let key = update.name(KEY);
        let status = update.name("status");
        update.values.insert(
            ":running".to_owned(),
            AttributeValue::S(RecordStatus::Running.as_str().to_owned()),
        );
        let sent = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, AttributeValue::S(run_id.to_owned()))
            .update_expression(update.expression())
            .condition_expression(format!("attribute_exists({key}) AND {status} = :running"))
            .set_expression_attribute_names(Some(update.names))
            .set_expression_attribute_values(Some(update.values))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match sent {
            Ok(output) => output.attributes().map(record_of).transpose(),
            // Ended meanwhile, or never seen here: left as it is.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(backend("UpdateItem (end if running)", &e)),
        }
    }
}

#[path = "dynamodb_events.rs"]
mod events;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_is_the_sort_key_and_nothing_else_passes() {
        let created = sort_key(1_733_000_000_123, "run_abc");
        assert_eq!(created, "00000001733000000123#run_abc");
        let (back, run_id) = read_cursor(&cursor_of(&created)).expect("ours");
        assert_eq!(
            (back.as_str(), run_id.as_str()),
            (created.as_str(), "run_abc")
        );
        let bad = [
            String::new(),
            "not base64!".to_owned(),
            URL_SAFE_NO_PAD.encode("123#run"),
            URL_SAFE_NO_PAD.encode("0000000173300000012x#run"),
            URL_SAFE_NO_PAD.encode("00000001733000000123#"),
            URL_SAFE_NO_PAD.encode("00000001733000000123"),
            URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
        ];
        for cursor in &bad {
            assert!(
                matches!(read_cursor(cursor), Err(StoreError::BadCursor)),
                "{cursor:?}"
            );
        }
        // Sort keys order as the starts do, then as the ids do.
        assert!(sort_key(999, "run_z") < sort_key(1_000, "run_a"));
        assert!(sort_key(1_000, "run_a") < sort_key(1_000, "run_b"));
        assert!(sort_bound(1_000) <= sort_key(1_000, "run_a"));
        assert!(sort_bound(1_001) > sort_key(1_000, "run_z"));
    }

    #[test]
    fn numbers_come_back_as_the_kind_they_went_in() {
        for value in [
            serde_json::json!(3),
            serde_json::json!(0.25),
            serde_json::json!(-2),
            serde_json::json!(1e-7),
        ] {
            let attribute = to_attribute(&value).expect("a number");
            assert_eq!(from_attribute(&attribute), value);
        }
        assert_eq!(number("1E+2"), serde_json::json!(100.0));
    }
}

#[cfg(test)]
#[path = "dynamodb_tests.rs"]
mod moto_tests;
