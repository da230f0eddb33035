//! The group-commit pipeline under contention: tasks append to shared streams with expected
//! versions and retry earlier appends while groups are in flight (written, not yet indexed) and
//! segments roll. Every acknowledged append must sit exactly at its acknowledged versions, every
//! retry must return the original result, and nothing unacknowledged may exist.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{append, event, small_config};
use strata_engine::rng::SplitMix64;
use strata_engine::{AppendRequest, AppendResult, Direction, Engine, Error, ExpectedVersion};

const STREAMS: [&str; 3] = ["x", "y", "z"];
const TASKS: u64 = 16;
const OPS: u64 = 150;

async fn client(engine: Arc<Engine>, task: u64) -> Vec<(AppendRequest, AppendResult)> {
    let mut rng = SplitMix64::new(task);
    let mut done: Vec<(AppendRequest, AppendResult)> = Vec::new();
    for op in 0..OPS {
        if !done.is_empty() && rng.below(5) == 0 {
            // Retry an acknowledged append: same request, the original answer.
            let (request, original) = done[rng.below(done.len() as u64) as usize].clone();
            let again = engine.append(request).await.unwrap();
            assert!(again.deduplicated);
            assert_eq!(
                (again.position, &again.streams),
                (original.position, &original.streams)
            );
            continue;
        }
        let stream = STREAMS[rng.below(3) as usize];
        let expected = match rng.below(3) {
            0 => ExpectedVersion::Any,
            _ => engine
                .reader()
                .stream_version(stream)
                .unwrap()
                .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact),
        };
        let id = ((task as u128) << 32) | (op as u128 + 1);
        let request = append(
            stream,
            expected,
            vec![event(id * 2, "a"), event(id * 2 + 1, &"b".repeat(200))],
        );
        match engine.append(request.clone()).await {
            Ok(r) => {
                assert!(!r.deduplicated);
                done.push((request, r));
            }
            // Another task got there first.
            Err(Error::WrongExpectedVersion { .. }) => {}
            Err(e) => panic!("task {task}: {e}"),
        }
    }
    done
}

fn check(engine: &Engine, acked: &[(AppendRequest, AppendResult)]) {
    let mut want: HashMap<&str, Vec<Option<u128>>> = HashMap::new();
    for (request, result) in acked {
        let part = &request.streams[0];
        let slots = want
            .entry(STREAMS.iter().find(|s| **s == part.stream).unwrap())
            .or_default();
        for (k, e) in part.events.iter().enumerate() {
            let v = (result.streams[0].first_version + k as u64) as usize;
            if slots.len() <= v {
                slots.resize(v + 1, None);
            }
            assert!(
                slots[v].is_none(),
                "two acknowledged appends got version {v} of {}",
                part.stream
            );
            slots[v] = Some(e.id.as_u128());
        }
    }
    for stream in STREAMS {
        let got: Vec<Option<u128>> = engine
            .reader()
            .read_stream(stream, None, Direction::Forwards, 4096)
            .unwrap()
            .iter()
            .map(|e| Some(e.id.as_u128()))
            .collect();
        assert_eq!(
            got,
            want.get(stream).cloned().unwrap_or_default(),
            "stream {stream}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contended_appends_and_retries_through_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    // Tiny groups, so that several are in flight (written, not yet indexed) at once.
    let config = strata_engine::EngineConfig {
        group_requests_max: 3,
        ..small_config()
    };
    let engine = Arc::new(Engine::open_dir(dir.path(), config).unwrap());
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| tokio::spawn(client(engine.clone(), t)))
        .collect();
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(
        acked.len() as u64 > TASKS * OPS / 4,
        "enough appends won: {}",
        acked.len()
    );
    check(&engine, &acked);
    engine.close();
    drop(engine);
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    check(&engine, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn truncation_waits_for_the_pipeline_and_appends_continue_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = strata_engine::EngineConfig {
        group_requests_max: 2,
        ..small_config()
    };
    let engine = Arc::new(Engine::open_dir(dir.path(), config.clone()).unwrap());
    // Appends in flight from several tasks while the truncation is queued behind them.
    let mut tasks = Vec::new();
    for t in 0..4u128 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let mut positions = Vec::new();
            for i in 0..40u128 {
                let r = engine
                    .append(append(
                        &format!("t-{t}"),
                        ExpectedVersion::Any,
                        vec![event((t << 32) | (i + 1), &"p".repeat(100))],
                    ))
                    .await
                    .unwrap();
                positions.push(r.position);
            }
            positions
        }));
    }
    let mut positions: Vec<u64> = Vec::new();
    for t in tasks {
        positions.extend(t.await.unwrap());
    }
    positions.sort();
    let cut = positions[positions.len() / 2];
    engine.truncate_from(cut).await.unwrap();
    let reader = engine.reader();
    assert_eq!(reader.end(), cut);
    let mut kept = 0;
    for t in 0..4u128 {
        let events = reader
            .read_stream(&format!("t-{t}"), None, Direction::Forwards, 4096)
            .unwrap();
        assert!(events.iter().all(|e| e.position < cut));
        assert!(events
            .iter()
            .enumerate()
            .all(|(v, e)| e.version == v as u64));
        kept += events.len();
    }
    assert_eq!(kept, positions.len() / 2);
    // Truncated ids are free again; versions continue from what is left.
    let again = engine
        .append(append(
            "t-0",
            ExpectedVersion::Any,
            vec![event(40, "again")],
        ))
        .await
        .unwrap();
    assert_eq!(again.position, cut);
    let left = reader.stream_version("t-1").unwrap();
    engine.close();
    drop(engine);
    let engine = Engine::open_dir(dir.path(), config).unwrap();
    assert_eq!(engine.reader().stream_version("t-1").unwrap(), left);
    assert!(engine
        .reader()
        .event_by_id(uuid::Uuid::from_u128(40))
        .unwrap()
        .is_some());
}

