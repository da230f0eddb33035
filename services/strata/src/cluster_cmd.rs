//! `strata cluster init|status|add-node|remove-node|transfer-leader|rebalance|move-shard|move-slots|split-shard`:
//! membership, replica placement and leadership of a replicated cluster's shards, slot-range
//! moves and splits. Changes go to the leader (followed from any
//! node); `status --json` prints one JSON object with at least `leader` (node id, or null) and
//! `nodes` (`[{id, addr, role}]`).

use std::time::Instant;

use strata_client::pb;
use strata_shard::balance::{self, ShardLeads};
use strata_shard::placement::{self, Placed, ReplicaMove};

use crate::client::{failure, ServerArg};
use crate::{output, Failure};

/// `strata cluster …`.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Form the cluster from the members the node at --server was started with (--peer).
    Init {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Show the leader, the term and every member with its role.
    Status {
        /// Print one JSON object (default: a table).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Add a node: as a learner first, promoted to voter once it has caught up. On a cluster of
    /// several shards it joins the metadata group and holds no replica yet: `rebalance` moves
    /// replicas to it.
    AddNode {
        /// The new node's id.
        #[arg(long)]
        id: u64,
        /// Its client address.
        #[arg(long)]
        addr: String,
        /// Its Raft address, when not the client address.
        #[arg(long)]
        raft_addr: Option<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Remove a node from the cluster: its replicas move to the other nodes first (one at a
    /// time, with a progress bar), then it leaves every group.
    RemoveNode {
        /// The node's id.
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Hand one shard's leadership to one of its voters (its appends wait meanwhile, about one
    /// election timeout at most). With `--prefer`, the map records that node as the shard's
    /// preferred leader: the leader balancer hands the leadership back to it whenever it can
    /// (`cluster status` shows it; a replica move taking its replica away drops it).
    TransferLeader {
        /// The shard (0 on a cluster of one shard).
        #[arg(long, default_value_t = 0)]
        shard: u32,
        /// The node to lead it.
        #[arg(long, required_unless_present = "clear_preference")]
        to: Option<u64>,
        /// Also record the node as the shard's preferred leader.
        #[arg(long)]
        prefer: bool,
        /// Forget the shard's preferred leader instead (no handover).
        #[arg(long, conflicts_with_all = ["to", "prefer"])]
        clear_preference: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Balance the cluster: move replicas until every node holds within one of an even share
    /// of them, then hand leaderships over until every node leads within one of an even share
    /// (of the shards it holds); one step at a time with a progress bar. Waits until done; a
    /// failure stops it, and running it again goes on from where things stand.
    Rebalance {
        /// Print the plan without running it.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Move a range of slots (all on one shard) to another shard, online: copy, fence the
    /// slots' writes, copy the rest, verify, switch the map. Waits with a progress bar and
    /// prints the move's numbers, unless --no-wait.
    MoveSlots {
        /// The slots, `START..END` (END excluded), e.g. `0..256`.
        #[arg(value_parser = parse_slots)]
        slots: (u32, u32),
        /// The shard to own them.
        #[arg(long)]
        to: u32,
        /// Answer once the move has begun (`cluster status` shows its progress).
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Move a shard's replica from one node to another, online: the new node joins the shard's
    /// group as a learner, catches up and is promoted, then the old one leaves and deletes its
    /// replica. Waits with a progress bar (the new replica's catch-up) unless --no-wait; after
    /// a failure, running it again finishes it, and --cancel undoes it.
    MoveShard {
        /// The shard.
        shard: u32,
        /// The node holding the replica now.
        #[arg(long, required_unless_present = "cancel")]
        from: Option<u64>,
        /// The node to hold it (a member holding no replica of the shard).
        #[arg(long, required_unless_present = "cancel")]
        to: Option<u64>,
        /// Answer once the move has begun (`cluster status` shows its step).
        #[arg(long)]
        no_wait: bool,
        /// Cancel the shard's replica move in progress instead: the new replica leaves the
        /// group and the shard stays where it was (one past its map's end is finished instead).
        #[arg(long, conflicts_with = "no_wait")]
        cancel: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Split a shard: add a new shard (every node opens it), then move the shard's slots from
    /// --at to the end of the range holding it there, online, as move-slots does. Waits with a
    /// progress bar and prints the move's numbers, unless --no-wait.
    SplitShard {
        /// The shard to split.
        shard: u32,
        /// The first slot to move, inside one of the shard's ranges (default: the middle of
        /// its largest range).
        #[arg(long)]
        at: Option<u32>,
        /// Answer once the move has begun (`cluster status` shows its progress).
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        server: ServerArg,
    },
}

/// How long `move-shard` waits for the move (a new replica catching up included).
const MOVE_SHARD_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// `START..END` as two slot numbers.
fn parse_slots(value: &str) -> Result<(u32, u32), String> {
    let (start, end) = value
        .split_once("..")
        .ok_or_else(|| format!("expected START..END (END excluded), e.g. 0..256, not {value:?}"))?;
    let num = |s: &str| {
        s.parse::<u32>()
            .map_err(|e| format!("{s:?} in {value:?} is not a slot number: {e}"))
    };
    Ok((num(start)?, num(end)?))
}

fn move_json(m: &pb::MoveStatus) -> serde_json::Value {
    serde_json::json!({
        "slots": [m.start, m.end], "from": m.from_shard, "to": m.to_shard, "step": m.step,
        "source_bytes": m.source_bytes, "scanned_bytes": m.scanned_bytes,
        "copied_events": m.copied_events, "copied_bytes": m.copied_bytes, "streams": m.streams,
        "pause_us": m.pause_us, "elapsed_us": m.elapsed_us, "rate": m.rate,
        "error": (!m.error.is_empty()).then_some(&m.error),
    })
}

fn json(s: &pb::ClusterStatus) -> serde_json::Value {
    serde_json::json!({
        "node_id": s.node_id,
        "leader": if s.has_leader { serde_json::json!(s.leader) } else { serde_json::Value::Null },
        "term": s.term,
        "last_log_index": s.last_log_index,
        "last_applied": s.last_applied,
        "nodes": s.nodes.iter().map(|n| serde_json::json!({
            "id": n.id, "addr": n.addr, "raft_addr": n.raft_addr, "role": n.role, "matched": n.matched,
        })).collect::<Vec<_>>(),
        "map_epoch": s.map_epoch,
        // The metadata group's leader (several shards), or null.
        "meta_leader": (s.meta_leader != 0).then_some(s.meta_leader),
        "slots": s.slots,
        "log_fdatasyncs": s.log_fdatasyncs,
        // The latest slot-range move, or null.
        "move": s.r#move.as_ref().map(move_json),
        // Each shard's slot ranges as [first, one past the last].
        "shards": s.shards.iter().map(|sh| serde_json::json!({
            "id": sh.id,
            "leader": sh.leader,
            // The node the map prefers to lead it, or null.
            "preferred_leader": (sh.preferred_leader != 0).then_some(sh.preferred_leader),
            "replicas": sh.replicas,
            "slots": sh.slots.iter().map(|r| [r.start, r.end]).collect::<Vec<_>>(),
            "slot_count": slot_count(sh),
            // The replica move in progress, or null.
            "moving": sh.moving.as_ref().map(|m| serde_json::json!({
                "from": m.from, "to": m.to, "step": m.step,
                "matched": m.matched, "last_log_index": m.last_log_index,
            })),
        })).collect::<Vec<_>>(),
    })
}

fn slot_count(shard: &pb::ShardStatus) -> u32 {
    shard
        .slots
        .iter()
        .map(|r| r.end.saturating_sub(r.start))
        .sum()
}

fn table(s: &pb::ClusterStatus) {
    let leader = if s.has_leader {
        s.leader.to_string()
    } else {
        "none".into()
    };
    println!(
        "asked node {}: term {}, leader {leader}, last log index {}, applied {}",
        s.node_id, s.term, s.last_log_index, s.last_applied
    );
    println!(
        "{:>6}  {:<22} {:<22} {:<9} {:>8}",
        "id", "addr", "raft_addr", "role", "matched"
    );
    for n in &s.nodes {
        println!(
            "{:>6}  {:<22} {:<22} {:<9} {:>8}",
            n.id, n.addr, n.raft_addr, n.role, n.matched
        );
    }
    if s.shards.is_empty() {
        return;
    }
    let meta = match s.meta_leader {
        0 => String::new(),
        l => format!(" (the map's history in the metadata group, led by node {l})"),
    };
    println!(
        "map epoch {}: {} slots over {} shards{meta}",
        s.map_epoch,
        s.slots,
        s.shards.len()
    );
    println!(
        "{:>6}  {:>6}  {:<12} {:>6}  ranges",
        "shard", "leader", "replicas", "slots"
    );
    if let Some(m) = &s.r#move {
        let error = if m.error.is_empty() {
            String::new()
        } else {
            format!(": {}", m.error)
        };
        println!(
            "move of slots {}..{} from shard {} to {}: {} ({} of {} bytes read, {} events copied){error}",
            m.start, m.end, m.from_shard, m.to_shard, m.step, m.scanned_bytes, m.source_bytes, m.copied_events
        );
    }
    for (sh, m) in s
        .shards
        .iter()
        .filter_map(|sh| sh.moving.as_ref().map(|m| (sh, m)))
    {
        println!(
            "replica move of shard {}: node {} → {}: {}",
            sh.id, m.from, m.to, m.step
        );
    }
    for sh in s.shards.iter().filter(|sh| sh.preferred_leader != 0) {
        println!(
            "shard {} prefers node {} as its leader",
            sh.id, sh.preferred_leader
        );
    }
    for sh in &s.shards {
        let replicas: Vec<String> = sh.replicas.iter().map(u64::to_string).collect();
        let ranges: Vec<String> = sh
            .slots
            .iter()
            .map(|r| format!("{}..{}", r.start, r.end))
            .collect();
        println!(
            "{:>6}  {:>6}  {:<12} {:>6}  {}",
            sh.id,
            sh.leader,
            replicas.join(","),
            slot_count(sh),
            ranges.join(" ")
        );
    }
}

/// Runs a cluster command.
pub async fn run(command: ClusterCommand) -> Result<(), Failure> {
    match command {
        ClusterCommand::Init { server } => {
            let s = server.client()?.cluster_init().await.map_err(failure)?;
            output::line(&json(&s));
        }
        ClusterCommand::Status {
            json: as_json,
            server,
        } => {
            let s = merged_status(&server).await?;
            if as_json {
                output::line(&json(&s));
            } else {
                table(&s);
            }
        }
        ClusterCommand::AddNode {
            id,
            addr,
            raft_addr,
            server,
        } => {
            let request = pb::AddNodeRequest {
                id,
                addr,
                raft_addr: raft_addr.unwrap_or_default(),
                incarnation: 0,
            };
            let s = server
                .client()?
                .cluster_add_node(request)
                .await
                .map_err(failure)?;
            output::line(&json(&s));
        }
        ClusterCommand::RemoveNode { id, server } => {
            drain(&server, id).await?;
            let s = server
                .client()?
                .cluster_remove_node(pb::RemoveNodeRequest { id })
                .await
                .map_err(failure)?;
            output::line(&json(&s));
        }
        ClusterCommand::TransferLeader {
            shard,
            to,
            prefer,
            clear_preference,
            server,
        } => {
            let request = pb::TransferLeaderRequest {
                shard,
                to: to.unwrap_or(0),
                prefer: prefer || clear_preference,
            };
            let s = server
                .client()?
                .cluster_transfer_leader(request)
                .await
                .map_err(failure)?;
            output::line(&json(&s));
        }
        ClusterCommand::Rebalance { dry_run, server } => rebalance(&server, dry_run).await?,
        ClusterCommand::MoveSlots {
            slots: (start, end),
            to,
            no_wait,
            server,
        } => {
            let request = pb::MoveSlotsRequest {
                start,
                end,
                to_shard: to,
            };
            let client = server.client()?;
            let s = client.cluster_move_slots(request).await.map_err(failure)?;
            follow_move(&client, &server, s, no_wait).await?
        }
        ClusterCommand::MoveShard {
            shard,
            from,
            to,
            no_wait,
            cancel,
            server,
        } => {
            let request = pb::MoveShardRequest {
                shard,
                from: from.unwrap_or(0),
                to: to.unwrap_or(0),
                no_wait,
                cancel,
            };
            let s = if no_wait || cancel {
                mover_client(&server)?
                    .cluster_move_shard(request)
                    .await
                    .map_err(failure)?
            } else {
                move_replica(&server, request, "").await?
            };
            output::line(&json(&s));
        }
        ClusterCommand::SplitShard {
            shard,
            at,
            no_wait,
            server,
        } => {
            if at == Some(0) {
                return Err(Failure::new(
                    "--at 0 leaves no slot on the shard split: give a slot inside one of its ranges",
                ));
            }
            let request = pb::SplitShardRequest {
                shard,
                at: at.unwrap_or(0),
            };
            let client = server.client()?;
            let s = client.cluster_split_shard(request).await.map_err(failure)?;
            follow_move(&client, &server, s, no_wait).await?
        }
    }
    Ok(())
}

/// The shards' leaders and replicas as the balance planner takes them.
fn leads(s: &pb::ClusterStatus) -> Vec<ShardLeads> {
    s.shards
        .iter()
        .map(|sh| ShardLeads {
            shard: sh.id,
            leader: (sh.leader != 0).then_some(sh.leader),
            voters: sh.replicas.clone(),
            preferred: (sh.preferred_leader != 0).then_some(sh.preferred_leader),
        })
        .collect()
}

/// `cluster rebalance`: plans from the status, runs the handovers one after another, and
/// prints `{"handovers": [...], "leaders": {node: count}}` (the counts after, as planned when
/// `dry_run`).
async fn rebalance(server: &ServerArg, dry_run: bool) -> Result<(), Failure> {
    let view = merged_status(server).await?;
    let plan = placement::plan(&placed(&view), &voters(&view), &[]);
    let moved = run_moves(server, &plan, dry_run).await?;
    let before = leads(&merged_status(server).await?);
    let plan = balance::plan(&before);
    let client = server.client()?;
    let total = plan.len();
    let mut done = Vec::with_capacity(total);
    for (i, h) in plan.iter().enumerate() {
        let step = format!("shard {}: leader {} → {}", h.shard, h.from, h.to);
        if dry_run {
            output::progress(i, total, &format!("would hand {step}"));
            done.push(serde_json::json!({"shard": h.shard, "from": h.from, "to": h.to}));
            continue;
        }
        let started = Instant::now();
        let request = pb::TransferLeaderRequest {
            shard: h.shard,
            to: h.to,
            prefer: false,
        };
        if let Err(e) = client.cluster_transfer_leader(request).await {
            return Err(Failure::new(format!(
                "{step} failed after {i} of {total} handovers: {e}\nrun `strata cluster rebalance` again to go on from where things stand"
            )));
        }
        let ms = started.elapsed().as_millis();
        output::progress(i + 1, total, &format!("{step} ({ms} ms)"));
        done.push(serde_json::json!({"shard": h.shard, "from": h.from, "to": h.to, "ms": ms}));
    }
    let after = if dry_run {
        let mut planned = before.clone();
        for h in &plan {
            if let Some(s) = planned.iter_mut().find(|s| s.shard == h.shard) {
                s.leader = Some(h.to);
            }
        }
        planned
    } else {
        leads(&merged_status(server).await?)
    };
    let counts: serde_json::Map<String, serde_json::Value> = balance::shares(&after)
        .into_iter()
        .map(|(node, n)| (node.to_string(), n.into()))
        .collect();
    let view = merged_status(server).await?;
    let replicas: serde_json::Map<String, serde_json::Value> =
        placement::loads(&placed(&view), &voters(&view))
            .into_iter()
            .map(|(node, n)| (node.to_string(), n.into()))
            .collect();
    output::line(&serde_json::json!({
        "moves": moved, "replicas": replicas, "handovers": done, "leaders": counts
    }));
    Ok(())
}

/// The shards' replicas as the placement planner takes them.
fn placed(s: &pb::ClusterStatus) -> Vec<Placed> {
    s.shards
        .iter()
        .map(|sh| Placed {
            shard: sh.id,
            replicas: sh.replicas.clone(),
        })
        .collect()
}

/// The cluster's voting nodes.
fn voters(s: &pb::ClusterStatus) -> Vec<u64> {
    s.nodes
        .iter()
        .filter(|n| n.role != "learner")
        .map(|n| n.id)
        .collect()
}

/// Before node `id` leaves a cluster of several shards: moves each replica it holds to the
/// node holding the fewest (see `strata_shard::placement`).
async fn drain(server: &ServerArg, id: u64) -> Result<(), Failure> {
    let view = merged_status(server).await?;
    if view.shards.len() < 2 {
        return Ok(());
    }
    let plan = placement::plan(&placed(&view), &voters(&view), &[id]);
    run_moves(server, &plan, false).await.map(drop)
}

/// Runs replica moves one at a time with a progress bar (or, `dry_run`, shows them); returns
/// what was done.
async fn run_moves(
    server: &ServerArg,
    plan: &[ReplicaMove],
    dry_run: bool,
) -> Result<Vec<serde_json::Value>, Failure> {
    let total = plan.len();
    let mut done = Vec::with_capacity(total);
    for (i, m) in plan.iter().enumerate() {
        let step = format!("shard {}: replica {} → {}", m.shard, m.from, m.to);
        if dry_run {
            output::progress(i, total, &format!("would move {step}"));
            done.push(serde_json::json!({"shard": m.shard, "from": m.from, "to": m.to}));
            continue;
        }
        let started = Instant::now();
        let request = pb::MoveShardRequest {
            shard: m.shard,
            from: m.from,
            to: m.to,
            ..Default::default()
        };
        let of = format!("{}/{total} ", i + 1);
        if let Err(e) = move_replica(server, request, &of).await {
            return Err(Failure::new(format!(
                "{step} failed after {i} of {total} replica moves: {}\nrun the command again to go on from where things stand",
                e.message
            )));
        }
        let ms = started.elapsed().as_millis();
        output::progress(i + 1, total, &format!("{step} ({ms} ms)"));
        done.push(serde_json::json!({"shard": m.shard, "from": m.from, "to": m.to, "ms": ms}));
    }
    Ok(done)
}

/// A client for replica moves: a new replica catching up may take minutes, and a move
/// answers when done.
fn mover_client(server: &ServerArg) -> Result<strata_client::Client, Failure> {
    server.client_with(|c| {
        c.attempt_timeout = MOVE_SHARD_WAIT;
        c.deadline = MOVE_SHARD_WAIT;
    })
}

/// Runs replica move `request` to its end, showing its step and the new replica's catch-up
/// (each line prefixed with `of`) while it runs.
async fn move_replica(
    server: &ServerArg,
    request: pb::MoveShardRequest,
    of: &str,
) -> Result<pb::ClusterStatus, Failure> {
    let shard = request.shard;
    let client = mover_client(server)?;
    let call = client.cluster_move_shard(request);
    tokio::pin!(call);
    let mut shown = String::new();
    loop {
        tokio::select! {
            answer = &mut call => return answer.map_err(failure),
            () = tokio::time::sleep(MOVE_POLL) => {}
        }
        let Some(p) = replica_move_progress(server, shard).await else {
            continue;
        };
        let line = format!(
            "{of}shard {shard}: replica {} → {}: {}",
            p.from, p.to, p.step
        );
        let (done, total) = (p.matched.min(p.last_log_index), p.last_log_index);
        let now = format!("{line} {done}/{total}");
        if now != shown {
            output::progress(done as usize, total as usize, &line);
            shown = now;
        }
    }
}

/// Shard `shard`'s replica move as the cluster shows it: its step from the metadata leader
/// (running it), the new replica's catch-up from the shard's leader. `None` while unknown.
async fn replica_move_progress(server: &ServerArg, shard: u32) -> Option<pb::ReplicaMoveStatus> {
    let view = merged_status(server).await.ok()?;
    let client = server.client().ok()?;
    let addr = |id: u64| {
        view.nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.addr.clone())
    };
    let moving_at = |s: &pb::ClusterStatus| {
        s.shards
            .iter()
            .find(|sh| sh.id == shard)
            .and_then(|sh| sh.moving.clone())
    };
    let mut progress = moving_at(&view)?;
    if let Some(runner) = addr(view.meta_leader) {
        if let Some(m) = client
            .cluster_status(&runner)
            .await
            .ok()
            .as_ref()
            .and_then(moving_at)
        {
            progress.step = m.step;
        }
    }
    let leader = view.shards.iter().find(|sh| sh.id == shard)?.leader;
    if let Some(at) = addr(leader) {
        if let Some(m) = client
            .cluster_status(&at)
            .await
            .ok()
            .as_ref()
            .and_then(moving_at)
        {
            (progress.matched, progress.last_log_index) = (m.matched, m.last_log_index);
        }
    }
    Some(progress)
}

/// The cluster as every node sees it, merged: the node at `server`'s status, each shard it
/// holds no replica of completed from a node that does (its leader and replicas). Nodes that
/// do not answer are passed over.
async fn merged_status(server: &ServerArg) -> Result<pb::ClusterStatus, Failure> {
    let mut s = status(server).await?;
    if s.shards.iter().all(|sh| sh.leader != 0) {
        return Ok(s);
    }
    let client = server.client()?;
    for node in s.nodes.clone() {
        if node.id == s.node_id {
            continue;
        }
        let Ok(theirs) = client.cluster_status(&node.addr).await else {
            continue;
        };
        for sh in &mut s.shards {
            let known = theirs
                .shards
                .iter()
                .find(|t| t.id == sh.id && t.leader != 0);
            if let (0, Some(t)) = (sh.leader, known) {
                sh.leader = t.leader;
                sh.replicas.clone_from(&t.replicas);
            }
        }
    }
    Ok(s)
}

/// How often `move-slots` looks at the move's progress.
const MOVE_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// `cluster move-slots` and `split-shard` once the move has begun (`s`, the answer of the
/// node running it): unless `no_wait`, shows its progress until it ends, then prints its
/// numbers; a failed move is a failure naming why (rolled back).
async fn follow_move(
    client: &strata_client::Client,
    server: &ServerArg,
    mut s: pb::ClusterStatus,
    no_wait: bool,
) -> Result<(), Failure> {
    // The node running the move answered (a replicated cluster's metadata leader): its status
    // shows the progress.
    let runner = s
        .nodes
        .iter()
        .find(|n| n.id == s.node_id)
        .map(|n| n.addr.clone())
        .unwrap_or_else(|| server.addresses().into_iter().next().unwrap_or_default());
    let mut shown = String::new();
    loop {
        let m = s
            .r#move
            .clone()
            .ok_or_else(|| Failure::new("the node did not report the move"))?;
        if no_wait || m.step == "done" || m.step == "failed" {
            if m.step == "failed" {
                return Err(Failure::new(format!(
                    "the move of slots {}..{} to shard {} failed and was rolled back: {}",
                    m.start, m.end, m.to_shard, m.error
                )));
            }
            output::line(&move_json(&m));
            return Ok(());
        }
        let total = m.source_bytes.max(1) as usize;
        let done = (m.scanned_bytes as usize).min(total);
        let line = format!(
            "{}: {} events copied, {} KiB/s",
            m.step,
            m.copied_events,
            m.rate >> 10
        );
        if line != shown {
            output::progress(done, total, &line);
            shown = line;
        }
        tokio::time::sleep(MOVE_POLL).await;
        s = client.cluster_status(&runner).await.map_err(failure)?;
    }
}

/// The status as the first node of `--server` sees it.
async fn status(server: &ServerArg) -> Result<pb::ClusterStatus, Failure> {
    let client = server.client()?;
    let first = server.addresses().into_iter().next().unwrap_or_default();
    client.cluster_status(&first).await.map_err(failure)
}

/// The leader's client address as the node at `server` sees it: that node itself when it
/// leads (or runs without replication, where it is its own leader) or knows no leader.
pub async fn leader_addr(server: &ServerArg) -> Result<String, Failure> {
    let s = status(server).await?;
    let first = server.addresses().into_iter().next().unwrap_or_default();
    Ok(s.nodes
        .iter()
        .find(|n| s.has_leader && n.id == s.leader && s.leader != s.node_id)
        .map_or(first, |n| n.addr.clone()))
}
