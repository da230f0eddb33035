//! Connections and the retry loop every call goes through.
//!
//! The client keeps one lazily connected channel per node address and a *target*: the node it
//! believes leads. A node that is not the leader names the leader (`strata-leader`): the next
//! attempt goes there at once. A node that does not answer moves the target to the next
//! address, after a backoff. A call is attempted again only when that cannot duplicate it:
//! always after a refusal (not the leader, busy), and after an unknown outcome (a broken
//! connection, a timeout) only for idempotent calls — reads, and appends whose every event
//! carries an id (the client gives each event one before the first attempt, so a retry is
//! answered with the original result); an unknown outcome that names the leader (a node that
//! forwarded the call learnt meanwhile that the leader changed) sends that retry to it at
//! once. Attempts are bounded by `attempts_max` and the call's
//! `deadline`. A call about one stream goes to the leader of the stream's shard when the
//! client knows it (see [`crate::routes`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use strata_proto::v1::cluster_client::ClusterClient;
use strata_proto::v1::streams_client::StreamsClient;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::config::ClientConfig;
use crate::error::{Error, Failed, Retry};
use crate::routes::{RouteState, Routes};

/// Addresses a client learns from leader hints, beyond those it was given.
const LEARNED_ADDRESSES_MAX: usize = 64;
/// Most metadata entries a client adds to its calls ([`crate::Client::with_metadata`]).
pub const HEADERS_MAX: usize = 8;
/// Longest value of one of them, bytes.
pub const HEADER_VALUE_BYTES_MAX: usize = 256;

/// The gRPC metadata a client adds to every call (a correlation id, a `traceparent`).
#[derive(Debug, Clone, Default)]
pub struct Headers(Arc<Vec<(AsciiMetadataKey, AsciiMetadataValue)>>);

impl Headers {
    /// These headers with `key` set to `value` (replacing it): a key of lowercase letters,
    /// digits, `-`, `_` or `.`, not a reserved one (`grpc-…`, `strata-…`); a value of
    /// printable ASCII, at most [`HEADER_VALUE_BYTES_MAX`] bytes; at most [`HEADERS_MAX`].
    pub(crate) fn with(&self, key: &str, value: &str) -> Result<Headers, Error> {
        let bad = |why: &str| Err(Error::InvalidArgument(format!("metadata `{key}`: {why}")));
        let key_ok = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !key_ok {
            return bad("a key is lowercase letters, digits, `-`, `_` and `.`");
        }
        if key.starts_with("grpc-") || key.starts_with("strata-") {
            return bad("keys starting `grpc-` or `strata-` are the protocol's");
        }
        if value.len() > HEADER_VALUE_BYTES_MAX
            || !value.bytes().all(|b| (b' '..=b'~').contains(&b))
        {
            return bad(&format!(
                "a value is printable ASCII, at most {HEADER_VALUE_BYTES_MAX} bytes"
            ));
        }
        let (Ok(k), Ok(v)) = (
            key.parse::<AsciiMetadataKey>(),
            value.parse::<AsciiMetadataValue>(),
        ) else {
            return bad("not valid gRPC metadata");
        };
        let mut all: Vec<_> = self
            .0
            .iter()
            .filter(|(old, _)| *old != k)
            .cloned()
            .collect();
        if all.len() >= HEADERS_MAX {
            return bad(&format!("at most {HEADERS_MAX} entries"));
        }
        all.push((k, v));
        Ok(Headers(Arc::new(all)))
    }
}

impl tonic::service::Interceptor for Headers {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        for (k, v) in self.0.iter() {
            request.metadata_mut().insert(k.clone(), v.clone());
        }
        Ok(request)
    }
}

/// A `Streams` client of one node, adding the client's [`Headers`].
pub(crate) type StreamsApi = StreamsClient<InterceptedService<Channel, Headers>>;
/// A raw gRPC client of one node, adding the client's [`Headers`].
pub(crate) type RawApi = tonic::client::Grpc<InterceptedService<Channel, Headers>>;
/// A `Cluster` client of one node, adding the client's [`Headers`].
pub(crate) type ClusterApi = ClusterClient<InterceptedService<Channel, Headers>>;

