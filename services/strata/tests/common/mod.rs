//! What the cluster tests share: `strata node` processes on loopback, a cluster of them
//! (start, kill, restart, wait for an agreed leader, converge), and small gRPC helpers.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_proto::v1 as pb;
use strata_proto::v1::cluster_client::ClusterClient;
use strata_proto::v1::streams_client::StreamsClient;
use tonic::transport::Channel;

pub mod http;
pub mod sinks;

pub const STRATA: &str = env!("CARGO_BIN_EXE_strata");

/// One cluster at a time: three clusters plus their writers on a 2-core machine would turn the
/// 3-second failover bound into a measure of CPU starvation.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A port nobody listens on, below the kernel's ephemeral range (32768 and up on Linux): a
/// port taken from that range and bound again later (a restarted node keeps its port) can by
/// then be the source port of some outgoing connection ("Address already in use", seen in
/// CI). Each test process takes its own block of 1,000 ports, one after another.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 12) as u16 * 1_000;
    for _ in 0..1_000 {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 1_000;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {base}..{}", base + 1_000);
}

/// The first of `n` consecutive free ports (for `strata dev --nodes n`, node k on first + k − 1).
pub fn free_port_run(n: u16) -> u16 {
    let mut first = free_port();
    let mut last = first;
    while last - first + 1 < n {
        let next = free_port();
        if next != last + 1 {
            first = next;
        }
        last = next;
    }
    first
}

pub fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// One `strata node` process.
pub struct NodeProc {
    pub id: u64,
    pub port: u16,
    pub raft_port: Option<u16>,
    pub data: PathBuf,
    pub args: Vec<String>,
    pub child: Option<Child>,
}

impl NodeProc {
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.with_extension("log"))
            .unwrap();
        let mut cmd = Command::new(STRATA);
        cmd.args(["node", "--id", &self.id.to_string(), "--data"])
            .arg(&self.data)
            .args(["--listen", &addr(self.port)]);
        if !self.args.iter().any(|a| a == "--metrics") {
            cmd.args(["--metrics", "off"]);
        }
        if let Some(r) = self.raft_port {
            cmd.args(["--raft-listen", &addr(r)]);
        }
        cmd.args(&self.args)
            .env("STRATA_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().unwrap());
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// The node's first panics (each with the two lines after it: the message) and the last
    /// `tail` lines of its log. Panics come first because repeated errors after one (a Raft
    /// core that died answers every call with "panicked") push it out of any tail.
    pub fn log_tail(&self, tail: usize) -> String {
        let text = std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let panics: Vec<String> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains("panicked at"))
            .take(3)
            .map(|(i, _)| lines[i..(i + 3).min(lines.len())].join("\n"))
            .collect();
        // Openraft's own warnings repeat many times a second while a peer is away: Strata's
        // lines are shown apart, so they are not pushed out of the tail.
        let own: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| !l.contains("openraft::"))
            .collect();
        format!(
            "{}\n... Strata's last {tail} lines:\n{}\n... the log's last {tail} lines:\n{}",
            panics.join("\n"),
            own[own.len().saturating_sub(tail)..].join("\n"),
            lines[lines.len().saturating_sub(tail)..].join("\n")
        )
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A failing test prints the tail of each node's log (the data directory goes with the test).
impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for node in self.nodes.values() {
            eprintln!(
                "--- node {} log: its panics, Strata's last 40 lines, then the last 40 ---\n{}",
                node.id,
                node.log_tail(40)
            );
        }
    }
}

pub struct Cluster {
    pub _dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, NodeProc>,
}

