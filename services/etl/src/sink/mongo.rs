//! The MongoDB sink (the official `mongodb` driver). Each row is a document whose `_id` is its
//! event's `STREAM/VERSION` — the same event always gives the same document — with the
//! pipeline's columns as fields and `_strata: {partition, shard, position}`.
//!
//! - A server that supports transactions (a replica set; MongoDB refuses them on a
//!   standalone): a write is one transaction that reads the partition's document of
//!   `strata_etl_checkpoints`, finds it at the write's `from` (else writes nothing), inserts the
//!   documents and sets the checkpoint to `to`.
//! - Without transactions: the documents are inserted unordered, a duplicate `_id` counting
//!   as already there (so a replay adds nothing), then the checkpoint is set.
//!
//! Writes are acknowledged once in a majority's journal (`w: majority, j: true`) unless the
//! URL names its own write concern. A server that still loses acknowledged writes in a crash
//! leaves its checkpoint behind the group's position; the runner then goes back to the
//! checkpoint when it next claims the partition (see `Session::claimed` in the runner).
//!
//! Tested against secantusdb 0.7 (a MongoDB wire-protocol server from PyPI that reports
//! itself as a replica-set primary, so the transactional path), not against MongoDB itself,
//! which is not installable on the machines this was built on. secantusdb does not honour
//! `j: true` on a transaction's commit: killed -9 after a second of 50-document transactions
//! committed with it, it had lost up to 8 of the last acknowledged ones in 9 of 10 rounds, and
//! none in 5 rounds when started with `--sync-on-commit` (`scripts/mongo-kill-check.py`). The tests start it without, so a
//! kill of the server exercises the runner's going back. Connect with
//! `mongodb://HOST:PORT/DATABASE?replicaSet=NAME` (the database defaults to `strata`).

use std::collections::BTreeMap;
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{Acknowledgment, WriteConcern};
use strata_client::group::Progress;

use super::{SinkError, Write, Written};
use crate::mapping::{Row, Value};
use crate::pipeline::Pipeline;

/// Longest one write may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// A MongoDB sink.
pub struct Mongo {
    client: mongodb::Client,
    rows: mongodb::Collection<Document>,
    checkpoints: mongodb::Collection<Document>,
    pipeline: String,
    names: Vec<String>,
    transactions: bool,
}

fn down(e: impl std::fmt::Display) -> SinkError {
    SinkError::Down(format!("mongodb: {e}"))
}

/// Duplicate key.
const DUPLICATE: i32 = 11000;
/// Document failed validation.
const INVALID: i32 = 121;

fn classify(e: mongodb::error::Error) -> SinkError {
    let codes: Vec<i32> = match e.kind.as_ref() {
        ErrorKind::InsertMany(m) => m.write_errors.iter().flatten().map(|w| w.code).collect(),
        ErrorKind::Write(WriteFailure::WriteError(w)) => vec![w.code],
        _ => Vec::new(),
    };
    if codes.contains(&INVALID) {
        return SinkError::Rejected(format!("mongodb: {e}"));
    }
    down(e)
}

impl Mongo {
    /// Connects and asks the server whether it takes transactions.
    pub async fn open(p: &Pipeline) -> Result<Mongo, SinkError> {
        let refused = |e: mongodb::error::Error| {
            SinkError::Refused(p.error_at(p.sink.url_line, format!("sink.url: {e}")))
        };
        let mut options = mongodb::options::ClientOptions::parse(&p.sink.url)
            .await
            .map_err(refused)?;
        // An acknowledgement only once the write is in a majority's journal (MongoDB's default
        // `w: 1` without `j` answers before its journal is on disk, and a crash loses it);
        // a URL naming `w` or `journal` keeps its own.
        if options.write_concern.is_none() {
            options.write_concern = Some(
                WriteConcern::builder()
                    .w(Acknowledgment::Majority)
                    .journal(true)
                    .build(),
            );
        }
        let client = mongodb::Client::with_options(options).map_err(refused)?;
        let db = client
            .default_database()
            .unwrap_or_else(|| client.database("strata"));
        let hello = tokio::time::timeout(WRITE_TIMEOUT, db.run_command(doc! {"hello": 1}))
            .await
            .map_err(|_| down("no answer to hello"))?
            .map_err(down)?;
        let transactions = hello.get_str("setName").is_ok();
        Ok(Mongo {
            rows: db.collection(&p.sink.table),
            checkpoints: db.collection("strata_etl_checkpoints"),
            client,
            pipeline: p.name.clone(),
            names: p.columns.iter().map(|c| c.name.clone()).collect(),
            transactions,
        })
    }