#[derive(Debug)]
struct Targets {
    /// Given addresses first, then learned ones.
    known: Vec<String>,
    /// Index into `known` of the node calls go to.
    current: usize,
    channels: HashMap<String, Channel>,
}

/// The nodes of one cluster, and where calls go.
#[derive(Debug, Clone)]
pub(crate) struct Connections {
    config: Arc<ClientConfig>,
    targets: Arc<Mutex<Targets>>,
    routes: Arc<Mutex<RouteState>>,
    jitter: Arc<AtomicU64>,
    /// This handle's own (clones made by `with_headers` share the rest).
    headers: Headers,
}

impl Connections {
    pub(crate) fn new(config: ClientConfig) -> Result<Connections, Error> {
        config.validate()?;
        let known = config.addresses.clone();
        let connections = Connections {
            config: Arc::new(config),
            targets: Arc::new(Mutex::new(Targets {
                known,
                current: 0,
                channels: HashMap::new(),
            })),
            routes: Arc::default(),
            jitter: Arc::new(AtomicU64::new((uuid::Uuid::new_v4().as_u128() as u64) | 1)),
            headers: Headers::default(),
        };
        // Every address must at least parse (a channel is made lazily: no network yet).
        for a in &connections.config.addresses {
            connections.endpoint(a)?;
        }
        Ok(connections)
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The same connections, their calls carrying `key: value` besides this handle's headers.
    pub(crate) fn with_header(&self, key: &str, value: &str) -> Result<Connections, Error> {
        Ok(Connections {
            headers: self.headers.with(key, value)?,
            ..self.clone()
        })
    }

    fn lock(&self) -> MutexGuard<'_, Targets> {
        // The state is a plain cache; a panic elsewhere cannot leave it inconsistent.
        self.targets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn endpoint(&self, addr: &str) -> Result<Endpoint, Error> {
        let url = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(url)
            .map_err(|e| Error::Config(format!("address `{addr}`: {e}")))?
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true);
        #[cfg(feature = "tls")]
        let endpoint = match &self.config.tls {
            Some(tls) => endpoint
                .tls_config(tls.clone())
                .map_err(|e| Error::Config(format!("tls for `{addr}`: {e}")))?,
            None => endpoint,
        };
        Ok(endpoint)
    }

