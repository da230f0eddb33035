//! Corruption on real files: a flipped bit in a sealed segment is found by verify and on read;
//! one in the middle of the tail refuses open naming file and offset; a torn last record is
//! truncated with everything before it intact.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{append, event, small_config};
use strata_engine::fs::StdFs;
use strata_engine::verify::verify;
use strata_engine::{
    Direction, Engine, EngineConfig, Error, ExpectedVersion, Position, TailRecovery,
};

/// Appends `count` single-event records to stream "s"; returns their positions.
fn fill(dir: &Path, count: u128) -> Vec<Position> {
    let engine = Engine::open_dir(dir, small_config()).unwrap();
    let positions = (0..count)
        .map(|i| {
            engine
                .append_blocking(append(
                    "s",
                    ExpectedVersion::Any,
                    vec![event(i + 1, &"d".repeat(300))],
                ))
                .unwrap()
                .position
        })
        .collect();
    engine.close();
    positions
}

/// The tail segment (base, path) and the offset where its records end: the file runs on past
/// it with the zeros the writer preallocates.
fn tail_records_end(dir: &Path) -> (u64, PathBuf, u64) {
    let engine = Engine::open_dir(dir, small_config()).unwrap();
    let end = engine.reader().end();
    engine.close();
    drop(engine);
    let (base, path) = segments(dir).pop().unwrap();
    assert!(
        std::fs::metadata(&path).unwrap().len() > end - base,
        "no zeros past the records"
    );
    (base, path, end - base)
}

fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .strip_suffix(".log")
                .map(|n| (n.parse().unwrap(), p.clone()))
        })
        .collect();
    out.sort();
    out
}

fn flip(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x04;
    f.write_all_at(&b, offset).unwrap();
}

/// The segment holding `position`, and the position's offset in it.
fn locate(dir: &Path, position: Position) -> (PathBuf, u64) {
    let (base, path) = segments(dir)
        .into_iter()
        .rfind(|(b, _)| *b <= position)
        .unwrap();
    (path, position - base)
}

#[test]
fn flipped_bit_in_sealed_segment_is_found_by_verify_and_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let positions = fill(dir.path(), 120);
    assert!(segments(dir.path()).len() > 2);
    // Version 3's record is in the first, sealed segment; damage its payload.
    let (path, offset) = locate(dir.path(), positions[3]);
    assert_eq!(path, segments(dir.path())[0].1);
    flip(&path, offset + 120);
    let report = verify(&StdFs, dir.path(), &small_config(), |_| {}).unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.corruption[0].file, path);
    assert_eq!(
        report.corruption[0].offset, offset,
        "verify names the damaged record"
    );
    // Opening does not scan sealed segments, but reading the damaged event fails loudly.
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    match engine
        .reader()
        .read_stream("s", Some(3), Direction::Forwards, 1)
    {
        Err(Error::Corruption { file, .. }) => assert_eq!(file, path),
        other => panic!("expected corruption, got {other:?}"),
    }
    assert!(matches!(
        engine.reader().read_all(0, 100),
        Err(Error::Corruption { .. })
    ));
    // Undamaged events still read.
    assert_eq!(
        engine
            .reader()
            .read_stream("s", Some(100), Direction::Forwards, 5)
            .unwrap()
            .len(),
        5
    );
}

#[test]
fn flipped_bit_mid_tail_refuses_open_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let positions = fill(dir.path(), 120);
    let (tail_base, tail) = segments(dir.path()).pop().unwrap();
    let in_tail: Vec<Position> = positions
        .iter()
        .copied()
        .filter(|p| *p > tail_base)
        .collect();
    assert!(in_tail.len() >= 3, "the tail holds several records");
    let damaged = in_tail[in_tail.len() / 2];
    flip(&tail, damaged - tail_base + 60);
    match Engine::open_dir(dir.path(), small_config()) {
        Err(Error::Corruption {
            file,
            offset,
            reason,
        }) => {
            assert_eq!(file, tail);
            assert_eq!(offset, damaged - tail_base, "{reason}");
        }
        other => panic!("expected open to refuse, got {other:?}"),
    }
    // Nothing was changed by the refused open.
    let report = verify(&StdFs, dir.path(), &small_config(), |_| {}).unwrap();
    assert_eq!(report.corruption.len(), 1);
}