    fn checkpoint_id(&self, part: u32) -> String {
        format!("{}/{part}", self.pipeline)
    }

    /// Each partition's checkpoint.
    pub async fn checkpoints(&self) -> Result<BTreeMap<u32, Progress>, SinkError> {
        use futures_util::TryStreamExt;
        let found: Vec<Document> = self
            .checkpoints
            .find(doc! {"pipeline": &self.pipeline})
            .await
            .map_err(down)?
            .try_collect()
            .await
            .map_err(down)?;
        let mut out = BTreeMap::new();
        for d in found {
            let (Ok(part), Some(progress)) = (d.get_i64("part"), stored(&d)?) else {
                continue;
            };
            out.insert(part as u32, progress);
        }
        Ok(out)
    }

    /// One write (see the module docs for the two rules).
    pub async fn write(&self, w: Write<'_>) -> Result<Written, SinkError> {
        let work = async {
            match self.transactions {
                true => self.write_in_transaction(w).await,
                false => self.write_idempotent(w).await,
            }
        };
        tokio::time::timeout(WRITE_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| Err(down(format!("the write took over {WRITE_TIMEOUT:?}"))))
    }

    fn checkpoint_update(&self, w: &Write<'_>) -> Result<Document, SinkError> {
        let to = serde_json::to_string(w.to).map_err(down)?;
        Ok(
            doc! {"$set": {"pipeline": &self.pipeline, "part": i64::from(w.partition), "progress": to}},
        )
    }

    async fn write_in_transaction(&self, w: Write<'_>) -> Result<Written, SinkError> {
        let mut session = self.client.start_session().await.map_err(down)?;
        session.start_transaction().await.map_err(down)?;
        let id = self.checkpoint_id(w.partition);
        let found = self
            .checkpoints
            .find_one(doc! {"_id": &id})
            .session(&mut session)
            .await
            .map_err(down)?;
        let at = match &found {
            Some(d) => stored(d)?,
            None => None,
        };
        if at.as_ref() != w.from {
            let _ = session.abort_transaction().await;
            return Ok(Written::Elsewhere(at));
        }
        if !w.rows.is_empty() {
            self.rows
                .insert_many(self.documents(w.partition, w.rows))
                .session(&mut session)
                .await
                .map_err(classify)?;
        }
        self.checkpoints
            .update_one(doc! {"_id": &id}, self.checkpoint_update(&w)?)
            .upsert(true)
            .session(&mut session)
            .await
            .map_err(classify)?;
        session.commit_transaction().await.map_err(down)?;
        Ok(Written::Done)
    }

    async fn write_idempotent(&self, w: Write<'_>) -> Result<Written, SinkError> {
        if !w.rows.is_empty() {
            let inserted = self
                .rows
                .insert_many(self.documents(w.partition, w.rows))
                .ordered(false)
                .await;
            if let Err(e) = inserted {
                let only_duplicates = match e.kind.as_ref() {
                    ErrorKind::InsertMany(m) => {
                        m.write_concern_error.is_none()
                            && m.write_errors.iter().flatten().all(|w| w.code == DUPLICATE)
                    }
                    _ => false,
                };
                if !only_duplicates {
                    return Err(classify(e));
                }
            }
        }
        let id = self.checkpoint_id(w.partition);
        self.checkpoints
            .update_one(doc! {"_id": &id}, self.checkpoint_update(&w)?)
            .upsert(true)
            .await
            .map_err(classify)?;
        Ok(Written::Done)
    }

