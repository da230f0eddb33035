//! The `strata.v1.Streams` service over a [`Backend`]: one engine (appends through its
//! group-commit queue) or a Raft replica (appends through Raft). Reads run on the blocking pool
//! so disk reads never stall the runtime; on a replica they first pass the read barrier their
//! consistency asks for.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use strata_proto::metadata::correlation_id;
use strata_proto::v1 as pb;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::backend::{replica_status, Backend};
use crate::clock::WallClock;
use crate::convert;
use crate::history::History;
use crate::ids::IdSource;
use crate::retention::{Pins, RetentionSettings};
pub use crate::stats::ServiceStats;
use crate::status::to_single_append_status;
use crate::subscription::{self, Subscription};

pub use crate::convert::READ_LIMIT_DEFAULT;

/// Settings of the service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Records buffered per subscription. Default 256 (so at most 256 × `batch_bytes_max`
    /// bytes, and far less for ordinary events).
    pub subscription_buffer_records_max: usize,
    /// How long a subscriber may leave its buffer full before it is cut off. Default 10 s.
    pub subscription_stall_timeout: std::time::Duration,
    /// Retention of dead events.
    pub retention: RetentionSettings,
    /// Most bytes of a read's answer, encoded (`Read`, `ReadAll`, `ReadState`): a page ends
    /// before the event (or record) that would pass it, and says where to go on — but holds
    /// at least one. Default 4 MiB, gRPC's default receive limit, so any gRPC client can read
    /// any stream. See [`crate::limits`].
    pub response_bytes_max: usize,
    /// Most appends one `AppendStream` call has in flight; past it the node reads no further
    /// message of the call (the client is pushed back). Default 4096, 1 to 65,536.
    pub append_window: usize,
    /// Most bytes (encoded appends) one `AppendStream` call has in flight, plus at most one
    /// message. Default 32 MiB, 64 KiB to 1 GiB.
    pub append_window_bytes: usize,
    /// The pace of slot-range moves' copies (see [`crate::throttle`]).
    pub moves: crate::throttle::ThrottleConfig,
}

/// Bounds of [`ServiceConfig::append_window`].
pub const APPEND_WINDOW_RANGE: std::ops::RangeInclusive<usize> = 1..=65_536;
/// Bounds of [`ServiceConfig::append_window_bytes`].
pub const APPEND_WINDOW_BYTES_RANGE: std::ops::RangeInclusive<usize> = (64 << 10)..=(1 << 30);

impl ServiceConfig {
    /// Refuses settings outside their documented bounds, naming the setting.
    pub fn validate(&self) -> strata_engine::Result<()> {
        let outside = |field: &'static str, v: usize, r: &std::ops::RangeInclusive<usize>| {
            Err(strata_engine::Error::invalid(
                field,
                format!("{v} is outside {}..={}", r.start(), r.end()),
            ))
        };
        if !APPEND_WINDOW_RANGE.contains(&self.append_window) {
            return outside("append_window", self.append_window, &APPEND_WINDOW_RANGE);
        }
        if !APPEND_WINDOW_BYTES_RANGE.contains(&self.append_window_bytes) {
            return outside(
                "append_window_bytes",
                self.append_window_bytes,
                &APPEND_WINDOW_BYTES_RANGE,
            );
        }
        self.moves
            .validate()
            .map_err(|why| strata_engine::Error::invalid("moves", why))
    }

    /// The `AppendStream` window.
    pub fn window(&self) -> crate::append_stream::Window {
        crate::append_stream::Window {
            appends: self.append_window,
            bytes: self.append_window_bytes,
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            subscription_buffer_records_max: 256,
            subscription_stall_timeout: std::time::Duration::from_secs(10),
            retention: RetentionSettings::default(),
            response_bytes_max: RESPONSE_BYTES_MAX_DEFAULT,
            append_window: 4096,
            append_window_bytes: 32 << 20,
            moves: crate::throttle::ThrottleConfig::default(),
        }
    }
}

