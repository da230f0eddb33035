//! One SKU's stock: an event-sourced aggregate in the stream `stock-SKU`. Its events:
//! `restocked {quantity}`, `reserved {reservation, quantity}`, `released {reservation,
//! quantity}`, `committed {reservation, quantity}` (each carries its units, so a projection
//! needs no memory of the reservations). Its state is their fold; every change is decided on the state
//! read and appended expecting the version read (a concurrent change makes it decide again),
//! so stock is never reserved twice: `available = on_hand − reserved ≥ 0` holds after every
//! event. Operations on a reservation are idempotent (keyed by its id, the saga's).
//!
//! A [`Cache`] keeps the fold of up to [`SKUS_CACHED_MAX`] SKUs at a version: a change reads
//! only the events after it (a SKU's stream grows with every order; folding it whole for each
//! one grew with its history). A cached fold is never wrong, only possibly behind: the change
//! is appended expecting its version, and a conflict reads what came after.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use strata_client::{event, Client, Error, ExpectedVersion};

/// Most attempts of one change against concurrent ones.
pub const CONFLICT_RETRIES: u32 = 64;
/// Most events one SKU's stream may hold for a fold (reads stop there).
pub const STOCK_EVENTS_MAX: usize = 1_000_000;
/// SKUs whose fold a [`Cache`] keeps (beyond it, one is dropped and read whole next time).
pub const SKUS_CACHED_MAX: usize = 4096;
/// Largest quantity of one change.
pub const QUANTITY_MAX: u64 = 1_000_000_000;

/// A stock event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum StockEvent {
    /// Units added.
    Restocked {
        /// How many.
        quantity: u64,
    },
    /// Units held for a reservation.
    Reserved {
        /// The reservation (a saga's id).
        reservation: String,
        /// How many.
        quantity: u64,
    },
    /// A reservation given back.
    Released {
        /// The reservation.
        reservation: String,
        /// Its units.
        quantity: u64,
    },
    /// A reservation taken out of stock for good.
    Committed {
        /// The reservation.
        reservation: String,
        /// Its units.
        quantity: u64,
    },
}

impl StockEvent {
    fn type_name(&self) -> &'static str {
        match self {
            StockEvent::Restocked { .. } => "restocked",
            StockEvent::Reserved { .. } => "reserved",
            StockEvent::Released { .. } => "released",
            StockEvent::Committed { .. } => "committed",
        }
    }
}

/// Where a reservation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Held {
    /// Holding units.
    Open,
    /// Given back.
    Released,
    /// Taken out of stock.
    Committed,
}

/// One SKU's stock as its events say.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stock {
    /// Units in the warehouse: restocked minus committed.
    pub on_hand: u64,
    /// Units held by open reservations.
    pub reserved: u64,
    /// Every reservation: its units and where it is.
    #[serde(skip)]
    pub reservations: BTreeMap<String, (u64, Held)>,
    /// The stream's last version (`None`: no events).
    pub version: Option<u64>,
}

impl Stock {
    /// Units free to reserve.
    pub fn available(&self) -> u64 {
        self.on_hand.saturating_sub(self.reserved)
    }

    /// Applies one event; an event that would break the stock's rules is an error (a stream
    /// not written by these rules).
    pub fn apply(&mut self, e: &StockEvent) -> Result<(), String> {
        match e {
            StockEvent::Restocked { quantity } => self.on_hand += quantity,
            StockEvent::Reserved {
                reservation,
                quantity,
            } => {
                if *quantity > self.available() || self.reservations.contains_key(reservation) {
                    return Err(format!("reservation {reservation} oversells or repeats"));
                }
                self.reserved += quantity;
                self.reservations
                    .insert(reservation.clone(), (*quantity, Held::Open));
            }
            StockEvent::Released {
                reservation,
                quantity,
            }
            | StockEvent::Committed {
                reservation,
                quantity,
            } => {
                let Some((q, held)) = self.reservations.get_mut(reservation) else {
                    return Err(format!("reservation {reservation} is not held"));
                };
                if *held != Held::Open || *q != *quantity {
                    return Err(format!(
                        "reservation {reservation} is closed, or of other units"
                    ));
                }
                self.reserved -= *q;
                *held = if matches!(e, StockEvent::Committed { .. }) {
                    self.on_hand -= *q;
                    Held::Committed
                } else {
                    Held::Released
                };
            }
        }
        Ok(())
    }
}

