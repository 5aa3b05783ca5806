//! Window assignment: which windows each record of a batch belongs to, per kind (tumbling,
//! hopping, session), against the watermark just before that record. A record is late
//! (counted and dropped) or recorded as a [`Hit`] on each of its open windows, opening them
//! as needed; a session record merges the sessions it bridges. The aggregates fold the hits
//! afterwards, in one loop each (see `Window::process`).
//!
//! This is the operator's hot loop (see the module documentation of `window` for its
//! figures): a batch's key ids are looked up first in a loop of independent lookups, then each
//! kind walks the records once. Above the key table, slots, aggregates and state.

use super::aggregates::{Aggregate, Hit};
use super::build::Shape;
use super::keys::{KeyColumn, KeyRef, Keys, OpenWindow};
use super::slots::{Pending, Slots};
use super::state::State;
use crate::batch::{Batch, Column};
use crate::pipeline::spec::WindowKind;

/// A key not (yet) interned.
const UNKNOWN: u32 = u32::MAX;

/// The assignment's scratch, kept between batches so that a batch allocates nothing per
/// record.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    /// What the last batch added to which window, for the aggregates to fold.
    pub(super) hits: Vec<Hit>,
    /// Per record of the batch, its key's id if the key was known before the batch.
    known: Vec<u32>,
    /// The sessions one record touches.
    merging: Vec<u32>,
}

/// One batch's assignment: what its records are read from and what they change.
struct Run<'a> {
    columns: &'a [Column],
    ts: &'a [i64],
    keys: KeyColumn<'a>,
    known: &'a [u32],
    /// The watermark of the other inputs, which does not move during this batch.
    others: i64,
    ooo: i64,
    /// The largest event time seen on this batch's input so far.
    max_ts: i64,
    late: &'a mut u64,
    next_arrival: &'a mut u64,
    key_table: &'a mut Keys,
    slots: &'a mut Slots,
    pending: &'a mut Pending,
    aggregates: &'a mut [Aggregate],
    hits: &'a mut Vec<Hit>,
}

/// Assign the records of `batch` (from `input`) to windows; fill `scratch.hits`.
pub(super) fn assign(
    shape: &Shape,
    state: &mut State,
    aggregates: &mut [Aggregate],
    scratch: &mut Scratch,
    input: usize,
    batch: &Batch,
) {
    let columns = batch.columns();
    let Column::Int(ts) = &columns[shape.time_column] else {
        panic!("{}: time column of type {}", shape.node, columns[shape.time_column].data_type())
    };
    let keys = match shape.key_column.map(|i| &columns[i]) {
        None => KeyColumn::Unit,
        Some(Column::Str(c)) => KeyColumn::Str(c),
        Some(Column::Int(c)) => KeyColumn::Int(c),
        Some(Column::Bool(c)) => KeyColumn::Bool(c),
        Some(c) => panic!("{}: key column of type {}", shape.node, c.data_type()),
    };
    let ooo = shape.max_out_of_order_ms;
    // The other inputs' watermarks do not move during this batch.
    let others = (state.inputs.iter().enumerate())
        .filter(|(j, i)| *j != input && !i.ended)
        .map(|(_, i)| i.max_ts.saturating_sub(ooo))
        .min()
        .unwrap_or(i64::MAX);
    let max_ts = state.inputs[input].max_ts;
    let Scratch { hits, known, merging } = scratch;
    hits.clear();
    look_up(&state.keys, keys, ts.len(), known);
    let State { late, next_arrival, keys: key_table, slots, pending, .. } = &mut *state;
    let run = Run {
        columns,
        ts,
        keys,
        known,
        others,
        ooo,
        max_ts,
        late,
        next_arrival,
        key_table,
        slots,
        pending,
        aggregates,
        hits,
    };
    let max_ts = match shape.kind {
        WindowKind::Tumbling { size_ms } => tumbling(run, size_ms),
        WindowKind::Hopping { size_ms, hop_ms } => hopping(run, size_ms, hop_ms),
        WindowKind::Session { gap_ms } => session(run, gap_ms, merging),
    };
    state.inputs[input].max_ts = max_ts;
}

