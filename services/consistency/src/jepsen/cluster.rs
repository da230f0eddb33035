//! The run's own cluster: `nodes` real `strata node` processes (this binary) on loopback, each
//! with its client port and a Raft port of its own, and a [`Proxy`] on every directed link
//! between nodes (Raft, and the client port a node forwards appends and reads to), so a
//! partition can cut any link in either direction while clients still reach every node. Node
//! n's data and log are under DIR/node-n.
//!
//! ```text
//!   node i ──dials──▶ proxy (i→j, raft)   ──▶ node j's Raft port
//!   node i ──dials──▶ proxy (i→j, client) ──▶ node j's client port     clients ──▶ client ports
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata_client::{pb, Client, ClientConfig};
use tokio::process::{Child, Command};

use super::proxy::{Proxy, Shape};
use crate::Failure;

/// How long the nodes get to start and elect a leader.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One node process.
#[derive(Debug)]
struct NodeProc {
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// The cluster (see the module docs). Dropping it kills every node.
#[derive(Debug)]
pub struct LocalCluster {
    exe: PathBuf,
    nodes: BTreeMap<u64, NodeProc>,
    clients: BTreeMap<u64, SocketAddr>,
    /// Node i's links to node j: its Raft connections, and its client-port ones (forwarded
    /// appends and reads, status).
    links: BTreeMap<(u64, u64), [Proxy; 2]>,
    /// Environment given to every node (planted bugs, a lossy disk: test builds only).
    env: Vec<(String, String)>,
    rafts: BTreeMap<u64, SocketAddr>,
    /// Where each node's clock file goes (`--nemesis clock`), if the nodes read one.
    clocks: Option<PathBuf>,
}

/// A free loopback port below the kernel's ephemeral range (32768 and up on Linux): a killed
/// node starts again on its port, and a port from that range can by then be the source port
/// of some outgoing connection. Probed by binding, from a base that differs per process.
fn free_addr() -> Result<SocketAddr, Failure> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 10_000 + (std::process::id() % 200) * 100;
    for _ in 0..20_000 {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 22_000;
        let port = 10_000 + (base - 10_000 + offset) % 22_000;
        let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        if std::net::TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    Err(Failure::new(
        "no free loopback port between 10000 and 32000".to_string(),
    ))
}

fn quick_client(addr: SocketAddr) -> Option<Client> {
    Client::new(ClientConfig {
        connect_timeout: Duration::from_millis(300),
        attempt_timeout: Duration::from_secs(1),
        attempts_max: 1,
        ..ClientConfig::new([addr.to_string()])
    })
    .ok()
}

impl LocalCluster {
    /// Starts `nodes` nodes of `shards` shards each under `dir`, forms the cluster and waits
    /// until every shard has a leader.
    pub async fn start(
        dir: &Path,
        (nodes, shards): (u64, u32),
        env: Vec<(String, String)>,
        clocks: bool,
    ) -> Result<LocalCluster, Failure> {
        let exe =
            std::env::current_exe().map_err(|e| Failure::new(format!("finding strata: {e}")))?;
        let ids: Vec<u64> = (1..=nodes).collect();
        let mut clients = BTreeMap::new();
        let mut rafts = BTreeMap::new();
        for id in &ids {
            clients.insert(*id, free_addr()?);
            rafts.insert(*id, free_addr()?);
        }
        let mut links = BTreeMap::new();
        for i in &ids {
            for j in ids.iter().filter(|j| *j != i) {
                let proxy = |to: SocketAddr| async move {
                    Proxy::start(to)
                        .await
                        .map_err(|e| Failure::new(format!("starting a proxy {i}→{j}: {e}")))
                };
                links.insert((*i, *j), [proxy(rafts[j]).await?, proxy(clients[j]).await?]);
            }
        }
        let mut procs = BTreeMap::new();
        for id in &ids {
            let data = dir.join(format!("node-{id}"));
            std::fs::create_dir_all(&data)
                .map_err(|e| Failure::new(format!("creating {}: {e}", data.display())))?;
            let mut args: Vec<String> = vec![
                "node".into(),
                "--id".into(),
                id.to_string(),
                "--data".into(),
                data.display().to_string(),
                "--listen".into(),
                clients[id].to_string(),
                "--raft-listen".into(),
                rafts[id].to_string(),
                "--metrics".into(),
                "off".into(),
            ];
            if shards > 1 {
                args.extend(["--shards".into(), shards.to_string()]);
            }
            for j in ids.iter().filter(|j| *j != id) {
                args.push("--peer".into());
                let [raft, client] = &links[&(*id, *j)];
                args.push(format!("{j}={},{}", client.addr(), raft.addr()));
            }
            procs.insert(
                *id,
                NodeProc {
                    args,
                    log: dir.join(format!("node-{id}.log")),
                    child: None,
                    paused: false,
                },
            );
        }
        let mut cluster = LocalCluster {
            exe,
            nodes: procs,
            clients,
            links,
            env,
            rafts,
            clocks: clocks.then(|| dir.to_path_buf()),
        };
        for id in &ids {
            cluster.start_node(*id)?;
        }
        cluster.form(dir).await?;
        Ok(cluster)
    }

