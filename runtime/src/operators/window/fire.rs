//! Firing: every window whose end the watermark has passed is emitted, in order of `(end,
//! arrival of the window's first record)`, as one output batch (key, `window_start`,
//! `window_end` for sessions, one column per aggregate), and removed; then idle keys are
//! swept.
//!
//! Above the key table, slots, aggregates and state.

use super::aggregates::Aggregate;
use super::build::Shape;
use super::keys::{Key, unpack};
use super::state::State;
use crate::batch::{Batch, Column};
use crate::pipeline::spec::WindowKind;

/// Emit and remove every window with `end <= watermark`; `fired` is scratch.
pub(super) fn fire(
    shape: &Shape,
    state: &mut State,
    aggregates: &[Aggregate],
    fired: &mut Vec<(i64, u64, u32)>,
    watermark: i64,
    out: &mut Vec<Batch>,
) {
    let State { keys, slots, pending, .. } = state;
    fired.clear();
    while let Some(entry) = pending.by_end.first_entry() {
        if *entry.key() > watermark {
            break;
        }
        let mut bucket = entry.remove();
        for &(arrival, slot) in &bucket {
            let s = slot as usize;
            if slots.arrival[s] != arrival {
                continue; // freed by a session merge (and maybe reused)
            }
            if slots.end[s] > watermark {
                pending.add(slots.end[s], arrival, slot); // a session grew
                continue;
            }
            fired.push((slots.end[s], arrival, slot));
        }
        bucket.clear();
        pending.spare.push(bucket);
    }
    if !fired.is_empty() {
        // Sorted already, except for sessions that grew.
        fired.sort_unstable();
        let order: Vec<u32> = fired.iter().map(|&(_, _, slot)| slot).collect();
        let mut columns = Vec::with_capacity(shape.output.len());
        if let Some(ty) = shape.key_type {
            let mut column = Column::with_capacity(ty, order.len());
            for &slot in &order {
                match (&mut column, keys.key(slots.key[slot as usize])) {
                    (Column::Str(c), Key::Short(k)) => c.push(unpack(*k, &mut [0; 8])),
                    (Column::Str(c), Key::Str(k)) => c.push(k),
                    (Column::Int(c), Key::Int(k)) => c.push(*k),
                    (Column::Bool(c), Key::Bool(k)) => c.push(*k),
                    (c, k) => panic!("{}: key {k:?} in a {} column", shape.node, c.data_type()),
                }
            }
            columns.push(column);
        }
        columns.push(Column::Int(order.iter().map(|&s| slots.start[s as usize]).collect()));
        if matches!(shape.kind, WindowKind::Session { .. }) {
            columns.push(Column::Int(order.iter().map(|&s| slots.end[s as usize]).collect()));
        }
        for a in aggregates {
            columns.push(a.output(&order, &slots.count));
        }
        out.push(Batch::new(shape.output.clone(), columns));
        for &slot in &order {
            keys.close_window(slots.key[slot as usize], slot, watermark);
            slots.release(slot);
        }
    }
    let length = match shape.kind {
        WindowKind::Tumbling { size_ms } | WindowKind::Hopping { size_ms, .. } => size_ms,
        WindowKind::Session { gap_ms } => gap_ms,
    };
    keys.sweep(watermark, length.saturating_mul(2));
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::batch::Value;
    use crate::operators::Operator;
    use crate::operators::testutil::{sensor_batch, sha256_hex};
    use crate::pipeline::spec::WindowKind;

    #[test]
    fn sensor_window_200k_fires_as_the_watermark_passes() {
        let mut op = window(&sensor_window(), 1);
        let mut out = Vec::new();
        for i in (0..200_000).step_by(4000) {
            op.process(0, &sensor_batch(i..i + 4000), &mut out).unwrap();
        }
        // Windows [0, 1000) fired once the watermark passed 1000; the last ones wait.
        assert_eq!(rows(&out).len(), 1000);
        assert_eq!(op.open_windows(), 1890);
        op.on_input_end(0, &mut out).unwrap();
        assert_eq!(op.open_windows(), 0);
        assert_eq!(op.state.keys.live(), 0, "keys are dropped with their windows");
        let lines = csv_lines(&out);
        assert_eq!(lines.len(), 2890);
        assert_eq!(op.late_records(), 0);
        assert_eq!(
            sha256_hex(sorted_output(&lines).as_bytes()),
            "00b943d3e2ff6c2f87b15bb4b6617e09a4bffc08a1a535a65e5c026fa8466b9b"
        );
    }

    #[test]
    fn output_is_ordered_by_window_end_then_first_arrival() {
        let mut op = window(&spec(WindowKind::Tumbling { size_ms: 10 }, 0, &["count"]), 1);
        let mut out = Vec::new();
        op.process(
            0,
            &readings(&[("b", 1, 0.0), ("a", 2, 0.0), ("c", 12, 0.0), ("a", 11, 0.0), ("b", 25, 0.0)]),
            &mut out,
        )
        .unwrap();
        op.on_input_end(0, &mut out).unwrap();
        let keys: Vec<_> = rows(&out).iter().map(|r| (r[0].clone(), r[1].clone())).collect();
        let s = |k: &str, w: i64| (Value::Str(k.into()), Value::Int(w));
        assert_eq!(keys, vec![s("b", 0), s("a", 0), s("c", 10), s("a", 10), s("b", 20)]);
        assert_eq!(out.len(), 2, "one batch per firing: [0, 10) and [10, 20) at ts 25, the rest at the end");
    }

    #[test]
    fn two_inputs_fire_on_the_smaller_watermark() {
        let mut op = window(&spec(WindowKind::Tumbling { size_ms: 10 }, 0, &["count"]), 2);
        let mut out = Vec::new();
        op.process(0, &readings(&[("a", 5, 0.0), ("a", 95, 0.0)]), &mut out).unwrap();
        assert!(out.is_empty(), "input 1 has sent nothing: it holds the watermark");
        op.process(1, &readings(&[("b", 3, 0.0), ("b", 41, 0.0)]), &mut out).unwrap();
        assert_eq!(rows(&out).len(), 2, "watermark 41 fires a and b at [0, 10)");
        // A record of input 0 that is behind input 0 but ahead of the operator's watermark
        // is not late.
        op.process(0, &readings(&[("a", 45, 0.0)]), &mut out).unwrap();
        assert_eq!(op.late_records(), 0);
        op.on_input_end(1, &mut out).unwrap();
        assert_eq!(rows(&out).len(), 4, "input 1 ended: watermark 95 fires b at 40 and a at 40");
        assert_eq!(op.open_windows(), 1);
        op.process(0, &readings(&[("a", 50, 0.0)]), &mut out).unwrap();
        assert_eq!(op.late_records(), 1);
        op.on_input_end(0, &mut out).unwrap();
        assert_eq!(rows(&out).len(), 5);
        assert_eq!(op.open_windows(), 0);
    }

    #[test]
    fn input_end_flushes_every_window() {
        let mut op = window(&sensor_window(), 1);
        let mut out = Vec::new();
        op.process(0, &sensor_batch(0..5000), &mut out).unwrap();
        assert!(out.is_empty());
        op.on_input_end(0, &mut out).unwrap();
        assert_eq!(rows(&out).len(), 1000);
        assert_eq!(op.open_windows(), 0);
        op.on_input_end(0, &mut out).unwrap();
        assert_eq!(rows(&out).len(), 1000, "nothing twice");
    }
}

