//! The register workload: one stream (`register` after the run's prefix) used as a compare-and-set register,
//! its value the data (an integer) of its last event. Each client, in a loop:
//!
//! - `read`: a linearizable read of the stream's last event → its value, or nil;
//! - `write V`: an append of V (any expected version) — V unique to the run;
//! - `cas A B`: a linearizable read; if the value is not A, the cas fails (observed at the
//!   read); else an append of B expecting the version read: `ok`, or no effect when another
//!   write came in between (wrong expected version).
//!
//! An append the client could not confirm (unavailable, deadline) is `info`: strata-client
//! retried it with the same event ids, so it happened once or not at all. A cas that failed at
//! its read is recorded as the read it was (it saw the value). The history is checked with the
//! WGL search against the register model (`strata_check::models::Register`), after dropping
//! the unknown writes nobody saw (`prune_unobserved_writes`).

use serde_json::json;
use strata_check::models::RegisterOp;
use strata_check::wgl::Operation;
use strata_client::{event, pb, Client, Error, ExpectedVersion};

use super::history::Kind;
use super::rng::Rng;
use super::workload::{certainly_not_written, Ended, Names, Place, Record, Workload};

/// The register's stream, after the run's prefix.
pub const STREAM: &str = "register";

/// What an operation observed.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// It happened; for a read, the value.
    Ok(Option<i64>),
    /// A cas whose read saw another value: it failed, observed.
    CasMismatch(Option<i64>),
    /// It certainly had no effect and observed nothing.
    NoEffect(String),
    /// Unknown.
    Unknown(String),
}

/// The register's version and value now (linearizable), `None` before its first write.
async fn read(client: &Client, stream: &str) -> Result<Option<(u64, i64)>, Error> {
    let last = client.last_event(stream, pb::Consistency::Linearizable);
    let Some(e) = last.await? else {
        return Ok(None);
    };
    let value = std::str::from_utf8(&e.data)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| Error::InvalidArgument(format!("the register holds {:?}", e.data)))?;
    Ok(Some((e.version, value)))
}

async fn write(client: &Client, stream: &str, expected: ExpectedVersion, value: i64) -> Outcome {
    match client
        .append(stream, expected, vec![event("set", value.to_string())])
        .await
    {
        Ok(_) => Outcome::Ok(None),
        Err(e) if certainly_not_written(&e) => Outcome::NoEffect(e.to_string()),
        Err(e) => Outcome::Unknown(e.to_string()),
    }
}

async fn cas(client: &Client, stream: &str, from: i64, to: i64) -> Outcome {
    match read(client, stream).await {
        Ok(Some((version, value))) if value == from => {
            write(client, stream, ExpectedVersion::Exact(version), to).await
        }
        Ok(other) => Outcome::CasMismatch(other.map(|(_, v)| v)),
        Err(e) => Outcome::NoEffect(e.to_string()),
    }
}

/// The operation a client runs next.
#[derive(Debug, Clone, Copy)]
pub enum Input {
    /// Read the value.
    Read,
    /// Write a value.
    Write(i64),
    /// Compare and set.
    Cas(i64, i64),
}

impl Input {
    fn json(self) -> serde_json::Value {
        match self {
            Input::Read => serde_json::Value::Null,
            Input::Write(v) => json!(v),
            Input::Cas(a, b) => json!([a, b]),
        }
    }
}

/// The register workload of one client: it remembers the last value it saw, to make its
/// compare-and-sets likely to succeed.
#[derive(Debug)]
pub struct Register {
    seen: Option<i64>,
    stream: String,
}

impl Register {
    /// A client's workload on the register of `names`.
    pub fn new(names: &Names) -> Register {
        Register {
            seen: None,
            stream: names.of(STREAM),
        }
    }
}

impl Workload for Register {
    type Input = Input;
    type Outcome = Outcome;

    fn next(&mut self, rng: &mut Rng, fresh: u64) -> Input {
        let fresh = fresh as i64;
        match rng.below(4) {
            0 | 1 => Input::Read,
            2 => Input::Write(fresh),
            _ => Input::Cas(self.seen.unwrap_or(fresh - 1), fresh),
        }
    }

    fn describe(&self, input: &Input) -> (&'static str, serde_json::Value) {
        let f = match input {
            Input::Read => "read",
            Input::Write(_) => "write",
            Input::Cas(..) => "cas",
        };
        (f, input.json())
    }

    fn writes(&self, input: &Input) -> bool {
        !matches!(input, Input::Read)
    }

