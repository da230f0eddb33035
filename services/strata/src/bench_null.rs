//! `strata bench null-server`: a server that speaks the append RPCs and stores nothing.
//!
//! What the append interface itself costs on a machine, as a floor under the real node's
//! numbers: `strata bench append` against it measures the gRPC path alone (the client's
//! encoding and HTTP/2, the server's decoding, one answer per append) with no log, no fsync
//! and no index. Answers are well-formed (a position per append, versions counted per stream)
//! but nothing is kept: every append "succeeds", whatever its expected version, and a read
//! finds nothing (UNIMPLEMENTED). It is a measuring stick, never a store; it says so in its
//! status and on every call but the appends.
//!
//! Bounds: like a node's `AppendStream`, a call keeps at most [`UNREAD_ANSWERS_MAX`] answers
//! unread before it stops reading requests; request messages are limited to
//! [`REQUEST_BYTES_MAX`] bytes; per-stream version counters to [`STREAMS_MAX`] streams (past
//! it they start again from 0).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use strata_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::Failure;

/// Answers of one call not yet read by the client before the call stops reading requests.
pub const UNREAD_ANSWERS_MAX: usize = 16;
/// Largest request message, bytes (a node's default request bound).
pub const REQUEST_BYTES_MAX: usize = 64 << 20;
/// Streams whose versions are counted; past it the counters start again.
pub const STREAMS_MAX: usize = 1 << 20;
/// HTTP/2 frame size, as a node uses.
const HTTP2_FRAME_BYTES_MAX: u32 = 1 << 20;

/// `strata bench null-server`.
#[derive(Debug, clap::Args)]
pub struct NullServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7001")]
    listen: SocketAddr,
}

/// Serves until SIGINT or SIGTERM.
pub async fn run(args: NullServerArgs) -> Result<(), Failure> {
    eprintln!(
        "null server (stores nothing: a floor for `strata bench append`) on {}",
        args.listen
    );
    let streams = pb::streams_server::StreamsServer::new(NullStreams::default())
        .max_decoding_message_size(REQUEST_BYTES_MAX);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_frame_size(Some(HTTP2_FRAME_BYTES_MAX))
        .add_service(streams)
        .add_service(pb::cluster_server::ClusterServer::new(NullCluster))
        .serve_with_shutdown(args.listen, strata_shard::termination_signal())
        .await
        .map_err(|e| Failure::new(format!("null server: {e}")))
}

/// Versions handed out per stream, and the next position.
#[derive(Debug, Default)]
struct Counters {
    heads: HashMap<String, u64>,
    position: u64,
}

impl Counters {
    /// The answer to one append: the next position, the stream's next versions.
    fn answer(&mut self, append: &pb::AppendRequest) -> pb::AppendResponse {
        if self.heads.len() >= STREAMS_MAX && !self.heads.contains_key(&append.stream) {
            self.heads.clear();
        }
        let events = append.events.len() as u64;
        let head = self.heads.entry(append.stream.clone()).or_insert(0);
        let first = *head;
        *head += events;
        self.position += 1;
        pb::AppendResponse {
            position: self.position,
            streams: vec![pb::StreamResult {
                stream: append.stream.clone(),
                first_version: first,
                last_version: (first + events).saturating_sub(1),
            }],
            deduplicated: false,
        }
    }
}

#[derive(Debug, Default)]
struct NullStreams {
    counters: std::sync::Arc<Mutex<Counters>>,
}

fn stores_nothing() -> Status {
    Status::unimplemented("the null server stores nothing: only appends are answered")
}

