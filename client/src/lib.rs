//! `strata-client`: the Rust client of Strata.
//!
//! One [`Client`] talks to a cluster (or a single node) given a list of addresses. It follows
//! the leader (a node that does not lead names the one that does), retries what is safe to
//! retry with backoff and bounded attempts, and answers with typed [`Error`]s. Appends are
//! idempotent: every event gets an id before the first attempt, so an append retried after
//! an unknown outcome is answered with its original result, never written twice.
//!
//! ```no_run
//! use strata_client::{event, Client, ExpectedVersion, Error};
//!
//! # async fn demo() -> Result<(), Error> {
//! let client = Client::connect(["127.0.0.1:50051", "127.0.0.1:50052", "127.0.0.1:50053"])?;
//! let r = client
//!     .append("order-42", ExpectedVersion::NoStream, vec![event("Placed", r#"{"total":12}"#)])
//!     .await?;
//! println!("order-42 is at version {}", r.streams[0].last_version);
//!
//! match client.append("order-42", ExpectedVersion::NoStream, vec![event("Placed", "{}")]).await {
//!     Err(Error::WrongExpectedVersion { actual, .. }) => println!("already at {actual:?}"),
//!     other => println!("{other:?}"),
//! }
//! # Ok(()) }
//! ```
//!
//! Appends made this way by many tasks of one client share one `AppendStream` call (each
//! still waits for its own answer; see [`ClientConfig::append_over_stream`]), which costs the
//! node and the client a third to a half of the CPU of one call per append (16 to 64 tasks).
//!
//! Pipelined appends keep many appends in flight on one connection ([`Appender`]):
//!
//! ```no_run
//! # use strata_client::{event, Client, ExpectedVersion, Error};
//! # async fn demo(client: Client) -> Result<(), Error> {
//! let appender = client.appender();
//! let mut pending = Vec::new();
//! for i in 0..10_000 {
//!     // Waits only when `window` appends are in flight.
//!     pending.push(appender.append("metrics", ExpectedVersion::Any, vec![event("Tick", format!("{i}"))]).await?);
//! }
//! for p in pending {
//!     p.await?; // each answered in order, with its own result
//! }
//! # Ok(()) }
//! ```
//!
//! Subscriptions resume after the last event delivered when their node goes away:
//!
//! ```no_run
//! # use strata_client::{Client, Error, Item, Start, Target};
//! # async fn demo(client: Client) -> Result<(), Error> {
//! let mut sub = client.subscribe(Target::Stream("order-42".into()), Start::Beginning);
//! loop {
//!     match sub.next().await? {
//!         Item::Event(e) => println!("{} {}", e.version, e.r#type),
//!         Item::CaughtUp => println!("live from here"),
//!     }
//! }
//! # }
//! ```

mod client;
mod config;
mod conn;
mod error;
mod events;
pub mod group;
mod pipeline;
mod routes;
mod subscribe;

pub use client::Client;
pub use config::{
    ClientConfig, ADDRESSES_MAX, ATTEMPTS_LIMIT, BATCH_APPENDS_LIMIT, LINGER_MAX, WINDOW_RANGE,
};
pub use error::Error;
pub use events::{event, ExpectedVersion};
pub use pipeline::{Appender, PendingAppend, IDLE_CALL_KEPT};
pub use strata_proto::metadata;
pub use strata_proto::v1 as pb;
pub use subscribe::{Item, Start, Subscription, Target};