    async fn run(&mut self, client: &Client, input: Input) -> Ended<Outcome> {
        let outcome = match input {
            Input::Read => match read(client, &self.stream).await {
                Ok(v) => Outcome::Ok(v.map(|(_, v)| v)),
                Err(e) => Outcome::NoEffect(e.to_string()),
            },
            Input::Write(v) => write(client, &self.stream, ExpectedVersion::Any, v).await,
            Input::Cas(a, b) => cas(client, &self.stream, a, b).await,
        };
        let (kind, value) = match &outcome {
            Outcome::Ok(Some(v)) => (Kind::Ok, json!(v)),
            Outcome::Ok(None) if matches!(input, Input::Read) => (Kind::Ok, json!(null)),
            Outcome::Ok(None) => (Kind::Ok, input.json()),
            Outcome::CasMismatch(v) => (Kind::Fail, json!(v)),
            Outcome::NoEffect(why) => (Kind::Fail, json!(why)),
            Outcome::Unknown(why) => (Kind::Info, json!(why)),
        };
        if let (Input::Read, Outcome::Ok(v)) | (_, Outcome::CasMismatch(v)) = (input, &outcome) {
            self.seen = *v;
        }
        if let (Input::Write(v) | Input::Cas(_, v), Outcome::Ok(_)) = (input, &outcome) {
            self.seen = Some(v);
        }
        Ended {
            kind,
            value,
            outcome,
        }
    }

    fn record(&self, input: &Input, ended: &Ended<Outcome>, at: Place) -> Option<Record> {
        operation(at.process, *input, &ended.outcome, at.call, at.ret).map(Record::Register)
    }
}

/// The checker's view of one operation (`None`: no effect, nothing observed).
fn operation(
    process: u64,
    input: Input,
    outcome: &Outcome,
    call: usize,
    ret: usize,
) -> Option<Operation<RegisterOp>> {
    let (op, ret) = match (input, outcome) {
        (_, Outcome::NoEffect(_)) => return None,
        (Input::Read, Outcome::Ok(v)) => (RegisterOp::Read(*v), Some(ret)),
        (Input::Write(v), Outcome::Ok(_)) => (RegisterOp::Write(v), Some(ret)),
        (Input::Write(v), _) => (RegisterOp::Write(v), None),
        (Input::Cas(a, b), Outcome::Ok(_)) => (RegisterOp::Cas(a, b, Some(true)), Some(ret)),
        // The cas read another value and stopped there: a read of that value.
        (Input::Cas(..), Outcome::CasMismatch(v)) => (RegisterOp::Read(*v), Some(ret)),
        (Input::Cas(a, b), _) => (RegisterOp::Cas(a, b, None), None),
        (Input::Read, _) => return None,
    };
    Some(Operation {
        client: process,
        op,
        call,
        ret,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use strata_check::models::Register;
    use strata_check::wgl::{self, Budget, Verdict};

    fn check(ops: Vec<Option<Operation<RegisterOp>>>) -> Verdict {
        let ops: Vec<_> = ops.into_iter().flatten().collect();
        let budget = Budget {
            deadline: std::time::Instant::now() + std::time::Duration::from_secs(5),
            states_max: 1 << 20,
        };
        wgl::check(&Register, &ops, budget)
    }

    #[test]
    fn the_operations_the_checker_gets_catch_a_stale_read_and_pass_a_good_history() {
        let write = |p, v, call, ret| operation(p, Input::Write(v), &Outcome::Ok(None), call, ret);
        let read = |p, v, call, ret| operation(p, Input::Read, &Outcome::Ok(v), call, ret);
        // Write 1, then write 2, then a read of 1 after both acknowledged: stale.
        let stale = vec![write(0, 1, 0, 1), write(1, 2, 2, 3), read(2, Some(1), 4, 5)];
        assert_eq!(check(stale), Verdict::NotLinearizable);
        // The same with the second write unknown: it may not have happened, so reading 1 is fine.
        let unknown = vec![
            write(0, 1, 0, 1),
            operation(
                1,
                Input::Write(2),
                &Outcome::Unknown("timeout".into()),
                2,
                3,
            ),
            read(2, Some(1), 4, 5),
        ];
        assert_eq!(check(unknown), Verdict::Linearizable);
        // A cas that saw another value is a read of it: it contradicts a register holding 1.
        let mismatch = vec![
            write(0, 1, 0, 1),
            operation(1, Input::Cas(1, 5), &Outcome::CasMismatch(Some(7)), 2, 3),
        ];
        assert_eq!(check(mismatch), Verdict::NotLinearizable);
        // Operations with no effect and nothing observed are left out.
        assert!(operation(
            0,
            Input::Cas(1, 2),
            &Outcome::NoEffect("conflict".into()),
            0,
            1
        )
        .is_none());
    }
}