/// The stream of `sku`.
pub fn stream(sku: &str) -> String {
    format!("stock-{sku}")
}

/// The folds of recently changed SKUs (see the module).
#[derive(Default)]
pub struct Cache(std::sync::Mutex<std::collections::HashMap<String, Stock>>);

impl Cache {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Stock>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `sku`'s cached fold, or an empty one (to be read whole).
    fn get(&self, sku: &str) -> Stock {
        self.lock().get(sku).cloned().unwrap_or_default()
    }

    fn put(&self, sku: &str, stock: &Stock) {
        let mut skus = self.lock();
        let newer = skus
            .get(sku)
            .is_none_or(|cached| cached.version <= stock.version);
        if !newer {
            return;
        }
        if skus.len() >= SKUS_CACHED_MAX && !skus.contains_key(sku) {
            if let Some(any) = skus.keys().next().cloned() {
                skus.remove(&any);
            }
        }
        skus.insert(sku.to_string(), stock.clone());
    }
}

/// Reads `sku`'s stock (now, or as of `as_of_us`).
pub async fn load(store: &Client, sku: &str, as_of_us: Option<u64>) -> Result<Stock, Error> {
    fold_from(store, sku, Stock::default(), as_of_us).await
}

/// `stock` with the events of `sku` after its version folded on (as of `as_of_us`).
async fn fold_from(
    store: &Client,
    sku: &str,
    mut stock: Stock,
    as_of_us: Option<u64>,
) -> Result<Stock, Error> {
    let mut from = stock.version.map(|v| v + 1);
    loop {
        let page = store
            .read(strata_client::pb::ReadRequest {
                stream: stream(sku),
                from_version: from,
                limit: 4096,
                as_of: as_of_us.map(|t| strata_client::pb::AsOf {
                    point: Some(strata_client::pb::as_of::Point::TimestampUs(t)),
                }),
                ..Default::default()
            })
            .await;
        let page = match page {
            Ok(p) => p,
            Err(Error::NotFound(_)) => return Ok(stock),
            Err(e) => return Err(e),
        };
        for e in &page.events {
            let parsed: StockEvent = serde_json::from_slice(&e.data).map_err(|err| {
                Error::InvalidArgument(format!("{}@{}: {err}", e.stream, e.version))
            })?;
            stock.apply(&parsed).map_err(Error::InvalidArgument)?;
            stock.version = Some(e.version);
        }
        match page.events.last() {
            Some(last) if page.events.len() >= 4096 || page.truncated => {
                from = Some(last.version + 1)
            }
            _ => return Ok(stock),
        }
    }
}

/// What a decision on the stock is.
enum Decided {
    /// Append this.
    Append(StockEvent),
    /// Nothing to append: answer this.
    Answer(Result<Stock, Refused>),
}

/// Why a change was not made (it never will be, as asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not enough units free.
    Insufficient {
        /// Units free.
        available: u64,
    },
    /// The reservation was given back (it cannot be committed).
    Released,
    /// No such reservation.
    Unknown,
}