/// The ids of the keys of a batch of `len` records that `key_table` knows (`UNKNOWN` for the
/// others), into `known`. Known keys first, in a loop of independent lookups: with many keys
/// each lookup is a cache miss or two, and this way they overlap.
#[inline]
fn look_up(key_table: &Keys, keys: KeyColumn<'_>, len: usize, known: &mut Vec<u32>) {
    known.clear();
    match keys {
        KeyColumn::Str(c) => {
            known.extend(c.iter().map(|k| key_table.find(KeyRef::Str(k)).unwrap_or(UNKNOWN)))
        }
        KeyColumn::Int(c) => {
            known.extend(c.iter().map(|&k| key_table.find(KeyRef::Int(k)).unwrap_or(UNKNOWN)))
        }
        KeyColumn::Bool(c) => {
            known.extend(c.iter().map(|&k| key_table.find(KeyRef::Bool(k)).unwrap_or(UNKNOWN)))
        }
        KeyColumn::Unit => known.resize(len, key_table.find(KeyRef::Unit).unwrap_or(UNKNOWN)),
    }
}

/// The id of record `r`'s key. Keys are only dropped between batches, so a known id stays
/// valid; an unknown key may have been inserted by an earlier record of this batch.
#[inline]
fn resolve(key_table: &mut Keys, known: &[u32], keys: KeyColumn<'_>, r: usize) -> u32 {
    match known[r] {
        UNKNOWN => key_table.find_or_insert(keys.get(r)),
        id => id,
    }
}

/// Tumbling windows; returns the input's largest event time.
#[inline]
fn tumbling(run: Run<'_>, size_ms: i64) -> i64 {
    let Run {
        ts,
        keys,
        known,
        others,
        ooo,
        mut max_ts,
        late,
        next_arrival,
        key_table,
        slots,
        pending,
        aggregates,
        hits,
        ..
    } = run;
    // The previous record's window: most records fall in it, and skip a division.
    let (mut start, mut end) = (i64::MAX, i64::MAX);
    for (r, &t) in ts.iter().enumerate() {
        let watermark = others.min(max_ts.saturating_sub(ooo));
        max_ts = max_ts.max(t);
        if !(start <= t && t < end) {
            let exact = i128::from(t) - i128::from(t.rem_euclid(size_ms));
            (start, end) = (clamp(exact), clamp(exact + i128::from(size_ms)));
        }
        if end <= watermark {
            *late += 1;
            continue;
        }
        let arrival = *next_arrival;
        *next_arrival += 1;
        let key = resolve(key_table, known, keys, r);
        hit_window(key_table, slots, pending, aggregates, hits, key, (start, end), arrival, r);
    }
    max_ts
}

/// Hopping windows; returns the input's largest event time.
#[inline]
fn hopping(run: Run<'_>, size_ms: i64, hop_ms: i64) -> i64 {
    let Run {
        ts,
        keys,
        known,
        others,
        ooo,
        mut max_ts,
        late,
        next_arrival,
        key_table,
        slots,
        pending,
        aggregates,
        hits,
        ..
    } = run;
    for (r, &t) in ts.iter().enumerate() {
        let watermark = others.min(max_ts.saturating_sub(ooo));
        max_ts = max_ts.max(t);
        let (size, hop) = (i128::from(size_ms), i128::from(hop_ms));
        let last_start = i128::from(t) - i128::from(t.rem_euclid(hop_ms));
        if clamp(last_start + size) <= watermark {
            *late += 1;
            continue;
        }
        let arrival = *next_arrival;
        *next_arrival += 1;
        let key = resolve(key_table, known, keys, r);
        let mut exact = last_start;
        // Earlier windows end earlier: stop at the first that misses `t` or is closed.
        while exact + size > i128::from(t) {
            let (start, end) = (clamp(exact), clamp(exact + size));
            if end <= watermark {
                break;
            }
            hit_window(key_table, slots, pending, aggregates, hits, key, (start, end), arrival, r);
            exact -= hop;
        }
    }
    max_ts
}