fn answer(counters: &Mutex<Counters>, append: &pb::AppendRequest) -> pb::AppendResponse {
    match counters.lock() {
        Ok(mut c) => c.answer(append),
        Err(poisoned) => poisoned.into_inner().answer(append),
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::streams_server::Streams for NullStreams {
    async fn append(&self, request: Request<pb::AppendRequest>) -> Answer<pb::AppendResponse> {
        Ok(Response::new(answer(&self.counters, request.get_ref())))
    }

    async fn append_multi(&self, _: Request<pb::AppendMultiRequest>) -> Answer<pb::AppendResponse> {
        Err(stores_nothing())
    }

    type AppendStreamStream = ReceiverStream<Result<pb::AppendStreamResponse, Status>>;

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<pb::AppendStreamRequest>>,
    ) -> Answer<Self::AppendStreamStream> {
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(UNREAD_ANSWERS_MAX);
        let counters = self.counters.clone();
        tokio::spawn(async move {
            loop {
                let message = match requests.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let results = message
                    .appends
                    .iter()
                    .map(|a| pb::AppendResult {
                        outcome: Some(pb::append_result::Outcome::Appended(answer(&counters, a))),
                    })
                    .collect();
                if tx
                    .send(Ok(pb::AppendStreamResponse { results }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn read(&self, _: Request<pb::ReadRequest>) -> Answer<pb::ReadResponse> {
        Err(stores_nothing())
    }

    async fn read_all(&self, _: Request<pb::ReadAllRequest>) -> Answer<pb::ReadAllResponse> {
        Err(stores_nothing())
    }

    type SubscribeStream = ReceiverStream<Result<pb::SubscribeResponse, Status>>;

    async fn subscribe(&self, _: Request<pb::SubscribeRequest>) -> Answer<Self::SubscribeStream> {
        Err(stores_nothing())
    }

    async fn get_stream(&self, _: Request<pb::GetStreamRequest>) -> Answer<pb::GetStreamResponse> {
        Err(stores_nothing())
    }

    async fn get_log(&self, _: Request<pb::GetLogRequest>) -> Answer<pb::GetLogResponse> {
        Err(stores_nothing())
    }

    async fn set_stream_metadata(
        &self,
        _: Request<pb::SetStreamMetadataRequest>,
    ) -> Answer<pb::WriteResponse> {
        Err(stores_nothing())
    }

    async fn delete_stream(
        &self,
        _: Request<pb::DeleteStreamRequest>,
    ) -> Answer<pb::WriteResponse> {
        Err(stores_nothing())
    }

    async fn save_snapshot(
        &self,
        _: Request<pb::SaveSnapshotRequest>,
    ) -> Answer<pb::WriteResponse> {
        Err(stores_nothing())
    }

    async fn read_state(&self, _: Request<pb::ReadStateRequest>) -> Answer<pb::ReadStateResponse> {
        Err(stores_nothing())
    }

    async fn set_snapshot_policy(
        &self,
        _: Request<pb::SnapshotPolicy>,
    ) -> Answer<pb::SnapshotPolicies> {
        Err(stores_nothing())
    }
}

/// Answers `Status` as a single node (id 0) with this process's CPU time, so `strata bench`
/// reports the null server's CPU per event as it does a node's.
struct NullCluster;

fn not_a_cluster() -> Status {
    Status::unimplemented("the null server is no cluster")
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for NullCluster {
    async fn init(&self, _: Request<pb::InitRequest>) -> Answer<pb::ClusterStatus> {
        Err(not_a_cluster())
    }

    async fn status(&self, _: Request<pb::StatusRequest>) -> Answer<pb::ClusterStatus> {
        Ok(Response::new(pb::ClusterStatus {
            process_cpu_us: strata_shard::cluster::process_cpu_us(),
            ..pb::ClusterStatus::default()
        }))
    }

    async fn add_node(&self, _: Request<pb::AddNodeRequest>) -> Answer<pb::ClusterStatus> {
        Err(not_a_cluster())
    }

    async fn remove_node(&self, _: Request<pb::RemoveNodeRequest>) -> Answer<pb::ClusterStatus> {
        Err(not_a_cluster())
    }

    async fn transfer_leader(
        &self,
        _: Request<pb::TransferLeaderRequest>,
    ) -> Answer<pb::ClusterStatus> {
        Err(not_a_cluster())
    }

    async fn move_slots(&self, _: Request<pb::MoveSlotsRequest>) -> Answer<pb::ClusterStatus> {
        Err(not_a_cluster())
    }

    async fn split_shard(&self, _: Request<pb::SplitShardRequest>) -> Answer<pb::ClusterStatus> {
        Err(not_a_cluster())
    }

    async fn move_shard(&self, _: Request<pb::MoveShardRequest>) -> Answer<pb::ClusterStatus> {
        Err(not_a_cluster())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(stream: &str, events: usize) -> pb::AppendRequest {
        pb::AppendRequest {
            stream: stream.into(),
            events: vec![pb::NewEvent::default(); events],
            ..pb::AppendRequest::default()
        }
    }

    #[test]
    fn versions_are_counted_per_stream_and_positions_go_up() {
        let mut c = Counters::default();
        let a = c.answer(&append("a", 3));
        let b = c.answer(&append("b", 1));
        let a2 = c.answer(&append("a", 2));
        assert_eq!(
            (a.streams[0].first_version, a.streams[0].last_version),
            (0, 2)
        );
        assert_eq!(
            (b.streams[0].first_version, b.streams[0].last_version),
            (0, 0)
        );
        assert_eq!(
            (a2.streams[0].first_version, a2.streams[0].last_version),
            (3, 4)
        );
        assert!(a.position < b.position && b.position < a2.position);
    }
}
