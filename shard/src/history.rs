//! The calls beyond plain appends and reads: closed timestamps for as-of-time reads, stream
//! metadata and deletion, client snapshots and state reads, snapshot policies. Each writes
//! through the ordinary append path into a system stream (`strata_engine::system`), so it is
//! replicated, ordered and decided at apply time like any event.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_engine::system::{self, SnapshotInfo, SnapshotPolicy, StreamMeta};
use strata_engine::{AppendRequest, ExpectedVersion, NewEvent};
use strata_proto::v1 as pb;
use tokio::sync::Mutex;
use tonic::Status;

use strata_raft::ReplicaError;

use crate::backend::{replica_status, Backend};
use crate::clock::WallClock;
use crate::ids::IdSource;
use crate::status::{invalid, to_status};

/// How far ahead of this node's clock an as-of timestamp may be: the read waits for the
/// clock to pass it. Further ahead is refused.
pub const CLOSE_AHEAD_MAX: Duration = Duration::from_secs(2);
/// How long a read waits for the shard to close past its timestamp once the clock has.
pub const CLOSE_WAIT_MAX: Duration = Duration::from_secs(5);
/// Times a soft delete reads the stream and tries its conditional write when appends keep
/// landing in between.
pub const DELETE_ATTEMPTS_MAX: u32 = 8;

/// What the calls share: the backend, the clock, the id source, and one tick in flight at a
/// time.
#[derive(Debug, Clone)]
pub struct History {
    backend: Backend,
    clock: Arc<dyn WallClock>,
    ids: Arc<dyn IdSource>,
    tick: Arc<Mutex<()>>,
}

impl History {
    /// Over `backend`, stamping with `clock` and naming its events from `ids`.
    pub fn new(backend: Backend, clock: Arc<dyn WallClock>, ids: Arc<dyn IdSource>) -> History {
        History {
            backend,
            clock,
            ids,
            tick: Arc::new(Mutex::new(())),
        }
    }

    /// An event the server writes (a marker, a setting), with a new id.
    fn system_event(&self, event_type: &str, data: Vec<u8>, metadata: Vec<u8>) -> NewEvent {
        NewEvent {
            id: self.ids.new_id(),
            event_type: event_type.to_string(),
            data: Bytes::from(data),
            metadata: Bytes::from(metadata),
        }
    }

    /// Checks a name clients may append to (`field` names it in the error).
    fn user_stream(&self, field: &str, stream: &str) -> Result<(), Status> {
        let reader = self.backend.reader();
        strata_engine::validate::validate_user_stream_name(field, stream, reader.limits())
            .map_err(to_status)
    }

    /// Microseconds now, on this node's clock.
    pub fn now_us(&self) -> u64 {
        self.clock.now_us()
    }

    async fn write(&self, request: AppendRequest) -> Result<u64, Status> {
        self.backend
            .append(request)
            .await
            .map(|r| r.position)
            .map_err(replica_status)
    }