    fn channel(&self, addr: &str) -> Result<Channel, Error> {
        if let Some(c) = self.lock().channels.get(addr) {
            return Ok(c.clone());
        }
        let channel = self.endpoint(addr)?.connect_lazy();
        self.lock()
            .channels
            .insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// The node calls go to now.
    pub(crate) fn target(&self) -> String {
        let t = self.lock();
        t.known[t.current % t.known.len()].clone()
    }

    /// A `Streams` client of `addr`, with Strata's message limits.
    pub(crate) fn streams(&self, addr: &str) -> Result<StreamsApi, Error> {
        Ok(self.streams_over(self.channel(addr)?))
    }

    /// A `Streams` client of `addr` over a connection of its own, for one subscription. A
    /// subscription's answers wait in its connection's HTTP/2 flow-control windows until they
    /// are read (hyper's: 2 MiB a call, 5 MiB a connection): on the shared connection, three
    /// subscriptions their readers were not reading filled the connection's window, and every
    /// other call on it got no answer, also those their readers waited for before reading on
    /// (`strata bench group --workers 4`: each worker's commit, 10 s and again, until its 30 s
    /// deadline). Apart, a subscription not read holds back only itself.
    pub(crate) fn streams_apart(&self, addr: &str) -> Result<StreamsApi, Error> {
        Ok(self.streams_over(self.endpoint(addr)?.connect_lazy()))
    }

    fn streams_over(&self, channel: Channel) -> StreamsApi {
        StreamsClient::with_interceptor(channel, self.headers.clone())
            .max_decoding_message_size(strata_proto::MESSAGE_BYTES_HARD_MAX)
            .max_encoding_message_size(strata_proto::MESSAGE_BYTES_HARD_MAX)
    }

    /// A raw gRPC client of `addr`, for a call the generated clients cannot make (the
    /// pipelined appender sends [`strata_proto::shared::SharedAppends`]).
    pub(crate) fn grpc(&self, addr: &str) -> Result<RawApi, Error> {
        Ok(tonic::client::Grpc::new(InterceptedService::new(
            self.channel(addr)?,
            self.headers.clone(),
        ))
        .max_decoding_message_size(strata_proto::MESSAGE_BYTES_HARD_MAX)
        .max_encoding_message_size(strata_proto::MESSAGE_BYTES_HARD_MAX))
    }

    /// A `Cluster` client of `addr`.
    pub(crate) fn cluster(&self, addr: &str) -> Result<ClusterApi, Error> {
        Ok(ClusterClient::with_interceptor(
            self.channel(addr)?,
            self.headers.clone(),
        ))
    }

    /// Calls go to `leader` from now on.
    pub(crate) fn follow(&self, leader: &str) {
        let mut t = self.lock();
        match t.known.iter().position(|k| k == leader) {
            Some(i) => t.current = i,
            None if t.known.len() < self.config.addresses.len() + LEARNED_ADDRESSES_MAX => {
                t.known.push(leader.to_string());
                t.current = t.known.len() - 1;
            }
            // Too many learned: forget them, keep the given ones.
            None => {
                let given = self.config.addresses.len();
                t.known.truncate(given);
                t.known.push(leader.to_string());
                t.current = given;
            }
        }
    }

    /// `addr` did not answer: calls go to the next node (unless another call moved on first).
    pub(crate) fn skip(&self, addr: &str) {
        let mut t = self.lock();
        let n = t.known.len();
        if t.known[t.current % n] == addr {
            t.current = (t.current + 1) % n;
        }
    }

    /// The wait before retry `attempt`, with jitter from a small xorshift.
    pub(crate) fn backoff(&self, attempt: u32) -> std::time::Duration {
        let mut x = self.jitter.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter.store(x, Ordering::Relaxed);
        self.config
            .backoff(attempt, (x >> 11) as f64 / (1u64 << 53) as f64)
    }

    /// After failed attempt `attempt` of a call started at `started`: moves the target as the
    /// failure says and waits; `Err` when the call must stop here (not retryable, or out of
    /// attempts or time).
    pub(crate) async fn after_failure(
        &self,
        addr: &str,
        failed: Failed,
        idempotent: bool,
        attempt: u32,
        started: Instant,
    ) -> Result<(), Error> {
        let wait = match &failed.retry {
            Retry::No => return Err(failed.error),
            Retry::Unknown | Retry::Moved { .. } if !idempotent => return Err(failed.error),
            Retry::Refused {
                leader: Some(leader),
            }
            | Retry::Moved { leader }
                if leader != addr && self.config.follow_leaders =>
            {
                self.follow(leader);
                std::time::Duration::ZERO
            }
            Retry::Refused { .. } => self.backoff(attempt),
            Retry::Unknown | Retry::Moved { .. } => {
                self.skip(addr);
                self.backoff(attempt)
            }
        };
        if attempt >= self.config.attempts_max {
            return Err(Error::Unavailable(format!(
                "gave up after {attempt} attempts, the last at {addr}: {}",
                failed.error
            )));
        }
        if started.elapsed() + wait >= self.config.deadline {
            return Err(Error::DeadlineExceeded {
                deadline: self.config.deadline,
                attempts: attempt,
                last: failed.error.to_string(),
            });
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Makes a unary `Streams` call, retrying as the module says.
    pub(crate) async fn call<T, F, Fut>(&self, idempotent: bool, f: F) -> Result<T, Error>
    where
        F: FnMut(StreamsApi) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_on(Connections::streams, None, idempotent, f)
            .await
    }

    /// Makes a unary `Streams` call about `stream`: to its shard's leader when known.
    pub(crate) async fn call_for<T, F, Fut>(
        &self,
        stream: &str,
        idempotent: bool,
        f: F,
    ) -> Result<T, Error>
    where
        F: FnMut(StreamsApi) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_on(Connections::streams, Some(stream), idempotent, f)
            .await
    }

    fn lock_routes(&self) -> MutexGuard<'_, RouteState> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The address of the leader of `stream`'s shard, reading the table from the target node
    /// first when it is due (one quick attempt; without it calls go to the target).
    pub(crate) async fn route(&self, stream: &str) -> Option<String> {
        if !self.config.follow_leaders {
            return None;
        }
        if self.lock_routes().read_due(Instant::now()) {
            let addr = self.target();
            let limit = self.config.attempt_timeout;
            let read = async {
                let mut c = self.cluster(&addr).ok()?;
                let status = c.status(strata_proto::v1::StatusRequest {}).await.ok()?;
                Routes::from_status(status.get_ref())
            };
            if let Ok(Some(routes)) = tokio::time::timeout(limit, read).await {
                self.lock_routes().routes = Some(routes);
            }
        }
        let state = self.lock_routes();
        state.routes.as_ref()?.leader_of(stream).map(str::to_string)
    }

    /// What a failed call about `stream` at its shard's leader `addr` teaches the table.
    fn reroute(&self, stream: &str, addr: &str, failed: &Failed) {
        let mut state = self.lock_routes();
        let Some(routes) = state.routes.as_mut() else {
            return;
        };
        match &failed.retry {
            Retry::Refused {
                leader: Some(leader),
            }
            | Retry::Moved { leader }
                if leader != addr =>
            {
                routes.learn(stream, leader)
            }
            Retry::Unknown | Retry::Moved { .. } => routes.forget(stream),
            // Busy, or no leader known yet: the same node again after the backoff.
            Retry::Refused { .. } | Retry::No => {}
        }
    }

    /// Makes a unary call on the client `make` gives for the target node, retrying as the
    /// module says.
    pub(crate) async fn call_on<C, T, F, Fut>(
        &self,
        make: fn(&Connections, &str) -> Result<C, Error>,
        stream: Option<&str>,
        idempotent: bool,
        mut f: F,
    ) -> Result<T, Error>
    where
        F: FnMut(C) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let routed = match stream {
                Some(stream) => self.route(stream).await,
                None => None,
            };
            let addr = routed.clone().unwrap_or_else(|| self.target());
            let left = self.config.deadline.saturating_sub(started.elapsed());
            let limit = self.config.attempt_timeout.min(left);
            let failed = match tokio::time::timeout(limit, f(make(self, &addr)?)).await {
                Ok(Ok(r)) => {
                    if let Some(epoch) = map_epoch(r.metadata()) {
                        self.lock_routes().saw_epoch(epoch);
                    }
                    return Ok(r.into_inner());
                }
                Ok(Err(status)) => Failed::from_status(&status),
                Err(_) => Failed {
                    error: Error::Unavailable(format!("no answer from {addr} within {limit:?}")),
                    retry: Retry::Unknown,
                },
            };
            tracing::debug!(%addr, attempt, error = %failed.error, "call failed");
            if let (Some(stream), Some(_)) = (stream, &routed) {
                self.reroute(stream, &addr, &failed);
            }
            self.after_failure(&addr, failed, idempotent, attempt, started)
                .await?;
        }
    }
}