    async fn form(&mut self, dir: &Path) -> Result<(), Failure> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if Instant::now() > deadline {
                return Err(Failure::new(format!(
                    "the cluster did not form within {START_TIMEOUT:?}; see {}/node-*.log",
                    dir.display()
                )));
            }
            let mut up = 0;
            for addr in self.clients.values() {
                if self.status_of(*addr).await.is_some() {
                    up += 1;
                }
            }
            if up == self.clients.len() {
                if let Some(c) = self.clients.get(&1).and_then(|a| quick_client(*a)) {
                    let _ = c.cluster_init().await;
                }
                if self.led().await {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn status_of(&self, addr: SocketAddr) -> Option<pb::ClusterStatus> {
        quick_client(addr)?
            .cluster_status(&addr.to_string())
            .await
            .ok()
    }

    /// The node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Every node's client address.
    pub fn client_addrs(&self) -> Vec<String> {
        self.clients.values().map(ToString::to_string).collect()
    }

    /// Whether node 1 sees a leader of every shard (and of the cluster).
    async fn led(&self) -> bool {
        let Some(addr) = self.clients.get(&1) else {
            return false;
        };
        self.status_of(*addr)
            .await
            .is_some_and(|s| s.has_leader && s.shards.iter().all(|g| g.leader != 0))
    }

    /// The leader the answering nodes name (the first that names one), if any: on a cluster
    /// of several shards, the leader of the first shard each node holds.
    pub async fn leader(&self) -> Option<u64> {
        for addr in self.clients.values() {
            if let Some(s) = self.status_of(*addr).await.filter(|s| s.has_leader) {
                return Some(s.leader);
            }
        }
        None
    }

    fn start_node(&mut self, id: u64) -> Result<(), Failure> {
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| Failure::new(format!("no node {id}")))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| Failure::new(format!("opening {}: {e}", node.log.display())))?;
        let child = Command::new(&self.exe)
            .args(&node.args)
            .env("STRATA_LOG", "info,openraft=warn")
            .envs(self.env.iter().map(|(k, v)| (k.clone(), v.clone())))
            .envs(self.clocks.as_ref().map(|dir| {
                (
                    crate::test_build::CLOCK_VAR.to_string(),
                    dir.join(format!("node-{id}.clock")).display().to_string(),
                )
            }))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Failure::new(format!("starting node {id}: {e}")))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    fn signal(&self, id: u64, signal: libc::c_int) {
        let pid = self
            .nodes
            .get(&id)
            .and_then(|n| n.child.as_ref())
            .and_then(Child::id);
        if let Some(pid) = pid {
            // SAFETY: kill(2) on a child process of ours.
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }

    /// SIGKILLs node `id` (its unsynced writes are lost with it).
    pub async fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            let _ = child.kill().await;
        }
    }

    /// SIGKILLs every node of `ids` at once (signals first, then reaping), so none outlives
    /// another by more than the time to send a signal.
    pub fn kill_all(&mut self, ids: &[u64]) {
        for id in ids {
            self.signal(*id, libc::SIGKILL);
        }
        for id in ids {
            if let Some(mut child) = self.nodes.get_mut(id).and_then(|n| n.child.take()) {
                // Reaped in the background: the process is dead already.
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
            }
        }
    }

    /// Starts node `id` again if it is not running.
    pub fn restart(&mut self, id: u64) -> Result<(), Failure> {
        match self.nodes.get(&id) {
            Some(n) if n.child.is_none() => self.start_node(id),
            _ => Ok(()),
        }
    }

