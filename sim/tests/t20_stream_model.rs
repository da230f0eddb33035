//! The stream model on small hand-made histories, each with a known answer.

// Test code (helpers too, which clippy does not count as tests): a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use strata_sim::wgl::Verdict;
use strata_sim::{check_history, Limits, ModelKind};

fn verdict(lines: &[&str]) -> Verdict {
    check_history(ModelKind::Stream, &lines.join("\n"), Limits::default())
        .unwrap()
        .verdict
}

const INVOKE_A: &str =
    r#"{"process":0,"type":"invoke","f":"append","stream":"s","expected":null,"events":["a"]}"#;
const INVOKE_B: &str =
    r#"{"process":1,"type":"invoke","f":"append","stream":"s","expected":null,"events":["b"]}"#;

#[test]
fn concurrent_no_stream_appends_cannot_both_succeed() {
    let ok = |p| format!(r#"{{"process":{p},"type":"ok","f":"append","first":0}}"#);
    assert_eq!(
        verdict(&[INVOKE_A, INVOKE_B, &ok(0), &ok(1)]),
        Verdict::NotLinearizable
    );
    let conflict = r#"{"process":1,"type":"fail","f":"append","actual":0}"#;
    assert_eq!(
        verdict(&[INVOKE_A, INVOKE_B, &ok(0), conflict]),
        Verdict::Linearizable
    );
}

#[test]
fn reads_must_see_acknowledged_appends_in_order() {
    let lines = [
        INVOKE_A,
        r#"{"process":0,"type":"ok","f":"append","first":0}"#,
        r#"{"process":0,"type":"invoke","f":"append","stream":"s","expected":0,"events":["b","c"]}"#,
        r#"{"process":0,"type":"ok","f":"append","first":1}"#,
        r#"{"process":1,"type":"invoke","f":"read","stream":"s"}"#,
    ];
    let read =
        |events: &str| format!(r#"{{"process":1,"type":"ok","f":"read","events":{events}}}"#);
    let mut good = lines.to_vec();
    let full = read(r#"["a","b","c"]"#);
    good.push(&full);
    assert_eq!(verdict(&good), Verdict::Linearizable);
    let mut stale = lines.to_vec();
    let old = read(r#"["a"]"#);
    stale.push(&old);
    assert_eq!(verdict(&stale), Verdict::NotLinearizable);
}

#[test]
fn a_timed_out_append_may_take_effect_later_or_never() {
    let timed_out = r#"{"process":0,"type":"info","f":"append"}"#;
    let read =
        |events: &str| format!(r#"{{"process":1,"type":"ok","f":"read","events":{events}}}"#);
    let invoke_read = r#"{"process":1,"type":"invoke","f":"read","stream":"s"}"#;
    for seen in [r#"["a"]"#, "[]"] {
        let r = read(seen);
        assert_eq!(
            verdict(&[INVOKE_A, timed_out, invoke_read, &r]),
            Verdict::Linearizable,
            "{seen}"
        );
    }
    let r = read(r#"["b"]"#);
    assert_eq!(
        verdict(&[INVOKE_A, timed_out, invoke_read, &r]),
        Verdict::NotLinearizable
    );
}
