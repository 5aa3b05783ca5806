//! Restore: a decoded snapshot turned back into an operator's state, every window checked as
//! it is rebuilt (see `check`), so that a damaged snapshot is refused rather than restored as a
//! wrong state. The state is built aside: a refused snapshot leaves the operator as it was.
//!
//! The top of the snapshot layers: above the format (`snapshot`) and its checks (`check`).

use super::aggregates::Aggregate;
use super::build::Shape;
use super::check;
use super::keys::{Key, KeyIn, Keys, OpenWindow};
use super::slots::{Pending, Slots};
use super::snapshot::SnapshotIn;
use super::state::State;
use crate::batch::DataType;

/// The state `snap` holds, for an operator of `shape` with `aggregates` (whose accumulators
/// are left alone) and `inputs` input channels, and the aggregates with its accumulators.
pub(super) fn restore(
    shape: &Shape,
    aggregates: &[Aggregate],
    inputs: usize,
    snap: SnapshotIn<'_>,
) -> Result<(State, Vec<Aggregate>), String> {
    check_header(shape, inputs, &snap)?;
    let mut bounds =
        check::Bounds::new(shape.kind, &snap.inputs, shape.max_out_of_order_ms, snap.next_arrival);
    let cell_rules = check::CellRules::new(aggregates, &shape.input);

    let mut state = State {
        inputs: snap.inputs,
        late: snap.late,
        next_arrival: snap.next_arrival,
        keys: Keys::default(),
        slots: Slots::default(),
        pending: Pending::default(),
    };
    // Built aside, so that a bad snapshot leaves the operator as it was.
    let mut aggregates: Vec<Aggregate> = aggregates
        .iter()
        .map(|a| Aggregate { function: a.function, column: a.column, cells: a.cells.empty_like() })
        .collect();
    state.keys.reserve_for(&snap.keys);
    state.slots.reserve(&mut aggregates, snap.windows.len());
    let mut ids = Vec::with_capacity(snap.keys.len());
    for k in &snap.keys {
        let key = k.as_ref();
        if state.keys.find(key).is_some() {
            return Err("a key appears twice".into());
        }
        ids.push(state.keys.insert(Key::new(key)));
    }
    // Keys are numbered in order of their first window (see `snapshot::encode`).
    let mut next_key = 0;
    for w in snap.windows {
        let k = w.key as usize;
        let Some(&key) = ids.get(k) else {
            return Err(format!("window of key {k} of {}", ids.len()));
        };
        if k > next_key {
            return Err(format!("key {k} is used before key {next_key}"));
        }
        next_key = next_key.max(k + 1);
        let at = check::At { key: snap.keys[k], start: w.start, end: w.end };
        if w.cells.len() != aggregates.len() {
            return Err(format!("{at} has {} accumulators, not {}", w.cells.len(), aggregates.len()));
        }
        bounds.check(&at, &w)?;
        cell_rules.check(&at, w.count, &w.cells)?;
        check::check_apart(shape.kind, &at, state.keys.open(key), &state.slots)?;
        let slot = state.slots.alloc(&mut aggregates, key, w.start, w.end, w.arrival);
        let s = slot as usize;
        state.slots.last_arrival[s] = w.last_arrival;
        state.slots.count[s] = w.count;
        for (a, cell) in aggregates.iter_mut().zip(w.cells) {
            if !a.cells.set(s, cell) {
                return Err(format!("accumulator of {:?} has another type", a.function));
            }
        }
        state.keys.open_mut(key).push(OpenWindow { start: w.start, slot });
        state.pending.add(w.end, w.arrival, slot);
    }
    if next_key != ids.len() {
        return Err("a key without windows".into());
    }
    Ok((state, aggregates))
}