    /// SIGSTOPs node `id` (`true`) or SIGCONTs it.
    pub fn pause(&mut self, id: u64, on: bool) {
        self.signal(id, if on { libc::SIGSTOP } else { libc::SIGCONT });
        if let Some(n) = self.nodes.get_mut(&id) {
            n.paused = on;
        }
    }

    /// Cuts (`true`) or heals the directed links `(i, j)`: node i's connections to node j
    /// (its requests, and j's answers to them). Cutting both directions separates the nodes.
    pub fn cut(&self, links: &[(u64, u64)], on: bool) {
        for (link, proxies) in &self.links {
            if links.contains(link) {
                proxies.iter().for_each(|p| p.cut(on));
            }
        }
    }

    /// Slows the directed links `links` down (`Shape::default()` restores them).
    pub fn shape(&self, links: &[(u64, u64)], shape: Shape) {
        for (link, proxies) in &self.links {
            if links.contains(link) {
                proxies.iter().for_each(|p| p.shape(shape));
            }
        }
    }

    /// Skews node `id`'s wall clock by `offset_us` plus `drift_ppm` from now (both 0: its
    /// true time). Only with `clocks`.
    pub fn skew(&self, id: u64, offset_us: i64, drift_ppm: i64) -> Result<(), Failure> {
        let Some(dir) = &self.clocks else {
            return Err(Failure::new("the nodes read no clock file".to_string()));
        };
        let path = dir.join(format!("node-{id}.clock"));
        std::fs::write(&path, format!("{offset_us} {drift_ppm}\n"))
            .map_err(|e| Failure::new(format!("writing {}: {e}", path.display())))
    }

    /// Removes node `id` from the cluster (asking the other nodes, one after another).
    pub async fn remove(&self, id: u64) -> Result<(), String> {
        self.ask_others(id, |c| async move {
            c.cluster_remove_node(pb::RemoveNodeRequest { id })
                .await
                .map(|_| ())
        })
        .await
    }

    /// Adds node `id` back (as a learner that catches up, then a voter).
    pub async fn add(&self, id: u64) -> Result<(), String> {
        let (Some(addr), Some(raft)) = (self.clients.get(&id), self.rafts.get(&id)) else {
            return Err(format!("no node {id}"));
        };
        let request = pb::AddNodeRequest {
            id,
            addr: addr.to_string(),
            raft_addr: raft.to_string(),
            incarnation: 0,
        };
        self.ask_others(id, |c| {
            let r = request.clone();
            async move { c.cluster_add_node(r).await.map(|_| ()) }
        })
        .await
    }

    async fn ask_others<F, Fut>(&self, id: u64, call: F) -> Result<(), String>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<(), strata_client::Error>>,
    {
        let mut last = String::from("no other node");
        for (other, addr) in &self.clients {
            if *other == id {
                continue;
            }
            let Ok(c) = Client::new(ClientConfig {
                connect_timeout: Duration::from_millis(300),
                attempt_timeout: Duration::from_secs(10),
                deadline: Duration::from_secs(20),
                ..ClientConfig::new([addr.to_string()])
            }) else {
                continue;
            };
            match call(c).await {
                Ok(()) => return Ok(()),
                Err(e) => last = format!("node {other}: {e}"),
            }
        }
        Err(last)
    }

    /// Ends every fault: links healed, paused nodes continued, killed nodes started.
    pub fn heal(&mut self) -> Result<(), Failure> {
        for proxy in self.links.values().flatten() {
            proxy.cut(false);
            proxy.shape(Shape::default());
        }
        if self.clocks.is_some() {
            for id in self.ids() {
                self.skew(id, 0, 0)?;
            }
        }
        for id in self.ids() {
            if self.nodes.get(&id).is_some_and(|n| n.paused) {
                self.pause(id, false);
            }
            self.restart(id)?;
        }
        Ok(())
    }

    /// Stops every node (SIGCONT, then SIGTERM) and waits for them.
    pub async fn stop(&mut self) {
        for id in self.ids() {
            self.signal(id, libc::SIGCONT);
            self.signal(id, libc::SIGTERM);
        }
        for node in self.nodes.values_mut() {
            if let Some(child) = node.child.as_mut() {
                if tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
            node.child = None;
        }
    }
}