#[cfg(test)]
mod floor_tests {
    use super::super::testutil::*;
    use crate::operators::Operator;
    use crate::pipeline::spec::WindowKind;

    /// An event-time floor (a source's idle tick) raises the input's watermark like a record
    /// of that time would, fires what it closes, and is not passed on; with two inputs the
    /// other's watermark still holds the windows back.
    #[test]
    fn an_event_time_floor_closes_windows_without_a_record() {
        let mut op = window(&spec(WindowKind::Tumbling { size_ms: 10 }, 5, &["count"]), 2);
        let mut out = Vec::new();
        op.process(0, &readings(&[("a", 1, 1.0), ("a", 12, 1.0)]), &mut out).unwrap();
        op.process(1, &readings(&[("b", 3, 1.0)]), &mut out).unwrap();
        assert!(rows(&out).is_empty());
        assert!(!op.advance_event_time(1, 16, &mut out).unwrap(), "a window does not pass it on");
        assert!(rows(&out).is_empty(), "input 0 is at 12 - 5: [0, 10) stays open");
        op.advance_event_time(0, 15, &mut out).unwrap();
        assert_eq!(rows(&out).len(), 2, "both at 10 or more: [0, 10) fires for a and b");
        op.advance_event_time(0, 25, &mut out).unwrap();
        op.advance_event_time(1, 14, &mut out).unwrap();
        assert_eq!(rows(&out).len(), 2, "a floor never lowers a watermark: input 1 stays at 11");
        op.advance_event_time(1, 30, &mut out).unwrap();
        assert_eq!(rows(&out).len(), 3, "[10, 20) of a fires");
        // The floor is state: it survives a snapshot.
        let mut again = window(&spec(WindowKind::Tumbling { size_ms: 10 }, 5, &["count"]), 2);
        again.restore(&op.snapshot()).unwrap();
        let mut late = Vec::new();
        again.process(0, &readings(&[("a", 19, 1.0)]), &mut late).unwrap();
        assert_eq!(again.late_records(), 1);
    }
}
