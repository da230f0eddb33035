//! What the services run over: one engine on its own (`strata dev`), or a replica of a
//! Raft-replicated shard. Appends, read barriers and errors differ; reads do not.

use std::sync::Arc;

use strata_engine::stats::Stats;
use strata_engine::{AppendRequest, AppendResult, Engine, Reader};
use strata_proto::v1 as pb;
use strata_raft::{Fence, Replica, ReplicaError};
use tonic::metadata::MetadataValue;
use tonic::Status;

use crate::status::to_status;
use strata_proto::metadata::ERROR_KIND_KEY;
pub use strata_proto::metadata::{LEADER_ID_KEY, LEADER_KEY};

/// The answers to come of appends submitted together.
pub type PendingAppends = std::pin::Pin<
    Box<dyn std::future::Future<Output = Vec<Result<AppendResult, ReplicaError>>> + Send + 'static>,
>;

/// An append's answer to come.
pub type PendingAppend = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<AppendResult, ReplicaError>> + Send + 'static>,
>;

/// The storage a node serves.
#[derive(Debug, Clone)]
pub enum Backend {
    /// One engine, no replication.
    Single(Arc<Engine>),
    /// A replica of a Raft-replicated shard.
    Replicated(Box<Replica>),
}

impl Backend {
    /// The read side (committed records only). Take a fresh one per request.
    pub fn reader(&self) -> Reader {
        match self {
            Backend::Single(e) => e.reader().clone(),
            Backend::Replicated(r) => r.shard().reader(),
        }
    }

