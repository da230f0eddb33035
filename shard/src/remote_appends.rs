//! The appends of one `AppendStream` call that belong to shards another node leads: passed on
//! over one forwarded `AppendStream` per leader, opened when first needed and kept for the
//! call (see [`crate::forward`]).
//!
//! ```text
//!   call's message ──▶ Router ── shard led here ──────▶ StreamsService k (as on one node)
//!                              └─ shard led by node 2 ─▶ link to node 2: forwarded AppendStream
//!                                                        requests in order ──▶ answers in order
//!                                                        each answer to the part that waits first
//! ```
//!
//! A link sends a part's appends as one message and answers the parts in the order sent (the
//! leader answers a call's messages in order), so each shard still decides a call's appends in
//! the order the client sent them. What waits on a link is bounded by the call's window. A
//! link that fails answers every part it holds with its status (the client retries them with
//! the same ids: a retry of an append that did commit is answered with the original result);
//! the next part for that leader is refused untried, like every later append of the call
//! (the call's order fence: see [`strata_raft::fence`]); the client sends them again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use strata_proto::v1 as pb;
use strata_raft::Fence;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::append_stream::{not_tried, status_of, Outcomes, ANSWERS_BUFFERED};
use crate::forward::{forwarded, via_holder, Peers};

type Answer = Result<Vec<pb::AppendResult>, Status>;

struct Link {
    requests: mpsc::Sender<pb::AppendStreamRequest>,
    waiting: mpsc::UnboundedSender<oneshot::Sender<Answer>>,
}

/// One call's links to the leaders of the shards its node does not lead.
pub struct RemoteAppends {
    peers: Peers,
    /// The call's metadata (correlation ids), passed on with each link.
    metadata: MetadataMap,
    /// The call came through a node that does not hold every shard: its links go to leaders
    /// only and are not passed on again (see [`crate::forward`]).
    last_hop: bool,
    links: Mutex<HashMap<String, Link>>,
}

impl std::fmt::Debug for RemoteAppends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteAppends").finish_non_exhaustive()
    }
}

impl RemoteAppends {
    /// Links of a call with this metadata (`last_hop`: see the field).
    pub fn new(peers: Peers, metadata: MetadataMap, last_hop: bool) -> RemoteAppends {
        RemoteAppends {
            peers,
            metadata,
            last_hop,
            links: Mutex::default(),
        }
    }

    /// Whether this call's links are its last hop (see the field).
    pub fn last_hop(&self) -> bool {
        self.last_hop
    }

    /// Sends `appends` (one shard's part of a message) to the leader at `addr`; their outcomes
    /// to come, in order. Parts are answered in the order this is called. Behind the call's
    /// order `fence`, which a failed link sets.
    pub async fn submit(
        &self,
        addr: &str,
        appends: Vec<pb::AppendRequest>,
        fence: &Fence,
    ) -> Outcomes {
        let n = appends.len();
        if fence.is_set() {
            return failed(n, not_tried());
        }
        let (reply, answer) = oneshot::channel();
        let requests = match self.link(addr, reply) {
            Ok(r) => r,
            Err(status) => {
                fence.set();
                return failed(n, status);
            }
        };
        if requests
            .send(pb::AppendStreamRequest { appends })
            .await
            .is_err()
        {
            fence.set();
            return failed(n, lost(addr));
        }
        let addr = addr.to_string();
        let fence = fence.clone();
        Box::pin(async move {
            let results = match answer.await {
                Ok(Ok(results)) => results,
                Ok(Err(status)) => {
                    fence.set();
                    return vec![Err(status); n];
                }
                Err(_) => {
                    fence.set();
                    return vec![Err(lost(&addr)); n];
                }
            };
            let mut out: Vec<Result<pb::AppendResponse, Status>> =
                results.into_iter().map(outcome).collect();
            out.resize_with(n, || {
                Err(Status::internal("the leader left an append unanswered"))
            });
            out.truncate(n);
            out
        })
    }