    /// Rows and checksum of a window: the documents read (at most
    /// [`super::WINDOW_EVENTS_MAX`]) and summed here.
    pub async fn tally(
        &self,
        (stream, version, time): &(String, String, String),
        (from_us, to_us): (u64, u64),
    ) -> Result<(u64, u64), SinkError> {
        use futures_util::TryStreamExt;
        let ms = |us: u64| mongodb::bson::DateTime::from_millis((us / 1000) as i64);
        let filter = doc! {time.as_str(): {"$gte": ms(from_us), "$lt": ms(to_us)}};
        let mut cursor = self
            .rows
            .find(filter)
            .projection(doc! {stream.as_str(): 1, version.as_str(): 1})
            .await
            .map_err(down)?;
        let (mut rows, mut sum) = (0u64, 0u64);
        while let Some(d) = cursor.try_next().await.map_err(down)? {
            rows += 1;
            if rows > super::WINDOW_EVENTS_MAX {
                return Err(down("more documents in the window than a tally reads"));
            }
            let s = d.get_str(stream).unwrap_or_default();
            let v = d.get_i64(version).unwrap_or_default() as u64;
            sum = sum.wrapping_add(super::checksum([(s, v)]));
        }
        Ok((rows, sum))
    }

    fn documents(&self, partition: u32, rows: &[Row]) -> Vec<Document> {
        rows.iter()
            .map(|r| {
                let mut d = Document::new();
                d.insert("_id", format!("{}/{}", r.stream, r.version));
                for (name, v) in self.names.iter().zip(&r.values) {
                    if let Some(b) = bson(v) {
                        d.insert(name.clone(), b);
                    }
                }
                d.insert(
                    "_strata",
                    doc! {"partition": i64::from(partition), "shard": i64::from(r.shard), "position": r.position as i64},
                );
                d
            })
            .collect()
    }

    /// Deletes the collection's documents and sets the checkpoints to none: in one transaction
    /// when the server takes them; else checkpoints first (a crash between leaves documents
    /// the replay's unordered inserts pass over as duplicates).
    pub async fn clear(&self) -> Result<(), SinkError> {
        let none = doc! {"$set": {"progress": ""}};
        let mine = doc! {"pipeline": &self.pipeline};
        if !self.transactions {
            self.checkpoints
                .update_many(mine, none)
                .await
                .map_err(down)?;
            self.rows.delete_many(doc! {}).await.map_err(down)?;
            return Ok(());
        }
        let mut session = self.client.start_session().await.map_err(down)?;
        session.start_transaction().await.map_err(down)?;
        self.checkpoints
            .update_many(mine, none)
            .session(&mut session)
            .await
            .map_err(down)?;
        self.rows
            .delete_many(doc! {})
            .session(&mut session)
            .await
            .map_err(down)?;
        session.commit_transaction().await.map_err(down)
    }
}

fn stored(d: &Document) -> Result<Option<Progress>, SinkError> {
    match d.get_str("progress") {
        Ok("") | Err(_) => Ok(None),
        Ok(text) => serde_json::from_str(text)
            .map(Some)
            .map_err(|e| down(format!("a checkpoint that is not a position ({e}): {text}"))),
    }
}

fn bson(v: &Value) -> Option<Bson> {
    Some(match v {
        Value::Null => return None,
        Value::Text(s) => Bson::String(s.clone()),
        Value::Int(i) => Bson::Int64(*i),
        Value::Float(f) => Bson::Double(*f),
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Time(us) => {
            Bson::DateTime(mongodb::bson::DateTime::from_millis((*us / 1000) as i64))
        }
        Value::Json(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(j) => mongodb::bson::to_bson(&j).unwrap_or(Bson::String(text.clone())),
            Err(_) => Bson::String(text.clone()),
        },
    })
}
