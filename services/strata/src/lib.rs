//! The `strata` command's parts, as a library: the client commands, the node's configuration
//! (flags and TOML), the load generators and the local cluster runner. `src/main.rs` is the
//! command line over them; the fuzz targets (`fuzz/`) parse configuration and input through
//! the same functions the command uses.

pub mod bench;
pub mod bench_null;
pub mod bench_orders;
pub mod bench_sagas;
pub mod bench_state;
pub mod client;
pub mod cluster_cmd;
pub mod dev_cluster;
pub mod group_cmd;
pub mod history_cmd;
pub mod latency;
pub mod node_config;
pub mod output;
pub mod serve_cmd;

/// Exit status for a wrong expected version.
pub const EXIT_WRONG_VERSION: u8 = 3;

pub use strata_service::Failure;
