//! The order fence of one pipelined call (one `AppendStream`).
//!
//! A client retries an append that was refused (not the leader, busy) or whose outcome is
//! unknown, with the same event ids, after the appends it had sent behind it. If one of those
//! later appends is appended meanwhile — the node refused the first while a candidate and took
//! the next once elected — the retry lands after it, and two appends of one stream end up in
//! the log in the other order than sent. So once an append of a call fails in a way the
//! client retries, every later append of the call is refused untried ([`crate::ReplicaError::NotTried`]):
//!
//! ```text
//!   call:     a1      a2      a3          client: a1 refused → resend a1 a2 a3, in order
//!   node:  refused  not tried not tried   (without the fence: a2 appended, then a1 after it)
//! ```
//!
//! The fence is set where the failure is decided, before the next append is looked at: by the
//! proposer refusing a batch (it checks leadership before handing one to Raft, so a node that
//! is not the leader refuses synchronously, in order), by a queue that timed out, and by the
//! call itself when a failure answer passes. Raft refusing an entry the proposer already handed
//! on (leadership lost in the microseconds between the check and the write) reaches the fence
//! asynchronously; a later entry of the call is then refused by Raft too, since this node
//! cannot lead again before an election timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Set once an append of the call failed in a way its client retries; shared by the call's
/// appends (clones share it).
#[derive(Debug, Clone, Default)]
pub struct Fence(Arc<AtomicBool>);

impl Fence {
    /// A fence not set.
    pub fn new() -> Fence {
        Fence::default()
    }

    /// Every later append of the call is refused untried.
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether an append of the call failed.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
