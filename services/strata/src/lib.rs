//! The `strata` command's parts, as a library: the client commands, the node's configuration
//! (flags and TOML), the load generators and the local cluster runner. `src/main.rs` is the
//! command line over them; the fuzz targets (`fuzz/`) parse configuration and input through
//! the same functions the command uses.

pub mod bench;
pub mod bench_state;
pub mod client;
pub mod cluster_cmd;
pub mod dev_cluster;
pub mod group_cmd;
pub mod history_cmd;
pub mod jepsen;
pub mod node_config;
pub mod output;

/// Exit status for a wrong expected version.
pub const EXIT_WRONG_VERSION: u8 = 3;

/// A command's failure: what to print and the exit status.
#[derive(Debug)]
pub struct Failure {
    /// The message for stderr.
    pub message: String,
    /// The exit status.
    pub exit_code: u8,
}

impl Failure {
    /// A failure with exit status 1.
    pub fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            exit_code: 1,
        }
    }
}