/// Session windows, merging the sessions a record bridges; returns the input's largest event
/// time.
#[inline]
fn session(run: Run<'_>, gap_ms: i64, merging: &mut Vec<u32>) -> i64 {
    let Run {
        columns,
        ts,
        keys,
        known,
        others,
        ooo,
        mut max_ts,
        late,
        next_arrival,
        key_table,
        slots,
        pending,
        aggregates,
        hits,
    } = run;
    for (r, &t) in ts.iter().enumerate() {
        let watermark = others.min(max_ts.saturating_sub(ooo));
        max_ts = max_ts.max(t);
        let end = t.saturating_add(gap_ms);

        // The open sessions this record touches.
        merging.clear();
        let found = match known[r] {
            UNKNOWN => key_table.find(keys.get(r)),
            id => Some(id),
        };
        if let Some(key) = found {
            for w in key_table.open(key).iter() {
                let s = w.slot as usize;
                if slots.end[s] > watermark && slots.start[s] < end && t < slots.end[s] {
                    merging.push(w.slot);
                }
            }
        }
        if merging.is_empty() && end <= watermark {
            *late += 1;
            continue;
        }
        let arrival = *next_arrival;
        *next_arrival += 1;
        let key = resolve(key_table, known, keys, r);
        let slot = match merging.len() {
            0 => {
                let slot = slots.alloc(aggregates, key, t, end, arrival);
                key_table.open_mut(key).push(OpenWindow { start: t, slot });
                pending.add(end, arrival, slot);
                slot
            }
            1 => merging[0],
            _ => {
                // Accumulators must hold every earlier record before they merge.
                for a in aggregates.iter_mut() {
                    a.apply(columns, hits);
                }
                hits.clear();
                merging.sort_by_key(|&s| slots.arrival[s as usize]);
                let into = merging[0];
                for &from in &merging[1..] {
                    merge_sessions(slots, aggregates, into, from);
                    key_table.open_mut(key).remove(from);
                    slots.release(from);
                }
                into
            }
        };
        let s = slot as usize;
        slots.start[s] = slots.start[s].min(t);
        slots.end[s] = slots.end[s].max(end);
        slots.last_arrival[s] = arrival;
        let start = slots.start[s];
        key_table.open_mut(key).set_start(slot, start);
        // The pending entry keeps the old end; `fire` moves it on when it gets there.
        hits.push(Hit { record: r as u32, slot, first: slots.count[s] == 0 });
        slots.count[s] += 1;
    }
    max_ts
}

