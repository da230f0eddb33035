//! [`Client`]: every `strata.v1` call, through the retry loop of [`crate::conn`].

use strata_proto::v1 as pb;

use crate::config::ClientConfig;
use crate::conn::Connections;
use crate::error::Error;
use crate::events::{with_ids, ExpectedVersion};
use crate::pipeline::{Appender, SharedAppender};
use crate::subscribe::{Start, Subscription, Target};

/// A connection to a Strata cluster (or a single node). Cheap to clone; clones share
/// connections.
#[derive(Debug, Clone)]
pub struct Client {
    conn: Connections,
    /// The `AppendStream` call its appends share ([`ClientConfig::append_over_stream`]);
    /// `None` for a handle with metadata of its own.
    shared: Option<SharedAppender>,
}

impl Client {
    /// A client for `config` (checked; no connection is made until the first call).
    pub fn new(config: ClientConfig) -> Result<Client, Error> {
        Ok(Client {
            conn: Connections::new(config)?,
            shared: Some(SharedAppender::default()),
        })
    }

    /// A client of these addresses with the default settings.
    pub fn connect<S: Into<String>>(
        addresses: impl IntoIterator<Item = S>,
    ) -> Result<Client, Error> {
        Client::new(ClientConfig::new(addresses))
    }

    /// Its settings.
    pub fn config(&self) -> &ClientConfig {
        self.conn.config()
    }

    /// This client (sharing its connections) with `key: value` in the gRPC metadata of every
    /// call it makes: e.g. a service's correlation id, so the store's logs of the calls it makes
    /// for one request name it. A key is lowercase letters, digits, `-`, `_` and `.`, not
    /// `grpc-…` or `strata-…`; a value printable ASCII of at most 256 bytes; at most 8 entries
    /// (else [`Error::InvalidArgument`], nothing changed).
    pub fn with_metadata(&self, key: &str, value: &str) -> Result<Client, Error> {
        Ok(Client {
            conn: self.conn.with_header(key, value)?,
            shared: None,
        })
    }

    /// [`Client::with_metadata`] of `x-request-id`; an id that cannot be sent as one
    /// (non-ASCII, too long) leaves the client as it is.
    pub fn with_correlation_id(&self, id: &str) -> Client {
        self.with_metadata(strata_proto::metadata::REQUEST_ID_KEY, id)
            .unwrap_or_else(|_| self.clone())
    }

    /// The node calls go to now (the leader, once one has been named).
    pub fn target(&self) -> String {
        self.conn.target()
    }

