//! The store driven as a Raft log (what strata-raft does): entries by index, a batch of appends
//! decided one by one into one record, rejections and retries answered in place, truncation
//! of unfinished entries, reopen with the unapplied tail handed back, and a follower copying
//! the leader's frames byte for byte (but for the local header fields).

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{append, event, small_config};
use strata_engine::clock::ManualClock;
use strata_engine::format::{self, KIND_BLANK, KIND_EVENTS};
use strata_engine::fs::StdFs;
use strata_engine::index_store::RocksIndexStore;
use strata_engine::validate::Validated;
use strata_engine::{Direction, EntryBody, Error, ExpectedVersion, LogEntry, Store, WrittenEntry};

fn open(dir: &std::path::Path) -> (Store, Vec<WrittenEntry>) {
    let index = RocksIndexStore::open(&dir.join("index")).unwrap();
    Store::open_replica(
        Arc::new(StdFs),
        dir,
        Box::new(index),
        small_config(),
        Arc::new(ManualClock::default()),
    )
    .unwrap()
}

fn entry(seq: u64, body: EntryBody) -> LogEntry {
    LogEntry {
        seq,
        term: 3,
        leader: 1,
        body,
    }
}

fn appends(requests: Vec<strata_engine::AppendRequest>) -> EntryBody {
    let limits = small_config().limits;
    EntryBody::Appends(
        requests
            .into_iter()
            .map(|r| Validated::new(r, &limits).unwrap())
            .collect(),
    )
}

/// Syncs and applies (finishes) written entries, as the Raft state machine does.
fn apply(store: &Store, entries: Vec<WrittenEntry>) {
    let finisher = store.finisher();
    let groups: Vec<_> = entries.into_iter().map(|e| e.group).collect();
    let points: Vec<_> = groups.iter().map(|g| g.sync_point()).collect();
    finisher.sync_points(&points).unwrap();
    for (_, answer) in finisher.finish(groups, &Ok(())) {
        answer.unwrap();
    }
}

#[test]
fn a_batch_is_decided_in_order_into_one_record_and_retries_answer_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, pending) = open(dir.path());
    assert!(pending.is_empty());
    // A leader's no-op at index 0 (an empty log may start at any index).
    let mut written = store
        .write_entries(vec![entry(0, EntryBody::Blank)])
        .unwrap();
    let batch = vec![
        append("s1", ExpectedVersion::NoStream, vec![event(1, "a")]),
        append("s2", ExpectedVersion::Exact(5), vec![event(2, "b")]),
        append(
            "s3",
            ExpectedVersion::Any,
            vec![event(3, "c"), event(4, "d")],
        ),
    ];
    written.extend(store.write_entries(vec![entry(1, appends(batch))]).unwrap());
    let decided = written[1].decided.as_ref().unwrap();
    let a = decided[0].as_ref().unwrap();
    assert!(matches!(
        decided[1],
        Err(Error::WrongExpectedVersion { actual: None, .. })
    ));
    let c = decided[2].as_ref().unwrap();
    assert_eq!(a.position, c.position, "accepted appends share the record");
    assert_eq!(
        (c.streams[0].first_version, c.streams[0].last_version),
        (0, 1)
    );
    // A retry of the first append, proposed before anything is applied: answered with the
    // original result from the in-flight effects, written as a blank record.
    let retry = vec![append("s1", ExpectedVersion::NoStream, vec![event(1, "a")])];
    let more = store.write_entries(vec![entry(2, appends(retry))]).unwrap();
    let again = more[0].decided.as_ref().unwrap()[0].as_ref().unwrap();
    assert!(again.deduplicated);
    assert_eq!(again.position, a.position);
    // It was synced; then a new leader overrides index 2: truncating drops that unfinished
    // entry, and what replaces it does not count as synced.
    let points: Vec<_> = more.iter().map(|e| e.group.sync_point()).collect();
    store.finisher().sync_points(&points).unwrap();
    assert_eq!(store.truncate_entries(2).unwrap(), 1);
    assert_eq!(store.next_seq(), 2);
    drop(more);
    let replaced = store
        .write_entries(vec![entry(2, EntryBody::Blank)])
        .unwrap();
    let header = store.read_entries(2, 3, usize::MAX).unwrap()[0].header;
    assert!(
        header.synced_end <= header.position,
        "a rewritten position claimed synced: {header:?}"
    );
    assert_eq!(store.truncate_entries(2).unwrap(), 1);
    drop(replaced);
    let raw = store.read_entries(0, 10, usize::MAX).unwrap();
    assert_eq!(raw.len(), 2);
    assert_eq!(format::read_kind(&raw[0].frame), KIND_BLANK);
    assert_eq!(format::read_kind(&raw[1].frame), KIND_EVENTS);
    assert_eq!(
        (raw[1].header.term, raw[1].header.leader, raw[1].header.seq),
        (3, 1, 1)
    );
    // Nothing is readable before it is applied.
    assert!(store
        .reader()
        .read_stream("s1", None, Direction::Forwards, 10)
        .unwrap()
        .is_empty());
    apply(&store, written);
    let s3 = store
        .reader()
        .read_stream("s3", None, Direction::Forwards, 10)
        .unwrap();
    assert_eq!(s3.len(), 2);
    assert!(store
        .reader()
        .read_stream("s2", None, Direction::Forwards, 10)
        .unwrap()
        .is_empty());
}

