//! Calls passed on to the node that leads a shard. On a replicated node of several shards the
//! groups' leaders are spread over the nodes, so the node a client calls often does not lead
//! the shard a call is for; it forwards the call, once, to the leader it knows:
//!
//! ```text
//!   client ──▶ node 1 (follower of shard k) ──forwarded, strata-forwarded: 1──▶ node 2 (leader of k)
//!          ◀── the leader's answer, unchanged ◀──────────────────────────────────
//! ```
//!
//! A forwarded call is never forwarded again: a node that got one and does not lead (the
//! leader changed meanwhile) answers UNAVAILABLE naming the leader, which the client follows.
//! The call's metadata (correlation ids, deadline) travels with it.
//!
//! The forwarding node keeps watching its own replica's view of the leader while the call
//! waits. A leader cut off from the others still takes calls on its client port but cannot
//! commit them; once the forwarding node learns of the leader the others elected, it stops
//! waiting there (`Router::leader_moved_from`): a read or an append (whose ids make a repeat
//! answer as the first) goes once more to the new leader, any other call — and each part of a
//! pipelined call — is answered UNAVAILABLE naming the new leader, outcome unknown.
//!
//! A node holding no replica of the shard (its replicas moved to other nodes: `cluster
//! move-shard`) does not know the shard's leader; it passes the call to a node the map says
//! holds one, marked `strata-forwarded: holder`, which may pass it on once more — to the
//! shard's leader only, marked `1`. So a call takes at most two hops, and a node given a
//! marked call for a shard it does not hold answers UNAVAILABLE instead of passing it on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_proto::v1 as pb;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// Metadata key marking a call one node passed on to another.
pub const FORWARDED_KEY: &str = "strata-forwarded";
/// [`FORWARDED_KEY`]'s value on a call passed to a node holding the shard, not known to
/// lead it: that node may pass it on to the leader.
pub const VIA_HOLDER: &str = "holder";
/// Metadata key restricting a forwarded `GetLog` to one shard (a remote read barrier).
pub const SHARD_KEY: &str = "strata-shard";
/// How long connecting to a leader may take before the forwarded call fails UNAVAILABLE.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Lazily connected channels to the other nodes, one per client address, shared by every call.
#[derive(Debug, Clone)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Largest request and answer a forwarded call may carry (the server's own limits).
    request_bytes_max: usize,
    answer_bytes_max: usize,
}

impl Peers {
    /// Peers whose calls carry at most these many bytes each way.
    pub fn new(request_bytes_max: usize, answer_bytes_max: usize) -> Peers {
        Peers {
            channels: Arc::default(),
            request_bytes_max,
            answer_bytes_max,
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut channels = strata_engine::sync::lock(&self.channels);
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let channel = endpoint(addr)?.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// The `Streams` service of the node at `addr`.
    pub fn streams(
        &self,
        addr: &str,
    ) -> Result<pb::streams_client::StreamsClient<Channel>, Status> {
        Ok(self.streams_over(self.channel(addr)?))
    }

    /// The `Streams` service of the node at `addr` over a connection of its own, for one
    /// subscription: what it sends waits in the connection's HTTP/2 windows until the
    /// subscriber here reads it (hyper's: 2 MiB a call, 5 MiB a connection), so on the shared
    /// connection a few slow subscribers would hold back every call passed on to that node
    /// (appends to the shards it leads among them). Hold the client as long as the call.
    pub fn streams_apart(
        &self,
        addr: &str,
    ) -> Result<pb::streams_client::StreamsClient<Channel>, Status> {
        Ok(self.streams_over(endpoint(addr)?.connect_lazy()))
    }

    fn streams_over(&self, channel: Channel) -> pb::streams_client::StreamsClient<Channel> {
        pb::streams_client::StreamsClient::new(channel)
            .max_decoding_message_size(self.answer_bytes_max)
            .max_encoding_message_size(self.request_bytes_max)
    }

    /// The `Cluster` service of the node at `addr`.
    pub fn cluster(
        &self,
        addr: &str,
    ) -> Result<pb::cluster_client::ClusterClient<Channel>, Status> {
        Ok(pb::cluster_client::ClusterClient::new(self.channel(addr)?))
    }
}

fn endpoint(addr: &str) -> Result<Endpoint, Status> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Status::internal(format!("the leader's address {addr:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true))
}

/// Whether another node passed this call on to this one as the shard's leader (it must not
/// be passed on again).
pub fn is_forwarded(metadata: &MetadataMap) -> bool {
    metadata
        .get(FORWARDED_KEY)
        .is_some_and(|v| v.as_bytes() != VIA_HOLDER.as_bytes())
}

/// Whether another node passed this call on at all (as leader or as holder): a shard this
/// node does not hold is then not looked for elsewhere.
pub fn is_passed_on(metadata: &MetadataMap) -> bool {
    metadata.contains_key(FORWARDED_KEY)
}

/// The call as passed on to a node holding its shard (see the module).
pub fn via_holder<T>(request: Request<T>) -> Request<T> {
    let (mut metadata, extensions, message) = request.into_parts();
    metadata.insert(FORWARDED_KEY, MetadataValue::from_static(VIA_HOLDER));
    Request::from_parts(metadata, extensions, message)
}

/// The call as passed on: its metadata and message, marked forwarded.
pub fn forwarded<T>(request: Request<T>) -> Request<T> {
    let (mut metadata, extensions, message) = request.into_parts();
    metadata.insert(FORWARDED_KEY, MetadataValue::from_static("1"));
    Request::from_parts(metadata, extensions, message)
}

/// A new call marked forwarded, about one shard.
pub fn for_shard<T>(message: T, shard: u32) -> Request<T> {
    let mut request = forwarded(Request::new(message));
    if let Ok(v) = shard.to_string().parse() {
        request.metadata_mut().insert(SHARD_KEY, v);
    }
    request
}

/// A new call about one shard, passed to a node holding it (which may pass it on to the
/// shard's leader: see the module).
pub fn for_shard_via_holder<T>(message: T, shard: u32) -> Request<T> {
    let mut request = via_holder(Request::new(message));
    if let Ok(v) = shard.to_string().parse() {
        request.metadata_mut().insert(SHARD_KEY, v);
    }
    request
}

/// The shard a forwarded call is restricted to, if any.
pub fn shard_of(metadata: &MetadataMap) -> Result<Option<u32>, Status> {
    match metadata.get(SHARD_KEY) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|t| t.parse().ok())
            .map(Some)
            .ok_or_else(|| crate::status::invalid(SHARD_KEY, "must be a shard id")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_forwarded_call_keeps_its_metadata_and_is_marked() {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert("x-request-id", MetadataValue::from_static("abc"));
        assert!(!is_forwarded(request.metadata()));
        let passed = forwarded(request);
        assert!(is_forwarded(passed.metadata()));
        assert_eq!(passed.metadata().get("x-request-id").unwrap(), "abc");
        let one = for_shard((), 7);
        assert_eq!(shard_of(one.metadata()).unwrap(), Some(7));
        assert!(is_forwarded(one.metadata()));
        let held = via_holder(Request::new(()));
        assert!(
            !is_forwarded(held.metadata()),
            "a holder may pass it to the leader"
        );
        assert!(is_passed_on(held.metadata()));
        assert!(is_forwarded(forwarded(held).metadata()), "the last hop");
        let mut bad = Request::new(());
        bad.metadata_mut()
            .insert(SHARD_KEY, MetadataValue::from_static("x"));
        assert!(shard_of(bad.metadata()).is_err());
    }
}