#[test]
fn torn_last_record_is_truncated_and_the_rest_is_intact() {
    let dir = tempfile::tempdir().unwrap();
    let positions = fill(dir.path(), 50);
    let (tail_base, tail, end) = tail_records_end(dir.path());
    // A crash in the middle of writing one more record: its first half reached the disk.
    let last = *positions.last().unwrap() - tail_base;
    let mut frame = vec![0u8; (end - last) as usize];
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&tail)
        .unwrap();
    file.read_exact_at(&mut frame, last).unwrap();
    file.write_all_at(&frame[..frame.len() / 2], end).unwrap();
    let report = verify(&StdFs, dir.path(), &small_config(), |_| {}).unwrap();
    assert!(report.is_clean());
    assert_eq!(report.torn_tail.as_ref().unwrap().offset, end);
    // Strict recovery refuses to cut anything.
    let strict = EngineConfig {
        tail_recovery: TailRecovery::Refuse,
        ..small_config()
    };
    assert!(matches!(
        Engine::open_dir(dir.path(), strict),
        Err(Error::Corruption { .. })
    ));
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    assert_eq!(engine.recovery().torn_tail, Some((tail.clone(), end)));
    let events = engine
        .reader()
        .read_stream("s", None, Direction::Forwards, 100)
        .unwrap();
    assert_eq!(events.len(), 50);
    assert!(events
        .iter()
        .enumerate()
        .all(|(i, e)| e.id.as_u128() == i as u128 + 1 && e.data.len() == 300));
    assert_eq!(std::fs::metadata(&tail).unwrap().len(), end);
    // Appends continue where the log now ends.
    assert_eq!(append_51st(&engine, 999), tail_base + end);
}

/// Appends event 51 (after `fill(_, 50)`); returns its position.
fn append_51st(engine: &Engine, id: u128) -> Position {
    engine
        .append_blocking(append(
            "s",
            ExpectedVersion::Exact(49),
            vec![event(id, "after")],
        ))
        .unwrap()
        .position
}

#[test]
fn a_cut_acknowledged_record_is_corruption_not_a_tear() {
    let dir = tempfile::tempdir().unwrap();
    let positions = fill(dir.path(), 50);
    let (tail_base, tail, end) = tail_records_end(dir.path());
    let last = *positions.last().unwrap() - tail_base;
    // The last record was acknowledged, so synced: a crash cannot have torn it. The index
    // checkpoint covers it, which is how open knows.
    OpenOptions::new()
        .write(true)
        .open(&tail)
        .unwrap()
        .set_len(last + (end - last) / 2)
        .unwrap();
    match Engine::open_dir(dir.path(), small_config()) {
        Err(Error::Corruption { file, offset, .. }) => assert_eq!((file, offset), (tail, last)),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn garbage_after_the_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 10);
    let (_, tail, end) = tail_records_end(dir.path());
    let len = std::fs::metadata(&tail).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&tail)
        .unwrap()
        .write_all_at(&[0xAB; 100], end)
        .unwrap();
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    assert_eq!(engine.recovery().torn_tail, Some((tail.clone(), end)));
    assert_eq!(engine.recovery().torn_bytes, len - end);
    assert_eq!(std::fs::metadata(&tail).unwrap().len(), end);
    assert_eq!(engine.reader().stream_version("s").unwrap(), Some(9));
}

#[test]
fn damaged_manifest_refuses_open() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 60);
    flip(&dir.path().join("log/MANIFEST"), 20);
    match Engine::open_dir(dir.path(), small_config()) {
        Err(Error::Corruption { file, .. }) => assert!(file.ends_with("MANIFEST")),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn a_lost_index_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 80);
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    let events = engine
        .reader()
        .read_stream("s", None, Direction::Forwards, 100)
        .unwrap();
    assert_eq!(events.len(), 80);
    assert!(
        engine
            .append_blocking(append(
                "s",
                ExpectedVersion::Any,
                vec![event(5, &"d".repeat(300))]
            ))
            .unwrap()
            .deduplicated
    );
}

/// Regression: killed after sealing a segment and creating the next file, before writing that
/// file's header (and before the manifest named it). Open refused the empty file as corruption.
#[test]
fn regression_kill_between_creating_a_segment_and_writing_its_header() {
    use strata_engine::segment::{segment_file_name, Footer};
    let dir = tempfile::tempdir().unwrap();
    let positions = fill(dir.path(), 50);
    let (tail_base, tail, len) = tail_records_end(dir.path());
    let mut bytes = std::fs::read(&tail).unwrap();
    bytes.truncate(len as usize);
    // Seal the tail as the roll would have: zeros cut, footer written and synced...
    let first_seq = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    let record_count = positions.iter().filter(|p| **p > tail_base).count() as u64;
    let footer = Footer {
        record_count,
        first_seq,
        last_seq: first_seq + record_count - 1,
        records_end: tail_base + len,
        records_crc: crc32fast::hash(&bytes[40..]),
    };
    let file = OpenOptions::new().write(true).open(&tail).unwrap();
    file.set_len(len).unwrap();
    file.write_all_at(&footer.encode(), len).unwrap();
    // ...and the next segment's file created, empty; the manifest still names the old tail.
    let next_base = tail_base + len + footer.encode().len() as u64;
    std::fs::File::create(dir.path().join("log").join(segment_file_name(next_base))).unwrap();
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    let events = engine
        .reader()
        .read_stream("s", None, Direction::Forwards, 100)
        .unwrap();
    assert_eq!(events.len(), 50);
    assert_eq!(
        append_51st(&engine, 500),
        next_base + 40,
        "appends continue in the recreated segment"
    );
    engine.close();
    drop(engine);
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    assert_eq!(engine.reader().stream_version("s").unwrap(), Some(50));
    assert!(verify(&StdFs, dir.path(), &small_config(), |_| {})
        .unwrap()
        .is_clean());
}