#[test]
fn reopen_hands_back_the_unapplied_tail_and_a_follower_copies_frames_exactly() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    {
        let (mut store, _) = open(leader_dir.path());
        let w = store
            .write_entries(vec![
                entry(5, EntryBody::Blank),
                entry(
                    6,
                    appends(vec![append("x", ExpectedVersion::Any, vec![event(9, "x")])]),
                ),
                entry(7, EntryBody::Membership(b"{\"m\":1}".to_vec())),
            ])
            .unwrap();
        let mut w = w.into_iter();
        // Apply only index 5; 6 and 7 stay unapplied.
        apply(&store, vec![w.next().unwrap()]);
        let points: Vec<_> = w.map(|e| e.group.sync_point()).collect();
        store.finisher().sync_points(&points).unwrap();
    }
    let (leader, pending) = open(leader_dir.path());
    assert_eq!(
        pending.iter().map(|p| p.seq).collect::<Vec<_>>(),
        vec![6, 7],
        "the unapplied tail comes back"
    );
    let (mut follower, _) = open(follower_dir.path());
    let frames = leader.read_entries(5, 8, usize::MAX).unwrap();
    let copy: Vec<LogEntry> = frames
        .iter()
        .map(|r| entry(r.header.seq, EntryBody::Frame(r.frame.clone())))
        .collect();
    follower.write_entries(copy).unwrap();
    let copied = follower.read_entries(5, 8, usize::MAX).unwrap();
    for (l, f) in frames.iter().zip(&copied) {
        assert_eq!(
            format::replicated_bytes(&l.frame),
            format::replicated_bytes(&f.frame)
        );
        assert_eq!(l.header.position, f.header.position);
    }
    // A frame for the wrong index is refused and changes nothing.
    let wrong = follower
        .write_entries(vec![entry(9, EntryBody::Frame(frames[0].frame.clone()))])
        .unwrap_err();
    assert!(matches!(wrong, Error::InvalidArgument { .. }), "{wrong}");
    assert_eq!(follower.next_seq(), 8);
    // A frame whose checksum holds but whose events do not fit it (what a corrupt or crafted
    // AppendEntries could carry) is refused before it enters the log, not found undecodable
    // when applied.
    let mut cut = frames[1].frame.to_vec();
    let events_end = cut.len() - 3;
    cut.truncate(events_end);
    // Entry 8 at the follower's next position: only its body is wrong.
    cut[format::FRAME_BYTES + 16..format::FRAME_BYTES + 24].copy_from_slice(&8u64.to_le_bytes());
    let last = copied.last().unwrap();
    format::restamp(&mut cut, last.header.position + last.frame.len() as u64, 0);
    let refused = follower
        .write_entries(vec![entry(8, EntryBody::Frame(cut.into()))])
        .unwrap_err();
    assert!(refused.to_string().contains("does not fit"), "{refused}");
    assert_eq!(follower.next_seq(), 8);
}

