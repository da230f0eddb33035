//! The client's settings: every bound named with its unit, its default documented, and
//! checked by [`ClientConfig::validate`] before the client starts.

use std::time::Duration;

use crate::error::Error;

/// Most addresses one client is given.
pub const ADDRESSES_MAX: usize = 64;
/// Most attempts any one call makes ([`ClientConfig::attempts_max`]'s upper bound).
pub const ATTEMPTS_LIMIT: u32 = 100;
/// Bounds of [`ClientConfig::window`] (appends in flight per pipelined appender).
pub const WINDOW_RANGE: std::ops::RangeInclusive<usize> = 1..=65_536;
/// Most appends one pipelined message may carry (the server's bound too).
pub const BATCH_APPENDS_LIMIT: usize = 1024;
/// Longest linger of a pipelined appender.
pub const LINGER_MAX: Duration = Duration::from_secs(1);

/// How a [`crate::Client`] connects, retries and pipelines.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Nodes to talk to, `host:port` or a URL (`http://`, `https://` with TLS). The client
    /// starts at the first, follows leader hints, and moves on when one does not answer.
    pub addresses: Vec<String>,
    /// Connecting to a node. Default 2 s.
    pub connect_timeout: Duration,
    /// One attempt of a call. Default 10 s.
    pub attempt_timeout: Duration,
    /// A whole call, retries included. Default 30 s.
    pub deadline: Duration,
    /// Most attempts of one call (redirects to a named leader count). Default 12, at most
    /// [`ATTEMPTS_LIMIT`].
    pub attempts_max: u32,
    /// First wait between attempts; doubles each time, with jitter. Default 50 ms.
    pub backoff_base: Duration,
    /// Longest wait between attempts. Default 1 s.
    pub backoff_max: Duration,
    /// Appends one pipelined appender keeps in flight (sent or batched, not yet answered);
    /// `append` waits for room past it. Default 1024, within [`WINDOW_RANGE`].
    pub window: usize,
    /// How long a pipelined appender waits for more appends to batch into one message after
    /// the first, while other appends are out (with none out, or once the last is answered,
    /// it sends at once); zero sends what is queued at once. Default 0, at most
    /// [`LINGER_MAX`].
    pub linger: Duration,
    /// Most appends in one pipelined message. Default 256, 1 to [`BATCH_APPENDS_LIMIT`].
    pub batch_appends_max: usize,
    /// Most bytes (encoded) of appends in one pipelined message; one larger append goes
    /// alone. Default 1 MiB, 1 KiB to [`strata_proto::MESSAGE_BYTES_HARD_MAX`].
    pub batch_bytes_max: usize,
    /// Whether [`crate::Client::append`] sends its appends over one `AppendStream` call
    /// shared by the client's tasks (the default, `true`) rather than one `Append` call each.
    /// Each append still waits for its own answer, with the same checks, errors and retry
    /// rules; the call's per-request work (HTTP/2 stream, headers, tasks on both sides) is
    /// paid once instead of per append — at 64 concurrent appenders about a third of the CPU
    /// per append (see ARCHITECTURE, "Unary appends over a shared stream"). Handles made by
    /// [`crate::Client::with_metadata`] (their metadata is per call) and appends whose shard
    /// another node leads make their own calls either way.
    pub append_over_stream: bool,
    /// Whether calls follow the leader (the default, `true`): to the leader a node names
    /// when it refuses, and for a stream straight to its shard's leader (the table read from
    /// the node). `false` binds the client to the given addresses, in order, moving on only
    /// when one does not answer: the node it talks to forwards to the leader. For clients that
    /// must stay with one node (in one zone; Jepsen's node-bound clients).
    pub follow_leaders: bool,
    /// TLS for `https://` addresses (the `tls` feature).
    #[cfg(feature = "tls")]
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            addresses: vec!["127.0.0.1:50051".into()],
            connect_timeout: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(30),
            attempts_max: 12,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            window: 1024,
            linger: Duration::ZERO,
            batch_appends_max: 256,
            batch_bytes_max: 1 << 20,
            append_over_stream: true,
            follow_leaders: true,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl ClientConfig {
    /// The default settings for these addresses.
    pub fn new<S: Into<String>>(addresses: impl IntoIterator<Item = S>) -> ClientConfig {
        ClientConfig {
            addresses: addresses.into_iter().map(Into::into).collect(),
            ..ClientConfig::default()
        }
    }

    /// Refuses settings outside their bounds, naming the setting.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if self.addresses.is_empty() || self.addresses.len() > ADDRESSES_MAX {
            return bad(format!(
                "addresses: 1 to {ADDRESSES_MAX} are needed, not {}",
                self.addresses.len()
            ));
        }
        if let Some(a) = self.addresses.iter().find(|a| a.trim().is_empty()) {
            return bad(format!("addresses: `{a}` is empty"));
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("attempt_timeout", self.attempt_timeout),
            ("deadline", self.deadline),
        ] {
            if d.is_zero() {
                return bad(format!("{name} must be above zero"));
            }
        }
        if !(1..=ATTEMPTS_LIMIT).contains(&self.attempts_max) {
            return bad(format!(
                "attempts_max: {} is outside 1..={ATTEMPTS_LIMIT}",
                self.attempts_max
            ));
        }
        if self.backoff_base > self.backoff_max {
            return bad(format!(
                "backoff_base ({:?}) is above backoff_max ({:?})",
                self.backoff_base, self.backoff_max
            ));
        }
        if !WINDOW_RANGE.contains(&self.window) {
            return bad(format!(
                "window: {} is outside {}..={}",
                self.window,
                WINDOW_RANGE.start(),
                WINDOW_RANGE.end()
            ));
        }
        if self.linger > LINGER_MAX {
            return bad(format!("linger: {:?} is above {LINGER_MAX:?}", self.linger));
        }
        if !(1..=BATCH_APPENDS_LIMIT).contains(&self.batch_appends_max) {
            return bad(format!(
                "batch_appends_max: {} is outside 1..={BATCH_APPENDS_LIMIT}",
                self.batch_appends_max
            ));
        }
        if !(1024..=strata_proto::MESSAGE_BYTES_HARD_MAX).contains(&self.batch_bytes_max) {
            return bad(format!(
                "batch_bytes_max: {} is outside 1024..={}",
                self.batch_bytes_max,
                strata_proto::MESSAGE_BYTES_HARD_MAX
            ));
        }
        Ok(())
    }

    /// The wait before attempt `attempt` (1 is the first retry): exponential from
    /// `backoff_base`, capped at `backoff_max`, between half and all of it (`jitter` in 0..1).
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let full = exp.min(self.backoff_max);
        full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_each_bound_is_named() {
        assert_eq!(ClientConfig::default().validate(), Ok(()));
        let cases: Vec<(ClientConfig, &str)> = vec![
            (ClientConfig::new(Vec::<String>::new()), "addresses"),
            (
                ClientConfig {
                    window: 0,
                    ..ClientConfig::default()
                },
                "window: 0",
            ),
            (
                ClientConfig {
                    window: 1 << 20,
                    ..ClientConfig::default()
                },
                "window: 1048576",
            ),
            (
                ClientConfig {
                    attempts_max: 0,
                    ..ClientConfig::default()
                },
                "attempts_max",
            ),
            (
                ClientConfig {
                    linger: Duration::from_secs(5),
                    ..ClientConfig::default()
                },
                "linger",
            ),
            (
                ClientConfig {
                    batch_appends_max: 5000,
                    ..ClientConfig::default()
                },
                "batch_appends_max",
            ),
            (
                ClientConfig {
                    deadline: Duration::ZERO,
                    ..ClientConfig::default()
                },
                "deadline",
            ),
        ];
        for (config, named) in cases {
            match config.validate() {
                Err(Error::Config(m)) => assert!(m.contains(named), "{m} should name {named}"),
                other => panic!("{named}: {other:?}"),
            }
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_bounded_jitter() {
        let c = ClientConfig::default();
        assert_eq!(c.backoff(1, 1.0), Duration::from_millis(50));
        assert_eq!(c.backoff(2, 1.0), Duration::from_millis(100));
        assert_eq!(c.backoff(3, 0.0), Duration::from_millis(100));
        assert_eq!(c.backoff(30, 1.0), Duration::from_secs(1));
    }
}