/// Default [`ServiceConfig::response_bytes_max`]: gRPC's default receive limit.
pub const RESPONSE_BYTES_MAX_DEFAULT: usize = 4 << 20;

/// The service.
#[derive(Debug, Clone)]
pub struct StreamsService {
    backend: Backend,
    clock: Arc<dyn WallClock>,
    ids: Arc<dyn IdSource>,
    config: ServiceConfig,
    stats: Arc<ServiceStats>,
    stop: watch::Receiver<bool>,
    history: History,
    pins: Pins,
}

impl StreamsService {
    /// A service over `backend`, stamping appends with `clock`, naming events that come without
    /// an id from `ids`.
    pub fn new(
        backend: Backend,
        clock: Arc<dyn WallClock>,
        ids: Arc<dyn IdSource>,
        config: ServiceConfig,
        stats: Arc<ServiceStats>,
        stop: watch::Receiver<bool>,
    ) -> StreamsService {
        StreamsService {
            history: History::new(backend.clone(), clock.clone(), ids.clone()),
            pins: Pins::default(),
            backend,
            clock,
            ids,
            config,
            stats,
            stop,
        }
    }

    /// Runs one call in a span carrying its method, a request id and the caller's correlation
    /// id (`x-request-id`, else a `traceparent`'s trace id; empty without), logging rejections.
    async fn traced<T>(
        &self,
        method: &'static str,
        correlation: Option<String>,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let span = tracing::debug_span!(
            "rpc",
            method,
            request_id = self.request_id(),
            correlation_id = %correlation.as_deref().unwrap_or_default()
        );
        let result = call.instrument(span.clone()).await;
        if let Err(status) = &result {
            span.in_scope(
                || tracing::debug!(code = ?status.code(), message = status.message(), "rejected"),
            );
        }
        result
    }

    /// Its settings.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The engine's limits requests are checked against.
    pub fn limits(&self) -> strata_engine::Limits {
        self.backend.reader().limits().clone()
    }

    /// The storage it serves.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The positions open `$all` subscriptions still have to deliver (retention's bound).
    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    /// For a read as of a timestamp: waits until the shard is closed through it and returns
    /// the timestamp it is closed through (0 for other reads).
    async fn close_for(&self, as_of: Option<strata_engine::AsOf>) -> Result<u64, Status> {
        match as_of {
            Some(strata_engine::AsOf::Timestamp(t)) => self.history.close_through(t).await,
            _ => Ok(0),
        }
    }

    /// One single-stream append, as `Append` makes it.
    pub(crate) async fn append_one(
        &self,
        request: pb::AppendRequest,
    ) -> Result<pb::AppendResponse, Status> {
        self.submit_one(request).await?.await
    }

    /// Checks and queues one single-stream append (as each append of `AppendStream`), and
    /// returns its answer to come: appends submitted one after another are decided in order.
    pub(crate) async fn submit_one(
        &self,
        request: pb::AppendRequest,
    ) -> Result<impl std::future::Future<Output = Result<pb::AppendResponse, Status>>, Status> {
        let request = convert::append(request, self.clock.now_us(), self.ids.as_ref())?;
        tracing::debug!(stream = %request.streams[0].stream, events = request.streams[0].events.len(), "append");
        let started = std::time::Instant::now();
        let status = |e| match e {
            strata_raft::ReplicaError::Engine(e) => to_single_append_status(e),
            other => replica_status(other),
        };
        let answer = self.backend.submit(request).await.map_err(status)?;
        let stats = self.stats.clone();
        Ok(async move {
            let result = answer.await.map_err(status)?;
            stats
                .append_latency
                .observe_us(started.elapsed().as_micros() as u64);
            Ok(convert::append_response(result))
        })
    }