/// Decides on the stock (the cached fold brought up to date) and appends expecting its
/// version, again on a conflict.
async fn change(
    (store, cache): (&Client, &Cache),
    sku: &str,
    decide: impl Fn(&Stock) -> Decided,
) -> Result<Result<Stock, Refused>, Error> {
    let mut stock = cache.get(sku);
    for _ in 0..CONFLICT_RETRIES {
        stock = fold_from(store, sku, stock, None).await?;
        cache.put(sku, &stock);
        let e = match decide(&stock) {
            Decided::Answer(a) => return Ok(a),
            Decided::Append(e) => e,
        };
        let expected = stock
            .version
            .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        let data = serde_json::to_vec(&e).unwrap_or_default();
        match store
            .append(&stream(sku), expected, vec![event(e.type_name(), data)])
            .await
        {
            Ok(r) => {
                stock.apply(&e).map_err(Error::InvalidArgument)?;
                stock.version = r.streams.first().map(|s| s.last_version);
                cache.put(sku, &stock);
                return Ok(Ok(stock));
            }
            Err(Error::WrongExpectedVersion { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::Unavailable(format!(
        "stock of {sku}: {CONFLICT_RETRIES} conflicting changes in a row"
    )))
}

/// Adds `quantity` units.
pub async fn restock(store: (&Client, &Cache), sku: &str, quantity: u64) -> Result<Stock, Error> {
    change(store, sku, |_| {
        Decided::Append(StockEvent::Restocked { quantity })
    })
    .await?
    .map_err(|_| Error::InvalidArgument("a restock is never refused".into()))
}

/// Holds `quantity` units for `reservation` (once: a second call finds it held).
pub async fn reserve(
    store: (&Client, &Cache),
    sku: &str,
    reservation: &str,
    quantity: u64,
) -> Result<Result<Stock, Refused>, Error> {
    change(store, sku, |s| {
        if s.reservations.contains_key(reservation) {
            return Decided::Answer(Ok(s.clone()));
        }
        if s.available() < quantity {
            return Decided::Answer(Err(Refused::Insufficient {
                available: s.available(),
            }));
        }
        Decided::Append(StockEvent::Reserved {
            reservation: reservation.to_string(),
            quantity,
        })
    })
    .await
}

/// Gives `reservation` back (nothing to do when it is not held, or closed).
pub async fn release(
    store: (&Client, &Cache),
    sku: &str,
    reservation: &str,
) -> Result<Stock, Error> {
    let r = change(store, sku, |s| match s.reservations.get(reservation) {
        Some((q, Held::Open)) => Decided::Append(StockEvent::Released {
            reservation: reservation.to_string(),
            quantity: *q,
        }),
        _ => Decided::Answer(Ok(s.clone())),
    })
    .await?;
    r.map_err(|_| Error::InvalidArgument("a release is never refused".into()))
}

/// Takes `reservation`'s units out of stock for good.
pub async fn commit(
    store: (&Client, &Cache),
    sku: &str,
    reservation: &str,
) -> Result<Result<Stock, Refused>, Error> {
    change(store, sku, |s| match s.reservations.get(reservation) {
        Some((q, Held::Open)) => Decided::Append(StockEvent::Committed {
            reservation: reservation.to_string(),
            quantity: *q,
        }),
        Some((_, Held::Committed)) => Decided::Answer(Ok(s.clone())),
        Some((_, Held::Released)) => Decided::Answer(Err(Refused::Released)),
        None => Decided::Answer(Err(Refused::Unknown)),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_the_newest_fold_and_a_bounded_number() {
        let cache = Cache::default();
        assert_eq!(cache.get("a"), Stock::default(), "unknown: read whole");
        let at = |v| Stock {
            on_hand: v,
            version: Some(v),
            ..Stock::default()
        };
        cache.put("a", &at(5));
        cache.put("a", &at(3));
        assert_eq!(
            cache.get("a"),
            at(5),
            "an older fold does not replace a newer one"
        );
        for n in 0..SKUS_CACHED_MAX + 10 {
            cache.put(&format!("sku-{n}"), &at(1));
        }
        assert_eq!(cache.lock().len(), SKUS_CACHED_MAX);
    }

    #[test]
    fn the_fold_keeps_the_rules() {
        let mut s = Stock::default();
        assert!(s.apply(&StockEvent::Restocked { quantity: 5 }).is_ok());
        let r = |id: &str, q| StockEvent::Reserved {
            reservation: id.into(),
            quantity: q,
        };
        assert!(s.apply(&r("a", 3)).is_ok());
        assert_eq!(s.available(), 2);
        assert!(s.apply(&r("b", 3)).is_err(), "oversells");
        assert!(s.apply(&r("a", 1)).is_err(), "repeats");
        let done = |id: &str, q| StockEvent::Committed {
            reservation: id.into(),
            quantity: q,
        };
        let back = |id: &str, q| StockEvent::Released {
            reservation: id.into(),
            quantity: q,
        };
        assert!(s.apply(&done("a", 2)).is_err(), "other units");
        assert!(s.apply(&done("a", 3)).is_ok());
        assert_eq!((s.on_hand, s.reserved, s.available()), (2, 0, 2));
        assert!(s.apply(&back("a", 3)).is_err(), "closed");
        assert!(s.apply(&back("zz", 1)).is_err());
    }
}
