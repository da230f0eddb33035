//! The bytes of a `$all` cursor over several shards (`ReadAllRequest.from_cursor`,
//! `SubscribeRequest.cursor`, the cursors nodes answer with). Opaque to users; nodes and
//! `strata-client` (consumer groups keep one per partition) read and write it here.
//!
//! ```text
//! varint 1                         the version
//! then for each shard, in id order:
//!   varint id × 2 + after          after 0: read the shard from the position (inclusive)
//!                                   after 1: read it after the record at the position
//!   varint position
//! ```
//!
//! Varints are LEB128 (7 bits a byte, low first). A shard the cursor does not name is read
//! from its start. At most [`CURSOR_BYTES_MAX`] bytes.

use std::collections::BTreeMap;

const CURSOR_VERSION: u64 = 1;
/// Most bytes a cursor may have: 64 shards of (5 + 10) bytes, and the version.
pub const CURSOR_BYTES_MAX: usize = 1 + 64 * 15;

/// Where to go on in one shard's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Point {
    /// From the record at this position (0: the start).
    From(u64),
    /// After the record at this position.
    After(u64),
}

impl Point {
    /// An order on points: the earlier one reads more.
    pub fn key(self) -> (u64, u8) {
        match self {
            Point::From(p) => (p, 0),
            Point::After(p) => (p, 1),
        }
    }

    /// Whether a record at `position` is read from here.
    pub fn wants(self, position: u64) -> bool {
        match self {
            Point::After(p) => position > p,
            Point::From(p) => position >= p,
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        v |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The bytes of a cursor at `points` (shard id → point).
pub fn encode(points: &BTreeMap<u32, Point>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + points.len() * 6);
    put_varint(&mut out, CURSOR_VERSION);
    for (shard, point) in points {
        let (after, position) = match point {
            Point::From(p) => (0, *p),
            Point::After(p) => (1, *p),
        };
        put_varint(&mut out, u64::from(*shard) * 2 + after);
        put_varint(&mut out, position);
    }
    out
}

/// A cursor's points from its bytes (empty bytes: none, every shard from its start), or why
/// they are not a cursor.
pub fn decode(bytes: &[u8]) -> Result<BTreeMap<u32, Point>, String> {
    let mut points = BTreeMap::new();
    if bytes.is_empty() {
        return Ok(points);
    }
    if bytes.len() > CURSOR_BYTES_MAX {
        return Err("too long".into());
    }
    let mut rest = bytes;
    if take_varint(&mut rest) != Some(CURSOR_VERSION) {
        return Err("unknown version".into());
    }
    while !rest.is_empty() {
        let (Some(key), Some(position)) = (take_varint(&mut rest), take_varint(&mut rest)) else {
            return Err("cut short".into());
        };
        let id = u32::try_from(key / 2).map_err(|_| "a shard id out of range".to_string())?;
        let point = if key % 2 == 1 {
            Point::After(position)
        } else {
            Point::From(position)
        };
        if points.insert(id, point).is_some() {
            return Err(format!("shard {id} named twice"));
        }
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn points_survive_their_bytes_and_bad_bytes_say_why() {
        let points = BTreeMap::from([
            (0, Point::After(300)),
            (3, Point::From(0)),
            (70_000, Point::From(u64::MAX)),
        ]);
        assert_eq!(decode(&encode(&points)).unwrap(), points);
        assert_eq!(decode(&[]).unwrap(), BTreeMap::new());
        assert_eq!(decode(&[2]).unwrap_err(), "unknown version");
        assert_eq!(decode(&[1, 1]).unwrap_err(), "cut short");
        assert_eq!(decode(&[1, 1, 0, 1, 5]).unwrap_err(), "shard 0 named twice");
        assert_eq!(
            decode(&vec![1; CURSOR_BYTES_MAX + 1]).unwrap_err(),
            "too long"
        );
        assert!(Point::From(5).key() < Point::After(5).key());
        assert!(Point::After(4).key() < Point::From(5).key());
        assert!(Point::From(5).wants(5) && !Point::After(5).wants(5) && Point::After(5).wants(6));
    }
}
