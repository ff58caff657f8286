//! A run's stored events in the history's DynamoDB table.
//!
//! An item holds at most 400 KB and a run's events up to the cap
//! (`SANDSTORM_STORE_EVENTS_MAX_BYTES`, 16 MiB at most), so they are cut
//! into chunks of [`CHUNK`] bytes, each an item of its own in the same
//! table: `<run id>#events#<n>` (a run id never holds `#`), its bytes in
//! [`DATA`]. The record's item is left as it is, so a record's writes and
//! reads, and a list's, never carry its events. A chunk has no `owner` nor
//! `created`, so the `by-owner` index, which holds only the items that have
//! both, never lists one; and having no owner, `get` answers none of them.
//! Each chunk carries the TTL of its run's record ([`super::EXPIRES`]), so
//! DynamoDB deletes a run's events with it. The calls are the ones the
//! store already makes, `GetItem` and `PutItem`: the IAM policy grants no
//! more for them.
//!
//! # Writes, and reads that meet one
//! Chunk 0 says what the whole is: how many chunks ([`CHUNKS`]), how many
//! bytes and their SHA-256 ([`DIGEST`]). A write puts the other chunks
//! first and chunk 0 last, so a reader that finds a chunk 0 finds the
//! chunks it names. A run's later snapshot extends its earlier one, so
//! chunks of a write under way are the old ones with bytes added at the
//! end: a reader cuts the whole to chunk 0's length, and the digest says
//! whether what it read is what chunk 0 describes. Should it not be (two
//! readers of one run writing at once), the read is tried once more.
//!
//! Every chunk also carries the whole's length ([`BYTES`]), and a put only
//! lands over a chunk of a blob no longer than its own: a reader that
//! stopped between two turns writes a shorter, older snapshot, and must
//! not cut down the whole run a later reader stored.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;

use super::{DynamoDbStore, EXPIRES, KEY, OWNER, StoreError, backend, expired, now_secs};

/// The most bytes of events in one item: under DynamoDB's 400 KB, with
/// room for the key and the other attributes.
pub(super) const CHUNK: usize = 350 * 1024;
/// The most chunks a run's events take: the largest cap
/// (`SANDSTORM_STORE_EVENTS_MAX_BYTES`) and the endings kept past it. A
/// chunk 0 that claims more is not one this store wrote, and is not
/// followed into millions of reads.
const MAX_CHUNKS: usize = 64;
// Room for the largest cap, with a megabyte of endings past it to spare.
const _: () = assert!(
    (*crate::settings::STORE_EVENTS_MAX_BYTES_RANGE.end() + (1 << 20)).div_ceil(CHUNK)
        <= MAX_CHUNKS
);
/// A chunk's bytes (B).
const DATA: &str = "events";
/// The whole blob's length in bytes (N), on every chunk.
const BYTES: &str = "events_bytes";
/// How many chunks the blob is in (N), on chunk 0.
const CHUNKS: &str = "events_chunks";
/// The whole blob's SHA-256, base64 (S), on chunk 0.
const DIGEST: &str = "events_sha256";

/// The key of a run's `n`th chunk.
pub(super) fn chunk_key(run_id: &str, n: usize) -> String {
    format!("{run_id}#events#{n}")
}

fn digest(blob: &[u8]) -> String {
    STANDARD_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, blob))
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Option<usize> {
    match item.get(name) {
        Some(AttributeValue::N(n)) => n.parse().ok(),
        _ => None,
    }
}

/// What a put of a chunk came to.
enum Put {
    Landed,
    /// The table holds a longer blob's chunk there.
    Longer,
}

