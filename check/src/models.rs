//! The sequential models and the history formats they read.
//!
//! - `cas-register` — Jepsen etcd logs (`INFO  jepsen.util - P :type :f value`): one register,
//!   initially nil, with read / write / compare-and-set. A `:fail :cas` is an observation (the
//!   value was not FROM); a timed-out read (`:fail :read :timed-out`) returned nothing and is
//!   dropped; `:info` (or no completion) is indeterminate.
//! - `kv` — EDN maps (`{:process P, :type :T, :f :F, :key "K", :value V}`): string keys,
//!   values start as "", get / put / append. Checked key by key.
//! - `stream` — Strata streams, JSON lines, one event per line:
//!   `{"process":P,"type":"invoke","f":"append","stream":"s","expected":N|null,"events":["e1",..]}`
//!   completed by `{"process":P,"type":"ok","f":"append","first":V}` (the version of its first
//!   event) or `{"process":P,"type":"fail","f":"append","actual":V|null}` (wrong expected
//!   version; the stream's actual last version, null = no stream), or `"type":"info"`
//!   (timed out); and `{"process":P,"type":"invoke","f":"read","stream":"s"}` completed by
//!   `{"process":P,"type":"ok","f":"read","events":["e1",..]}` (the whole stream). Checked
//!   stream by stream.
//!
//! Lines are in real-time order; a completion belongs to the latest invocation of its process.

use std::collections::HashMap;

use crate::wgl::{Model, Operation};

/// A history split by key (or stream): each part is checked on its own.
pub type Partitions<Op> = Vec<(String, Vec<Operation<Op>>)>;

/// Why a history could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

fn bad(line: usize, reason: impl Into<String>) -> ParseError {
    ParseError {
        line,
        reason: reason.into(),
    }
}

/// A completion type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

fn kind(text: &str, line: usize) -> Result<Kind, ParseError> {
    match text.trim_start_matches(':') {
        "invoke" => Ok(Kind::Invoke),
        "ok" => Ok(Kind::Ok),
        "fail" => Ok(Kind::Fail),
        "info" => Ok(Kind::Info),
        other => Err(bad(line, format!("unknown event type `{other}`"))),
    }
}

/// Pairs invocations with completions. `complete` turns (invocation input, completion kind,
/// completion value) into the operation, or `None` to drop it.
struct Pairing<I> {
    open: HashMap<u64, (usize, I)>,
}

impl<I> Pairing<I> {
    fn new() -> Self {
        Pairing {
            open: HashMap::new(),
        }
    }

    fn invoke(&mut self, process: u64, at: usize, input: I, line: usize) -> Result<(), ParseError> {
        if self.open.insert(process, (at, input)).is_some() {
            return Err(bad(
                line,
                format!("process {process} invoked again before its operation completed"),
            ));
        }
        Ok(())
    }

    fn complete(&mut self, process: u64, line: usize) -> Result<(usize, I), ParseError> {
        self.open
            .remove(&process)
            .ok_or_else(|| bad(line, format!("process {process} completes nothing")))
    }

    /// Operations still open at the end: indeterminate.
    fn leftovers(self) -> Vec<(u64, usize, I)> {
        let mut v: Vec<_> = self
            .open
            .into_iter()
            .map(|(p, (at, i))| (p, at, i))
            .collect();
        v.sort_by_key(|(_, at, _)| *at);
        v
    }
}

// ---------------------------------------------------------------------------------------------
// cas-register

/// A register operation with its observed result (`None` fields: unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOp {
    /// Read, returning the value (`None` in the option: nil).
    Read(Option<i64>),
    /// Write.
    Write(i64),
    /// Compare-and-set from → to; `Some(true)` ok, `Some(false)` failed, `None` unknown.
    Cas(i64, i64, Option<bool>),
}

/// One register, initially nil.
#[derive(Debug, Clone, Copy, Default)]
pub struct Register;

impl Model for Register {
    type State = Option<i64>;
    type Op = RegisterOp;

    fn init(&self) -> Option<i64> {
        None
    }

