//! As-of reads: random histories (timestamps from a clock that wanders backwards too) read as
//! of random versions, positions and times must equal a model of the log. Appends are
//! committed in batches of several records, most of which the sparse time index leaves
//! without a key: timestamp lookups read the log between keys.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{event, open_sim, small_config};
use proptest::prelude::*;
use strata_engine::index_store::MemIndexStore;
use strata_engine::sim_fs::SimFs;
use strata_engine::{AppendRequest, AsOf, Direction, ExpectedVersion, Position};

/// One record of the model: where it is, its timestamp, its events (stream, version, id).
#[derive(Debug, Clone)]
struct Rec {
    position: Position,
    timestamp_us: u64,
    events: Vec<(String, u64, u128)>,
}

fn streams() -> [&'static str; 3] {
    ["a", "b", "c"]
}

/// Appends: (stream index, events, clock step in µs — may be negative, whether the batch
/// being gathered is committed after this append).
fn history() -> impl Strategy<Value = Vec<(usize, usize, i64, bool)>> {
    prop::collection::vec(
        (
            0..3usize,
            1..4usize,
            -3_000i64..5_000,
            prop::bool::weighted(0.2),
        ),
        1..60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn as_of_reads_equal_the_model(ops in history(), picks in prop::collection::vec(any::<u64>(), 12)) {
        let fs = SimFs::new(1);
        let index = MemIndexStore::new();
        let mut store = open_sim(&fs, &index, small_config()).unwrap();
        let mut model: Vec<Rec> = Vec::new();
        let mut heads = [0u64; 3];
        let mut clock: i64 = 1_000_000;
        let mut id = 0u128;
        let mut batch = Vec::new();
        let last = ops.len() - 1;
        for (i, (s, n, step, commit)) in ops.into_iter().enumerate() {
            clock = (clock + step).max(1);
            let stream = streams()[s];
            let events: Vec<_> = (0..n).map(|_| { id += 1; event(id, "e") }).collect();
            let ids: Vec<u128> = (id + 1 - n as u128..=id).collect();
            batch.push((AppendRequest::single(stream, ExpectedVersion::Any, events, clock as u64), s, ids));
            if !commit && i != last {
                continue;
            }
            let (requests, meta): (Vec<_>, Vec<_>) = batch.drain(..).map(|(r, s, ids)| (r, (s, ids))).unzip();
            for (result, (s, ids)) in store.commit(requests).into_iter().zip(meta) {
                let result = result.unwrap();
                let record = store.reader().read_all(result.position, 1).unwrap().records.remove(0);
                let first = heads[s];
                heads[s] += ids.len() as u64;
                model.push(Rec {
                    position: result.position,
                    timestamp_us: record.timestamp_us,
                    events: ids.iter().enumerate().map(|(k, i)| (streams()[s].to_string(), first + k as u64, *i)).collect(),
                });
            }
        }
        // The hybrid logical clock: timestamps increase along the log.
        prop_assert!(model.windows(2).all(|w| w[0].timestamp_us < w[1].timestamp_us));
        let reader = store.reader().clone();
        let last_ts = model.last().map_or(0, |r| r.timestamp_us);
        for pick in picks {
            let points = [
                AsOf::Position(model[(pick as usize) % model.len()].position),
                // Around a record's timestamp (just before, at, just after), or anywhere.
                match pick % 4 {
                    3 => AsOf::Timestamp(pick % (last_ts + 2_000)),
                    k => AsOf::Timestamp(
                        model[(pick >> 8) as usize % model.len()].timestamp_us + k - 1,
                    ),
                },
                AsOf::Version(pick % 40),
            ];
            for point in points {
                let visible = |r: &Rec| match point {
                    AsOf::Position(p) => r.position <= p,
                    AsOf::Timestamp(t) => r.timestamp_us <= t,
                    AsOf::Version(_) => true,
                };
                for stream in streams() {
                    let want: Vec<u128> = model
                        .iter()
                        .filter(|r| visible(r))
                        .flat_map(|r| r.events.iter())
                        .filter(|(s, v, _)| s == stream && match point { AsOf::Version(max) => *v <= max, _ => true })
                        .map(|(_, _, i)| *i)
                        .collect();
                    let got: Vec<u128> = reader
                        .read_stream_as_of(stream, None, Direction::Forwards, 1000, Some(point))
                        .unwrap()
                        .iter()
                        .map(|e| e.id.as_u128())
                        .collect();
                    prop_assert_eq!(&got, &want, "forwards {} as of {:?}", stream, point);
                    let mut back: Vec<u128> = reader
                        .read_stream_as_of(stream, None, Direction::Backwards, 1000, Some(point))
                        .unwrap()
                        .iter()
                        .map(|e| e.id.as_u128())
                        .collect();
                    back.reverse();
                    prop_assert_eq!(&back, &want, "backwards {} as of {:?}", stream, point);
                }
                if !matches!(point, AsOf::Version(_)) {
                    let want: Vec<Position> = model.iter().filter(|r| visible(r)).map(|r| r.position).collect();
                    let mut got = Vec::new();
                    let mut from = 0;
                    loop {
                        let batch = reader.read_all_as_of(from, 7, Some(point)).unwrap();
                        if batch.records.is_empty() {
                            break;
                        }
                        got.extend(batch.records.iter().map(|r| r.position));
                        from = batch.next;
                    }
                    prop_assert_eq!(&got, &want, "read-all as of {:?}", point);
                }
            }
        }
    }
}

/// Commits one event (id `id`, stamped 5) to stream `a`.
fn append_one(store: &mut strata_engine::Store, id: u128) -> strata_engine::AppendResult {
    store
        .commit(vec![AppendRequest::single(
            "a",
            ExpectedVersion::Any,
            vec![event(id, "x")],
            5,
        )])
        .remove(0)
        .unwrap()
}

#[test]
fn as_of_a_position_that_is_no_record_is_refused() {
    let fs = SimFs::new(1);
    let index = MemIndexStore::new();
    let mut store = open_sim(&fs, &index, small_config()).unwrap();
    let r = append_one(&mut store, 1);
    let err = store
        .reader()
        .read_stream_as_of(
            "a",
            None,
            Direction::Forwards,
            10,
            Some(AsOf::Position(r.position + 1)),
        )
        .unwrap_err();
    assert!(err.to_string().contains("as_of_position"), "{err}");
    let err = store
        .reader()
        .read_all_as_of(0, 10, Some(AsOf::Version(0)))
        .unwrap_err();
    assert!(err.to_string().contains("as_of_version"), "{err}");
}

/// A batch's records between its first and its last have no time key; the last key is the
/// last record's, and at open the clock resumes past it, so timestamps keep increasing.
#[test]
fn the_clock_resumes_past_the_newest_record_at_open() {
    use strata_engine::index_store::IndexStore;
    let fs = SimFs::new(1);
    let index = MemIndexStore::new();
    let mut store = open_sim(&fs, &index, small_config()).unwrap();
    let requests = (0..20u128)
        .map(|i| AppendRequest::single("a", ExpectedVersion::Any, vec![event(i + 1, "x")], 1_000))
        .collect();
    let results: Vec<_> = store
        .commit(requests)
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let stamps = |store: &strata_engine::Store| {
        let records = store.reader().read_all(0, 100).unwrap().records;
        records.iter().map(|r| r.timestamp_us).collect::<Vec<_>>()
    };
    assert_eq!(stamps(&store), (1_000..1_020).collect::<Vec<_>>());
    let last = results.last().unwrap().position;
    let sparse_ending_at_the_last_record = |index: &MemIndexStore| {
        let keys = index.scan(b"t", b"u", false, usize::MAX).unwrap();
        assert!(
            keys.len() < results.len() / 2,
            "{} time keys for {} records",
            keys.len(),
            results.len()
        );
        let (last_key, _) = keys.last().unwrap();
        assert_eq!(
            last_key[1..9],
            1_019u64.to_be_bytes(),
            "the last key's timestamp"
        );
        assert_eq!(
            last_key[9..17],
            last.to_be_bytes(),
            "the last key's position"
        );
    };
    sparse_ending_at_the_last_record(&index);
    drop(store);
    // An index built again from the log (catch-up at open) keys the same way.
    let rebuilt = MemIndexStore::new();
    drop(open_sim(&fs, &rebuilt, small_config()).unwrap());
    sparse_ending_at_the_last_record(&rebuilt);
    let mut store = open_sim(&fs, &index, small_config()).unwrap();
    append_one(&mut store, 99);
    assert_eq!(stamps(&store).last(), Some(&1_020));
    // Every record is found by its own timestamp, keyed or not.
    for (r, t) in results.iter().zip(1_000u64..) {
        let at = store.reader().position_at_or_after(t).unwrap();
        assert_eq!(at, Some(r.position), "timestamp {t}");
    }
}
