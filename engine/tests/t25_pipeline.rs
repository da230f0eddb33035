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
/// creates, is submitted in bursts (some find the pipeline idle) while other tasks keep it busy
/// part of the time: every link must land, in order, and both paths must have been taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submitted_appends_keep_their_order_whether_alone_or_queued() {
    const LINKS: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let config = strata_engine::EngineConfig {
        group_requests_max: 2,
        ..small_config()
    };
    let engine = Arc::new(Engine::open_dir(dir.path(), config).unwrap());
    let noise: Vec<_> = (1..=3u128)
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
        let expected = match i {
            0 => ExpectedVersion::NoStream,
            _ => ExpectedVersion::Exact(i - 1),
        };
        let request = append("chain", expected, vec![event(u128::from(i) + 1, "c")]);
        // Every third link goes through `submit_many`, which always queues: the next link,
        // submitted at once, must wait behind it rather than run alone.
        let answer: Pending = if i % 3 == 1 {
            let answers = engine.submit_many(vec![request]).await;
            Box::pin(async move { answers.await.pop().unwrap() })
        } else {
            Box::pin(engine.submit(request).await.unwrap())
        };
        burst.push((i, answer));
        if burst.len() == (i % 5 + 1) as usize {
            for (link, answer) in burst.drain(..) {
                let result = answer.await.unwrap_or_else(|e| panic!("link {link}: {e}"));
                assert_eq!(result.streams[0].first_version, link, "link {link}");
            }
        }
    }
    for (link, answer) in burst {
        assert_eq!(answer.await.unwrap().streams[0].first_version, link);
    }
    for task in noise {
        task.await.unwrap();
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
