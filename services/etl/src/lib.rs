//! The analytics ETL service (`strata serve etl`, port 8092): runs pipelines from Strata's log
//! into PostgreSQL and ClickHouse, each event in the sink exactly once.
//!
//! - [`pipeline`]: the pipeline file (source, batching, sink, columns, quality, throttle),
//!   checked with line numbers;
//! - [`mapping`]: events to rows, with the quality rules ([`mapping::Transform`] for code:
//!   [`service::Etl::with_transforms`]);
//! - [`sink`]: the sinks and their exactly-once rules;
//! - [`runner`]: a pipeline's loop (group worker → write → commit), the quarantine stream, the
//!   throttle;
//! - [`backlog`]: how many events a pipeline is behind;
//! - [`reconcile`]: a window's rows, source against sink (count and checksum);
//! - [`outbox`]: the PostgreSQL outbox source (logical decoding into Strata, exactly once);
//! - [`service`]: the HTTP API.
//!
//! Settings: `[etl] pipelines = ["orders.toml", …]` and `outboxes = ["shop.toml", …]` in the
//! service's TOML file, or `STRATA_ETL_PIPELINES=orders.toml,…` and `STRATA_ETL_OUTBOXES=…`.

pub mod backlog;
pub mod clock;
pub mod mapping;
pub mod outbox;
pub mod pipeline;
pub mod reconcile;
pub mod runner;
pub mod service;
pub mod sink;