/// Regression: killed during the very first open of a new directory, after segment 0 was
/// created and before the first manifest was written.
#[test]
fn regression_kill_during_the_first_open_of_a_new_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("log")).unwrap();
    std::fs::File::create(
        dir.path()
            .join("log")
            .join(strata_engine::segment::segment_file_name(0)),
    )
    .unwrap();
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    engine
        .append_blocking(append(
            "s",
            ExpectedVersion::NoStream,
            vec![event(1, "first")],
        ))
        .unwrap();
    engine.close();
    drop(engine);
    // A directory whose manifest is missing while segments hold records still refuses to open.
    std::fs::remove_file(dir.path().join("log/MANIFEST")).unwrap();
    assert!(matches!(
        Engine::open_dir(dir.path(), small_config()),
        Err(Error::Corruption { .. })
    ));
}

/// The writer keeps zeros written past the tail's records (so most syncs flush data alone):
/// they are where the log ends, not a torn tail, and reopening keeps them.
#[test]
fn preallocated_zeros_past_the_records_are_a_clean_end() {
    let dir = tempfile::tempdir().unwrap();
    let positions = fill(dir.path(), 50);
    let (tail_base, tail, end) = tail_records_end(dir.path());
    let len = std::fs::metadata(&tail).unwrap().len();
    assert!(
        segments(dir.path()).len() > 1,
        "the fill rolled (sealed segments are cut to their footer)"
    );
    let strict = EngineConfig {
        tail_recovery: TailRecovery::Refuse,
        ..small_config()
    };
    let engine = Engine::open_dir(dir.path(), strict).unwrap();
    assert_eq!(engine.recovery().torn_tail, None);
    assert_eq!(engine.recovery().torn_bytes, 0);
    assert_eq!(std::fs::metadata(&tail).unwrap().len(), len);
    let position = append_51st(&engine, 500);
    assert_eq!(position, tail_base + end);
    assert!(position > *positions.last().unwrap());
    engine.close();
    drop(engine);
    let report = verify(&StdFs, dir.path(), &small_config(), |_| {}).unwrap();
    assert!(report.is_clean());
    assert_eq!(report.torn_tail, None);
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    assert_eq!(engine.reader().stream_version("s").unwrap(), Some(50));
}

/// A roll writes the footer after the records and syncs it before the manifest lists the
/// segment as sealed. A crash in between can tear the footer; when the records end exactly
/// where the preallocated zeros did (a full segment), the torn footer is left at the file's
/// last bytes, where a footer belongs. That is a torn tail, not corruption (seen in CI:
/// t20_model refused to reopen with "segment footer checksum mismatch").
#[test]
fn a_torn_footer_ending_the_tail_file_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 50);
    let (_, sealed) = segments(dir.path()).remove(0);
    let sealed_len = std::fs::metadata(&sealed).unwrap().len();
    let mut footer = [0u8; 56];
    OpenOptions::new()
        .read(true)
        .open(&sealed)
        .unwrap()
        .read_exact_at(&mut footer, sealed_len - 56)
        .unwrap();
    // The first 20 bytes of a footer reached the disk (its magic among them), the zeros
    // preallocated there stayed.
    footer[20..].fill(0);
    let (_, tail, end) = tail_records_end(dir.path());
    let file = OpenOptions::new().write(true).open(&tail).unwrap();
    file.set_len(end + 56).unwrap();
    file.write_all_at(&footer, end).unwrap();
    drop(file);

    let strict = EngineConfig {
        tail_recovery: TailRecovery::Refuse,
        ..small_config()
    };
    match Engine::open_dir(dir.path(), strict) {
        Err(Error::Corruption { file, offset, .. }) => {
            assert_eq!((file, offset), (tail.clone(), end))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    assert_eq!(engine.recovery().torn_tail, Some((tail.clone(), end)));
    assert_eq!(engine.recovery().torn_bytes, 56);
    assert_eq!(std::fs::metadata(&tail).unwrap().len(), end);
    assert_eq!(engine.reader().stream_version("s").unwrap(), Some(49));
    append_51st(&engine, 500);
    engine.close();
    drop(engine);
    let engine = Engine::open_dir(dir.path(), small_config()).unwrap();
    assert_eq!(engine.reader().stream_version("s").unwrap(), Some(50));
}
