//! The stock levels read model, kept by a consumer group (`stock-levels`, on every `stock-`
//! stream) as streams of its own: `levels-{stock-levels}-SKU`, whose last event is the SKU's
//! levels and the stock version they include. Each batch's new levels are appended in the same
//! atomic append as the group's commit (`Worker::commit_with`; the level streams share the
//! group's routing key, so one shard holds both): a worker killed mid-batch leaves neither, and
//! the batch comes again — exactly once inside Strata. Events a level stream already includes
//! (a batch handed out again) are skipped by their version. Any inventory process serves any
//! SKU from it with one read; it trails the aggregate by the group's delivery.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_client::group::{GroupTarget, Groups, Position, Worker, WorkerConfig};
use strata_client::{pb, Client, Error, ExpectedVersion};
use strata_service::server::stopped;
use tokio::sync::watch;

use crate::stock::StockEvent;

/// The group's name (and the level streams' routing key).
pub const GROUP: &str = "stock-levels";
/// The group's partitions.
pub const PARTITIONS: u32 = 4;
/// How long a worker waits after the store failed it.
const BACKOFF: Duration = Duration::from_millis(500);

/// One SKU's levels as projected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Levels {
    /// Units in the warehouse.
    pub on_hand: u64,
    /// Units held by open reservations.
    pub reserved: u64,
    /// The last stock event included (`None`: none).
    pub stock_version: Option<u64>,
}

impl Levels {
    /// Units free to reserve.
    pub fn available(&self) -> u64 {
        self.on_hand.saturating_sub(self.reserved)
    }

    /// Includes stock event `e` at `version` (once: an event at or below the last included is
    /// skipped). Whether it was new.
    pub fn include(&mut self, version: u64, e: &StockEvent) -> bool {
        if self.stock_version.is_some_and(|v| version <= v) {
            return false;
        }
        match e {
            StockEvent::Restocked { quantity } => self.on_hand += quantity,
            StockEvent::Reserved { quantity, .. } => self.reserved += quantity,
            StockEvent::Released { quantity, .. } => {
                self.reserved = self.reserved.saturating_sub(*quantity)
            }
            StockEvent::Committed { quantity, .. } => {
                self.reserved = self.reserved.saturating_sub(*quantity);
                self.on_hand = self.on_hand.saturating_sub(*quantity);
            }
        }
        self.stock_version = Some(version);
        true
    }
}

/// The level stream of `sku`.
pub fn stream(sku: &str) -> String {
    format!("levels-{{{GROUP}}}-{sku}")
}

/// `sku`'s levels as projected, with their stream's version (`None`: nothing projected yet).
pub async fn read(store: &Client, sku: &str) -> Result<Option<(Levels, u64)>, Error> {
    // A read request's default consistency, as before.
    let name = stream(sku);
    let Some(e) = store.last_event(&name, pb::Consistency::default()).await? else {
        return Ok(None);
    };
    let levels = serde_json::from_slice(&e.data)
        .map_err(|err| Error::InvalidArgument(format!("{}@{}: {err}", e.stream, e.version)))?;
    Ok(Some((levels, e.version)))
}

/// Keeps the levels as worker `member` until `stop`.
pub async fn serve(store: Client, member: String, mut stop: watch::Receiver<bool>) {
    loop {
        let outcome = tokio::select! {
            r = work(&store, &member) => r,
            _ = stopped(&mut stop) => return,
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "projecting stock levels failed; starting again");
        }
        tokio::select! {
            _ = tokio::time::sleep(BACKOFF) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

async fn work(store: &Client, member: &str) -> Result<(), Error> {
    let target = GroupTarget::Prefix("stock-".into());
    Groups::new(store.clone())
        .ensure(GROUP, target, PARTITIONS, Position::From(0))
        .await?;
    let mut worker = Worker::join(store.clone(), GROUP, WorkerConfig::new(member)).await?;
    loop {
        let batch = worker.next_batch().await?;
        // The batch's events by SKU, in order.
        let mut by_sku: BTreeMap<String, Vec<(u64, StockEvent)>> = BTreeMap::new();
        for e in &batch.events {
            let Some(sku) = e.stream.strip_prefix("stock-") else {
                continue;
            };
            match serde_json::from_slice::<StockEvent>(&e.data) {
                Ok(s) => by_sku
                    .entry(sku.to_string())
                    .or_default()
                    .push((e.version, s)),
                Err(err) => worker.park(e, &format!("not a stock event: {err}")).await?,
            }
        }
        let mut outputs = Vec::new();
        for (sku, events) in by_sku {
            let (mut levels, version) = match read(store, &sku).await? {
                Some((l, v)) => (l, Some(v)),
                None => (Levels::default(), None),
            };
            let mut changed = false;
            for (v, e) in &events {
                changed |= levels.include(*v, e);
            }
            if changed {
                outputs.push(pb::StreamAppend {
                    stream: stream(&sku),
                    expected: Some(
                        version
                            .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact)
                            .wire(),
                    ),
                    events: vec![strata_client::event(
                        "levels",
                        serde_json::to_vec(&levels).unwrap_or_default(),
                    )],
                });
            }
        }
        worker.commit_with(&batch, outputs).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_include_each_event_once_in_order() {
        let mut l = Levels::default();
        assert!(l.include(0, &StockEvent::Restocked { quantity: 10 }));
        let r = StockEvent::Reserved {
            reservation: "s".into(),
            quantity: 4,
        };
        assert!(l.include(1, &r));
        assert!(!l.include(1, &r), "again: skipped");
        assert!(!l.include(0, &StockEvent::Restocked { quantity: 10 }));
        let c = StockEvent::Committed {
            reservation: "s".into(),
            quantity: 4,
        };
        assert!(l.include(2, &c));
        assert_eq!(
            (l.on_hand, l.reserved, l.available(), l.stock_version),
            (6, 0, 6, Some(2))
        );
        assert_eq!(stream("a1"), "levels-{stock-levels}-a1");
    }
}