/// A window bound computed exactly, clamped to the i64 range: windows at either end of the
/// range are cut short instead of overflowing.
pub(super) fn clamp(exact: i128) -> i64 {
    exact.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Fold session `from` into `into` (both of one key; `into` arrived first).
fn merge_sessions(slots: &mut Slots, aggregates: &mut [Aggregate], into: u32, from: u32) {
    let (i, f) = (into as usize, from as usize);
    let from_first = slots.arrival[f] < slots.arrival[i];
    let from_last = slots.last_arrival[f] > slots.last_arrival[i];
    for a in aggregates.iter_mut() {
        a.merge(i, f, from_first, from_last);
    }
    slots.count[i] += slots.count[f];
    slots.start[i] = slots.start[i].min(slots.start[f]);
    slots.end[i] = slots.end[i].max(slots.end[f]);
    slots.last_arrival[i] = slots.last_arrival[i].max(slots.last_arrival[f]);
}

/// Record `r` in `key`'s window `[start, end)`, opening the window first if it is not open:
/// the step the tumbling and hopping assignments share.
#[allow(clippy::too_many_arguments)]
#[inline]
fn hit_window(
    keys: &mut Keys,
    slots: &mut Slots,
    pending: &mut Pending,
    aggregates: &mut [Aggregate],
    hits: &mut Vec<Hit>,
    key: u32,
    (start, end): (i64, i64),
    arrival: u64,
    r: usize,
) {
    let slot = match keys.open(key).find(start) {
        Some(slot) => slot,
        None => {
            let slot = slots.alloc(aggregates, key, start, end, arrival);
            keys.open_mut(key).push(OpenWindow { start, slot });
            pending.add(end, arrival, slot);
            slot
        }
    };
    let count = &mut slots.count[slot as usize];
    hits.push(Hit { record: r as u32, slot, first: *count == 0 });
    *count += 1;
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::batch::Value;
    use crate::operators::Operator;
    use crate::pipeline::spec::WindowKind;

    #[test]
    fn late_records_are_counted_and_dropped() {
        let mut op = window(&spec(WindowKind::Tumbling { size_ms: 10 }, 2, &["count", "sum(value)"]), 1);
        let mut out = Vec::new();
        op.process(0, &readings(&[("a", 5, 1.0), ("a", 11, 2.0), ("a", 3, 4.0)]), &mut out).unwrap();
        assert_eq!(op.late_records(), 0, "watermark 9: [0, 10) is still open");
        op.process(
            0,
            &readings(&[("a", 12, 8.0), ("a", 9, 16.0), ("b", 1, 32.0), ("a", 10, 64.0)]),
            &mut out,
        )
        .unwrap();
        assert_eq!(op.late_records(), 2, "watermark 10 closed [0, 10) for the readings at 9 and 1");
        op.on_input_end(0, &mut out).unwrap();
        assert_eq!(
            rows(&out),
            vec![
                vec![Value::Str("a".into()), Value::Int(0), Value::Int(2), Value::Float(5.0)],
                vec![Value::Str("a".into()), Value::Int(10), Value::Int(3), Value::Float(74.0)],
            ]
        );
        assert_eq!(op.state.keys.entries.len(), 1, "a late record does not create its key");
        assert_eq!(op.state.keys.live(), 0, "the end drops every key");
    }

    #[test]
    fn hopping_windows_hand_checked() {
        let mut op =
            window(&spec(WindowKind::Hopping { size_ms: 10, hop_ms: 4 }, 0, &["count", "first(value)"]), 1);
        let mut out = Vec::new();
        // 7 is in [0, 10) and [4, 14) (and not [-4, 6)); 13 in [4, 14), [8, 18), [12, 22).
        op.process(0, &readings(&[("a", 7, 1.0), ("a", 13, 2.0)]), &mut out).unwrap();
        assert_eq!(
            rows(&out),
            vec![vec![Value::Str("a".into()), Value::Int(0), Value::Int(1), Value::Float(1.0)]]
        );
        // Watermark 13: [4, 14) is open, [0, 10) is not: 9 counts once, not late.
        op.process(0, &readings(&[("a", 9, 3.0), ("a", 2, 4.0)]), &mut out).unwrap();
        assert_eq!(op.late_records(), 1, "2 belongs only to closed windows");
        op.on_input_end(0, &mut out).unwrap();
        let w = |start: i64, count: i64, first: f64| {
            vec![Value::Str("a".into()), Value::Int(start), Value::Int(count), Value::Float(first)]
        };
        assert_eq!(rows(&out), vec![w(0, 1, 1.0), w(4, 3, 1.0), w(8, 2, 2.0), w(12, 1, 2.0)]);
    }

    #[test]
    fn negative_times_use_euclidean_windows() {
        let mut op = window(&spec(WindowKind::Hopping { size_ms: 10, hop_ms: 5 }, 100, &["count"]), 1);
        let mut out = Vec::new();
        op.process(0, &readings(&[("a", -1, 0.0)]), &mut out).unwrap();
        op.on_input_end(0, &mut out).unwrap();
        let starts: Vec<_> = rows(&out).iter().map(|r| r[1].clone()).collect();
        assert_eq!(starts, vec![Value::Int(-10), Value::Int(-5)]);
    }

    #[test]
    fn sessions_hand_checked_with_an_out_of_order_bridge() {
        let spec = spec(
            WindowKind::Session { gap_ms: 10 },
            100,
            &["count", "sum(value)", "first(value)", "last(value)", "min(sensor)"],
        );
        let mut op = window(&spec, 1);
        assert_eq!(
            op.output_schema().fields().iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            vec![
                "sensor",
                "window_start",
                "window_end",
                "count",
                "sum_value",
                "first_value",
                "last_value",
                "min_sensor"
            ]
        );
        let mut out = Vec::new();
        // a: [0, 15) and [30, 40); 22 pulls the second to [22, 40), 14 bridges both.
        // b: 20 and 30 are exactly a gap apart: two sessions.
        let input =
            [("a", 0, 1.0), ("a", 5, 2.0), ("b", 20, 0.5), ("a", 30, 4.0), ("a", 22, 8.0), ("b", 30, 0.25)];
        op.process(0, &readings(&input), &mut out).unwrap();
        assert_eq!(op.open_windows(), 4);
        op.process(0, &readings(&[("a", 14, 16.0)]), &mut out).unwrap();
        assert_eq!(op.open_windows(), 3);
        op.on_input_end(0, &mut out).unwrap();
        let s = |k: &str, start: i64, end: i64, count: i64, sum: f64, first: f64, last: f64| {
            [Value::Str(k.into()), Value::Int(start), Value::Int(end), Value::Int(count)]
                .into_iter()
                .chain([Value::Float(sum), Value::Float(first), Value::Float(last), Value::Str(k.into())])
                .collect::<Vec<_>>()
        };
        assert_eq!(
            rows(&out),
            vec![
                s("b", 20, 30, 1, 0.5, 0.5, 0.5),
                s("a", 0, 40, 5, 31.0, 1.0, 16.0),
                s("b", 30, 40, 1, 0.25, 0.25, 0.25)
            ],
            "by end, then by first arrival: a's session began before b's second"
        );
    }

    #[test]
    fn sessions_close_on_the_watermark() {
        let mut op = window(&spec(WindowKind::Session { gap_ms: 10 }, 0, &["count"]), 1);
        let mut out = Vec::new();
        op.process(0, &readings(&[("a", 0, 0.0), ("a", 8, 0.0), ("a", 20, 0.0)]), &mut out).unwrap();
        assert_eq!(rows(&out).len(), 1, "[0, 18) closed at watermark 20");
        // Watermark 20: 9 would extend the closed [0, 18) only: late. 15 starts [15, 25) and
        // merges with the open [20, 30).
        op.process(0, &readings(&[("a", 9, 0.0), ("a", 15, 0.0)]), &mut out).unwrap();
        assert_eq!(op.late_records(), 1);
        op.on_input_end(0, &mut out).unwrap();
        let r = rows(&out);
        assert_eq!(r[1][1..4], [Value::Int(15), Value::Int(30), Value::Int(2)]);
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let input = [("a", i64::MIN, 1.0), ("a", i64::MIN + 7, 2.0), ("b", -1, 3.0), ("a", i64::MAX, 4.0)];
        for spec in all_kinds() {
            let mut op = window(&spec, 1);
            let mut out = Vec::new();
            op.process(0, &readings(&input), &mut out).unwrap();
            // Watermark i64::MAX - 20: the reading at i64::MIN is late, the one at MAX - 3 is not.
            op.process(0, &readings(&[("a", i64::MAX - 3, 5.0), ("c", i64::MIN, 6.0)]), &mut out).unwrap();
            op.on_input_end(0, &mut out).unwrap();
            assert_eq!(op.late_records(), 1, "{:?}", spec.kind);
            if matches!(spec.kind, WindowKind::Tumbling { .. }) {
                let windows: Vec<_> =
                    rows(&out).iter().map(|r| (r[0].clone(), r[1].clone(), r[2].clone())).collect();
                let w = |k: &str, start: i64, count: i64| {
                    (Value::Str(k.into()), Value::Int(start), Value::Int(count))
                };
                // The first window is cut at i64::MIN, the last at i64::MAX.
                assert_eq!(windows, vec![w("a", i64::MIN, 2), w("b", -50, 1), w("a", i64::MAX - 7, 2)]);
            }
        }
    }

    #[test]
    fn batch_boundaries_do_not_change_the_output() {
        let records = scrambled(3000, 7);
        for spec in all_kinds() {
            let mut reference = window(&spec, 1);
            let expected = rows(&run_batches(&mut reference, &batches(&records, records.len())));
            assert!(
                reference.late_records() > 0 && expected.len() > 100,
                "{:?}: a meaningful test",
                spec.kind
            );
            for size in [1, 2, 7, 100, 999] {
                let mut op = window(&spec, 1);
                let got = rows(&run_batches(&mut op, &batches(&records, size)));
                assert_eq!(got, expected, "{:?} in batches of {size}", spec.kind);
                assert_eq!(op.late_records(), reference.late_records());
            }
        }
    }
}
