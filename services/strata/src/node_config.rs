//! `strata node`: a node for real deployments, configured by a TOML file, with every setting
//! also a flag (flags win). Unknown keys in the file are an error, so a typo never passes
//! silently.
//!
//! ```toml
//! data = "/var/lib/strata"            # --data
//! listen = "0.0.0.0:50051"            # --listen
//! metrics = "0.0.0.0:9464"            # --metrics ("off" disables)
//! segment_bytes_max = 268435456       # --segment-bytes-max
//! queue_depth_max = 4096              # --queue-depth-max
//! batch_bytes_max = 16777216          # --batch-bytes-max (largest append)
//! id_filter_bytes_max = 268435456     # --id-filter-bytes-max (memory for new-id checks; 0 = off)
//! page_cache_keep_bytes = 67108864    # --page-cache-keep-bytes (newest synced log bytes a file
//!                                     #   keeps in the OS page cache; 0 = leave it to the kernel)
//! subscription_buffer_records_max = 256    # --subscription-buffer-records-max
//! subscription_stall_timeout_ms = 10000    # --subscription-stall-timeout-ms
//! response_bytes_max = 4194304        # --response-bytes-max (largest read answer, encoded)
//! append_window = 4096                # --append-window (appends in flight per AppendStream call)
//! append_window_bytes = 33554432      # --append-window-bytes (their bytes)
//! move_rate_max = 67108864            # --move-rate-max (slot-range moves' copy, bytes/s ceiling)
//! move_throttle = true                # --move-throttle true|false (pace by foreground p99)
//!
//! # Retention (see docs/ARCHITECTURE.md "Retention")
//! retention = true                    # --retention true|false
//! retention_interval_ms = 60000       # --retention-interval-ms
//! retention_as_of_window_s = 3600     # --retention-as-of-window-s (as-of reads stay exact)
//! retention_bytes_per_sec = 67108864  # --retention-bytes-per-sec (the throttle)
//!
//! # Replication (all optional; with `id` the node is a replica of a Raft-replicated shard)
//! id = 1                              # --id
//! peers = ["2=10.0.0.2:50051", "3=10.0.0.3:50051"]   # --peer ID=ADDR[,RAFT_ADDR] (repeat)
//! raft_listen = "0.0.0.0:7001"        # --raft-listen (default: share the gRPC port)
//! advertise = "10.0.0.1:50051"        # --advertise (client address told to others)
//! advertise_raft = "10.0.0.1:7001"    # --advertise-raft (Raft address peers dial)
//! heartbeat_ms = 100                  # --heartbeat-ms
//! election_timeout_ms = [400, 800]    # --election-timeout-ms MIN,MAX
//! snapshot_every_entries = 50000      # --snapshot-every-entries
//! keep_entries = 10000                # --keep-entries
//! append_timeout_ms = 5000            # --append-timeout-ms
//! cut_off_ms = 1600                   # --cut-off-ms (a leader no majority answers refuses; 0: off)
//! learner_catch_up_timeout_ms = 60000 # --learner-catch-up-timeout-ms (add-node)
//! leader_balance_interval_ms = 30000  # --leader-balance-interval-ms (several shards; 0: off)
//! replica_balance_interval_ms = 0     # --replica-balance-interval-ms (several shards; 0: off)
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::Failure;