    /// Appends `events` to `stream` atomically if it is at `expected`. Events without an id
    /// get one first, so the append is retried safely when its outcome is unknown. Sent over
    /// the call the client's appends share ([`ClientConfig::append_over_stream`]), or as a
    /// call of its own.
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<pb::NewEvent>,
    ) -> Result<pb::AppendResponse, Error> {
        self.append_request(pb::AppendRequest {
            stream: stream.to_string(),
            expected: Some(expected.wire()),
            events,
        })
        .await
    }

    /// [`Client::append`] of a request as the wire has it.
    pub async fn append_request(
        &self,
        mut request: pb::AppendRequest,
    ) -> Result<pb::AppendResponse, Error> {
        with_ids(&mut request.events);
        if let Some(appender) = self.shared_appender(&request.stream).await {
            return appender.append_and_wait(request).await;
        }
        self.conn
            .call_for(&request.stream, true, |mut c| {
                let r = request.clone();
                async move { c.append(r).await }
            })
            .await
    }

    /// The shared appender an append to `stream` goes through, if any: when the client's
    /// settings ask for one, this handle has no metadata of its own, and the node calls go to
    /// leads the stream's shard (or the client knows no shards).
    async fn shared_appender(&self, stream: &str) -> Option<Appender> {
        let shared = self.shared.as_ref()?;
        if !self.conn.config().append_over_stream {
            return None;
        }
        match self.conn.route(stream).await {
            Some(leader) if leader != self.conn.target() => None,
            _ => Some(shared.get_or_start(&self.conn)),
        }
    }

    /// Appends to several streams in one atomic append (ids given as by [`Client::append`]).
    pub async fn append_multi(
        &self,
        mut request: pb::AppendMultiRequest,
    ) -> Result<pb::AppendResponse, Error> {
        for s in &mut request.streams {
            with_ids(&mut s.events);
        }
        let first = request
            .streams
            .first()
            .map(|s| s.stream.clone())
            .unwrap_or_default();
        self.conn
            .call_for(&first, true, |mut c| {
                let r = request.clone();
                async move { c.append_multi(r).await }
            })
            .await
    }

    /// The last event of `stream` read at `consistency` (`None`: no such stream, or no event
    /// in it).
    pub async fn last_event(
        &self,
        stream: &str,
        consistency: pb::Consistency,
    ) -> Result<Option<pb::RecordedEvent>, Error> {
        let page = self
            .read(pb::ReadRequest {
                stream: stream.to_string(),
                direction: pb::Direction::Backwards as i32,
                limit: 1,
                consistency: consistency as i32,
                ..Default::default()
            })
            .await;
        match page {
            Ok(p) => Ok(p.events.into_iter().next()),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One page of a stream (see `ReadResponse.truncated`); as of a past point with `as_of`.
    pub async fn read(&self, request: pb::ReadRequest) -> Result<pb::ReadResponse, Error> {
        self.conn
            .call_for(&request.stream, true, |mut c| {
                let r = request.clone();
                async move { c.read(r).await }
            })
            .await
    }

    /// Every event of a stream from `from` (the first when `None`) forwards, page after page,
    /// at most `limit` events.
    pub async fn read_stream(
        &self,
        stream: &str,
        from: Option<u64>,
        limit: usize,
    ) -> Result<Vec<pb::RecordedEvent>, Error> {
        let mut out: Vec<pb::RecordedEvent> = Vec::new();
        let mut from = from;
        while out.len() < limit {
            let page = self
                .read(pb::ReadRequest {
                    stream: stream.to_string(),
                    from_version: from,
                    limit: (limit - out.len()).min(4096) as u32,
                    ..Default::default()
                })
                .await?;
            let Some(last) = page.events.last().map(|e| e.version) else {
                break;
            };
            out.extend(page.events);
            match last.checked_add(1) {
                Some(next) => from = Some(next),
                None => break,
            }
        }
        Ok(out)
    }

    /// One page of the whole log in order (`next_position` says where to go on).
    pub async fn read_all(
        &self,
        request: pb::ReadAllRequest,
    ) -> Result<pb::ReadAllResponse, Error> {
        self.conn
            .call(true, |mut c| {
                let r = request.clone();
                async move { c.read_all(r).await }
            })
            .await
    }

    /// A stream's current version, metadata and state.
    pub async fn stream_info(
        &self,
        stream: &str,
        consistency: pb::Consistency,
    ) -> Result<pb::GetStreamResponse, Error> {
        let request = pb::GetStreamRequest {
            stream: stream.to_string(),
            consistency: consistency as i32,
        };
        self.conn
            .call_for(&request.stream, true, |mut c| {
                let r = request.clone();
                async move { c.get_stream(r).await }
            })
            .await
    }

    /// The log's end position, and with `at_timestamp_us` the first record stamped at or
    /// after that time.
    pub async fn get_log(&self, at_timestamp_us: Option<u64>) -> Result<pb::GetLogResponse, Error> {
        let request = pb::GetLogRequest {
            at_timestamp_us,
            consistency: pb::Consistency::Linearizable as i32,
        };
        self.conn
            .call(true, |mut c| async move { c.get_log(request).await })
            .await
    }

    /// Replaces a stream's metadata. Retried after an unknown outcome only when no expected
    /// metadata version is given (then setting it twice is setting it once).
    pub async fn set_metadata(
        &self,
        request: pb::SetStreamMetadataRequest,
    ) -> Result<pb::WriteResponse, Error> {
        let idempotent = request.expected_metadata_version.is_none();
        self.conn
            .call_for(&request.stream, idempotent, |mut c| {
                let r = request.clone();
                async move { c.set_stream_metadata(r).await }
            })
            .await
    }

    /// Soft- or hard-deletes a stream. Never retried after an unknown outcome (a repeated hard
    /// delete would report the stream deleted).
    pub async fn delete(
        &self,
        request: pb::DeleteStreamRequest,
    ) -> Result<pb::WriteResponse, Error> {
        self.conn
            .call_for(&request.stream, false, |mut c| {
                let r = request.clone();
                async move { c.delete_stream(r).await }
            })
            .await
    }

    /// Stores a snapshot of a stream's state at a version.
    pub async fn save_snapshot(
        &self,
        request: pb::SaveSnapshotRequest,
    ) -> Result<pb::WriteResponse, Error> {
        self.conn
            .call_for(&request.stream, true, |mut c| {
                let r = request.clone();
                async move { c.save_snapshot(r).await }
            })
            .await
    }

    /// A stream's state at a point: its newest snapshot and the events after it.
    pub async fn read_state(
        &self,
        request: pb::ReadStateRequest,
    ) -> Result<pb::ReadStateResponse, Error> {
        self.conn
            .call_for(&request.stream, true, |mut c| {
                let r = request.clone();
                async move { c.read_state(r).await }
            })
            .await
    }

    /// Sets a snapshot policy; answers with every policy in force.
    pub async fn set_snapshot_policy(
        &self,
        policy: pb::SnapshotPolicy,
    ) -> Result<pb::SnapshotPolicies, Error> {
        self.conn
            .call(true, |mut c| {
                let r = policy.clone();
                async move { c.set_snapshot_policy(r).await }
            })
            .await
    }

    /// The cluster's status as the node at `addr` sees it (one attempt: a status is about
    /// one node).
    pub async fn cluster_status(&self, addr: &str) -> Result<pb::ClusterStatus, Error> {
        let mut c = self.conn.cluster(addr)?;
        let timeout = self.config().attempt_timeout;
        match tokio::time::timeout(timeout, c.status(pb::StatusRequest {})).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(crate::error::Failed::from_status(&s).error),
            Err(_) => Err(Error::Unavailable(format!(
                "no status from {addr} within {timeout:?}"
            ))),
        }
    }

    /// Initialises a new replicated shard with its configured peers (a no-op when it is
    /// initialised already).
    pub async fn cluster_init(&self) -> Result<pb::ClusterStatus, Error> {
        self.conn
            .call_on(Connections::cluster, None, true, |mut c| async move {
                c.init(pb::InitRequest {}).await
            })
            .await
    }

    /// Adds a node to the shard's membership (at the leader).
    pub async fn cluster_add_node(
        &self,
        request: pb::AddNodeRequest,
    ) -> Result<pb::ClusterStatus, Error> {
        self.conn
            .call_on(Connections::cluster, None, true, |mut c| {
                let r = request.clone();
                async move { c.add_node(r).await }
            })
            .await
    }

    /// Removes a node from the shard's membership (at the leader).
    pub async fn cluster_remove_node(
        &self,
        request: pb::RemoveNodeRequest,
    ) -> Result<pb::ClusterStatus, Error> {
        self.conn
            .call_on(Connections::cluster, None, true, |mut c| async move {
                c.remove_node(request).await
            })
            .await
    }

    /// Hands one shard's leadership to one of its voters (at the shard's leader; its appends
    /// wait meanwhile, about one election timeout at most). A retry once `to` leads is a
    /// no-op.
    pub async fn cluster_transfer_leader(
        &self,
        request: pb::TransferLeaderRequest,
    ) -> Result<pb::ClusterStatus, Error> {
        self.conn
            .call_on(Connections::cluster, None, true, |mut c| async move {
                c.transfer_leader(request).await
            })
            .await
    }

    /// Begins moving slots `start..end` to shard `to_shard` (see `Cluster.MoveSlots`); the
    /// answer's `move` shows its progress, and so does [`Client::cluster_status`] after. Not
    /// retried when the outcome is unknown (a second start would find the first running).
    pub async fn cluster_move_slots(
        &self,
        request: pb::MoveSlotsRequest,
    ) -> Result<pb::ClusterStatus, Error> {
        self.conn
            .call_on(Connections::cluster, None, false, |mut c| async move {
                c.move_slots(request).await
            })
            .await
    }

    /// Splits a shard (see `Cluster.SplitShard`): answers once the move to the new shard has
    /// begun; its progress is in `cluster_status().move`.
    pub async fn cluster_split_shard(
        &self,
        request: pb::SplitShardRequest,
    ) -> Result<pb::ClusterStatus, Error> {
        self.conn
            .call_on(Connections::cluster, None, false, |mut c| async move {
                c.split_shard(request).await
            })
            .await
    }

    /// Moves a shard's replica from one node to another (see `Cluster.MoveShard`): answers
    /// when done.
    pub async fn cluster_move_shard(
        &self,
        request: pb::MoveShardRequest,
    ) -> Result<pb::ClusterStatus, Error> {
        self.conn
            .call_on(Connections::cluster, None, false, |mut c| async move {
                c.move_shard(request).await
            })
            .await
    }

    /// Follows a stream or the whole log from `start`: catches up, then live; reconnects and
    /// resumes after the last event delivered (no gap, no duplicate).
    pub fn subscribe(&self, target: Target, start: Start) -> Subscription {
        Subscription::new(self.conn.clone(), target, start)
    }

    /// A pipelined appender over its own connection (see [`Appender`]).
    pub fn appender(&self) -> Appender {
        Appender::start(self.conn.clone())
    }
}