    /// Up to `limit` records of the log from `from` (`$all`'s raw page), after the read barrier
    /// and, for a read as of a timestamp, once the shard is closed through it (returned).
    pub(crate) async fn read_all_batch(
        &self,
        from: u64,
        limit: usize,
        consistency: pb::Consistency,
        as_of: Option<strata_engine::AsOf>,
    ) -> Result<(strata_engine::ReadAllBatch, u64), Status> {
        self.backend.read_barrier(consistency).await?;
        let closed = self.close_for(as_of).await?;
        // After the barrier: a snapshot install may have replaced the store meanwhile.
        let batch = self
            .backend
            .read(move |reader| reader.read_all_as_of(from, limit, as_of))
            .await?;
        Ok((batch, closed))
    }

    /// The log's end and, with `at`, its first record stamped at or after it.
    pub(crate) async fn log_point(
        &self,
        consistency: pb::Consistency,
        at: Option<u64>,
    ) -> Result<(u64, Option<u64>), Status> {
        self.backend.read_barrier(consistency).await?;
        self.backend
            .read(move |reader| {
                let first = match at {
                    Some(t) => reader.position_at_or_after(t)?,
                    None => None,
                };
                Ok((reader.end(), first))
            })
            .await
    }

    /// Starts a subscription's loop and returns its record units and final status (what
    /// `Subscribe` streams; the router merges several shards' this way).
    pub(crate) fn open_subscription(
        &self,
        r: pb::SubscribeRequest,
    ) -> Result<
        (
            mpsc::Receiver<subscription::Unit>,
            subscription::FinalStatus,
        ),
        Status,
    > {
        let reader = self.backend.reader();
        let replicated = matches!(self.backend, Backend::Replicated(_));
        let subscription = Subscription::from_request(&reader, r, replicated)?;
        let (tx, rx) = mpsc::channel(self.config.subscription_buffer_records_max.max(1));
        let last = subscription::FinalStatus::default();
        let delivery = subscription::Delivery {
            tx,
            last: last.clone(),
            stop: self.stop.clone(),
            stall_timeout: self.config.subscription_stall_timeout,
            pin: subscription
                .all_from()
                .map(|from| Arc::new(self.pins.pin(from))),
            clock: self.clock.clone(),
            source: match &self.backend {
                Backend::Replicated(r) => {
                    let shard = r.shard().clone();
                    Some(subscription::ReaderSource {
                        generation: shard.watch_generation(),
                        fresh: Arc::new(move || shard.reader()),
                    })
                }
                Backend::Single(_) => None,
            },
        };
        let stats = self.stats.clone();
        stats.subscriptions.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            subscription::run(reader, subscription, delivery).await;
            stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
        });
        Ok((rx, last))
    }

    fn request_id(&self) -> u64 {
        self.stats.requests.fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl crate::append_stream::Submit for StreamsService {
    /// Checks and queues a pipelined message's appends one after another (decided in that
    /// order; one that fails its checks is answered at once) and returns their outcomes to
    /// come, in order.
    fn submit_batch<'a>(
        &'a self,
        batch: Vec<pb::AppendRequest>,
        fence: &'a strata_raft::Fence,
    ) -> crate::append_stream::Boxed<'a, crate::append_stream::Outcomes> {
        Box::pin(self.submit_batch_now(batch, fence))
    }

    fn stats(&self) -> &Arc<ServiceStats> {
        &self.stats
    }

    fn stop(&self) -> Option<watch::Receiver<bool>> {
        Some(self.stop.clone())
    }
}

impl StreamsService {
    async fn submit_batch_now(
        &self,
        batch: Vec<pb::AppendRequest>,
        fence: &strata_raft::Fence,
    ) -> crate::append_stream::Outcomes {
        let started = std::time::Instant::now();
        let now = self.clock.now_us();
        let mut outcomes: Vec<Option<Result<pb::AppendResponse, Status>>> =
            Vec::with_capacity(batch.len());
        let mut requests = Vec::with_capacity(batch.len());
        for append in batch {
            match convert::append(append, now, self.ids.as_ref()) {
                Ok(r) => {
                    requests.push(r);
                    outcomes.push(None);
                }
                Err(status) => outcomes.push(Some(Err(status))),
            }
        }
        let answers = self.backend.submit_many(requests, fence).await;
        let stats = self.stats.clone();
        Box::pin(async move {
            let mut answers = answers.await.into_iter();
            let elapsed_us = started.elapsed().as_micros() as u64;
            outcomes
                .into_iter()
                .map(|o| match o {
                    Some(done) => done,
                    None => match answers.next() {
                        Some(Ok(result)) => {
                            stats.append_latency.observe_us(elapsed_us);
                            Ok(convert::append_response(result))
                        }
                        Some(Err(strata_raft::ReplicaError::Engine(e))) => {
                            Err(to_single_append_status(e))
                        }
                        Some(Err(other)) => Err(replica_status(other)),
                        None => Err(Status::internal("an append went unanswered")),
                    },
                })
                .collect()
        })
    }
}