/// `strata node` flags (each overrides the same key of the file).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Shards (1-64): a new data directory gets this many; an existing one must hold as many
    /// (default: what it holds, 1 when new). Every node of a cluster must give the same
    /// count: each holds a replica of every shard, one Raft group per shard.
    #[arg(long)]
    shards: Option<u32>,
    /// gRPC address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// HTTP address of /metrics and /health, or `off`.
    #[arg(long)]
    metrics: Option<String>,
    /// Segment size before the log rolls to a new file.
    #[arg(long)]
    segment_bytes_max: Option<u64>,
    /// Appends that may wait for the writer.
    #[arg(long)]
    queue_depth_max: Option<usize>,
    /// Largest append (one record) in bytes; segments must hold at least one.
    #[arg(long)]
    batch_bytes_max: Option<usize>,
    /// Memory in bytes for the event-id filter (16 bits per id; 0 turns it off).
    #[arg(long)]
    id_filter_bytes_max: Option<usize>,
    /// Bytes of each log file's newest synced data kept in the OS page cache; older pages
    /// are dropped so new writes reuse them (0: leave it to the kernel). Default 64 MiB.
    #[arg(long)]
    page_cache_keep_bytes: Option<u64>,
    /// Records buffered per subscription.
    #[arg(long)]
    subscription_buffer_records_max: Option<usize>,
    /// How long a subscriber may leave its buffer full before it is cut off.
    #[arg(long)]
    subscription_stall_timeout_ms: Option<u64>,
    /// Most bytes of one read's answer, encoded (a page ends early and says where to go on).
    #[arg(long)]
    response_bytes_max: Option<usize>,
    /// Most appends one pipelined call (AppendStream) has in flight before the node stops
    /// reading it.
    #[arg(long)]
    append_window: Option<usize>,
    /// Most bytes of appends one pipelined call has in flight.
    #[arg(long)]
    append_window_bytes: Option<usize>,
    /// The ceiling of a slot-range move's copy, bytes per second (default 64 MiB/s).
    #[arg(long)]
    move_rate_max: Option<u64>,
    /// Pace a move's copy by the foreground append p99 (true), or run it at the ceiling.
    #[arg(long)]
    move_throttle: Option<bool>,
    /// Reclaim the space of dead events in the background (true or false).
    #[arg(long)]
    retention: Option<bool>,
    /// Time between retention passes.
    #[arg(long)]
    retention_interval_ms: Option<u64>,
    /// As-of reads within this many seconds of now stay exact (retention keeps what they see).
    #[arg(long)]
    retention_as_of_window_s: Option<u64>,
    /// Most bytes per second a retention pass reads and writes.
    #[arg(long)]
    retention_bytes_per_sec: Option<u64>,
    /// This node's id in its cluster; makes the node a replica of a Raft-replicated shard.
    #[arg(long)]
    id: Option<u64>,
    /// Another member: ID=ADDR, or ID=ADDR,RAFT_ADDR when its Raft port differs (repeat).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Serve Raft traffic on its own address (default: the gRPC port).
    #[arg(long)]
    raft_listen: Option<SocketAddr>,
    /// Client address to tell others (default: the bound --listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// Raft address peers should dial (default: the bound Raft address).
    #[arg(long)]
    advertise_raft: Option<String>,
    /// Leader heartbeat interval.
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Election timeout range: MIN,MAX milliseconds.
    #[arg(long, value_delimiter = ',', num_args = 2)]
    election_timeout_ms: Option<Vec<u64>>,
    /// Build a Raft snapshot after this many entries.
    #[arg(long)]
    snapshot_every_entries: Option<u64>,
    /// Entries kept as Raft entries behind a snapshot.
    #[arg(long)]
    keep_entries: Option<u64>,
    /// How long an append may wait to commit.
    #[arg(long)]
    append_timeout_ms: Option<u64>,
    /// A leader that has heard from no majority of its group for this long refuses appends
    /// and answers those waiting, outcome unknown (0 turns it off). Default 1600.
    #[arg(long)]
    cut_off_ms: Option<u64>,
    /// How long a node being added may take to catch up before it would be made a voter.
    #[arg(long)]
    learner_catch_up_timeout_ms: Option<u64>,
    /// How often the metadata group's leader looks at the shards' leaders and, when they
    /// have been stable that long and are uneven, hands one leadership over (several shards;
    /// 0 turns it off). Default 30000.
    #[arg(long)]
    leader_balance_interval_ms: Option<u64>,
    /// How often (ms) the metadata group's leader looks for a replica move that brings every
    /// node within one replica of an even share, and runs it (several shards, replicated;
    /// 0 turns it off, leaving it to `strata cluster rebalance`). Default 0.
    #[arg(long)]
    replica_balance_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data: Option<PathBuf>,
    shards: Option<u32>,
    listen: Option<SocketAddr>,
    metrics: Option<String>,
    segment_bytes_max: Option<u64>,
    queue_depth_max: Option<usize>,
    batch_bytes_max: Option<usize>,
    id_filter_bytes_max: Option<usize>,
    page_cache_keep_bytes: Option<u64>,
    subscription_buffer_records_max: Option<usize>,
    subscription_stall_timeout_ms: Option<u64>,
    response_bytes_max: Option<usize>,
    append_window: Option<usize>,
    append_window_bytes: Option<usize>,
    move_rate_max: Option<u64>,
    move_throttle: Option<bool>,
    retention: Option<bool>,
    retention_interval_ms: Option<u64>,
    retention_as_of_window_s: Option<u64>,
    retention_bytes_per_sec: Option<u64>,
    id: Option<u64>,
    #[serde(default)]
    peers: Vec<String>,
    raft_listen: Option<SocketAddr>,
    advertise: Option<String>,
    advertise_raft: Option<String>,
    heartbeat_ms: Option<u64>,
    election_timeout_ms: Option<Vec<u64>>,
    snapshot_every_entries: Option<u64>,
    keep_entries: Option<u64>,
    append_timeout_ms: Option<u64>,
    cut_off_ms: Option<u64>,
    learner_catch_up_timeout_ms: Option<u64>,
    leader_balance_interval_ms: Option<u64>,
    replica_balance_interval_ms: Option<u64>,
}