/// Found by the simulator (seed 28): an index checkpoint standing exactly at the end of a
/// sealed segment's records was taken for a mismatch at reopen, and the whole index dropped.
#[test]
fn a_checkpoint_at_the_end_of_a_sealed_segment_keeps_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let data = "x".repeat(1500);
    let mut seq = 1;
    {
        let (mut store, _) = open(dir.path());
        loop {
            let body = appends(vec![append(
                "s",
                ExpectedVersion::Any,
                vec![event(seq as u128, &data)],
            )]);
            let written = store.write_entries(vec![entry(seq, body)]).unwrap();
            if store.reader().segments().len() > 1 {
                // This entry rolled the log: leave it unapplied, so the checkpoint stays at the
                // sealed segment's end.
                let points: Vec<_> = written.iter().map(|e| e.group.sync_point()).collect();
                store.finisher().sync_points(&points).unwrap();
                break;
            }
            apply(&store, written);
            seq += 1;
        }
        store.finisher().flush_index().unwrap();
    }
    let (store, pending) = open(dir.path());
    assert_eq!(
        pending.iter().map(|p| p.seq).collect::<Vec<_>>(),
        vec![seq],
        "only the unapplied entry comes back; the index was kept"
    );
    let events = store
        .reader()
        .read_stream("s", None, Direction::Forwards, 1000)
        .unwrap();
    assert_eq!(events.len() as u64, seq - 1);
}

fn one_event(seq: u64, data: &str) -> EntryBody {
    appends(vec![append(
        "s",
        ExpectedVersion::Any,
        vec![event(seq as u128, data)],
    )])
}

/// Fills most of the first segment with applied entries 1..N (1 KiB events); returns N + 1.
fn fill(store: &mut Store) -> u64 {
    let mut seq = 1;
    loop {
        let written = store
            .write_entries(vec![entry(seq, one_event(seq, &"x".repeat(1000)))])
            .unwrap();
        apply(store, written);
        let r = store.read_entries(seq, seq + 1, usize::MAX).unwrap();
        seq += 1;
        if r[0].header.position + r[0].frame.len() as u64 > 13_000 {
            return seq;
        }
    }
}

/// Writes entry `seq` with a 3.5 KiB event, which does not fit in the first segment and rolls
/// the log (left written and synced, not applied).
fn write_rolling(store: &mut Store, seq: u64) {
    let written = store
        .write_entries(vec![entry(seq, one_event(seq, &"z".repeat(3500)))])
        .unwrap();
    assert_eq!(
        store.reader().segments().len(),
        2,
        "the entry rolled the log"
    );
    let points: Vec<_> = written.iter().map(|e| e.group.sync_point()).collect();
    store.finisher().sync_points(&points).unwrap();
}

/// A leader and a follower (in their directories) holding the same applied entries 1..N,
/// after which the follower wrote entry N + 1, which rolled its log. Returns N + 1 last.
fn rolled_follower() -> (tempfile::TempDir, Store, tempfile::TempDir, Store, u64) {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let (mut leader, _) = open(leader_dir.path());
    let (mut follower, _) = open(follower_dir.path());
    let rolled = fill(&mut follower);
    write_rolling(&mut follower, rolled);
    assert_eq!(fill(&mut leader), rolled);
    (leader_dir, leader, follower_dir, follower, rolled)
}

/// The store in `dir` loses the record that rolled it (a torn write) but keeps the new
/// segment's header; reopened.
fn tear_off_rolling_record(store: Store, dir: &std::path::Path) -> (Store, Vec<WrittenEntry>) {
    let tail = store.reader().segments().last().unwrap().clone();
    drop(store);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&tail.path)
        .unwrap()
        .set_len(tail.records_start() - tail.base)
        .unwrap();
    open(dir)
}

/// Found by the simulator (seed 100579): a follower truncated the record that had made it
/// roll, kept the sealed segment and the empty new one, and could never take the leader's
/// next frame, which went on in the old segment.
#[test]
fn truncating_the_record_that_rolled_the_log_undoes_the_roll() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open(dir.path());
    let rolled = fill(&mut store);
    write_rolling(&mut store, rolled);
    let sealed_end = store.reader().segments()[0].footer.unwrap().records_end;
    assert_eq!(store.truncate_entries(rolled).unwrap(), 1);
    assert_eq!(
        store.reader().segments().len(),
        1,
        "the empty segment is gone"
    );
    // A small entry fits where the big one did not: it goes on in the first segment.
    let small = appends(vec![append(
        "s",
        ExpectedVersion::Any,
        vec![event(99_999, "y")],
    )]);
    let written = store.write_entries(vec![entry(rolled, small)]).unwrap();
    apply(&store, written);
    let r = store.read_entries(rolled, rolled + 1, usize::MAX).unwrap();
    assert_eq!(r[0].header.position, sealed_end);
    drop(store);
    let (store, pending) = open(dir.path());
    assert!(pending.is_empty());
    assert_eq!(store.reader().segments().len(), 1);
}