    /// The link to `addr` (opened if there is none), with `reply` queued on it. A link that
    /// failed is not opened again: what it held may not have been appended, and what this call
    /// sends next must not go in before it.
    fn link(
        &self,
        addr: &str,
        reply: oneshot::Sender<Answer>,
    ) -> Result<mpsc::Sender<pb::AppendStreamRequest>, Status> {
        let mut links = strata_engine::sync::lock(&self.links);
        if links.get(addr).is_some_and(|l| l.requests.is_closed()) {
            return Err(not_tried());
        }
        if links.get(addr).is_none() {
            let client = self.peers.streams(addr)?;
            links.insert(
                addr.to_string(),
                open(client, self.metadata.clone(), self.last_hop),
            );
        }
        let link = links
            .get(addr)
            .ok_or_else(|| Status::internal("a link vanished"))?;
        link.waiting.send(reply).map_err(|_| lost(addr))?;
        Ok(link.requests.clone())
    }
}

/// A part's `answers` from a leader, unless `moved` (this node learnt of another leader of
/// the part's shard) comes first: then each of the part's `n` appends is answered with it,
/// UNAVAILABLE naming the new leader — the outcome at the old one is unknown, so the client
/// retries them there with the same ids — and the call's order `fence` is set, so none of its
/// later appends goes in before those retries.
pub fn unless_moved(
    answers: Outcomes,
    moved: impl Future<Output = Status> + Send + 'static,
    n: usize,
    fence: &Fence,
) -> Outcomes {
    let fence = fence.clone();
    Box::pin(async move {
        tokio::select! {
            answers = answers => answers,
            status = moved => {
                fence.set();
                vec![Err(status); n]
            }
        }
    })
}

fn lost(addr: &str) -> Status {
    Status::unavailable(format!(
        "the forwarded call to the shard's leader at {addr} ended; the appends' outcome is unknown (retry with the same ids)"
    ))
}

fn failed(n: usize, status: Status) -> Outcomes {
    Box::pin(async move { vec![Err(status); n] })
}

fn outcome(result: pb::AppendResult) -> Result<pb::AppendResponse, Status> {
    match result.outcome {
        Some(pb::append_result::Outcome::Appended(r)) => Ok(r),
        Some(pb::append_result::Outcome::Error(e)) => Err(status_of(&e)),
        None => Err(Status::internal(
            "the leader answered an append without an outcome",
        )),
    }
}

/// Opens a link: a task running the forwarded call, answering waiting parts in order.
fn open(
    client: pb::streams_client::StreamsClient<Channel>,
    metadata: MetadataMap,
    last_hop: bool,
) -> Link {
    let (requests, outbound) = mpsc::channel(ANSWERS_BUFFERED);
    let (waiting, queue) = mpsc::unbounded_channel();
    tokio::spawn(run(client, (metadata, last_hop), outbound, queue));
    Link { requests, waiting }
}

async fn run(
    mut client: pb::streams_client::StreamsClient<Channel>,
    (metadata, last_hop): (MetadataMap, bool),
    outbound: mpsc::Receiver<pb::AppendStreamRequest>,
    mut queue: mpsc::UnboundedReceiver<oneshot::Sender<Answer>>,
) {
    let mut request = Request::new(ReceiverStream::new(outbound));
    *request.metadata_mut() = metadata;
    // A link is passed on once more only to a leader (see `crate::forward`).
    let request = if last_hop {
        forwarded(request)
    } else {
        via_holder(request)
    };
    let error = match client.append_stream(request).await {
        Err(status) => status,
        Ok(answers) => {
            let mut answers = answers.into_inner();
            loop {
                let Some(reply) = queue.recv().await else {
                    return;
                };
                match answers.message().await {
                    Ok(Some(m)) => {
                        let _ = reply.send(Ok(m.results));
                    }
                    Ok(None) => {
                        let status = Status::unavailable("the leader ended the forwarded call");
                        let _ = reply.send(Err(status.clone()));
                        break status;
                    }
                    Err(status) => {
                        let _ = reply.send(Err(status.clone()));
                        break status;
                    }
                }
            }
        }
    };
    queue.close();
    while let Ok(reply) = queue.try_recv() {
        let _ = reply.send(Err(error.clone()));
    }
}
