//! `strata dev --nodes N [--shards K]`: a local replicated cluster of N node processes (this
//! same binary, `strata node`), node N serving clients on --listen's port + N − 1 (by default
//! 50051, 50052, …) and metrics on --metrics's port + N − 1, with data under
//! DIR/node-N, each holding a replica of every one of the K shards. Once all answer, the
//! cluster is formed through node 1 (each shard's group from the node that should lead it)
//! and its status printed. Ctrl-C (or SIGTERM)
//! stops every node gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use strata_client::{pb, Client, ClientConfig};
use tokio::process::{Child, Command};

use crate::Failure;

/// How long the nodes get to start and elect a leader.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Node n's address: the base address with its port moved up by n − 1.
fn nth(base: SocketAddr, n: u64) -> String {
    let port = u64::from(base.port()) + n - 1;
    format!("{}:{port}", base.ip())
}

/// A client of one starting node: one quick attempt per call (the caller polls).
fn quick_client(addr: &str) -> Option<Client> {
    Client::new(ClientConfig {
        connect_timeout: Duration::from_millis(300),
        attempt_timeout: Duration::from_secs(2),
        attempts_max: 1,
        ..ClientConfig::new([addr])
    })
    .ok()
}

async fn status(addr: &str) -> Option<pb::ClusterStatus> {
    quick_client(addr)?.cluster_status(addr).await.ok()
}

fn stop(children: &mut [Child]) {
    for child in children.iter() {
        if let Some(pid) = child.id() {
            // SIGTERM: each node drains and closes cleanly.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
}

/// Runs the cluster until Ctrl-C or SIGTERM.
pub async fn run(
    data: PathBuf,
    listen: SocketAddr,
    metrics: Option<SocketAddr>,
    nodes: u64,
    shards: Option<u32>,
) -> Result<(), Failure> {
    if !(2..=9).contains(&nodes) {
        return Err(Failure {
            message: "--nodes must be 1 (no replication) or 2 to 9".into(),
            exit_code: 2,
        });
    }
    let exe = std::env::current_exe().map_err(|e| Failure::new(format!("finding strata: {e}")))?;
    let top = |base: SocketAddr| u64::from(base.port()) + nodes - 1;
    if top(listen) > u64::from(u16::MAX) || metrics.is_some_and(|m| top(m) > u64::from(u16::MAX)) {
        return Err(Failure {
            message: format!(
                "--nodes {nodes} needs ports up to the base port + {}: past 65535",
                nodes - 1
            ),
            exit_code: 2,
        });
    }
    let addr = |n: u64| nth(listen, n);
    let metrics_addr = |n: u64| metrics.map(|m| nth(m, n));
    let mut children = Vec::new();
    for n in 1..=nodes {
        let dir = data.join(format!("node-{n}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Failure::new(format!("creating {}: {e}", dir.display())))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("node")
            .arg("--id")
            .arg(n.to_string())
            .arg("--data")
            .arg(&dir)
            .arg("--listen")
            .arg(addr(n))
            .arg("--metrics")
            .arg(metrics_addr(n).unwrap_or_else(|| "off".to_string()));
        if let Some(k) = shards {
            cmd.arg("--shards").arg(k.to_string());
        }
        for p in (1..=nodes).filter(|p| *p != n) {
            cmd.arg("--peer").arg(format!("{p}={}", addr(p)));
        }
        let log = std::fs::File::create(dir.join("node.log"))
            .map_err(|e| Failure::new(format!("creating the log of node {n}: {e}")))?;
        cmd.stdout(std::process::Stdio::null()).stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| Failure::new(format!("starting node {n}: {e}")))?;
        children.push(child);
    }
    let deadline = Instant::now() + START_TIMEOUT;
    let mut formed = None;
    while formed.is_none() {
        if Instant::now() > deadline {
            stop(&mut children);
            return Err(Failure::new(format!(
                "the cluster did not form within {START_TIMEOUT:?}; see {}/node-*/node.log",
                data.display()
            )));
        }
        for (i, child) in children.iter_mut().enumerate() {
            if let Ok(Some(exit)) = child.try_wait() {
                let n = i + 1;
                stop(&mut children);
                return Err(Failure::new(format!(
                    "node {n} exited ({exit}); see {}/node-{n}/node.log",
                    data.display()
                )));
            }
        }
        let mut up = 0;
        for n in 1..=nodes {
            if status(&addr(n)).await.is_some() {
                up += 1;
            }
        }
        if up == nodes {
            if let Some(c) = quick_client(&addr(1)) {
                let _ = c.cluster_init().await;
            }
            // Formed once every shard's group has a leader.
            let led =
                |s: &pb::ClusterStatus| s.has_leader && s.shards.iter().all(|g| g.leader != 0);
            if let Some(s) = status(&addr(1)).await.filter(led) {
                formed = Some(s);
            }
        }
        if formed.is_none() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let s = formed.unwrap_or_default();
    if s.shards.len() > 1 {
        let leaders: Vec<String> = s
            .shards
            .iter()
            .map(|g| format!("{}→{}", g.id, g.leader))
            .collect();
        println!(
            "strata dev: {nodes}-node cluster of {} shards (shard→leader: {}), data in {}",
            s.shards.len(),
            leaders.join(" "),
            data.display()
        );
    } else {
        println!(
            "strata dev: {nodes}-node cluster, leader is node {} (term {}), data in {}",
            s.leader,
            s.term,
            data.display()
        );
    }
    for n in 1..=nodes {
        let metrics = metrics_addr(n)
            .map(|a| format!("  metrics http://{a}/metrics"))
            .unwrap_or_default();
        println!(
            "  node {n}: gRPC {}{metrics}  log {}/node-{n}/node.log",
            addr(n),
            data.display()
        );
    }
    println!(
        "  try: strata append orders-1 --type OrderPlaced --data '{{\"total\": 42}}' --server {}",
        addr(2)
    );
    println!("       strata cluster status --server {}", addr(1));
    println!("  stop with Ctrl-C (or SIGTERM)");
    let mut exited = vec![false; children.len()];
    loop {
        tokio::select! {
            _ = strata_shard::termination_signal() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for (i, child) in children.iter_mut().enumerate() {
                    if !exited[i] {
                        if let Ok(Some(exit)) = child.try_wait() {
                            exited[i] = true;
                            eprintln!("strata dev: node {} exited ({exit}); the others go on", i + 1);
                        }
                    }
                }
            }
        }
    }
    stop(&mut children);
    for child in &mut children {
        let _ = child.wait().await;
    }
    eprintln!("strata dev: stopped cleanly");
    Ok(())
}