    /// Waits until the shard is closed through `timestamp_us` — no record stamped at or
    /// before it can still be written — and returns the timestamp it is closed through. If no
    /// committed record is stamped that late yet, waits for the clock to pass the timestamp
    /// (at most [`CLOSE_AHEAD_MAX`]) and appends an empty tick to `$closed`, which the
    /// leader's hybrid logical clock stamps later than it.
    pub async fn close_through(&self, timestamp_us: u64) -> Result<u64, Status> {
        if let Some(closed) = self.closed(timestamp_us).await? {
            return Ok(closed);
        }
        let now = self.clock.now_us();
        if timestamp_us > now {
            let ahead = Duration::from_micros(timestamp_us - now);
            if ahead > CLOSE_AHEAD_MAX {
                return Err(invalid(
                    "as_of.timestamp_us",
                    format!(
                        "is {} ms ahead of this node's clock; reads wait for at most {} ms",
                        ahead.as_millis(),
                        CLOSE_AHEAD_MAX.as_millis()
                    ),
                ));
            }
            tokio::time::sleep(ahead).await;
        }
        // One tick at a time: the reads waiting behind it are usually closed by it.
        let _one = self.tick.lock().await;
        if let Some(closed) = self.closed(timestamp_us).await? {
            return Ok(closed);
        }
        let tick = AppendRequest::single(
            system::CLOSED_STREAM,
            ExpectedVersion::Any,
            vec![self.system_event(system::TICK_TYPE, Vec::new(), Vec::new())],
            self.clock.now_us().max(timestamp_us),
        );
        match tokio::time::timeout(CLOSE_WAIT_MAX, self.write(tick)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "the shard could not close timestamp {timestamp_us} within {} ms",
                    CLOSE_WAIT_MAX.as_millis()
                )))
            }
        };
        self.closed(timestamp_us).await?.ok_or_else(|| {
            Status::unavailable(format!(
                "timestamp {timestamp_us} is closed on the leader but not yet applied here; retry"
            ))
        })
    }

    async fn closed(&self, timestamp_us: u64) -> Result<Option<u64>, Status> {
        self.backend
            .read(move |r| r.closed_through(timestamp_us))
            .await
    }

    /// `GetStream`: head, metadata and deletion state, now.
    pub async fn get_stream(&self, stream: String) -> Result<pb::GetStreamResponse, Status> {
        let now = self.now_us();
        let name = stream.clone();
        let info = self
            .backend
            .read(move |r| r.stream_info(&name, None, now))
            .await?;
        Ok(pb::GetStreamResponse {
            stream,
            exists: info.head.is_some(),
            current_version: info.head.unwrap_or(0),
            metadata: Some(meta_to_wire(info.meta)),
            first_visible_version: info.floor,
            deleted: info.soft_deleted(),
            tombstoned: info.hard_deleted,
            metadata_version: info.meta_version,
        })
    }

    /// `SetStreamMetadata`: appends the new metadata to `$meta:S`.
    pub async fn set_metadata(
        &self,
        r: pb::SetStreamMetadataRequest,
    ) -> Result<pb::WriteResponse, Status> {
        self.user_stream("stream", &r.stream)?;
        let meta = r.metadata.map(meta_from_wire).unwrap_or_default();
        if meta.max_count == Some(0) {
            return Err(invalid(
                "metadata.max_count",
                "must be at least 1 (delete the stream to hide every event)",
            ));
        }
        let expected = r
            .expected_metadata_version
            .map_or(ExpectedVersion::Any, ExpectedVersion::Exact);
        self.write_meta(&r.stream, meta, expected).await
    }

    async fn write_meta(
        &self,
        stream: &str,
        meta: StreamMeta,
        expected: ExpectedVersion,
    ) -> Result<pb::WriteResponse, Status> {
        let request = self.meta_request(stream, meta, expected);
        Ok(pb::WriteResponse {
            position: self.write(request).await?,
        })
    }

    /// The append of `meta` to `$meta:S`, which must be at `expected`.
    fn meta_request(
        &self,
        stream: &str,
        meta: StreamMeta,
        expected: ExpectedVersion,
    ) -> AppendRequest {
        AppendRequest::single(
            system::meta_stream(stream),
            expected,
            vec![self.system_event(system::METADATA_TYPE, meta.encode(), Vec::new())],
            self.now_us(),
        )
    }

    /// `DeleteStream`: a soft delete sets `truncate_before` past the last version (keeping
    /// the other metadata); a hard delete appends a tombstone to `$deleted:S`. Either write is
    /// conditional on `S` (and a soft delete's on `$meta:S` too) being as it was read, decided
    /// with the write: an append landing in between can neither slip past the caller's
    /// expected version nor survive a soft delete. A soft delete that loses such a race while
    /// the caller's expected version still holds reads again and retries (at most
    /// [`DELETE_ATTEMPTS_MAX`] times, then the last conflict is the answer).
    pub async fn delete(&self, r: pb::DeleteStreamRequest) -> Result<pb::WriteResponse, Status> {
        self.user_stream("stream", &r.stream)?;
        let expected = crate::convert::expected(r.expected);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let now = self.now_us();
            let name = r.stream.clone();
            let info = self
                .backend
                .read(move |r| r.stream_info(&name, None, now))
                .await?;
            if info.hard_deleted {
                return Err(to_status(strata_engine::Error::StreamDeleted {
                    stream: r.stream,
                }));
            }
            if !expected.matches(info.head) {
                return Err(to_status(strata_engine::Error::WrongExpectedVersion {
                    stream: r.stream,
                    expected: expected.to_string(),
                    actual: info.head,
                }));
            }
            let request = if r.hard {
                AppendRequest::single(
                    system::deleted_stream(&r.stream),
                    ExpectedVersion::NoStream,
                    vec![self.system_event(system::TOMBSTONE_TYPE, Vec::new(), Vec::new())],
                    now,
                )
                .on_condition(&r.stream, expected)
            } else {
                let Some(head) = info.head else {
                    return Err(to_status(strata_engine::Error::WrongExpectedVersion {
                        stream: r.stream,
                        expected: "stream exists".into(),
                        actual: None,
                    }));
                };
                let meta = StreamMeta {
                    truncate_before: Some(head + 1),
                    ..info.meta
                };
                let meta_expected = info
                    .meta_version
                    .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                self.meta_request(&r.stream, meta, meta_expected)
                    .on_condition(&r.stream, ExpectedVersion::Exact(head))
            };
            match self.backend.append(request).await {
                Ok(done) => {
                    return Ok(pb::WriteResponse {
                        position: done.position,
                    })
                }
                Err(ReplicaError::Engine(strata_engine::Error::WrongExpectedVersion {
                    ..
                })) if !r.hard && attempt < DELETE_ATTEMPTS_MAX => {}
                Err(e) => return Err(replica_status(e)),
            }
        }
    }

    /// `SaveSnapshot`: appends the state to `$snap:S`. The version must exist (a snapshot of a
    /// state the stream never had would be read back as its past).
    pub async fn save_snapshot(
        &self,
        r: pb::SaveSnapshotRequest,
    ) -> Result<pb::WriteResponse, Status> {
        self.user_stream("stream", &r.stream)?;
        let name = r.stream.clone();
        let head = self.backend.read(move |r| r.stream_version(&name)).await?;
        if head.is_none_or(|h| r.version > h) {
            return Err(invalid(
                "version",
                format!(
                    "{} is past the stream's last version ({})",
                    r.version,
                    head.map_or("none".to_string(), |h| h.to_string())
                ),
            ));
        }
        let info = SnapshotInfo {
            version: r.version,
            schema_version: r.schema_version,
        };
        let request = AppendRequest::single(
            system::snapshot_stream(&r.stream),
            ExpectedVersion::Any,
            vec![self.system_event(system::SNAPSHOT_TYPE, r.data.to_vec(), info.encode())],
            self.now_us(),
        );
        Ok(pb::WriteResponse {
            position: self.write(request).await?,
        })
    }

    /// `ReadState` (after the caller's read barrier): at most `limit` events, and an answer of
    /// at most `bytes_max` encoded (but one event at least; `complete` is false when cut).
    pub async fn read_state(
        &self,
        r: pb::ReadStateRequest,
        limit: usize,
        bytes_max: usize,
    ) -> Result<pb::ReadStateResponse, Status> {
        let as_of = crate::convert::as_of(r.as_of);
        let closed = match as_of {
            Some(strata_engine::AsOf::Timestamp(t)) => self.close_through(t).await?,
            _ => 0,
        };
        let now = self.now_us();
        let stream = r.stream.clone();
        let state = self
            .backend
            .read(move |reader| reader.read_state(&stream, as_of, limit, now))
            .await?;
        let snapshot = state.snapshot.map(|(info, e)| pb::Snapshot {
            version: info.version,
            schema_version: info.schema_version,
            data: e.data.clone(),
            timestamp_us: e.timestamp_us,
            position: e.position,
        });
        let mut events: Vec<_> = state
            .events
            .into_iter()
            .map(crate::convert::recorded)
            .collect();
        let snapshot_bytes = snapshot.as_ref().map_or(0, prost::Message::encoded_len);
        let fit = crate::convert::fit_events(&mut events, bytes_max.saturating_sub(snapshot_bytes));
        Ok(pb::ReadStateResponse {
            stream: r.stream,
            snapshot,
            events,
            exists: state.version.is_some(),
            version: state.version.unwrap_or(0),
            complete: state.complete && !fit.cut,
            snapshot_due: state.snapshot_due,
            closed_timestamp_us: closed,
        })
    }

    /// `SetSnapshotPolicy`: appends it to `$settings`; answers with every policy in force.
    pub async fn set_policy(&self, p: pb::SnapshotPolicy) -> Result<pb::SnapshotPolicies, Status> {
        if !p.stream_prefix.is_empty() {
            self.user_stream("stream_prefix", &p.stream_prefix)?;
        }
        let policy = SnapshotPolicy {
            prefix: p.stream_prefix,
            every: p.every,
        };
        let request = AppendRequest::single(
            system::SETTINGS_STREAM,
            ExpectedVersion::Any,
            vec![self.system_event(system::POLICY_TYPE, policy.encode(), Vec::new())],
            self.now_us(),
        );
        self.write(request).await?;
        let policies = self.backend.read(|r| r.snapshot_policies()).await?;
        Ok(pb::SnapshotPolicies {
            policies: policies
                .into_iter()
                .map(|p| pb::SnapshotPolicy {
                    stream_prefix: p.prefix,
                    every: p.every,
                })
                .collect(),
        })
    }
}

fn meta_to_wire(m: StreamMeta) -> pb::StreamMetadata {
    pb::StreamMetadata {
        max_age_us: m.max_age_us,
        max_count: m.max_count,
        truncate_before: m.truncate_before,
    }
}

fn meta_from_wire(m: pb::StreamMetadata) -> StreamMeta {
    StreamMeta {
        max_age_us: m.max_age_us,
        max_count: m.max_count,
        truncate_before: m.truncate_before,
    }
}
