//! The block: the points of one series (device, key) written together, sorted by time, as one
//! SQLite value. A batch of the sink holds about a hundred points per busy series; storing them
//! as one row instead of a hundred is what lets one core keep up with the MQTT front (see
//! ARCHITECTURE.md, "The embedded store").
//!
//! Layout: the format byte, the number of points (varint), then per point the time after the
//! previous point's (varint; the first point's is the block's `start_ts`, kept in its own column,
//! so it starts at 0), the type code of [`super::kind`] (one byte) and the value: BOOL one byte,
//! LONG a zigzag varint, DOUBLE eight bytes little-endian, STRING and JSON a varint length and
//! the UTF-8 bytes.

use actors::model::KvValue;
use actors::ports::StoreError;

use super::kind;

/// Most milliseconds between the first and the last point of a block. Readers look for the
/// blocks holding `[start, end)` among those starting in `[start - MAX_SPAN, end)`, so this
/// bounds the extra blocks a read looks at; a batch's run of one device is ~100 ms.
pub(super) const MAX_SPAN: i64 = 60_000;
/// Most points in a block: a read never decodes more than this beyond what it returns, and a
/// block stays a few KiB.
pub(super) const MAX_POINTS: usize = 1024;

const FORMAT: u8 = 1;

/// Splits points sorted by time (no two with the same time) into the runs that become blocks:
/// each spans at most [`MAX_SPAN`] and holds at most [`MAX_POINTS`].
pub(super) fn runs<T>(points: &[(i64, T)]) -> impl Iterator<Item = &[(i64, T)]> {
    let mut rest = points;
    std::iter::from_fn(move || {
        let first = rest.first()?.0;
        let len = rest
            .iter()
            .take(MAX_POINTS)
            .take_while(|(ts, _)| ts.checked_sub(first).is_some_and(|d| d <= MAX_SPAN))
            .count();
        let (run, tail) = rest.split_at(len.max(1));
        rest = tail;
        Some(run)
    })
}

/// Encodes a run (sorted by time, non-empty) into `out`.
pub(super) fn encode<'a>(
    run: impl ExactSizeIterator<Item = (i64, &'a KvValue)>,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.push(FORMAT);
    put_varint(out, run.len() as u64);
    let mut previous = None;
    for (ts, value) in run {
        #[allow(clippy::cast_sign_loss)]
        put_varint(out, ts.wrapping_sub(previous.unwrap_or(ts)) as u64);
        previous = Some(ts);
        match value {
            KvValue::Bool(b) => {
                out.push(kind::BOOL as u8);
                out.push(u8::from(*b));
            }
            KvValue::Long(l) => {
                out.push(kind::LONG as u8);
                #[allow(clippy::cast_sign_loss)]
                put_varint(out, ((l << 1) ^ (l >> 63)) as u64);
            }
            KvValue::Double(d) => {
                out.push(kind::DOUBLE as u8);
                out.extend_from_slice(&d.to_le_bytes());
            }
            KvValue::String(s) => {
                out.push(kind::STRING as u8);
                put_bytes(out, s.as_bytes());
            }
            KvValue::Json(s) => {
                out.push(kind::JSON as u8);
                put_bytes(out, s.as_bytes());
            }
        }
    }
}

/// Decodes a block that starts at `start_ts`, calling `f` with each point in time order.
pub(super) fn decode(
    start_ts: i64,
    data: &[u8],
    mut f: impl FnMut(i64, KvValue),
) -> Result<(), StoreError> {
    let mut r = Reader { data, at: 0 };
    if r.byte()? != FORMAT {
        return Err(corrupt());
    }
    let count = r.varint()?;
    let mut ts = start_ts;
    for _ in 0..count {
        #[allow(clippy::cast_possible_wrap)]
        let delta = r.varint()? as i64;
        ts = ts.wrapping_add(delta);
        let value = match i64::from(r.byte()?) {
            kind::BOOL => KvValue::Bool(r.byte()? != 0),
            kind::LONG => {
                let z = r.varint()?;
                #[allow(clippy::cast_possible_wrap)]
                KvValue::Long((z >> 1) as i64 ^ -((z & 1) as i64))
            }
            kind::DOUBLE => KvValue::Double(f64::from_le_bytes(r.array()?)),
            kind::STRING => KvValue::String(r.text()?),
            kind::JSON => KvValue::Json(r.text()?),
            _ => return Err(corrupt()),
        };
        f(ts, value);
    }
    Ok(())
}