    fn step(&self, state: &Option<i64>, op: &RegisterOp) -> Option<Option<i64>> {
        match op {
            RegisterOp::Read(v) => (v == state).then_some(*state),
            RegisterOp::Write(v) => Some(Some(*v)),
            RegisterOp::Cas(from, to, result) => {
                let matches = *state == Some(*from);
                match result {
                    Some(true) => matches.then_some(Some(*to)),
                    Some(false) => (!matches).then_some(*state),
                    None => Some(if matches { Some(*to) } else { *state }),
                }
            }
        }
    }
}

/// Drops the unknown-outcome writes and compare-and-sets whose written value no operation
/// observed: the search then has far fewer pending operations to place. Sound: in any
/// linearization holding such an operation, the value it wrote is never read, so the next
/// operation that depends on the value (a read, a successful cas — both observe it) cannot come
/// before the next write; removing it leaves every other result as it was. A failed cas whose
/// observed value is unknown (`Cas(_, _, Some(false))`) depends on the value without naming
/// it, so a history with one is returned unpruned (record the value a failed cas saw as a
/// `Read` instead, as `strata jepsen` does).
pub fn prune_unobserved_writes(ops: Vec<Operation<RegisterOp>>) -> Vec<Operation<RegisterOp>> {
    if ops
        .iter()
        .any(|o| matches!(o.op, RegisterOp::Cas(_, _, Some(false))))
    {
        return ops;
    }
    let observed: std::collections::HashSet<i64> = ops
        .iter()
        .filter_map(|o| match o.op {
            RegisterOp::Read(v) => v,
            RegisterOp::Cas(from, _, Some(true)) => Some(from),
            _ => None,
        })
        .collect();
    ops.into_iter()
        .filter(|o| {
            let written = match o.op {
                RegisterOp::Write(v) | RegisterOp::Cas(_, v, None) => v,
                _ => return true,
            };
            o.ret.is_some() || observed.contains(&written)
        })
        .collect()
}

enum RegisterInput {
    Read,
    Write(i64),
    Cas(i64, i64),
}

fn register_value(text: &str, line: usize) -> Result<Option<i64>, ParseError> {
    if text == "nil" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| bad(line, format!("`{text}` is not nil or an integer")))
}

fn cas_pair(text: &str, line: usize) -> Result<(i64, i64), ParseError> {
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| bad(line, format!("`{text}` is not [FROM TO]")))?;
    let mut parts = inner.split_whitespace();
    let mut next = || -> Result<i64, ParseError> {
        parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| bad(line, format!("`{text}` is not [FROM TO]")))
    };
    Ok((next()?, next()?))
}

/// Reads a Jepsen etcd log.
pub fn parse_register(text: &str) -> Result<Vec<Operation<RegisterOp>>, ParseError> {
    let mut pairing = Pairing::new();
    let mut ops = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let rest = raw
            .trim()
            .strip_prefix("INFO")
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix("jepsen.util"))
            .map(str::trim_start)
            .and_then(|r| r.strip_prefix('-'))
            .ok_or_else(|| bad(line, "expected `INFO  jepsen.util - …`"))?;
        let mut fields = rest.split_whitespace();
        let process: u64 = fields
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| bad(line, "missing process id"))?;
        let kind = kind(fields.next().unwrap_or(""), line)?;
        let f = fields
            .next()
            .unwrap_or("")
            .trim_start_matches(':')
            .to_string();
        let value = fields.collect::<Vec<_>>().join(" ");
        match kind {
            Kind::Invoke => {
                let input = match f.as_str() {
                    "read" => RegisterInput::Read,
                    "write" => RegisterInput::Write(
                        register_value(&value, line)?.ok_or_else(|| bad(line, "write of nil"))?,
                    ),
                    "cas" => {
                        let (a, b) = cas_pair(&value, line)?;
                        RegisterInput::Cas(a, b)
                    }
                    other => return Err(bad(line, format!("unknown operation `{other}`"))),
                };
                pairing.invoke(process, i, input, line)?;
            }
            done => {
                let (call, input) = pairing.complete(process, line)?;
                let op = match (input, done) {
                    (RegisterInput::Read, Kind::Ok) => {
                        Some((RegisterOp::Read(register_value(&value, line)?), Some(i)))
                    }
                    // A timed-out read returned nothing and changed nothing.
                    (RegisterInput::Read, _) => None,
                    (RegisterInput::Write(v), Kind::Ok) => Some((RegisterOp::Write(v), Some(i))),
                    (RegisterInput::Write(v), Kind::Info) => Some((RegisterOp::Write(v), None)),
                    (RegisterInput::Write(_), Kind::Fail) => None,
                    (RegisterInput::Cas(a, b), Kind::Ok) => {
                        Some((RegisterOp::Cas(a, b, Some(true)), Some(i)))
                    }
                    (RegisterInput::Cas(a, b), Kind::Fail) => {
                        Some((RegisterOp::Cas(a, b, Some(false)), Some(i)))
                    }
                    (RegisterInput::Cas(a, b), _) => Some((RegisterOp::Cas(a, b, None), None)),
                    (_, Kind::Invoke) => None,
                };
                if let Some((op, ret)) = op {
                    ops.push(Operation {
                        client: process,
                        op,
                        call,
                        ret,
                    });
                }
            }
        }
    }
    for (process, call, input) in pairing.leftovers() {
        let op = match input {
            RegisterInput::Read => continue,
            RegisterInput::Write(v) => RegisterOp::Write(v),
            RegisterInput::Cas(a, b) => RegisterOp::Cas(a, b, None),
        };
        ops.push(Operation {
            client: process,
            op,
            call,
            ret: None,
        });
    }
    Ok(ops)
}

