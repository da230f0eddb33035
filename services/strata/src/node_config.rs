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
//! subscription_buffer_records_max = 256    # --subscription-buffer-records-max
//! subscription_stall_timeout_ms = 10000    # --subscription-stall-timeout-ms
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
    /// Records buffered per subscription.
    #[arg(long)]
    subscription_buffer_records_max: Option<usize>,
    /// How long a subscriber may leave its buffer full before it is cut off.
    #[arg(long)]
    subscription_stall_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data: Option<PathBuf>,
    listen: Option<SocketAddr>,
    metrics: Option<String>,
    segment_bytes_max: Option<u64>,
    queue_depth_max: Option<usize>,
    subscription_buffer_records_max: Option<usize>,
    subscription_stall_timeout_ms: Option<u64>,
}

fn bad(message: String) -> Failure {
    Failure {
        message,
        exit_code: 2,
    }
}

/// The node configuration from the file and the flags.
pub fn resolve(args: NodeArgs) -> Result<strata_shard::NodeConfig, Failure> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| bad(format!("reading {}: {e}", path.display())))?;
            toml::from_str::<FileConfig>(&text)
                .map_err(|e| bad(format!("{}: {e}", path.display())))?
        }
        None => FileConfig::default(),
    };
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
    Ok(strata_shard::NodeConfig {
        data_dir: data,
        listen,
        engine,
        service,
        metrics_listen: metrics,
    })
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
}