/// A follower whose own roll lost its record to a torn write (the empty segment survives
/// the crash) takes a leader frame that goes on in the previous segment.
#[test]
fn a_follower_unrolls_an_empty_segment_to_take_the_leaders_frame() {
    let (_leader_dir, mut leader, follower_dir, follower, rolled) = rolled_follower();
    // Where the follower's entry did not fit, the leader's is a small one that does.
    let written = leader
        .write_entries(vec![entry(rolled, one_event(99_999, "y"))])
        .unwrap();
    apply(&leader, written);
    let (mut follower, pending) = tear_off_rolling_record(follower, follower_dir.path());
    assert!(
        pending.is_empty(),
        "{:?}",
        pending.iter().map(|p| p.seq).collect::<Vec<_>>()
    );
    assert_eq!(follower.reader().segments().len(), 2, "sealed + empty tail");
    let frame = leader.read_entries(rolled, rolled + 1, usize::MAX).unwrap();
    let copy = vec![entry(rolled, EntryBody::Frame(frame[0].frame.clone()))];
    let written = follower.write_entries(copy).unwrap();
    apply(&follower, written);
    let mine = follower
        .read_entries(rolled, rolled + 1, usize::MAX)
        .unwrap();
    assert_eq!(mine[0].header.position, frame[0].header.position);
    assert_eq!(follower.reader().segments().len(), 1);
}

/// Found by the simulator (seed 1795675209575810142): a follower whose log differed from the
/// leader's was handed a frame further on than its empty tail segment; it rolled again on every
/// retry, piling up empty segments. A roll is always followed by a record, so a frame beyond
/// an empty tail means the logs differ: refused, and nothing changes.
#[test]
fn a_frame_beyond_an_empty_tail_is_refused_without_rolling_again() {
    let (_leader_dir, mut leader, follower_dir, follower, rolled) = rolled_follower();
    write_rolling(&mut leader, rolled);
    let (mut follower, _) = tear_off_rolling_record(follower, follower_dir.path());
    let end = follower.reader().segments().last().unwrap().records_start();
    // The leader's frame for that entry, as if the leader's log ran 5,000 bytes further.
    let record = leader.read_entries(rolled, rolled + 1, usize::MAX).unwrap();
    let mut frame = record[0].frame.to_vec();
    format::restamp(&mut frame, end + 5_000, 0);
    for _ in 0..3 {
        let copy = vec![entry(rolled, EntryBody::Frame(frame.clone().into()))];
        let err = follower.write_entries(copy).unwrap_err();
        assert!(
            err.to_string().contains("but this log continues at"),
            "{err}"
        );
        assert_eq!(follower.reader().segments().len(), 2, "no new segment");
        assert_eq!(follower.reader().segments()[1].records_start(), end);
    }
}

/// Found by the simulator (seed 303422): a leader rolls its segment on the estimated size of a
/// batch of appends; when every append is refused the record is a small blank one in the new
/// segment. A follower placing a blank entry by itself would keep it in the old segment, so it
/// must copy the leader's frame (the Raft layer sends blank records as frames).
#[test]
fn a_refused_batch_that_rolled_the_leader_is_copied_where_the_leader_put_it() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let (mut leader, _) = open(leader_dir.path());
    let (mut follower, _) = open(follower_dir.path());
    let next = fill(&mut leader);
    assert_eq!(fill(&mut follower), next);
    // Too big for the room left, and refused: the stream's version is not 1000.
    let refused = appends(vec![append(
        "s",
        ExpectedVersion::Exact(1000),
        vec![event(77_777, &"z".repeat(3500))],
    )]);
    let written = leader.write_entries(vec![entry(next, refused)]).unwrap();
    apply(&leader, written);
    let record = leader.read_entries(next, next + 1, usize::MAX).unwrap();
    assert_eq!(format::read_kind(&record[0].frame), KIND_BLANK);
    assert_eq!(
        leader.reader().segments().len(),
        2,
        "the estimate rolled the log"
    );
    let copy = vec![entry(next, EntryBody::Frame(record[0].frame.clone()))];
    let written = follower.write_entries(copy).unwrap();
    apply(&follower, written);
    let mine = follower.read_entries(next, next + 1, usize::MAX).unwrap();
    assert_eq!(mine[0].header.position, record[0].header.position);
}