// ---------------------------------------------------------------------------------------------
// kv (checked per key: the state is one key's string)

/// A key-value operation on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    /// Get, returning the value (`None`: unknown).
    Get(Option<String>),
    /// Put.
    Put(String),
    /// Append.
    Append(String),
}

/// One key's value, initially "".
#[derive(Debug, Clone, Copy, Default)]
pub struct KvKey;

impl Model for KvKey {
    type State = String;
    type Op = KvOp;

    fn init(&self) -> String {
        String::new()
    }

    fn step(&self, state: &String, op: &KvOp) -> Option<String> {
        match op {
            KvOp::Get(Some(v)) => (v == state).then(|| state.clone()),
            KvOp::Get(None) => Some(state.clone()),
            KvOp::Put(v) => Some(v.clone()),
            KvOp::Append(v) => Some(format!("{state}{v}")),
        }
    }
}

fn edn_field<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    let start = raw.find(&format!(":{name} "))? + name.len() + 2;
    let rest = &raw[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        let end = quoted.find('"')?;
        return Some(&rest[..end + 2]);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

fn edn_string(v: &str) -> Option<String> {
    v.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .map(str::to_string)
}

/// Reads a kv history: one list of operations per key.
pub fn parse_kv(text: &str) -> Result<Partitions<KvOp>, ParseError> {
    let mut pairing: Pairing<(String, String, Option<String>)> = Pairing::new();
    let mut by_key: HashMap<String, Vec<Operation<KvOp>>> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut push = |key: String, op: Operation<KvOp>, order: &mut Vec<String>| {
        let list = by_key.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            Vec::new()
        });
        list.push(op);
    };
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let field =
            |name: &str| edn_field(raw, name).ok_or_else(|| bad(line, format!("missing :{name}")));
        let process: u64 = field("process")?
            .parse()
            .map_err(|_| bad(line, "process is not a number"))?;
        let kind = kind(field("type")?, line)?;
        let f = field("f")?.trim_start_matches(':').to_string();
        let key = edn_string(field("key")?).ok_or_else(|| bad(line, "key is not a string"))?;
        let value = match field("value")? {
            "nil" => None,
            v => Some(edn_string(v).ok_or_else(|| bad(line, "value is not nil or a string"))?),
        };
        match kind {
            Kind::Invoke => {
                if !matches!(f.as_str(), "get" | "put" | "append") {
                    return Err(bad(line, format!("unknown operation `{f}`")));
                }
                pairing.invoke(process, i, (f, key, value), line)?;
            }
            done => {
                let (call, (f, key, input)) = pairing.complete(process, line)?;
                let ret = (done == Kind::Ok).then_some(i);
                let op = match (f.as_str(), done) {
                    ("get", Kind::Ok) => KvOp::Get(Some(value.unwrap_or_default())),
                    ("get", _) => continue,
                    (_, Kind::Fail) => continue,
                    ("put", _) => KvOp::Put(input.unwrap_or_default()),
                    _ => KvOp::Append(input.unwrap_or_default()),
                };
                push(
                    key,
                    Operation {
                        client: process,
                        op,
                        call,
                        ret,
                    },
                    &mut order,
                );
            }
        }
    }
    for (process, call, (f, key, input)) in pairing.leftovers() {
        let op = match f.as_str() {
            "put" => KvOp::Put(input.unwrap_or_default()),
            "append" => KvOp::Append(input.unwrap_or_default()),
            _ => continue,
        };
        push(
            key,
            Operation {
                client: process,
                op,
                call,
                ret: None,
            },
            &mut order,
        );
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let ops = by_key.remove(&k).unwrap_or_default();
            (k, ops)
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// stream (checked per stream: the state is the stream's event ids)

/// A stream operation with its observed result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamOp {
    /// Append `events` if the stream's last version is `expected` (`None` inside: no check);
    /// `result`: `Some(Ok(first version))`, `Some(Err(actual last version))`, `None` unknown.
    Append {
        /// Expected last version: `None` any, `Some(None)` no stream, `Some(Some(v))` exact.
        expected: Option<Option<u64>>,
        /// Event ids.
        events: Vec<String>,
        /// Observed result.
        result: Option<Result<u64, Option<u64>>>,
    },
    /// Read the whole stream.
    Read(Option<Vec<String>>),
}