    /// Runs a read on the blocking pool (disk reads never stall the runtime), over a fresh
    /// reader (a snapshot install may have replaced the store).
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(Reader) -> strata_engine::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let reader = self.reader();
        crate::blocking::run(move || f(reader))
            .await
            .map_err(|e| Status::internal(format!("read task failed: {e}")))?
            .map_err(to_status)
    }

    /// Engine counters.
    pub fn stats(&self) -> Arc<Stats> {
        match self {
            Backend::Single(e) => e.stats().clone(),
            Backend::Replicated(r) => r.shard().stats(),
        }
    }

    /// Appends: through the engine's queue, or through Raft (answered once committed).
    pub async fn append(&self, request: AppendRequest) -> Result<AppendResult, ReplicaError> {
        self.submit(request).await?.await
    }

    /// Appends, in order, at the shard's leader wherever it is (the node's own writes, such
    /// as a move's copies and fences): queued here, or proposed at the leader all at once,
    /// following leader changes and retrying with the same event ids for at most `wait`.
    pub async fn append_all_at_leader(
        &self,
        requests: Vec<AppendRequest>,
        wait: std::time::Duration,
    ) -> Result<Vec<AppendResult>, ReplicaError> {
        match self {
            Backend::Single(_) => {
                let mut pending = Vec::with_capacity(requests.len());
                for request in requests {
                    pending.push(self.submit(request).await?);
                }
                let mut answers = Vec::with_capacity(pending.len());
                for p in pending {
                    answers.push(p.await?);
                }
                Ok(answers)
            }
            Backend::Replicated(r) => r.append_all_at_leader(requests, wait).await,
        }
    }

    /// Queues an append and returns its answer to come; appends submitted one after another
    /// are decided in that order (what `AppendStream` promises).
    pub async fn submit(&self, request: AppendRequest) -> Result<PendingAppend, ReplicaError> {
        Ok(match self {
            Backend::Single(e) => {
                let answer = e.submit(request).await.map_err(ReplicaError::Engine)?;
                Box::pin(async move { answer.await.map_err(ReplicaError::Engine) })
            }
            Backend::Replicated(r) => Box::pin(r.submit(request).await?),
        })
    }

    /// Queues independent appends one after another (decided in this order) and returns their
    /// answers to come together: one engine wake-up per batch on a single node; through Raft
    /// each is proposed as [`Backend::submit`] does (the proposer packs them into entries),
    /// behind the call's order `fence` (see [`strata_raft::fence`]).
    pub async fn submit_many(&self, requests: Vec<AppendRequest>, fence: &Fence) -> PendingAppends {
        match self {
            Backend::Single(e) => {
                let answers = e.submit_many(requests).await;
                Box::pin(async move {
                    answers
                        .await
                        .into_iter()
                        .map(|a| a.map_err(ReplicaError::Engine))
                        .collect()
                })
            }
            Backend::Replicated(r) => {
                let mut pending = Vec::with_capacity(requests.len());
                for request in requests {
                    pending.push(r.submit_fenced(request, Some(fence)).await);
                }
                Box::pin(async move {
                    let mut out = Vec::with_capacity(pending.len());
                    for p in pending {
                        out.push(match p {
                            Ok(answer) => answer.await,
                            Err(e) => Err(e),
                        });
                    }
                    out
                })
            }
        }
    }

    /// Waits until a read at this consistency may be served here.
    pub async fn read_barrier(&self, consistency: pb::Consistency) -> Result<(), Status> {
        let Backend::Replicated(replica) = self else {
            return Ok(());
        };
        match consistency {
            pb::Consistency::Follower => Ok(()),
            pb::Consistency::Linearizable => {
                replica.linearizable_barrier().await.map_err(replica_status)
            }
        }
    }

    /// [`Backend::read_barrier`] for a read of `stream`. A linearizable read on a replica is
    /// also refused (UNAVAILABLE, `moved`: the client retries) when a slot-range move has
    /// fenced the stream's slots here: from the fence on, its newest writes may be on the
    /// move's target, and a node that has not yet applied the map that says so would still
    /// route the read here.
    pub async fn stream_barrier(
        &self,
        stream: &str,
        consistency: pb::Consistency,
    ) -> Result<(), Status> {
        self.read_barrier(consistency).await?;
        if !matches!(self, Backend::Replicated(_)) || consistency == pb::Consistency::Follower {
            return Ok(());
        }
        let name = stream.to_string();
        let moved = self
            .read(move |r| Ok(strata_engine::fence::read_fences(&r)?.fenced(&name)))
            .await?;
        match moved {
            Some(shard) => Err(to_status(strata_engine::Error::Moved {
                stream: stream.to_string(),
                shard,
            })),
            None => Ok(()),
        }
    }

    /// Stops it: drains the engine's queue, or stops the Raft node.
    pub async fn close(&self) {
        match self {
            Backend::Single(engine) => {
                let engine = engine.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || engine.close()).await {
                    tracing::error!(error = %e, "closing the store failed");
                }
            }
            Backend::Replicated(r) => r.shutdown().await,
        }
    }
}

/// The gRPC status for a replicated operation's error. A node that is not the leader answers
/// UNAVAILABLE with the leader's client address in `strata-leader` (clients retry there).
pub fn replica_status(error: ReplicaError) -> Status {
    let message = error.to_string();
    match error {
        ReplicaError::Engine(e) => to_status(e),
        ReplicaError::NotLeader { leader } => {
            let mut status = Status::unavailable(message);
            let md = status.metadata_mut();
            md.insert(ERROR_KIND_KEY, MetadataValue::from_static("not-leader"));
            if let Some((id, node)) = leader {
                if let Ok(v) = node.addr.parse() {
                    md.insert(LEADER_KEY, v);
                }
                if let Ok(v) = id.to_string().parse() {
                    md.insert(LEADER_ID_KEY, v);
                }
            }
            status
        }
        ReplicaError::Unavailable(_) => {
            let mut status = Status::unavailable(message);
            status
                .metadata_mut()
                .insert(ERROR_KIND_KEY, MetadataValue::from_static("unavailable"));
            status
        }
        ReplicaError::NotTried => crate::append_stream::not_tried(),
    }
}