/// The hybrid logical clock: a record's timestamp is its request's or one microsecond past the
/// log's last, whichever is later — across a clock stepping back, a reopen, and a follower
/// that copied a later leader's records.
#[test]
fn timestamps_increase_along_the_log_whatever_the_clocks_say() {
    let dir = tempfile::tempdir().unwrap();
    let stamped = |seq: u64, ts: u64| {
        appends(vec![strata_engine::AppendRequest::single(
            "s",
            ExpectedVersion::Any,
            vec![event(seq as u128, "x")],
            ts,
        )])
    };
    let timestamps = |store: &Store, from: u64, to: u64| -> Vec<u64> {
        store
            .read_entries(from, to, usize::MAX)
            .unwrap()
            .iter()
            .map(|r| r.header.timestamp_us)
            .collect()
    };
    {
        let (mut store, _) = open(dir.path());
        for (seq, ts) in [(1, 5_000), (2, 1_000), (3, 5_000), (4, 9_000)] {
            let written = store
                .write_entries(vec![entry(seq, stamped(seq, ts))])
                .unwrap();
            apply(&store, written);
        }
        assert_eq!(timestamps(&store, 1, 5), [5_000, 5_001, 5_002, 9_000]);
    }
    let (mut store, _) = open(dir.path());
    let written = store.write_entries(vec![entry(5, stamped(5, 10))]).unwrap();
    apply(&store, written);
    assert_eq!(
        timestamps(&store, 5, 6),
        [9_001],
        "the clock resumes after a reopen"
    );
    // A follower copies a leader's record stamped far ahead, then leads: it continues after.
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let (mut leader, _) = open(leader_dir.path());
    let (mut follower, _) = open(follower_dir.path());
    let written = leader
        .write_entries(vec![entry(1, stamped(1, 50_000))])
        .unwrap();
    apply(&leader, written);
    let frame = leader.read_entries(1, 2, usize::MAX).unwrap();
    let copy = vec![entry(1, EntryBody::Frame(frame[0].frame.clone()))];
    let written = follower.write_entries(copy).unwrap();
    apply(&follower, written);
    let written = follower
        .write_entries(vec![entry(2, stamped(2, 20))])
        .unwrap();
    apply(&follower, written);
    assert_eq!(timestamps(&follower, 1, 3), [50_000, 50_001]);
}

/// Found by the simulator (seed 9003732, faults crashes,disk,membership,partitions): a node
/// that had installed a snapshot of a log retention had reclaimed knew only each hole's first
/// entry, and asking whether it held an entry inside a hole (its committed id, after a power
/// cut) was an index error that kept it from starting. An entry retention reclaimed is no
/// entry: reading it finds nothing, on the node that reclaimed it and on a copy.
#[test]
fn entries_retention_reclaimed_are_absent_not_an_error() {
    use strata_engine::retention::RetentionConfig;
    use strata_engine::system;

    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open(dir.path());
    let mut seq = 0;
    let mut write = |store: &mut Store, request: strata_engine::AppendRequest| {
        seq += 1;
        let written = store
            .write_entries(vec![entry(seq, appends(vec![request]))])
            .unwrap();
        apply(store, written);
        seq
    };
    for i in 0..30 {
        let data = "g".repeat(1000);
        write(
            &mut store,
            append("gone", ExpectedVersion::Any, vec![event(i + 1, &data)]),
        );
    }
    let tombstone = strata_engine::NewEvent {
        event_type: system::TOMBSTONE_TYPE.into(),
        ..event(1_000, "")
    };
    let after_holes = write(
        &mut store,
        append(
            &system::deleted_stream("gone"),
            ExpectedVersion::NoStream,
            vec![tombstone],
        ),
    );
    for i in 0..30 {
        let data = "t".repeat(1000);
        write(
            &mut store,
            append("tail", ExpectedVersion::Any, vec![event(2_000 + i, &data)]),
        );
    }
    let settings = RetentionConfig {
        as_of_window_us: 1,
        ..RetentionConfig::default()
    };
    let report = store
        .retention()
        .pass(&settings, 1 << 40, u64::MAX, &mut |_| {})
        .unwrap();
    assert!(report.segments_rewritten > 0, "{report:?}");
    let check = |store: &Store| {
        assert!(
            store.read_entries(5, 6, usize::MAX).unwrap().is_empty(),
            "entry 5 was reclaimed"
        );
        let next = store
            .read_entries(after_holes, after_holes + 1, usize::MAX)
            .unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].header.seq, after_holes);
    };
    check(&store);
    // A copy indexed from the log's records (as a snapshot install or an index rebuild does)
    // knows only each hole's first entry.
    drop(store);
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let (store, pending) = open(dir.path());
    apply(&store, pending);
    check(&store);
}