impl DynamoDbStore {
    /// A record's item: its owner and its TTL, if the table holds it.
    async fn record_head(
        &self,
        run_id: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, AttributeValue::S(run_id.to_owned()))
            .projection_expression("#owner, #expires")
            .expression_attribute_names("#owner", OWNER)
            .expression_attribute_names("#expires", EXPIRES)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| backend("GetItem (record)", &e))?;
        Ok(output.item)
    }

    async fn put_chunk(
        &self,
        mut item: HashMap<String, AttributeValue>,
        bytes: usize,
    ) -> Result<Put, StoreError> {
        item.insert(BYTES.into(), AttributeValue::N(bytes.to_string()));
        let sent = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#key) OR #bytes <= :bytes")
            .expression_attribute_names("#key", KEY)
            .expression_attribute_names("#bytes", BYTES)
            .expression_attribute_values(":bytes", AttributeValue::N(bytes.to_string()))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(Put::Landed),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(Put::Longer)
            }
            Err(e) => Err(backend("PutItem (events)", &e)),
        }
    }

    async fn chunk(
        &self,
        run_id: &str,
        n: usize,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, AttributeValue::S(chunk_key(run_id, n)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| backend("GetItem (events)", &e))?;
        Ok(output.item)
    }

    /// See the module doc.
    pub(super) async fn put_events(&self, run_id: &str, blob: &[u8]) -> Result<(), StoreError> {
        let Some(record) = self.record_head(run_id).await? else {
            // A run this table never saw: left alone, as `ended` leaves it.
            return Ok(());
        };
        let expires = record.get(EXPIRES).cloned();
        let chunks: Vec<&[u8]> = if blob.is_empty() {
            vec![blob]
        } else {
            blob.chunks(CHUNK).collect()
        };
        let item = |n: usize, data: &[u8]| {
            let mut item = HashMap::from([
                (KEY.to_owned(), AttributeValue::S(chunk_key(run_id, n))),
                (DATA.to_owned(), AttributeValue::B(data.to_vec().into())),
            ]);
            if let Some(expires) = &expires {
                item.insert(EXPIRES.to_owned(), expires.clone());
            }
            item
        };
        let rest = futures::future::join_all(
            chunks
                .iter()
                .enumerate()
                .skip(1)
                .map(|(n, data)| self.put_chunk(item(n, data), blob.len())),
        )
        .await;
        for put in rest {
            if let Put::Longer = put? {
                return Ok(());
            }
        }
        let mut head = item(0, chunks[0]);
        head.insert(CHUNKS.into(), AttributeValue::N(chunks.len().to_string()));
        head.insert(DIGEST.into(), AttributeValue::S(digest(blob)));
        self.put_chunk(head, blob.len()).await?;
        Ok(())
    }

    /// See the module doc.
    pub(super) async fn get_events(
        &self,
        owner: &str,
        run_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(record) = self.record_head(run_id).await? else {
            return Ok(None);
        };
        let now = now_secs();
        if super::text(&record, OWNER) != Some(owner) || expired(&record, now) {
            return Ok(None);
        }
        for _ in 0..2 {
            let Some(head) = self.chunk(run_id, 0).await? else {
                return Ok(None);
            };
            if expired(&head, now) {
                return Ok(None);
            }
            let (Some(chunks), Some(bytes), Some(AttributeValue::S(wanted))) = (
                number(&head, CHUNKS).filter(|n| (1..=MAX_CHUNKS).contains(n)),
                number(&head, BYTES),
                head.get(DIGEST),
            ) else {
                return Err(StoreError::Backend(
                    "a run's stored events lack their description".into(),
                ));
            };
            let rest =
                futures::future::try_join_all((1..chunks).map(|n| self.chunk(run_id, n))).await?;
            let mut blob = Vec::with_capacity(bytes);
            for item in std::iter::once(Some(head.clone())).chain(rest) {
                if let Some(AttributeValue::B(data)) = item.as_ref().and_then(|i| i.get(DATA)) {
                    blob.extend_from_slice(data.as_ref());
                }
            }
            blob.truncate(bytes);
            if blob.len() == bytes && digest(&blob) == *wanted {
                return Ok(Some(blob));
            }
        }
        Err(StoreError::Backend(
            "a run's stored events changed each time they were read".into(),
        ))
    }
}