/// Parses `ID=ADDR` or `ID=ADDR,RAFT_ADDR`.
pub fn parse_peer(text: &str) -> Result<(u64, strata_raft::StrataNode), String> {
    let (id, addrs) = text
        .split_once('=')
        .ok_or_else(|| format!("peer `{text}`: expected ID=HOST:PORT"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("peer `{text}`: `{id}` is not a node id"))?;
    let (addr, raft_addr) = match addrs.split_once(',') {
        Some((a, r)) => (a.trim(), r.trim()),
        None => (addrs.trim(), addrs.trim()),
    };
    for a in [addr, raft_addr] {
        if a.rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .is_none()
        {
            return Err(format!("peer `{text}`: `{a}` is not HOST:PORT"));
        }
    }
    Ok((
        id,
        strata_raft::StrataNode {
            addr: addr.to_string(),
            raft_addr: raft_addr.to_string(),
            incarnation: 0,
        },
    ))
}

fn bad(message: String) -> Failure {
    Failure {
        message,
        exit_code: 2,
    }
}

/// The node configuration from the file and the flags.
pub fn resolve(args: NodeArgs) -> Result<strata_shard::NodeConfig, Failure> {
    let text = match &args.config {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| bad(format!("reading {}: {e}", path.display())))?,
        ),
        None => None,
    };
    resolve_text(args, text.as_deref())
}

/// The node configuration from the flags and the configuration file's text (`None`: no file).
/// Everything `strata node` checks before it starts is checked here.
pub fn resolve_text(
    args: NodeArgs,
    text: Option<&str>,
) -> Result<strata_shard::NodeConfig, Failure> {
    let file = match text {
        Some(text) => toml::from_str::<FileConfig>(text).map_err(|e| {
            let path = args
                .config
                .as_deref()
                .unwrap_or(std::path::Path::new("config"));
            bad(format!("{}: {e}", path.display()))
        })?,
        None => FileConfig::default(),
    };
    let cluster = cluster(&args, &file)?;
    let data = args.data.or(file.data).ok_or_else(|| {
        bad("set the data directory: --data DIR or `data` in the config file".into())
    })?;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 50051)));
    let metrics = match args.metrics.or(file.metrics).as_deref() {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
        Some("off") => None,
        Some(addr) => Some(
            addr.parse()
                .map_err(|e| bad(format!("metrics address `{addr}`: {e}")))?,
        ),
    };
    let mut engine = strata_engine::EngineConfig::default();
    if let Some(v) = args.segment_bytes_max.or(file.segment_bytes_max) {
        engine.segment_bytes_max = v;
    }
    if let Some(v) = args.queue_depth_max.or(file.queue_depth_max) {
        engine.limits.queue_depth_max = v;
    }
    if let Some(v) = args.batch_bytes_max.or(file.batch_bytes_max) {
        engine.limits.batch_bytes_max = v;
        engine.limits.event_bytes_max = engine.limits.event_bytes_max.min(v);
        engine.group_bytes_max = engine.group_bytes_max.max(v);
    }
    if let Some(v) = args.id_filter_bytes_max.or(file.id_filter_bytes_max) {
        engine.id_filter_bytes_max = v;
    }
    if let Some(v) = args.page_cache_keep_bytes.or(file.page_cache_keep_bytes) {
        // Process-wide, for every file opened from now on (`strata_engine::cache_trim`).
        strata_engine::fs::set_cache_keep_bytes(v);
    }
    engine.validate().map_err(|e| bad(e.to_string()))?;
    let mut service = strata_shard::ServiceConfig::default();
    if let Some(v) = args
        .subscription_buffer_records_max
        .or(file.subscription_buffer_records_max)
    {
        service.subscription_buffer_records_max = v;
    }
    if let Some(v) = args
        .subscription_stall_timeout_ms
        .or(file.subscription_stall_timeout_ms)
    {
        service.subscription_stall_timeout = Duration::from_millis(v);
    }
    if let Some(v) = args.response_bytes_max.or(file.response_bytes_max) {
        service.response_bytes_max = v;
    }
    if let Some(v) = args.append_window.or(file.append_window) {
        service.append_window = v;
    }
    if let Some(v) = args.append_window_bytes.or(file.append_window_bytes) {
        service.append_window_bytes = v;
    }
    if let Some(v) = args.move_rate_max.or(file.move_rate_max) {
        service.moves.rate_max = v;
        service.moves.rate_start = service.moves.rate_start.min(v);
        service.moves.rate_min = service.moves.rate_min.min(v);
    }
    if let Some(v) = args.move_throttle.or(file.move_throttle) {
        service.moves.adaptive = v;
    }
    service.validate().map_err(|e| bad(e.to_string()))?;
    strata_shard::limits::check(
        &engine.limits,
        service.response_bytes_max,
        cluster.is_some(),
    )
    .map_err(|e| bad(e.to_string()))?;
    let retention = &mut service.retention;
    if let Some(v) = args.retention.or(file.retention) {
        retention.enabled = v;
    }
    if let Some(v) = args.retention_interval_ms.or(file.retention_interval_ms) {
        if v == 0 {
            return Err(bad("retention_interval_ms must be at least 1".into()));
        }
        retention.interval = Duration::from_millis(v);
    }
    if let Some(v) = args
        .retention_as_of_window_s
        .or(file.retention_as_of_window_s)
    {
        retention.engine.as_of_window_us = v.saturating_mul(1_000_000);
    }
    if let Some(v) = args
        .retention_bytes_per_sec
        .or(file.retention_bytes_per_sec)
    {
        if v == 0 {
            return Err(bad("retention_bytes_per_sec must be at least 1".into()));
        }
        retention.engine.bytes_per_sec = v;
    }
    Ok(strata_shard::NodeConfig {
        data_dir: data,
        listen,
        engine,
        service,
        metrics_listen: metrics,
        cluster,
        shards: args.shards.or(file.shards),
    })
}