/// Settings that make snapshots and segment rolls happen within a test's few thousand events.
pub fn small_log_args() -> Vec<String> {
    [
        "--segment-bytes-max",
        "262144",
        "--batch-bytes-max",
        "65536",
        "--snapshot-every-entries",
        "300",
        "--keep-entries",
        "50",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Cluster {
    /// `n` nodes; `routes(i, j)` is how node i reaches node j's Raft port (`None`: directly).
    pub fn new(n: u64, separate_raft: bool, extra: Vec<String>) -> Cluster {
        // STRATA_TEST_KEEP_DIRS=1 keeps the nodes' data and logs for a look after a failure.
        let keep = std::env::var_os("STRATA_TEST_KEEP_DIRS").is_some();
        let dir = tempfile::Builder::new()
            .disable_cleanup(keep)
            .tempdir()
            .unwrap();
        if keep {
            eprintln!("the cluster's data: {}", dir.path().display());
        }
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            nodes.insert(
                id,
                NodeProc {
                    id,
                    port: free_port(),
                    raft_port: separate_raft.then(free_port),
                    data: dir.path().join(format!("node-{id}")),
                    args: extra.clone(),
                    child: None,
                },
            );
        }
        Cluster { _dir: dir, nodes }
    }

    pub fn peer_args(&mut self, route: impl Fn(u64, u64, &NodeProc) -> String) {
        let view: Vec<(u64, u16, Option<u16>)> = self
            .nodes
            .values()
            .map(|n| (n.id, n.port, n.raft_port))
            .collect();
        for node in self.nodes.values_mut() {
            for (j, port, raft_port) in &view {
                if *j == node.id {
                    continue;
                }
                let probe = NodeProc {
                    id: *j,
                    port: *port,
                    raft_port: *raft_port,
                    data: PathBuf::new(),
                    args: Vec::new(),
                    child: None,
                };
                let raft = route(node.id, *j, &probe);
                node.args
                    .extend(["--peer".to_string(), format!("{j}={},{raft}", addr(*port))]);
            }
        }
    }

    pub async fn start_all(&mut self) {
        for n in self.nodes.values_mut() {
            n.start();
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let out = self.init(&ids).await;
        assert!(
            out.status.success(),
            "cluster init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits for nodes `ids` to answer, then runs `strata cluster init` against node 1.
    pub async fn init(&self, ids: &[u64]) -> std::process::Output {
        for id in ids {
            self.wait_up(*id).await;
        }
        Command::new(STRATA)
            .args(["cluster", "init", "--server", &self.addr(1)])
            .output()
            .unwrap()
    }

    pub async fn wait_up(&self, id: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while status(&self.addr(id)).await.is_none() {
            assert!(
                Instant::now() < deadline,
                "node {id} did not come up:\n{}",
                self.nodes[&id].log_tail(12)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn addr(&self, id: u64) -> String {
        addr(self.nodes[&id].port)
    }

    pub fn live(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// The leader every live node agrees on (waits up to `within`).
    pub async fn leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let mut seen = Vec::new();
            for id in self.live() {
                // Nodes not (yet) in the membership have no say.
                if let Some(s) = status(&self.addr(id))
                    .await
                    .filter(|s| s.nodes.iter().any(|n| n.id == s.node_id))
                {
                    seen.push(s.has_leader.then_some(s.leader));
                }
            }
            if let Some(Some(l)) = seen.first() {
                if seen.iter().all(|s| *s == Some(*l)) && self.live().contains(l) {
                    return *l;
                }
            }
            if Instant::now() > deadline {
                for n in self.nodes.values() {
                    eprintln!("--- node {} ---\n{}", n.id, n.log_tail(12));
                }
                panic!("no agreed leader: {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every live node has applied as far as the leader.
    pub async fn converge(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let leader = self.leader(Duration::from_secs(10)).await;
            let target = status(&self.addr(leader)).await.map(|s| s.last_applied);
            let mut applied = Vec::new();
            for id in self.live() {
                applied.push(status(&self.addr(id)).await.map(|s| s.last_applied));
            }
            if target.is_some() && applied.iter().all(|a| *a == target) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replicas did not converge: leader {target:?}, all {applied:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub async fn channel(addr: &str) -> Option<Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .ok()
}

pub async fn status(addr: &str) -> Option<pb::ClusterStatus> {
    let ch = channel(addr).await?;
    ClusterClient::new(ch)
        .status(pb::StatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Every event of `stream` on node `node`, by follower reads page after page (a page may end
/// early at the node's byte bound) until an empty one; versions must run on without a gap.
pub async fn follower_read_all(
    client: &mut StreamsClient<Channel>,
    stream: &str,
    node: u64,
) -> Vec<pb::RecordedEvent> {
    let mut got: Vec<pb::RecordedEvent> = Vec::new();
    loop {
        let events = client
            .read(pb::ReadRequest {
                stream: stream.to_string(),
                from_version: Some(got.len() as u64),
                direction: 0,
                limit: 4096,
                consistency: pb::Consistency::Follower as i32,
                as_of: None,
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        if events.is_empty() {
            return got;
        }
        for e in events {
            assert_eq!(
                e.version,
                got.len() as u64,
                "gap in {stream} on node {node}"
            );
            got.push(e);
        }
    }
}

/// Creates consumer group `name` over the streams starting with `prefix`, from the log's
/// start, in `partitions` partitions; the group's admin handle.
pub async fn prefix_group(
    client: &strata_client::Client,
    name: &str,
    prefix: &str,
    partitions: u32,
) -> strata_client::group::Groups {
    use strata_client::group::{GroupTarget, Groups, Position};
    let groups = Groups::new(client.clone());
    groups
        .create(
            name,
            GroupTarget::Prefix(prefix.into()),
            partitions,
            Position::From(0),
        )
        .await
        .unwrap();
    groups
}