type Pending =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<AppendResult, Error>> + Send>>;

/// `Engine::submit` promises that appends submitted one after another are decided in that
/// order, whether an append finds the pipeline idle and runs alone on the caller's thread or
/// queues for the writer. A chain of appends, each expecting the version the one before it
/// creates, is submitted in bursts while other tasks keep it busy, then without them (runs of
/// single links find the pipeline idle and go alone once four groups of one came in a row,
/// each run followed by a queued link and one submitted at once): every link must land, in
/// order, and both paths must have been taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submitted_appends_keep_their_order_whether_alone_or_queued() {
    const LINKS: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let config = strata_engine::EngineConfig {
        group_requests_max: 2,
        ..small_config()
    };
    let engine = Arc::new(Engine::open_dir(dir.path(), config).unwrap());
    let mut noise: Vec<_> = (1..=3u128)
        .map(|t| {
            let engine = engine.clone();
            tokio::spawn(async move {
                for i in 0..150u128 {
                    let request = append(
                        &format!("noise-{t}"),
                        ExpectedVersion::Any,
                        vec![event((t << 32) | (i + 1), "n")],
                    );
                    engine.append(request).await.unwrap();
                }
            })
        })
        .collect();
    let mut burst = Vec::new();
    for i in 0..LINKS {
        if i == LINKS - 100 {
            // The last links find no other appender: their runs of singles go alone.
            for task in noise.drain(..) {
                task.await.unwrap();
            }
        }
        let expected = match i {
            0 => ExpectedVersion::NoStream,
            _ => ExpectedVersion::Exact(i - 1),
        };
        let request = append("chain", expected, vec![event(u128::from(i) + 1, "c")]);
        let quiet = i >= LINKS - 100;
        // Every third link goes through `submit_many` (alone or queued like `submit`): the
        // next link, submitted at once, must wait behind it. Once quiet, every tenth goes
        // with a side append (two in one `submit_many` always queue) right after six singles
        // (so the next link may run alone): the next, submitted at once, must wait behind it.
        let answer: Pending = if quiet && i % 10 == 6 {
            let side = append(
                "side",
                ExpectedVersion::Any,
                vec![event(1_000_000 + u128::from(i), "s")],
            );
            let answers = engine.submit_many(vec![request, side]).await;
            Box::pin(async move { answers.await.swap_remove(0) })
        } else if i % 3 == 1 {
            let answers = engine.submit_many(vec![request]).await;
            Box::pin(async move { answers.await.pop().unwrap() })
        } else {
            Box::pin(engine.submit(request).await.unwrap())
        };
        burst.push((i, answer));
        let burst_len = match (quiet, i % 10) {
            (true, 6) => 2,
            (true, _) => 1,
            (false, _) => i % 5 + 1,
        };
        if burst.len() >= burst_len as usize {
            for (link, answer) in burst.drain(..) {
                let result = answer.await.unwrap_or_else(|e| panic!("link {link}: {e}"));
                assert_eq!(result.streams[0].first_version, link, "link {link}");
            }
        }
    }
    for (link, answer) in burst {
        assert_eq!(answer.await.unwrap().streams[0].first_version, link);
    }
    let stats = engine.stats();
    let alone = stats
        .appends_alone
        .load(std::sync::atomic::Ordering::Relaxed);
    let all = stats.appends.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        alone > 0 && alone < all,
        "both paths taken: {alone} of {all} appends alone"
    );
}

/// The lone path's rule: appends go through the writer until four groups of one came in a
/// row, then one appender waiting for each answer runs alone; a burst (groups of more than
/// one: appenders arriving together) sends the next appends back through the writer until
/// four singles came again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_run_alone_only_after_four_single_groups_in_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    let alone = || {
        engine
            .stats()
            .appends_alone
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut id = 0u128;
    let mut one = || {
        id += 1;
        append("s", ExpectedVersion::Any, vec![event(id, "e")])
    };
    let mut seen = Vec::new();
    for _ in 0..6 {
        engine.append(one()).await.unwrap();
        seen.push(alone());
    }
    assert_eq!(seen, [0, 0, 0, 0, 1, 2]);
    // 64 appends queued at once: the writer groups them (its first group's fdatasync alone
    // outlasts the queueing of all the rest), so the last groups held more than one.
    let burst: Vec<_> = (0..64).map(|_| one()).collect();
    let answers = engine.submit_many(burst).await.await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(alone(), 2, "a burst never runs alone");
    let mut after = Vec::new();
    for _ in 0..6 {
        engine.append(one()).await.unwrap();
        after.push(alone() - 2);
    }
    // At most one of the burst's groups (its last) held a single append.
    assert_eq!(after[..3], [0, 0, 0], "{after:?}");
    assert!(after[5] >= 1, "alone again after four singles: {after:?}");
}
