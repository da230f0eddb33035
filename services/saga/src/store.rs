//! The journal in the store: reading a saga (its stream, folded), creating one (its first
//! entry, once per idempotency key), and acting on a decision (its entries and its command in
//! one atomic append expecting the journal's version). Every event carries the correlation id
//! of the request that created the saga, so what a saga causes can be traced back to it.

use serde_json::json;
use strata_client::{pb, Client, Error, ExpectedVersion};

use crate::decide::Decision;
use crate::definition::{saga_type, SagaType};
use crate::journal::{command_stream, journal_stream, Entry};
use crate::state::{extend, fold, Saga};

/// Most entries one journal may hold (a saga that retries every step to its cap stays far
/// below).
pub const JOURNAL_ENTRIES_MAX: usize = 4096;
/// The namespace of ids derived from idempotency keys.
const KEY_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x2b6e_91c4_0f3d_4d5a_8e71_c9a0_5b12_e3f7);

/// Why a saga could not be read or written.
#[derive(Debug)]
pub enum StoreError {
    /// The store's error.
    Store(Error),
    /// The journal does not fit its type (names what).
    Journal(String),
}

impl From<Error> for StoreError {
    fn from(e: Error) -> StoreError {
        StoreError::Store(e)
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Store(e) => write!(f, "{e}"),
            StoreError::Journal(m) => write!(f, "{m}"),
        }
    }
}

/// A saga as read: its state and the correlation id it was created under.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Its state.
    pub saga: Saga,
    /// The creating request's correlation id.
    pub correlation: String,
    /// Its journal: each entry with its version and timestamp (µs).
    pub history: Vec<(u64, u64, Entry)>,
}

/// A saga's id from its creating request's idempotency key (the same key, the same saga).
pub fn id_for_key(key: &str) -> String {
    uuid::Uuid::new_v5(&KEY_NAMESPACE, key.as_bytes())
        .simple()
        .to_string()
}

/// A fresh saga id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn metadata(correlation: &str) -> bytes::Bytes {
    serde_json::to_vec(&json!({ "correlation_id": correlation }))
        .unwrap_or_default()
        .into()
}

fn event(entry: &Entry, correlation: &str) -> pb::NewEvent {
    pb::NewEvent {
        id: String::new(),
        r#type: entry.event_type().into(),
        data: entry.data().into(),
        metadata: metadata(correlation),
    }
}

/// Reads saga `id` (`None`: no such saga).
pub async fn load(store: &Client, id: &str) -> Result<Option<Loaded>, StoreError> {
    let events = match store
        .read_stream(&journal_stream(id), None, JOURNAL_ENTRIES_MAX)
        .await
    {
        Ok(e) => e,
        Err(Error::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if events.is_empty() {
        return Ok(None);
    }
    let correlation = events
        .first()
        .and_then(|e| serde_json::from_slice::<serde_json::Value>(&e.metadata).ok())
        .and_then(|m| m["correlation_id"].as_str().map(str::to_string))
        .unwrap_or_default();
    let mut journal = Vec::with_capacity(events.len());
    let mut history = Vec::with_capacity(events.len());
    for e in &events {
        let entry = Entry::parse(&e.data)
            .map_err(|m| StoreError::Journal(format!("saga {id} at {}: {m}", e.version)))?;
        history.push((e.version, e.timestamp_us, entry.clone()));
        journal.push((e.version, entry));
    }
    let saga = fold(id, saga_type, &journal).map_err(StoreError::Journal)?;
    Ok(Some(Loaded {
        saga,
        correlation,
        history,
    }))
}

/// Brings `loaded` up to date: reads only the entries after its version and folds them on
/// (its history grows with them). `None` when the journal is gone.
pub async fn refresh(store: &Client, mut loaded: Loaded) -> Result<Option<Loaded>, StoreError> {
    let id = loaded.saga.id.clone();
    let from = loaded.saga.version + 1;
    let room = JOURNAL_ENTRIES_MAX
        .saturating_sub(loaded.history.len())
        .max(1);
    let events = match store
        .read_stream(&journal_stream(&id), Some(from), room)
        .await
    {
        Ok(e) => e,
        Err(Error::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut entries = Vec::with_capacity(events.len());
    for e in &events {
        let entry = Entry::parse(&e.data)
            .map_err(|m| StoreError::Journal(format!("saga {id} at {}: {m}", e.version)))?;
        loaded
            .history
            .push((e.version, e.timestamp_us, entry.clone()));
        entries.push((e.version, entry));
    }
    extend(&mut loaded.saga, &entries).map_err(StoreError::Journal)?;
    Ok(Some(loaded))
}

/// Folds a decision that [`act`] appended onto `loaded` without reading it back (its entries
/// are the journal's next versions: the append expected the saga's version). Their history
/// timestamps are `now_us`, not the store's.
pub fn acted(loaded: &mut Loaded, decision: &Decision, now_us: u64) -> Result<(), StoreError> {
    let Decision::Act { entries, .. } = decision else {
        return Ok(());
    };
    let base = loaded.saga.version;
    let numbered: Vec<(u64, Entry)> = (base + 1..).zip(entries.iter().cloned()).collect();
    extend(&mut loaded.saga, &numbered).map_err(StoreError::Journal)?;
    for (v, e) in numbered {
        loaded.history.push((v, now_us, e));
    }
    Ok(())
}

/// Creates saga `id` of type `def` unless its journal exists; returns whether this call
/// created it.
pub async fn create(
    store: &Client,
    (id, def): (&str, &SagaType),
    data: serde_json::Value,
    key: Option<&str>,
    correlation: &str,
) -> Result<bool, StoreError> {
    let started = Entry::SagaStarted {
        saga_type: def.name.to_string(),
        data,
        idempotency_key: key.map(str::to_string),
    };
    match store
        .append(
            &journal_stream(id),
            ExpectedVersion::NoStream,
            vec![event(&started, correlation)],
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(Error::WrongExpectedVersion { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Appends a decision's entries (and its command) expecting the journal at the saga's
/// version. `Ok(false)`: the journal moved on (another orchestrator, or a reply): read it again.
pub async fn act(store: &Client, loaded: &Loaded, decision: &Decision) -> Result<bool, StoreError> {
    let Decision::Act { entries, command } = decision else {
        return Ok(true);
    };
    let saga = &loaded.saga;
    let mut streams = vec![pb::StreamAppend {
        stream: journal_stream(&saga.id),
        expected: Some(ExpectedVersion::Exact(saga.version).wire()),
        events: entries
            .iter()
            .map(|e| event(e, &loaded.correlation))
            .collect(),
    }];
    if let Some((participant, c)) = command {
        streams.push(pb::StreamAppend {
            stream: command_stream(participant.name(), &saga.id),
            expected: Some(ExpectedVersion::Any.wire()),
            events: vec![pb::NewEvent {
                id: String::new(),
                r#type: c.action.clone(),
                data: serde_json::to_vec(c).unwrap_or_default().into(),
                metadata: metadata(&loaded.correlation),
            }],
        });
    }
    match store.append_multi(pb::AppendMultiRequest { streams }).await {
        Ok(_) => Ok(true),
        Err(Error::WrongExpectedVersion { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