/// What a snapshot says besides its windows fits the operator: its inputs, its keys' type,
/// its counters.
fn check_header(shape: &Shape, inputs: usize, snap: &SnapshotIn<'_>) -> Result<(), String> {
    if snap.inputs.len() != inputs {
        return Err(format!("snapshot has {} inputs, the operator {}", snap.inputs.len(), inputs));
    }
    let key_fits = |k: &KeyIn| {
        matches!(
            (shape.key_type, k),
            (None, KeyIn::Unit)
                | (Some(DataType::Str), KeyIn::Str(_))
                | (Some(DataType::Int), KeyIn::Int(_))
                | (Some(DataType::Bool), KeyIn::Bool(_))
        )
    };
    if let Some(k) = snap.keys.iter().find(|k| !key_fits(k)) {
        return Err(format!("key {k:?} does not fit the key field"));
    }
    // Counters that no run reaches (2^62 records is 1,400 years at 100 M/s) would overflow
    // on the next record: a damaged snapshot, refused here rather than wrapped later.
    const COUNTER_LIMIT: u64 = 1 << 62;
    if snap.next_arrival >= COUNTER_LIMIT || snap.late >= COUNTER_LIMIT {
        return Err(format!(
            "record counters out of range ({} arrived, {} late)",
            snap.next_arrival, snap.late
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Window;
    use super::super::keys::KeyValue;
    use super::super::snapshot::{SNAPSHOT_VERSION, Snapshot};
    use super::super::testutil::*;
    use crate::operators::testutil::sensor_batch;
    use crate::operators::{Operator, OperatorError};
    use crate::pipeline::spec::WindowKind;

    #[test]
    fn restore_rejects_damaged_snapshots() {
        let mut op = window(&sensor_window(), 1);
        op.process(0, &sensor_batch(0..100), &mut Vec::new()).unwrap();
        let good = op.snapshot();
        let mut fresh = window(&sensor_window(), 1);
        let error = |fresh: &mut Window, bytes: &[u8]| match fresh.restore(bytes) {
            Err(OperatorError::Snapshot { operator, message }) => {
                assert_eq!(operator, "windows");
                message
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(error(&mut fresh, &[]), "empty snapshot");
        let mut v2 = good.clone();
        v2[0] = 2;
        assert_eq!(error(&mut fresh, &v2), "unknown format version 2 (expected 1)");
        error(&mut fresh, &good[..good.len() / 2]);
        let mut two_inputs = window(&sensor_window(), 2);
        assert_eq!(error(&mut two_inputs, &good), "snapshot has 1 inputs, the operator 2");
        let mut other_aggregates =
            window(&spec(WindowKind::Tumbling { size_ms: 1000 }, 100, &["count", "first(sensor)"]), 1);
        error(&mut other_aggregates, &good);
        assert_eq!(fresh.open_windows(), 0, "a failed restore changes nothing");
        fresh.restore(&good).unwrap();
        assert_eq!(fresh.open_windows(), 100);
    }

    #[test]
    fn restore_rejects_a_key_twice_or_of_the_wrong_kind() {
        let mut op = window(&sensor_window(), 1);
        op.process(0, &sensor_batch(0..100), &mut Vec::new()).unwrap();
        let good = op.snapshot();
        let reencode = |edit: &dyn Fn(&mut Snapshot)| {
            let mut snap: Snapshot = postcard::from_bytes(&good[1..]).unwrap();
            edit(&mut snap);
            let mut bytes = vec![SNAPSHOT_VERSION];
            postcard::to_io(&snap, &mut bytes).unwrap();
            bytes
        };
        let error = |bytes: &[u8]| match window(&sensor_window(), 1).restore(bytes) {
            Err(OperatorError::Snapshot { message, .. }) => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(error(&reencode(&|s| s.keys[1] = s.keys[0].clone())), "a key appears twice");
        assert_eq!(
            error(&reencode(&|s| s.keys[0] = KeyValue::Int(3))),
            "key Int(3) does not fit the key field"
        );
        // Found by the window_snapshot fuzz target: counters near u64::MAX were accepted and
        // the next record overflowed them.
        assert_eq!(
            error(&reencode(&|s| s.next_arrival = u64::MAX - 1)),
            format!("record counters out of range ({} arrived, 0 late)", u64::MAX - 1)
        );
        assert_eq!(
            error(&reencode(&|s| s.late = 1 << 62)),
            format!("record counters out of range (100 arrived, {} late)", 1u64 << 62)
        );
    }
}
