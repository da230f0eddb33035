//! The pace of a new replica's catch-up. A replica move adds its target as a learner, which
//! then takes the shard's whole log — entries its leader sends, or snapshot segments it
//! fetches. Unpaced, that traffic competes with clients for the source's disk, CPU and
//! network. A [`CatchUpPacer`] (the node's move throttle, which sets its rate from the
//! latency clients see) paces it:
//!
//! ```text
//!  leader ── AppendEntries ──▶ member that is not a voter by the leader's applied membership
//!     due() ≤ PACED_SLEEP_MAX: sleeps it, take(the message's encoded bytes), sends
//!     due() > PACED_SLEEP_MAX: not sent — Unreachable, and openraft's backoff is that wait
//!  source ◀── FetchLog(new_replica) ── replica that is not a voter by its own applied membership
//!     sleeps due(), take(the chunk's bytes), answers
//! ```
//!
//! openraft gives an AppendEntries one heartbeat interval (100 ms) to answer, so a leader never
//! sleeps long inside one: past [`PACED_SLEEP_MAX`] it reports the target unreachable for
//! exactly the wait (openraft logs that at warn level, once per wait). A voter catching up (a
//! follower back from a restart) is never paced: only a replica being added is, and it becomes
//! a voter once it has caught up.

use std::time::Duration;

use crate::storage::Shard;
use crate::types::NodeId;

/// Longest a leader sleeps before an AppendEntries to a new replica (a fifth of the default
/// heartbeat, which bounds the whole call); a longer wait is a backoff instead.
pub const PACED_SLEEP_MAX: Duration = Duration::from_millis(20);

/// Paces the bytes new replicas catch up with (see the module's notes).
pub trait CatchUpPacer: std::fmt::Debug + Send + Sync + 'static {
    /// How long until the bytes taken so far have gone at the rate now (zero: more may go).
    fn due(&self) -> Duration;
    /// Counts `bytes` as sent now.
    fn take(&self, bytes: u64);
}

/// Whether `node`'s replica of the group over `shard` is being added (a learner, or not yet
/// in the membership this replica applied): its catch-up is paced.
pub fn is_new_replica(shard: &Shard, node: NodeId) -> bool {
    !shard.is_voter(node)
}