/// The map epoch a node routed a call by, if it said.
fn map_epoch(metadata: &tonic::metadata::MetadataMap) -> Option<u64> {
    metadata
        .get(strata_proto::metadata::MAP_EPOCH_KEY)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_hints_and_skips_move_the_target() {
        let c = Connections::new(ClientConfig::new(["a:1", "b:1", "c:1"])).unwrap();
        assert_eq!(c.target(), "a:1");
        c.skip("a:1");
        assert_eq!(c.target(), "b:1");
        c.skip("a:1"); // another call already moved on
        assert_eq!(c.target(), "b:1");
        c.follow("c:1");
        assert_eq!(c.target(), "c:1");
        c.follow("d:1"); // learned from a hint
        assert_eq!(c.target(), "d:1");
        c.skip("d:1");
        assert_eq!(c.target(), "a:1");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_outcome_naming_the_leader_goes_there_at_once_when_idempotent() {
        let c = Connections::new(ClientConfig::new(["a:1", "b:1", "c:1"])).unwrap();
        let moved = |leader: &str| Failed {
            error: Error::Unavailable("the leader changed while forwarded".into()),
            retry: Retry::Moved {
                leader: leader.into(),
            },
        };
        let started = Instant::now();
        let before = tokio::time::Instant::now();
        c.after_failure("a:1", moved("c:1"), true, 1, started)
            .await
            .unwrap();
        assert_eq!(c.target(), "c:1");
        assert_eq!(before.elapsed(), std::time::Duration::ZERO, "no backoff");
        // Not idempotent: the outcome is unknown, so the error is the caller's.
        let err = c
            .after_failure("c:1", moved("b:1"), false, 1, started)
            .await;
        assert!(matches!(err, Err(Error::Unavailable(_))), "{err:?}");
        assert_eq!(c.target(), "c:1");
        // Naming the node tried: skipped, after a backoff, like any unknown outcome.
        c.after_failure("c:1", moved("c:1"), true, 1, started)
            .await
            .unwrap();
        assert_eq!(c.target(), "a:1");
        assert!(before.elapsed() > std::time::Duration::ZERO);
    }

    #[test]
    fn headers_are_checked_replaced_and_put_on_every_call() {
        use tonic::service::Interceptor;
        let h = Headers::default().with("x-request-id", "order-17").unwrap();
        let mut h = h.with("x-request-id", "order-18").unwrap();
        let called = h.call(tonic::Request::new(())).unwrap();
        assert_eq!(called.metadata().get("x-request-id").unwrap(), "order-18");
        assert_eq!(called.metadata().len(), 1);
        for (key, value, says) in [
            ("X-Upper", "v", "lowercase"),
            ("", "v", "lowercase"),
            ("grpc-timeout", "1S", "the protocol's"),
            ("strata-leader", "x", "the protocol's"),
            ("k", "caf\u{e9}", "printable ASCII"),
            ("k", "line\nbreak", "printable ASCII"),
        ] {
            match Headers::default().with(key, value) {
                Err(Error::InvalidArgument(why)) => assert!(why.contains(says), "{key}: {why}"),
                other => panic!("{key}: {other:?}"),
            }
        }
        let long = "v".repeat(HEADER_VALUE_BYTES_MAX + 1);
        assert!(Headers::default().with("k", &long).is_err());
        let mut full = Headers::default();
        for i in 0..HEADERS_MAX {
            full = full.with(&format!("k{i}"), "v").unwrap();
        }
        assert!(full.with("one-more", "v").is_err());
        // Replacing one is not adding one.
        assert!(full.with("k0", "w").is_ok());
    }

    #[tokio::test]
    async fn a_client_bound_to_its_nodes_ignores_leader_hints_and_routes() {
        let hint = || Failed {
            error: Error::Unavailable("not the leader".into()),
            retry: Retry::Refused {
                leader: Some("c:1".into()),
            },
        };
        let bound = Connections::new(ClientConfig {
            follow_leaders: false,
            backoff_base: std::time::Duration::from_millis(1),
            ..ClientConfig::new(["a:1", "b:1"])
        })
        .unwrap();
        bound
            .after_failure("a:1", hint(), true, 1, Instant::now())
            .await
            .unwrap();
        assert_eq!(bound.target(), "a:1");
        assert_eq!(bound.route("s").await, None);
        // Not answering still moves it on, within its own addresses.
        bound.skip("a:1");
        assert_eq!(bound.target(), "b:1");
        let following = Connections::new(ClientConfig::new(["a:1", "b:1"])).unwrap();
        following
            .after_failure("a:1", hint(), true, 1, Instant::now())
            .await
            .unwrap();
        assert_eq!(following.target(), "c:1");
    }

    #[test]
    fn a_bad_address_is_refused_up_front() {
        assert!(matches!(
            Connections::new(ClientConfig::new(["http://[::1"])),
            Err(Error::Config(_))
        ));
    }
}
