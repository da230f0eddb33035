//! Consumer-group partitions, computed alike by every client and node: which partition a
//! stream's events belong to. A worker names the partitions it holds in its subscription's
//! filter ([`crate::v1::Partitions`]), and the node sends it only their events instead of the
//! whole prefix (the worker still files each event by this same function).

use crate::v1::Partitions;

/// Most partitions of a consumer group, its retry partition included (the node's bound).
pub const PARTITIONS_MAX: u32 = 1024;

/// FNV-1a, 64-bit, over `parts` each followed by the byte `0xff`: a hash every client computes
/// the same, in every language and version.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The partition of a stream's events among `partitions` (0 counts as 1).
pub fn partition_of(stream: &str, partitions: u32) -> u32 {
    (fnv1a(&[stream.as_bytes()]) % u64::from(partitions.max(1))) as u32
}

/// Whether `stream`'s partition is one of `p.held`. `p` must have passed [`check`] (`held`
/// in increasing order).
pub fn holds(p: &Partitions, stream: &str) -> bool {
    debug_assert!(check(p).is_ok(), "an unchecked partition filter: {p:?}");
    p.held.binary_search(&partition_of(stream, p.count)).is_ok()
}

/// Checks a partition filter: `count` from 1 to [`PARTITIONS_MAX`], `held` in strictly
/// increasing order and each below `count`. The error says what is wrong.
pub fn check(p: &Partitions) -> Result<(), String> {
    if p.count == 0 || p.count > PARTITIONS_MAX {
        return Err(format!(
            "count must be 1 to {PARTITIONS_MAX}, not {}",
            p.count
        ));
    }
    if let Some(n) = p.held.iter().find(|n| **n >= p.count) {
        return Err(format!(
            "held names partition {n}, but there are {} (0 to {})",
            p.count,
            p.count - 1
        ));
    }
    if let Some(w) = p.held.windows(2).find(|w| w.first() >= w.get(1)) {
        return Err(format!(
            "held must be in increasing order without repeats ({w:?} is not)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(count: u32, held: &[u32]) -> Partitions {
        Partitions {
            count,
            held: held.to_vec(),
        }
    }

    #[test]
    fn the_hash_is_pinned() {
        // Clients in other languages compute these: a change here splits groups differently.
        assert_eq!(fnv1a(&[]), 0xcbf2_9ce4_8422_2325);
        // (computed apart from this code, in Python)
        assert_eq!(fnv1a(&[b"a"]), 0x089b_c907_b544_c769);
        assert_eq!(partition_of("orders-1", 8), 3);
        assert_eq!(partition_of("order-{42}", 1023), 364);
        assert_eq!(partition_of("anything", 0), 0);
        assert_eq!(partition_of("anything", 1), 0);
    }

    #[test]
    fn a_filter_holds_exactly_its_partitions() {
        let streams: Vec<String> = (0..1000).map(|i| format!("s-{i}")).collect();
        let f = filter(8, &[1, 4, 6]);
        for s in &streams {
            assert_eq!(holds(&f, s), [1, 4, 6].contains(&partition_of(s, 8)), "{s}");
        }
        let shares = (0..8).map(|n| {
            streams
                .iter()
                .filter(|s| holds(&filter(8, &[n]), s))
                .count()
        });
        assert_eq!(
            shares.sum::<usize>(),
            streams.len(),
            "each stream in one partition"
        );
        assert!(streams.iter().all(|s| !holds(&filter(8, &[]), s)));
    }

    #[test]
    fn bad_filters_are_refused_with_what_is_wrong() {
        let e = |count, held: &[u32]| check(&filter(count, held)).expect_err("refused");
        assert!(e(0, &[]).contains("count must be 1 to 1024, not 0"));
        assert!(e(1025, &[]).contains("not 1025"));
        assert!(e(8, &[8]).contains("partition 8, but there are 8 (0 to 7)"));
        assert!(e(8, &[3, 3]).contains("increasing order"));
        assert!(e(8, &[4, 2]).contains("[4, 2]"));
        for ok in [filter(1, &[]), filter(1, &[0]), filter(1024, &[0, 1023])] {
            assert_eq!(check(&ok), Ok(()));
        }
    }
}
