//! The group operations of a replica move (`strata_shard::replica_move::GroupOps`) as the
//! simulator runs them: a call asked of the node at address `at` goes to that node's replica
//! of the shard, and a membership change on to the replica the group's leader is on, as a
//! node's `Cluster` service passes it on. The calls themselves do not cross the simulated
//! network (the Raft messages they cause do).

use strata_proto::routing::ShardId;
use strata_raft::{Replica, StrataNode};
use strata_shard::backend::{replica_status, Backend};
use strata_shard::replica_move::{GroupFuture, GroupOps, GroupView};
use tonic::Status;

use crate::cluster::{addr, id_of, Cluster};

/// [`GroupOps`] over the running nodes of a simulated cluster.
pub(crate) struct SimGroupOps(pub Cluster);

impl SimGroupOps {
    /// The replica of `shard` on the node at `at`.
    fn replica_at(&self, at: &str, shard: ShardId) -> Result<(u64, Replica), Status> {
        let id = id_of(at).ok_or_else(|| Status::invalid_argument(format!("no node at {at}")))?;
        let node = self
            .0
            .sharded(id)
            .ok_or_else(|| Status::unavailable(format!("n{id} is down")))?;
        match node.set.backend(shard) {
            Some(Backend::Replicated(r)) => Ok((id, *r)),
            _ => Err(Status::unavailable(format!(
                "n{id} holds no replica of {shard}; retry"
            ))),
        }
    }

    /// `change` on the replica leading `shard`'s group (as the node at `at` knows it).
    fn at_leader<'a, Fut>(
        &'a self,
        at: &'a str,
        shard: ShardId,
        change: impl FnOnce(Replica) -> Fut + Send + 'a,
    ) -> GroupFuture<'a, ()>
    where
        Fut: std::future::Future<Output = Result<(), strata_raft::ReplicaError>> + Send + 'a,
    {
        Box::pin(async move {
            let leader = self.leader(at, shard)?;
            change(leader).await.map_err(replica_status)
        })
    }

    /// The replica leading `shard`'s group, as the node at `at` knows it.
    fn leader(&self, at: &str, shard: ShardId) -> Result<Replica, Status> {
        let (id, here) = self.replica_at(at, shard)?;
        match here.leader() {
            Some((leader, _)) if leader == id => Ok(here),
            Some((leader, _)) => Ok(self.replica_at(&addr(leader), shard)?.1),
            None => Err(Status::unavailable(format!(
                "{shard} has no leader now; retry"
            ))),
        }
    }
}

impl GroupOps for SimGroupOps {
    fn view<'a>(&'a self, at: &'a str, shard: ShardId) -> GroupFuture<'a, GroupView> {
        Box::pin(async move {
            let r = match self.leader(at, shard) {
                Ok(leader) => leader,
                Err(_) => self.replica_at(at, shard)?.1,
            };
            Ok(GroupView {
                leader: r.leader().map_or(0, |(l, _)| l),
                members: r.status().members.iter().map(|m| m.id).collect(),
            })
        })
    }

    fn add<'a>(
        &'a self,
        at: &'a str,
        shard: ShardId,
        id: u64,
        node: &'a StrataNode,
    ) -> GroupFuture<'a, ()> {
        let node = node.clone();
        self.at_leader(
            at,
            shard,
            move |r| async move { r.add_node(id, node).await },
        )
    }

    fn transfer<'a>(&'a self, at: &'a str, shard: ShardId, to: u64) -> GroupFuture<'a, ()> {
        self.at_leader(
            at,
            shard,
            move |r| async move { r.transfer_leader(to).await },
        )
    }

    fn remove<'a>(&'a self, at: &'a str, shard: ShardId, id: u64) -> GroupFuture<'a, ()> {
        self.at_leader(at, shard, move |r| async move { r.remove_node(id).await })
    }
}