/// One stream, initially empty.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stream;

impl Model for Stream {
    type State = Vec<String>;
    type Op = StreamOp;

    fn init(&self) -> Vec<String> {
        Vec::new()
    }

    fn step(&self, state: &Vec<String>, op: &StreamOp) -> Option<Vec<String>> {
        let last = (state.len() as u64).checked_sub(1);
        match op {
            StreamOp::Read(Some(events)) => (events == state).then(|| state.clone()),
            StreamOp::Read(None) => Some(state.clone()),
            StreamOp::Append {
                expected,
                events,
                result,
            } => {
                let ok = expected.is_none_or(|e| e == last);
                let mut appended = state.clone();
                appended.extend(events.iter().cloned());
                match result {
                    Some(Ok(first)) => (ok && *first == state.len() as u64).then_some(appended),
                    Some(Err(actual)) => (!ok && *actual == last).then(|| state.clone()),
                    None => Some(if ok { appended } else { state.clone() }),
                }
            }
        }
    }
}

fn strings(v: &serde_json::Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|e| e.as_str().map(str::to_string))
        .collect()
}

/// Reads a stream history: one list of operations per stream.
pub fn parse_stream(text: &str) -> Result<Partitions<StreamOp>, ParseError> {
    type Input = (String, String, Option<Option<u64>>, Vec<String>);
    let mut pairing: Pairing<Input> = Pairing::new();
    let mut by_stream: HashMap<String, Vec<Operation<StreamOp>>> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut push = |s: String, op: Operation<StreamOp>, order: &mut Vec<String>| {
        by_stream
            .entry(s.clone())
            .or_insert_with(|| {
                order.push(s);
                Vec::new()
            })
            .push(op);
    };
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| bad(line, format!("not JSON: {e}")))?;
        let process = v["process"]
            .as_u64()
            .ok_or_else(|| bad(line, "missing process"))?;
        let kind = kind(v["type"].as_str().unwrap_or(""), line)?;
        let f = v["f"].as_str().unwrap_or("").to_string();
        match kind {
            Kind::Invoke => {
                let stream = v["stream"]
                    .as_str()
                    .ok_or_else(|| bad(line, "missing stream"))?
                    .to_string();
                let (expected, events) = match f.as_str() {
                    "append" => {
                        let expected = match &v["expected"] {
                            serde_json::Value::Null => Some(None),
                            e if e.as_str() == Some("any") => None,
                            e => Some(Some(
                                e.as_u64()
                                    .ok_or_else(|| bad(line, "bad expected version"))?,
                            )),
                        };
                        let events = strings(&v["events"])
                            .ok_or_else(|| bad(line, "events must be a list of strings"))?;
                        (expected, events)
                    }
                    "read" => (None, Vec::new()),
                    other => return Err(bad(line, format!("unknown operation `{other}`"))),
                };
                pairing.invoke(process, i, (f, stream, expected, events), line)?;
            }
            done => {
                let (call, (f, stream, expected, events)) = pairing.complete(process, line)?;
                let (op, ret) = match (f.as_str(), done) {
                    ("read", Kind::Ok) => (
                        StreamOp::Read(Some(
                            strings(&v["events"])
                                .ok_or_else(|| bad(line, "events must be a list of strings"))?,
                        )),
                        Some(i),
                    ),
                    ("read", _) => continue,
                    ("append", Kind::Ok) => (
                        StreamOp::Append {
                            expected,
                            events,
                            result: Some(Ok(v["first"]
                                .as_u64()
                                .ok_or_else(|| bad(line, "missing first version"))?)),
                        },
                        Some(i),
                    ),
                    ("append", Kind::Fail) => (
                        StreamOp::Append {
                            expected,
                            events,
                            result: Some(Err(v["actual"].as_u64())),
                        },
                        Some(i),
                    ),
                    _ => (
                        StreamOp::Append {
                            expected,
                            events,
                            result: None,
                        },
                        None,
                    ),
                };
                push(
                    stream,
                    Operation {
                        client: process,
                        op,
                        call,
                        ret,
                    },
                    &mut order,
                );
            }
        }
    }
    for (process, call, (f, stream, expected, events)) in pairing.leftovers() {
        if f != "append" {
            continue;
        }
        push(
            stream,
            Operation {
                client: process,
                op: StreamOp::Append {
                    expected,
                    events,
                    result: None,
                },
                call,
                ret: None,
            },
            &mut order,
        );
    }
    Ok(order
        .into_iter()
        .map(|s| {
            let ops = by_stream.remove(&s).unwrap_or_default();
            (s, ops)
        })
        .collect())
}