fn cluster(
    args: &NodeArgs,
    file: &FileConfig,
) -> Result<Option<strata_shard::ClusterConfig>, Failure> {
    let peers_given = if args.peers.is_empty() {
        &file.peers
    } else {
        &args.peers
    };
    let Some(node_id) = args.id.or(file.id) else {
        if !peers_given.is_empty() {
            return Err(bad(
                "--peer needs --id (this node's id in the cluster)".into()
            ));
        }
        return Ok(None);
    };
    let mut peers = std::collections::BTreeMap::new();
    for p in peers_given {
        let (id, node) = parse_peer(p).map_err(bad)?;
        if id == node_id {
            return Err(bad(format!("peer `{p}` has this node's own id {node_id}")));
        }
        if peers.insert(id, node).is_some() {
            return Err(bad(format!("peer id {id} is given twice")));
        }
    }
    let mut raft = strata_raft::RaftSettings::default();
    if let Some(v) = args.heartbeat_ms.or(file.heartbeat_ms) {
        raft.heartbeat = Duration::from_millis(v);
    }
    if let Some(v) = args
        .election_timeout_ms
        .clone()
        .or(file.election_timeout_ms.clone())
    {
        match v.as_slice() {
            [min, max] if min < max => {
                raft.election_timeout = (Duration::from_millis(*min), Duration::from_millis(*max))
            }
            _ => {
                return Err(bad(
                    "election_timeout_ms must be MIN,MAX with MIN < MAX".into()
                ))
            }
        }
    }
    if raft.heartbeat >= raft.election_timeout.0 {
        return Err(bad(
            "the heartbeat must be shorter than the minimum election timeout".into(),
        ));
    }
    if let Some(v) = args.snapshot_every_entries.or(file.snapshot_every_entries) {
        raft.snapshot_every_entries = v.max(1);
    }
    if let Some(v) = args.keep_entries.or(file.keep_entries) {
        raft.keep_entries = v;
    }
    if let Some(v) = args.append_timeout_ms.or(file.append_timeout_ms) {
        raft.append_timeout = Duration::from_millis(v.max(1));
    }
    if let Some(v) = args.cut_off_ms.or(file.cut_off_ms) {
        raft.cut_off_after = Duration::from_millis(v);
    }
    if !raft.cut_off_after.is_zero() && raft.cut_off_after <= raft.election_timeout.1 {
        return Err(bad(format!(
            "--cut-off-ms ({} ms) must be longer than the longest election timeout ({} ms), or 0 \
             (off): a leader would refuse appends before the others could elect another",
            raft.cut_off_after.as_millis(),
            raft.election_timeout.1.as_millis()
        )));
    }
    if let Some(v) = args
        .learner_catch_up_timeout_ms
        .or(file.learner_catch_up_timeout_ms)
    {
        raft.learner_catch_up_timeout = Duration::from_millis(v.max(1));
    }
    let balance_ms = args
        .leader_balance_interval_ms
        .or(file.leader_balance_interval_ms)
        .unwrap_or(strata_shard::node::LEADER_BALANCE_INTERVAL_DEFAULT_MS);
    let replicas_ms = args
        .replica_balance_interval_ms
        .or(file.replica_balance_interval_ms)
        .unwrap_or(strata_shard::node::REPLICA_BALANCE_INTERVAL_DEFAULT_MS);
    Ok(Some(strata_shard::ClusterConfig {
        node_id,
        peers,
        raft_listen: args.raft_listen.or(file.raft_listen),
        advertise_addr: args.advertise.clone().or(file.advertise.clone()),
        advertise_raft_addr: args.advertise_raft.clone().or(file.advertise_raft.clone()),
        raft,
        leader_balance_interval: (balance_ms > 0).then(|| Duration::from_millis(balance_ms)),
        replica_balance_interval: (replicas_ms > 0).then(|| Duration::from_millis(replicas_ms)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strata.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn file_settings_apply_and_flags_win() {
        let (_d, path) = write("data = \"/srv/a\"\nlisten = \"127.0.0.1:7000\"\nmetrics = \"off\"\nsubscription_stall_timeout_ms = 250\n");
        let config = resolve(NodeArgs {
            config: Some(path.clone()),
            ..NodeArgs::default()
        })
        .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/srv/a"));
        assert_eq!(config.listen.port(), 7000);
        assert_eq!(config.metrics_listen, None);
        assert_eq!(
            config.service.subscription_stall_timeout,
            Duration::from_millis(250)
        );
        let config = resolve(NodeArgs {
            config: Some(path),
            listen: Some("127.0.0.1:7001".parse().unwrap()),
            ..NodeArgs::default()
        })
        .unwrap();
        assert_eq!(config.listen.port(), 7001);
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let (_d, path) = write("data = \"/srv/a\"\nlisen = \"127.0.0.1:7000\"\n");
        let err = resolve(NodeArgs {
            config: Some(path),
            ..NodeArgs::default()
        })
        .unwrap_err();
        assert!(err.message.contains("lisen"), "{}", err.message);
        let (_d, path) = write("data = \"/srv/a\"\nsegment_bytes_max = 10\n");
        assert!(resolve(NodeArgs {
            config: Some(path),
            ..NodeArgs::default()
        })
        .unwrap_err()
        .message
        .contains("segment_bytes_max"));
        assert!(resolve(NodeArgs::default())
            .unwrap_err()
            .message
            .contains("data directory"));
    }

    #[test]
    fn cluster_flags_and_file() {
        let (_d, path) = write("data = \"/srv/a\"\nid = 1\npeers = [\"2=127.0.0.1:50052\", \"3=127.0.0.1:50053,127.0.0.1:7003\"]\n");
        let config = resolve(NodeArgs {
            config: Some(path),
            ..NodeArgs::default()
        })
        .unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.node_id, 1);
        assert_eq!(cluster.peers[&2].raft_addr, "127.0.0.1:50052");
        assert_eq!(cluster.peers[&3].addr, "127.0.0.1:50053");
        assert_eq!(cluster.peers[&3].raft_addr, "127.0.0.1:7003");
        let err = resolve(NodeArgs {
            data: Some("/srv/a".into()),
            peers: vec!["2=127.0.0.1:50052".into()],
            ..NodeArgs::default()
        })
        .unwrap_err();
        assert!(err.message.contains("--id"), "{}", err.message);
        let (_d, path) = write("data = \"/srv/a\"\nid = 1\ncut_off_ms = 3000\n");
        let with = |cut_off_ms| NodeArgs {
            config: Some(path.clone()),
            cut_off_ms,
            ..NodeArgs::default()
        };
        let raft = |args| resolve(args).map(|c| c.cluster.unwrap().raft.cut_off_after);
        assert_eq!(raft(with(None)).unwrap(), Duration::from_millis(3000));
        assert_eq!(raft(with(Some(0))).unwrap(), Duration::ZERO);
        let err = raft(with(Some(800))).unwrap_err();
        assert!(
            err.message.contains("--cut-off-ms (800 ms)"),
            "{}",
            err.message
        );
        assert_eq!(err.exit_code, 2);
        for bad_peer in ["2", "x=127.0.0.1:1", "2=nohost", "1=127.0.0.1:5"] {
            let err = resolve(NodeArgs {
                data: Some("/srv/a".into()),
                id: Some(1),
                peers: vec![bad_peer.into()],
                ..NodeArgs::default()
            })
            .unwrap_err();
            assert_eq!(err.exit_code, 2, "{bad_peer}: {}", err.message);
        }
    }
}