fn corrupt() -> StoreError {
    StoreError::Permanent("a stored block is corrupt".into())
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        #[allow(clippy::cast_possible_truncation)]
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    #[allow(clippy::cast_possible_truncation)]
    out.push(n as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, StoreError> {
        let b = *self.data.get(self.at).ok_or_else(corrupt)?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, StoreError> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(n);
            }
        }
        Err(corrupt())
    }

    fn take(&mut self, len: usize) -> Result<&[u8], StoreError> {
        let end = self.at.checked_add(len).ok_or_else(corrupt)?;
        let bytes = self.data.get(self.at..end).ok_or_else(corrupt)?;
        self.at = end;
        Ok(bytes)
    }

    fn array(&mut self) -> Result<[u8; 8], StoreError> {
        self.take(8)?.try_into().map_err(|_| corrupt())
    }

    fn text(&mut self) -> Result<String, StoreError> {
        let len = usize::try_from(self.varint()?).map_err(|_| corrupt())?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| corrupt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(points: &[(i64, KvValue)]) -> Vec<(i64, KvValue)> {
        let mut data = Vec::new();
        encode(points.iter().map(|(ts, v)| (*ts, v)), &mut data);
        let mut out = Vec::new();
        decode(points[0].0, &data, |ts, v| out.push((ts, v))).expect("decodes");
        out
    }

    #[test]
    fn every_type_and_extreme_survives() {
        let points = vec![
            (i64::MIN, KvValue::Long(i64::MIN)),
            (i64::MIN + 1, KvValue::Long(i64::MAX)),
            (i64::MIN + 2, KvValue::Long(-1)),
            (i64::MIN + 3, KvValue::Bool(true)),
            (i64::MIN + 60_000, KvValue::Double(-0.0)),
        ];
        assert_eq!(round_trip(&points), points);
        let points = vec![
            (-5, KvValue::Double(f64::MAX)),
            (0, KvValue::String("tëxt".into())),
            (7, KvValue::Json(r#"{"a":[1]}"#.into())),
            (8, KvValue::String(String::new())),
            (9, KvValue::Bool(false)),
        ];
        assert_eq!(round_trip(&points), points);
    }

    #[test]
    fn a_damaged_block_is_an_error_not_a_panic() {
        let mut data = Vec::new();
        let s = KvValue::String("hello".into());
        encode([(1, &s), (2, &s)].into_iter(), &mut data);
        for len in 0..data.len() {
            assert!(decode(1, &data[..len], |_, _| {}).is_err(), "cut at {len}");
        }
        data[0] = 9;
        assert!(decode(1, &data, |_, _| {}).is_err());
    }

    #[test]
    fn runs_respect_span_and_size() {
        let spans = |ts: &[i64]| -> Vec<usize> {
            let points: Vec<(i64, ())> = ts.iter().map(|&t| (t, ())).collect();
            runs(&points).map(<[_]>::len).collect()
        };
        assert_eq!(spans(&[0, 1, 60_000, 60_001]), [3, 1]);
        assert_eq!(spans(&[5]), [1]);
        assert_eq!(spans(&[i64::MIN, 0, i64::MAX]), [1, 1, 1]);
        let many: Vec<i64> = (0..2_500).collect();
        assert_eq!(spans(&many), [1024, 1024, 452]);
    }
}
