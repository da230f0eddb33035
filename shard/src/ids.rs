//! Where the ids of events the server names come from (an append whose event has no id, the
//! markers a soft delete or a tombstone writes): time-ordered version-7 UUIDs (new ids land at
//! the end of the index's id keys instead of all over them). Behind a trait, like
//! the clock, so tests and the simulator can make them a function of a seed.

use std::sync::Mutex;

use strata_engine::rng::SplitMix64;
use uuid::Uuid;

/// Ids for events the server names.
pub trait IdSource: Send + Sync + std::fmt::Debug {
    /// A new, unique UUID.
    fn new_id(&self) -> Uuid;
}

/// The operating system's randomness.
#[derive(Debug, Default)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn new_id(&self) -> Uuid {
        Uuid::now_v7()
    }
}

/// Ids that are a function of a seed and of how many were drawn before.
#[derive(Debug)]
pub struct SeededIds {
    rng: Mutex<SplitMix64>,
}

impl SeededIds {
    /// A source whose ids follow from `seed`.
    pub fn new(seed: u64) -> SeededIds {
        SeededIds {
            rng: Mutex::new(SplitMix64::new(seed)),
        }
    }
}

impl IdSource for SeededIds {
    fn new_id(&self) -> Uuid {
        let mut rng = strata_engine::sync::lock(&self.rng);
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_ids_are_time_ordered_and_distinct() {
        let ids: Vec<Uuid> = (0..1000).map(|_| RandomIds.new_id()).collect();
        assert!(ids.iter().all(|id| id.get_version_num() == 7));
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        let first_ms = |id: &Uuid| id.as_u128() >> 80;
        assert!(ids.windows(2).all(|w| first_ms(&w[0]) <= first_ms(&w[1])));
    }

    #[test]
    fn seeded_ids_are_version_4_distinct_and_follow_from_the_seed() {
        let draw = |seed| {
            let ids = SeededIds::new(seed);
            (0..1000).map(|_| ids.new_id()).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        assert!(a.iter().all(|id| id.get_version_num() == 4));
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), a.len());
    }
}