#[tonic::async_trait]
impl pb::streams_server::Streams for StreamsService {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        self.traced(
            "Append",
            correlation_id(request.metadata()),
            self.append_one(request.into_inner()),
        )
        .await
        .map(Response::new)
    }

    type AppendStreamStream = crate::append_stream::AnswerStream;

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<pb::AppendStreamRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        crate::append_stream::respond(self.clone(), request, self.config.window())
    }

    async fn append_multi(
        &self,
        request: Request<pb::AppendMultiRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        self.traced(
            "AppendMulti",
            correlation_id(request.metadata()),
            async move {
                let request = convert::append_multi(
                    request.into_inner(),
                    self.clock.now_us(),
                    self.ids.as_ref(),
                )?;
                tracing::debug!(streams = request.streams.len(), "append multi");
                let started = std::time::Instant::now();
                let result = self.backend.append(request).await.map_err(replica_status)?;
                self.stats
                    .append_latency
                    .observe_us(started.elapsed().as_micros() as u64);
                Ok(Response::new(convert::append_response(result)))
            },
        )
        .await
    }

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        self.traced("Read", correlation_id(request.metadata()), async move {
            let r = request.into_inner();
            let reader = self.backend.reader();
            let limit = convert::read_limit(r.limit, reader.limits().read_events_max)?;
            let direction = convert::direction(r.direction)?;
            let consistency = convert::consistency(r.consistency)?;
            let as_of = convert::as_of(r.as_of);
            self.backend.stream_barrier(&r.stream, consistency).await?;
            let closed = self.close_for(as_of).await?;
            let now = self.clock.now_us();
            let page = self
                .backend
                .read(move |reader| {
                    reader.read_stream_visible(
                        &r.stream,
                        r.from_version,
                        direction,
                        limit,
                        as_of,
                        now,
                    )
                })
                .await?;
            let mut events: Vec<_> = page.events.into_iter().map(convert::recorded).collect();
            let fit = convert::fit_events(&mut events, self.config.response_bytes_max);
            Ok(Response::new(pb::ReadResponse {
                events,
                truncated: page.cut || fit.cut,
                closed_timestamp_us: closed,
            }))
        })
        .await
    }

    async fn read_all(
        &self,
        request: Request<pb::ReadAllRequest>,
    ) -> Result<Response<pb::ReadAllResponse>, Status> {
        self.traced("ReadAll", correlation_id(request.metadata()), async move {
            let r = request.into_inner();
            convert::check_filter(r.filter.as_ref())?;
            let limit =
                convert::read_limit(r.limit, self.backend.reader().limits().read_records_max)?;
            let consistency = convert::consistency(r.consistency)?;
            let as_of = convert::as_of(r.as_of);
            let (batch, closed) = self
                .read_all_batch(r.from_position, limit, consistency, as_of)
                .await?;
            let (events, next_position) =
                convert::read_all_page(batch, r.filter.as_ref(), self.config.response_bytes_max);
            Ok(Response::new(pb::ReadAllResponse {
                events,
                next_position,
                closed_timestamp_us: closed,
                next_cursor: Default::default(),
            }))
        })
        .await
    }

    type SubscribeStream = subscription::EventStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.traced(
            "Subscribe",
            correlation_id(request.metadata()),
            async move {
                let (rx, last) = self.open_subscription(request.into_inner())?;
                Ok(Response::new(subscription::event_stream(rx, last)))
            },
        )
        .await
    }

    async fn get_stream(
        &self,
        request: Request<pb::GetStreamRequest>,
    ) -> Result<Response<pb::GetStreamResponse>, Status> {
        self.traced(
            "GetStream",
            correlation_id(request.metadata()),
            async move {
                let r = request.into_inner();
                let consistency = convert::consistency(r.consistency)?;
                self.backend.stream_barrier(&r.stream, consistency).await?;
                Ok(Response::new(self.history.get_stream(r.stream).await?))
            },
        )
        .await
    }

    async fn get_log(
        &self,
        request: Request<pb::GetLogRequest>,
    ) -> Result<Response<pb::GetLogResponse>, Status> {
        self.traced("GetLog", correlation_id(request.metadata()), async move {
            let r = request.into_inner();
            let consistency = convert::consistency(r.consistency)?;
            let (end, first) = self.log_point(consistency, r.at_timestamp_us).await?;
            Ok(Response::new(pb::GetLogResponse {
                end_position: end,
                first_position_at_or_after: first,
                end_cursor: Default::default(),
                cursor_at_or_after: Default::default(),
            }))
        })
        .await
    }

    async fn set_stream_metadata(
        &self,
        request: Request<pb::SetStreamMetadataRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.traced(
            "SetStreamMetadata",
            correlation_id(request.metadata()),
            async move {
                Ok(Response::new(
                    self.history.set_metadata(request.into_inner()).await?,
                ))
            },
        )
        .await
    }

    async fn delete_stream(
        &self,
        request: Request<pb::DeleteStreamRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.traced(
            "DeleteStream",
            correlation_id(request.metadata()),
            async move {
                Ok(Response::new(
                    self.history.delete(request.into_inner()).await?,
                ))
            },
        )
        .await
    }

    async fn save_snapshot(
        &self,
        request: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.traced(
            "SaveSnapshot",
            correlation_id(request.metadata()),
            async move {
                Ok(Response::new(
                    self.history.save_snapshot(request.into_inner()).await?,
                ))
            },
        )
        .await
    }

    async fn read_state(
        &self,
        request: Request<pb::ReadStateRequest>,
    ) -> Result<Response<pb::ReadStateResponse>, Status> {
        self.traced(
            "ReadState",
            correlation_id(request.metadata()),
            async move {
                let r = request.into_inner();
                let limit =
                    convert::read_limit(r.limit, self.backend.reader().limits().read_events_max)?;
                let consistency = convert::consistency(r.consistency)?;
                self.backend.stream_barrier(&r.stream, consistency).await?;
                let bytes_max = self.config.response_bytes_max;
                Ok(Response::new(
                    self.history.read_state(r, limit, bytes_max).await?,
                ))
            },
        )
        .await
    }

    async fn set_snapshot_policy(
        &self,
        request: Request<pb::SnapshotPolicy>,
    ) -> Result<Response<pb::SnapshotPolicies>, Status> {
        self.traced(
            "SetSnapshotPolicy",
            correlation_id(request.metadata()),
            async move {
                Ok(Response::new(
                    self.history.set_policy(request.into_inner()).await?,
                ))
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_append_window_of_zero_or_beyond_its_bound_is_refused_naming_it() {
        assert!(ServiceConfig::default().validate().is_ok());
        for (config, named) in [
            (
                ServiceConfig {
                    append_window: 0,
                    ..ServiceConfig::default()
                },
                "append_window",
            ),
            (
                ServiceConfig {
                    append_window: 1 << 20,
                    ..ServiceConfig::default()
                },
                "append_window",
            ),
            (
                ServiceConfig {
                    append_window_bytes: 100,
                    ..ServiceConfig::default()
                },
                "append_window_bytes",
            ),
            (
                ServiceConfig {
                    append_window_bytes: 2 << 30,
                    ..ServiceConfig::default()
                },
                "append_window_bytes",
            ),
        ] {
            let e = config.validate().unwrap_err().to_string();
            assert!(e.contains(named), "{e}");
        }
    }
}