#[cfg(test)]
mod prune_tests {
    use super::*;
    use crate::wgl::{check, Budget, Verdict};

    fn verdict(ops: &[Operation<RegisterOp>]) -> Verdict {
        let budget = Budget {
            deadline: std::time::Instant::now() + std::time::Duration::from_secs(5),
            states_max: 1 << 20,
        };
        check(&Register, ops, budget)
    }

    #[test]
    fn unobserved_unknown_writes_go_and_verdicts_stay() {
        use RegisterOp::*;
        // Write 1; an unknown write of 2 nobody saw; a read of 1: fine either way.
        let ok = vec![
            Operation::new(0, Write(1), 0, Some(1)),
            Operation::new(1, Write(2), 2, None),
            Operation::new(2, Read(Some(1)), 3, Some(4)),
        ];
        let pruned = prune_unobserved_writes(ok.clone());
        assert_eq!(pruned.len(), 2);
        assert_eq!(verdict(&ok), Verdict::Linearizable);
        assert_eq!(verdict(&pruned), Verdict::Linearizable);
        // Seen by a read (or as a successful cas's from): kept.
        let seen = vec![
            Operation::new(1, Write(2), 0, None),
            Operation::new(2, Read(Some(2)), 1, Some(2)),
            Operation::new(3, Cas(9, 4, None), 3, None),
            Operation::new(4, Cas(4, 5, Some(true)), 4, Some(5)),
        ];
        assert_eq!(prune_unobserved_writes(seen.clone()).len(), 4);
        // A stale read stays a stale read.
        let stale = vec![
            Operation::new(0, Write(1), 0, Some(1)),
            Operation::new(1, Write(3), 2, None),
            Operation::new(2, Write(2), 3, Some(4)),
            Operation::new(3, Read(Some(1)), 5, Some(6)),
        ];
        assert_eq!(verdict(&stale), Verdict::NotLinearizable);
        assert_eq!(
            verdict(&prune_unobserved_writes(stale)),
            Verdict::NotLinearizable
        );
        // A failed cas depends on a value it does not name: nothing is pruned.
        let failed = vec![
            Operation::new(1, Write(2), 0, None),
            Operation::new(2, Cas(1, 3, Some(false)), 1, Some(2)),
        ];
        assert_eq!(prune_unobserved_writes(failed).len(), 2);
    }
}
