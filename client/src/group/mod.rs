//! Consumer groups (durable, shared subscriptions): a named group on a stream, a stream
//! prefix or every user stream, whose position lives in Strata (`$group:G…` system streams),
//! shared by several [`Worker`]s with each stream handled by one worker at a time.
//!
//! ```no_run
//! # use strata_client::{Client, Error};
//! use strata_client::group::{Groups, GroupTarget, Position, Worker, WorkerConfig};
//! # async fn demo(client: Client) -> Result<(), Error> {
//! Groups::new(client.clone())
//!     .create("billing", GroupTarget::Prefix("order-".into()), 8, Position::From(0))
//!     .await?;
//! let mut worker = Worker::join(client, "billing", WorkerConfig::new("billing-1")).await?;
//! loop {
//!     let batch = worker.next_batch().await?;
//!     for e in &batch.events {
//!         println!("{}@{}", e.stream, e.version); // handle it
//!     }
//!     worker.commit(&batch).await?; // at-least-once; commit_with(…) for exactly-once outputs
//! }
//! # }
//! ```

mod admin;
pub mod protocol;
mod worker;

pub use admin::{GroupInfo, Groups, Parked, PartitionInfo, REGISTRY_EVENTS_MAX, REPLAY_EVENTS_MAX};
pub use protocol::{Definition, GroupTarget, ParkedFrom, Position, Progress, PARTITIONS_DEFAULT};
pub use worker::{members, Batch, Next, Worker, WorkerConfig};