/// Regression (found by `strata-client`'s subscription test): a `$all` subscription caught up
/// at the log's end, when a new leader then writes its blank entry there, reads on from the
/// blank record's position. It was refused as "not the position of a record" (only records
/// with events were recognised), ending the subscription after every failover.
#[test]
fn a_blank_records_position_is_a_record_position_to_read_from() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open(dir.path());
    let first = store
        .write_entries(vec![entry(
            0,
            appends(vec![append("s", ExpectedVersion::Any, vec![event(1, "a")])]),
        )])
        .unwrap();
    apply(&store, first);
    let blank_at = store.reader().end();
    let blank = store
        .write_entries(vec![entry(1, EntryBody::Blank)])
        .unwrap();
    apply(&store, blank);
    let after = store
        .write_entries(vec![entry(
            2,
            appends(vec![append("s", ExpectedVersion::Any, vec![event(2, "b")])]),
        )])
        .unwrap();
    apply(&store, after);
    let reader = store.reader();
    assert!(reader.is_record_position(blank_at).unwrap());
    let batch = reader.read_all_as_of(blank_at, 10, None).unwrap();
    let events: Vec<_> = batch.records.iter().flat_map(|r| &r.events).collect();
    assert_eq!(events.len(), 1, "the event after the blank record");
    // Inside a record is still no record position.
    assert!(!reader.is_record_position(blank_at + 1).unwrap());
}

/// A follower that copied the leader's fence record refuses the fenced stream's appends once
/// it decides them itself (a new leader). Found by the sharded simulator (seed 3, `--shards
/// 3`): records absorbed as frames did not add their fences, so a follower that took over
/// after a move's fence acknowledged writes the move never copied.
#[test]
fn a_follower_that_copied_a_fence_refuses_the_fenced_stream_once_it_decides() {
    use strata_engine::fence::{Fence, FenceChange, FENCES_STREAM};
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let slot = strata_slots::slot_of("acct-f", 64);
    let (event_type, data) = FenceChange::Set(Fence {
        slots: 64,
        start: slot,
        end: slot + 1,
        to: 0,
    })
    .encode();
    let mut fence = event(77, "{}");
    fence.event_type = event_type.into();
    fence.data = data.into();
    let (mut leader, _) = open(leader_dir.path());
    let written = leader
        .write_entries(vec![entry(
            1,
            appends(vec![append(
                FENCES_STREAM,
                ExpectedVersion::Any,
                vec![fence],
            )]),
        )])
        .unwrap();
    apply(&leader, written);
    let (mut follower, _) = open(follower_dir.path());
    let frames = leader.read_entries(1, 2, usize::MAX).unwrap();
    let copy: Vec<LogEntry> = frames
        .iter()
        .map(|r| entry(r.header.seq, EntryBody::Frame(r.frame.clone())))
        .collect();
    let copied = follower.write_entries(copy).unwrap();
    apply(&follower, copied);
    // The follower now leads: it decides the next entry's appends itself.
    let written = follower
        .write_entries(vec![entry(
            2,
            appends(vec![
                append("acct-f", ExpectedVersion::Any, vec![event(78, "{}")]),
                append("other-stream", ExpectedVersion::Any, vec![event(79, "{}")]),
            ]),
        )])
        .unwrap();
    let decided = written[0].decided.as_ref().unwrap();
    assert!(
        matches!(&decided[0], Err(Error::Moved { shard: 0, .. })),
        "{:?}",
        decided[0]
    );
    let answers = decided;
    assert!(answers[1].is_ok(), "{:?}", answers[1]);
}
