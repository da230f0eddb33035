//! From an event to a row: each column's value taken from the event (a JSON pointer into its
//! data, or one of its own fields) and checked against the column's type and the pipeline's
//! quality rules. An event that fails is refused with the reason (it goes to the quarantine
//! stream); one that passes is a [`Row`].
//!
//! [`Transform`] is the seam for code: [`Mapping`] is the declarative one the pipeline file
//! describes; another implementation can compute rows however it likes, as long as the same
//! event always gives the same row (replays rely on it).

use std::collections::{HashMap, VecDeque};

use strata_client::pb;

use crate::pipeline::{Column, ColumnType, From, Meta, Pipeline};

/// A column's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Absent.
    Null,
    /// A string.
    Text(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// Microseconds since the Unix epoch.
    Time(u64),
    /// A JSON value's text.
    Json(String),
}

/// An event where it is in the log: the event and its shard.
#[derive(Debug, Clone, Copy)]
pub struct Located<'a> {
    /// The event.
    pub event: &'a pb::RecordedEvent,
    /// Its shard.
    pub shard: u32,
}

/// One row: the columns' values in the pipeline's order, and where its event is.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The values.
    pub values: Vec<Value>,
    /// Its event's shard.
    pub shard: u32,
    /// Its event's position in that shard's log.
    pub position: u64,
    /// Its event's stream.
    pub stream: String,
    /// Its event's version.
    pub version: u64,
    /// When its event was appended, µs.
    pub appended_us: u64,
}

/// Turns events into rows, or says why not.
pub trait Transform: Send {
    /// The row of `event`, or why it is refused.
    fn row(&mut self, event: Located<'_>) -> Result<Row, String>;
}

/// The declarative transform of a pipeline file, with its quality rules.
#[derive(Debug)]
pub struct Mapping {
    columns: Vec<Column>,
    unique: Option<usize>,
    window: Window,
}

/// The values of the unique column last seen, at most `max` (oldest forgotten first).
#[derive(Debug, Default)]
struct Window {
    max: usize,
    order: VecDeque<String>,
    counts: HashMap<String, usize>,
}

impl Window {
    fn seen(&self, key: &str) -> bool {
        self.counts.contains_key(key)
    }

    fn add(&mut self, key: String) {
        *self.counts.entry(key.clone()).or_default() += 1;
        self.order.push_back(key);
        while self.order.len() > self.max {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(n) = self.counts.get_mut(&old) {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(&old);
                }
            }
        }
    }
}

impl Mapping {
    /// The mapping of `pipeline`.
    pub fn new(pipeline: &Pipeline) -> Mapping {
        Mapping {
            columns: pipeline.columns.clone(),
            unique: pipeline.quality.unique,
            window: Window {
                max: pipeline.quality.unique_window,
                ..Window::default()
            },
        }
    }
}

impl Transform for Mapping {
    fn row(&mut self, at: Located<'_>) -> Result<Row, String> {
        let e = at.event;
        let data: Option<serde_json::Value> = serde_json::from_slice(&e.data).ok();
        let mut values = Vec::with_capacity(self.columns.len());
        for c in &self.columns {
            values.push(value(c, at, data.as_ref())?);
        }
        if let Some(u) = self.unique {
            let key = format!("{:?}", values.get(u).unwrap_or(&Value::Null));
            if self.window.seen(&key) {
                let name = self.columns.get(u).map_or("", |c| c.name.as_str());
                return Err(format!(
                    "quality: {name} {key} repeats within the last {} events",
                    self.window.max
                ));
            }
            self.window.add(key);
        }
        Ok(Row {
            values,
            shard: at.shard,
            position: e.position,
            stream: e.stream.clone(),
            version: e.version,
            appended_us: e.timestamp_us,
        })
    }
}

/// Column `c`'s value from event `at` (its data parsed as `data`, `None` when not JSON).
fn value(c: &Column, at: Located<'_>, data: Option<&serde_json::Value>) -> Result<Value, String> {
    let e = at.event;
    let v = match &c.from {
        From::Meta(m) => meta(*m, at),
        From::Pointer(p) => {
            let Some(d) = data else {
                return Err(format!("column {}: the event's data is not JSON", c.name));
            };
            match d.pointer(p) {
                None | Some(serde_json::Value::Null) => Value::Null,
                Some(j) => typed(c, j)?,
            }
        }
    };
    if v == Value::Null && c.required {
        let from = match &c.from {
            From::Pointer(p) => p.as_str(),
            From::Meta(_) => "",
        };
        return Err(format!(
            "quality: column {} is required; {from} is absent in {}/{}",
            c.name, e.stream, e.version
        ));
    }
    in_range(c, &v)?;
    Ok(v)
}

