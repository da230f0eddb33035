//! The `strata.v1.Cluster` service: forming a replicated shard, its status, and membership
//! changes (learner → caught up → voter; removal). On a node without replication only
//! `Status` answers (a one-node view); the rest fail with FAILED_PRECONDITION.

use strata_proto::v1 as pb;
use strata_raft::{Replica, StrataNode};
use tonic::{Request, Response, Status};

use crate::backend::replica_status;
use crate::shards::LocalShards;

/// The service.
#[derive(Debug, Clone)]
pub struct ClusterService {
    shards: LocalShards,
    /// This node's client address (for the one-node view).
    addr: String,
}

impl ClusterService {
    /// The service of a node's shards (a replica, or engines without replication).
    pub fn new(shards: LocalShards, addr: String) -> ClusterService {
        ClusterService { shards, addr }
    }

    fn replica(&self) -> Result<&Replica, Status> {
        self.shards.replica().ok_or_else(|| {
            Status::failed_precondition(
                "this node runs without replication (strata dev); start it with `strata node --id N --peer …` to form a cluster",
            )
        })
    }

    /// Each shard with its slot ranges; `leader` and `replicas` as the caller knows them.
    fn shard_statuses(&self, leader: u64, replicas: &[u64]) -> Vec<pb::ShardStatus> {
        self.shards
            .backends
            .iter()
            .map(|(id, _)| pb::ShardStatus {
                id: id.0,
                leader,
                replicas: replicas.to_vec(),
                slots: self
                    .shards
                    .map
                    .ranges()
                    .iter()
                    .filter(|(_, owner)| owner == id)
                    .map(|(r, _)| pb::SlotRange {
                        start: r.start,
                        end: r.end,
                    })
                    .collect(),
            })
            .collect()
    }

    fn status(&self) -> pb::ClusterStatus {
        let map = &self.shards.map;
        let Some(replica) = self.shards.replica() else {
            return pb::ClusterStatus {
                node_id: 0,
                leader: 0,
                has_leader: true,
                term: 0,
                nodes: vec![pb::NodeStatus {
                    id: 0,
                    addr: self.addr.clone(),
                    raft_addr: String::new(),
                    role: "leader".into(),
                    matched: 0,
                }],
                last_log_index: 0,
                process_cpu_us: process_cpu_us(),
                last_applied: 0,
                log_fdatasyncs: self.shards.fdatasyncs(),
                map_epoch: map.epoch(),
                slots: map.slots(),
                shards: self.shard_statuses(0, &[0]),
            };
        };
        let s = replica.status();
        let members: Vec<u64> = s.members.iter().map(|m| m.id).collect();
        pb::ClusterStatus {
            node_id: s.node_id,
            leader: s.leader.unwrap_or(0),
            has_leader: s.leader.is_some(),
            term: s.term,
            shards: self.shard_statuses(s.leader.unwrap_or(0), &members),
            nodes: s
                .members
                .into_iter()
                .map(|m| pb::NodeStatus {
                    id: m.id,
                    addr: m.node.addr,
                    raft_addr: m.node.raft_addr,
                    role: m.role.into(),
                    matched: m.matched,
                })
                .collect(),
            last_log_index: s.last_log_index,
            last_applied: s.last_applied,
            process_cpu_us: process_cpu_us(),
            log_fdatasyncs: self.shards.fdatasyncs(),
            map_epoch: map.epoch(),
            slots: map.slots(),
        }
    }
}

/// CPU time this process has used (user + system), in microseconds; 0 if the OS will not say.
pub fn process_cpu_us() -> u64 {
    // SAFETY: getrusage(2) fills the zeroed struct we own; RUSAGE_SELF needs nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| (t.tv_sec as u64) * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn init(
        &self,
        _request: Request<pb::InitRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.replica()?.init().await.map_err(replica_status)?;
        Ok(Response::new(self.status()))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        Ok(Response::new(self.status()))
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let r = request.into_inner();
        if r.addr.is_empty() {
            return Err(crate::status::invalid("addr", "must not be empty"));
        }
        let raft_addr = if r.raft_addr.is_empty() {
            r.addr.clone()
        } else {
            r.raft_addr
        };
        self.replica()?
            .add_node(
                r.id,
                StrataNode {
                    addr: r.addr,
                    raft_addr,
                },
            )
            .await
            .map_err(replica_status)?;
        Ok(Response::new(self.status()))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let id = request.into_inner().id;
        self.replica()?
            .remove_node(id)
            .await
            .map_err(replica_status)?;
        Ok(Response::new(self.status()))
    }
}
