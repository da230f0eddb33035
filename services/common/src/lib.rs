//! What every Strata service shares, built once:
//!
//! - [`api`]: the JSON error answer, and the store's errors mapped to HTTP statuses;
//! - [`config`]: flags, environment and a TOML file, resolved and checked;
//! - [`correlation`]: a correlation id per request (`X-Request-Id` or W3C `traceparent`),
//!   in every log line and in the answer;
//! - [`http_client`]: JSON over HTTP/1.1 to what services call besides the store;
//! - [`metrics`]: Prometheus text at `/metrics`;
//! - [`server`]: the axum server with `/health` (JSON; 503 while the store is unreachable),
//!   `/metrics`, request counting and timing, JSON logs, graceful shutdown on SIGINT/SIGTERM;
//! - [`time`]: RFC 3339 times, parsed and formatted.
//!
//! A service talks to the store only through `strata-client`.

pub mod api;
pub mod arrivals;
pub mod config;
pub mod correlation;
pub mod http_client;
pub mod metrics;
pub mod process;
pub mod server;
pub mod time;

pub use config::{CommonArgs, ConfigError, LogFormat, Settings};

/// A command's failure: what to print and the exit status (1, or 2 for bad usage).
#[derive(Debug, Clone, PartialEq, Eq)]
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

    /// Bad usage: exit status 2.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            exit_code: 2,
        }
    }
}
pub use correlation::CorrelationId;
pub use metrics::Metrics;
pub use server::{serve, Service};