fn meta(m: Meta, at: Located<'_>) -> Value {
    let e = at.event;
    match m {
        Meta::Stream => Value::Text(e.stream.clone()),
        Meta::Version => Value::Int(e.version as i64),
        Meta::Position => Value::Int(e.position as i64),
        Meta::Shard => Value::Int(i64::from(at.shard)),
        Meta::Type => Value::Text(e.r#type.clone()),
        Meta::Id => Value::Text(e.id.clone()),
        Meta::Time => Value::Time(e.timestamp_us),
    }
}

fn typed(c: &Column, j: &serde_json::Value) -> Result<Value, String> {
    use serde_json::Value as J;
    let wrong = || {
        let found = match j {
            J::String(_) => "a string",
            J::Number(_) => "a number",
            J::Bool(_) => "a boolean",
            J::Array(_) => "an array",
            J::Object(_) => "an object",
            J::Null => "null",
        };
        Err(format!(
            "quality: column {} is {}, the event has {found}",
            c.name,
            c.ty.name()
        ))
    };
    Ok(match (c.ty, j) {
        (ColumnType::Text, J::String(s)) => Value::Text(s.clone()),
        (ColumnType::Int, J::Number(n)) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => return wrong(),
        },
        (ColumnType::Float, J::Number(n)) => match n.as_f64() {
            Some(f) => Value::Float(f),
            None => return wrong(),
        },
        (ColumnType::Bool, J::Bool(b)) => Value::Bool(*b),
        (ColumnType::Time, J::String(s)) => match strata_service::time::parse_rfc3339_us(s) {
            Ok(us) => Value::Time(us),
            Err(why) => return Err(format!("quality: column {}: {why}", c.name)),
        },
        (ColumnType::Json, j) => Value::Json(j.to_string()),
        _ => return wrong(),
    })
}

fn in_range(c: &Column, v: &Value) -> Result<(), String> {
    let x = match v {
        Value::Int(i) => *i as f64,
        Value::Float(f) => *f,
        _ => return Ok(()),
    };
    let low = c.min.is_some_and(|m| x < m);
    let high = c.max.is_some_and(|m| x > m);
    if low || high {
        let (lo, hi) = (
            c.min.map_or("-inf".to_string(), |b| b.to_string()),
            c.max.map_or("inf".to_string(), |b| b.to_string()),
        );
        return Err(format!(
            "quality: column {} is {x}, outside [{}, {}]",
            c.name, lo, hi
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pipeline(extra: &str) -> Pipeline {
        let text = format!(
            r#"name = "t"
[source]
[sink]
kind = "postgres"
url = "x"
table = "t"
[[column]]
name = "s"
from = "$stream"
type = "text"
[[column]]
name = "sku"
from = "/sku"
type = "text"
required = true
[[column]]
name = "qty"
from = "/qty"
type = "int"
min = 1
max = 100
[[column]]
name = "at"
from = "/at"
type = "time"
{extra}"#
        );
        crate::pipeline::parse("t.toml", &text).unwrap()
    }

    fn event(version: u64, data: &str) -> pb::RecordedEvent {
        pb::RecordedEvent {
            stream: "order-1".into(),
            version,
            position: 10 + version,
            data: data.as_bytes().to_vec().into(),
            timestamp_us: 5,
            ..Default::default()
        }
    }

    fn row(m: &mut Mapping, version: u64, data: &str) -> Result<Row, String> {
        m.row(Located {
            event: &event(version, data),
            shard: 2,
        })
    }

    #[test]
    fn rows_are_typed_and_checked() {
        let mut m = Mapping::new(&pipeline(""));
        let r = row(
            &mut m,
            1,
            r#"{"sku":"a","qty":3,"at":"2026-12-05T10:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(r.values[0], Value::Text("order-1".into()));
        assert_eq!(r.values[2], Value::Int(3));
        assert_eq!(r.values[3], Value::Time(1_796_464_800_000_000));
        assert_eq!((r.shard, r.position), (2, 11));
        let r = row(&mut m, 2, r#"{"sku":"a"}"#).unwrap();
        assert_eq!(r.values[2], Value::Null);
        let why = |d: &str| row(&mut Mapping::new(&pipeline("")), 3, d).unwrap_err();
        assert!(why(r#"{"qty":3}"#).contains("sku is required"));
        assert!(why(r#"{"sku":"a","qty":0}"#).contains("outside [1, 100]"));
        assert!(why(r#"{"sku":"a","qty":"3"}"#).contains("qty is int, the event has a string"));
        assert!(why(r#"{"sku":"a","at":"yesterday"}"#).contains("RFC 3339"));
        assert!(why("not json").contains("not JSON"));
    }

    #[test]
    fn a_unique_column_refuses_repeats_within_its_window() {
        let mut m = Mapping::new(&pipeline("[quality]\nunique = \"sku\"\nunique_window = 2"));
        assert!(row(&mut m, 1, r#"{"sku":"a"}"#).is_ok());
        assert!(row(&mut m, 2, r#"{"sku":"a"}"#)
            .unwrap_err()
            .contains("repeats"));
        assert!(row(&mut m, 3, r#"{"sku":"b"}"#).is_ok());
        assert!(row(&mut m, 4, r#"{"sku":"c"}"#).is_ok());
        // "a" has left the window of 2.
        assert!(row(&mut m, 5, r#"{"sku":"a"}"#).is_ok());
    }
}
