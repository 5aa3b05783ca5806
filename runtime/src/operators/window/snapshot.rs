//! The snapshot format: a version byte, then postcard of [`Snapshot`] (per-input watermark
//! state, the late count, the arrival counter, the live keys and every window with its
//! accumulators, in firing order, so that equal states give equal bytes). [`encode`] writes
//! it, from the live state or, later and on another thread, from a [`Captured`] copy of it; [`decode`] reads it back as a [`SnapshotIn`], refusing every encoding but the one
//! `encode` writes, and `check` then checks what it holds before `restore` uses it.
//!
//! Above the key table, slots, aggregates and state, which it reads.

use ahash::HashMap;
use serde::{Deserialize, Serialize};

use super::aggregates::{Aggregate, Cell, Cells};
use super::keys::{Key, KeyIn, KeyValue};
use super::slots::{FREE, Slots};
use super::state::{InputWatermark, State};

/// Format version of the snapshot (see [`encode`]).
pub(super) const SNAPSHOT_VERSION: u8 = 1;

/// The snapshot, as encoded (after the version byte).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Snapshot {
    pub(super) inputs: Vec<InputWatermark>,
    pub(super) late: u64,
    pub(super) next_arrival: u64,
    /// Live keys, in order of their first window in `windows`.
    pub(super) keys: Vec<KeyValue>,
    /// Open windows in firing order.
    pub(super) windows: Vec<WindowSnapshot>,
}

/// [`Snapshot`] as decoded for a restore, its keys borrowed from the snapshot bytes.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SnapshotIn<'a> {
    pub(super) inputs: Vec<InputWatermark>,
    pub(super) late: u64,
    pub(super) next_arrival: u64,
    #[serde(borrow)]
    pub(super) keys: Vec<KeyIn<'a>>,
    pub(super) windows: Vec<WindowSnapshot>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WindowSnapshot {
    /// Index into `Snapshot::keys`.
    pub(super) key: u32,
    pub(super) start: i64,
    pub(super) end: i64,
    pub(super) arrival: u64,
    pub(super) last_arrival: u64,
    pub(super) count: i64,
    /// One per aggregate.
    pub(super) cells: Vec<Cell>,
}

/// `state`, with the accumulators of `aggregates`, as snapshot bytes.
pub(super) fn encode(state: &State, aggregates: &[Aggregate]) -> Vec<u8> {
    let State { inputs, late, next_arrival, keys, slots, .. } = state;
    let cells: Vec<&Cells> = aggregates.iter().map(|a| &a.cells).collect();
    let parts = Parts { inputs, late: *late, next_arrival: *next_arrival, slots, cells: &cells };
    parts.encode(|id| keys.key(id))
}

/// A window's state as it was at a checkpoint, owned and immutable: what a snapshot holds,
/// copied in bulk (flat vectors, one copy each) so that taking it costs the subtask's thread
/// a fraction of encoding it; [`Captured::encode`] then writes exactly the bytes [`encode`]
/// wrote at the capture.
pub(super) struct Captured {
    inputs: Vec<InputWatermark>,
    late: u64,
    next_arrival: u64,
    /// The key of every id (`None`: a free id).
    keys: Vec<Option<Key>>,
    slots: Slots,
    /// One per aggregate.
    cells: Vec<Cells>,
}

impl Captured {
    /// A copy of `state` with the accumulators of `aggregates`.
    pub(super) fn new(state: &State, aggregates: &[Aggregate]) -> Captured {
        Captured {
            inputs: state.inputs.clone(),
            late: state.late,
            next_arrival: state.next_arrival,
            keys: state.keys.capture(),
            slots: state.slots.capture(),
            cells: aggregates.iter().map(|a| a.cells.clone()).collect(),
        }
    }

    /// The snapshot bytes of the captured state.
    pub(super) fn encode(&self) -> Vec<u8> {
        let cells: Vec<&Cells> = self.cells.iter().collect();
        let parts = Parts {
            inputs: &self.inputs,
            late: self.late,
            next_arrival: self.next_arrival,
            slots: &self.slots,
            cells: &cells,
        };
        parts.encode(|id| self.keys[id as usize].as_ref().expect("a live window's key is live"))
    }
}

/// What a snapshot is encoded from, borrowed from the live state or from a capture.
struct Parts<'a> {
    inputs: &'a [InputWatermark],
    late: u64,
    next_arrival: u64,
    slots: &'a Slots,
    /// One per aggregate.
    cells: &'a [&'a Cells],
}

impl<'a> Parts<'a> {
    /// The snapshot bytes, with `key` giving the key of an id.
    fn encode(&self, key: impl Fn(u32) -> &'a Key) -> Vec<u8> {
        let slots = self.slots;
        let mut live: Vec<(i64, u64, u32)> = (0..slots.key.len())
            .filter(|&s| slots.arrival[s] != FREE)
            .map(|s| (slots.end[s], slots.arrival[s], s as u32))
            .collect();
        live.sort_unstable();
        // Keys renumbered in order of first use, so equal states give equal bytes.
        let mut renumbered: HashMap<u32, u32> = HashMap::default();
        let mut key_values = Vec::new();
        let windows = live
            .iter()
            .map(|&(_, _, slot)| {
                let s = slot as usize;
                let key = *renumbered.entry(slots.key[s]).or_insert_with(|| {
                    key_values.push(key(slots.key[s]).to_value());
                    (key_values.len() - 1) as u32
                });
                WindowSnapshot {
                    key,
                    start: slots.start[s],
                    end: slots.end[s],
                    arrival: slots.arrival[s],
                    last_arrival: slots.last_arrival[s],
                    count: slots.count[s],
                    cells: self.cells.iter().map(|c| c.get(s)).collect(),
                }
            })
            .collect();
        let snapshot = Snapshot {
            inputs: self.inputs.to_vec(),
            late: self.late,
            next_arrival: self.next_arrival,
            keys: key_values,
            windows,
        };
        let mut bytes = vec![SNAPSHOT_VERSION];
        postcard::to_io(&snapshot, &mut bytes).expect("writing to a Vec cannot fail");
        bytes
    }
}

/// The snapshot in `bytes`, decoded but not yet checked against an operator.
pub(super) fn decode(bytes: &[u8]) -> Result<SnapshotIn<'_>, String> {
    let Some((&version, body)) = bytes.split_first() else {
        return Err("empty snapshot".into());
    };
    if version != SNAPSHOT_VERSION {
        return Err(format!("unknown format version {version} (expected {SNAPSHOT_VERSION})"));
    }
    crate::codec::decode_exact(body).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::Window;
    use super::super::testutil::*;
    use super::Snapshot;
    use crate::batch::{Batch, DataType, Field, Schema, Value};
    use crate::operators::Operator;
    use crate::operators::testutil::sensor_batch;
    use crate::pipeline::spec::{WindowKind, WindowSpec};

    #[test]
    fn snapshot_restore_continues_exactly() {
        let records = scrambled(2000, 11);
        for spec in all_kinds() {
            let input = batches(&records, 64);
            let mut whole = window(&spec, 1);
            let mut expected = Vec::new();
            let mut snapshots = Vec::new();
            for b in &input {
                snapshots.push((expected.len(), whole.snapshot()));
                whole.process(0, b, &mut expected).unwrap();
            }
            whole.on_input_end(0, &mut expected).unwrap();
            for cut in [1, 5, input.len() / 2, input.len() - 1] {
                let (emitted, snapshot) = &snapshots[cut];
                let mut op = window(&spec, 1);
                op.restore(snapshot).unwrap();
                assert_eq!(&op.snapshot(), snapshot, "{:?}: a restored state snapshots the same", spec.kind);
                let mut out = Vec::new();
                for b in &input[cut..] {
                    op.process(0, b, &mut out).unwrap();
                }
                op.on_input_end(0, &mut out).unwrap();
                assert_eq!(out, expected[*emitted..], "{:?}: restored at batch {cut}", spec.kind);
                assert_eq!(op.late_records(), whole.late_records());
            }
        }
    }

    // A capture taken between batches encodes, after everything that came later (windows
    // fired, slots and key ids freed and reused, sessions merged), to exactly the bytes
    // `snapshot` gave at the capture. Short and long keys; a string accumulator.
    #[test]
    fn a_capture_encodes_to_the_snapshot_of_its_time() {
        let mut records = scrambled(12_000, 3);
        for (i, record) in records.iter_mut().enumerate().filter(|(i, _)| i % 2 == 1) {
            // 150 new keys every 600 records: old ones go idle and are swept, their ids reused.
            record.0 = format!("key-{}-{}", i / 600, i % 150);
        }
        for spec in all_kinds() {
            let mut op = window(&spec, 1);
            let mut taken = Vec::new();
            let mut out = Vec::new();
            for b in batches(&records, 64) {
                taken.push((op.snapshot(), op.capture()));
                op.process(0, &b, &mut out).unwrap();
            }
            op.on_input_end(0, &mut out).unwrap();
            taken.push((op.snapshot(), op.capture()));
            for (i, (snapshot, capture)) in taken.into_iter().enumerate() {
                assert_eq!(capture(), snapshot, "{:?}: capture before batch {i}", spec.kind);
            }
        }
    }

    #[test]
    fn snapshot_in_the_middle_of_the_workload() {
        let mut whole = window(&sensor_window(), 1);
        let expected = run_sensors(&mut whole, 200_000, 1000);
        let mut first = window(&sensor_window(), 1);
        let mut out = Vec::new();
        for i in (0..120_000).step_by(1000) {
            first.process(0, &sensor_batch(i..i + 1000), &mut out).unwrap();
        }
        let snapshot = first.snapshot();
        assert_eq!(snapshot, first.snapshot(), "snapshot does not change the state");
        let mut second = window(&sensor_window(), 1);
        second.restore(&snapshot).unwrap();
        for i in (120_000..200_000).step_by(1000) {
            second.process(0, &sensor_batch(i..i + 1000), &mut out).unwrap();
        }
        second.on_input_end(0, &mut out).unwrap();
        assert_eq!(out, expected);
    }

    // Restore decodes keys borrowed from the snapshot bytes (`KeyIn`): every key kind, and
    // strings on both sides of the 7-byte packing, come back as they were snapshotted.
    #[test]
    fn every_key_kind_restores_to_the_same_snapshot_and_output() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int),
            Field::new("ok", DataType::Bool),
            Field::new("name", DataType::Str),
            Field::new("t", DataType::Int),
        ]));
        let mut input = Batch::with_capacity(schema.clone(), 8);
        let names = ["a", "seven77", "eight888", "a much longer sensor name"];
        for i in 0..8i64 {
            let name = Value::Str(names[i as usize % 4].into());
            input.push_row(&[Value::Int(i % 3 - 1), Value::Bool(i % 2 == 0), name, Value::Int(i)]);
        }
        for key in [Some("id"), Some("ok"), Some("name"), None] {
            let spec = WindowSpec {
                key: key.map(Into::into),
                time_field: "t".into(),
                kind: WindowKind::Tumbling { size_ms: 100 },
                max_out_of_order_ms: 0,
                aggregates: aggregates(&["count", "last(name)"]),
            };
            let mut whole = Window::new("w", &spec, schema.clone(), 1).unwrap();
            whole.process(0, &input, &mut Vec::new()).unwrap();
            let snapshot = whole.snapshot();
            let mut restored = Window::new("w", &spec, schema.clone(), 1).unwrap();
            restored.restore(&snapshot).unwrap();
            assert_eq!(restored.snapshot(), snapshot, "key {key:?}");
            let (mut a, mut b) = (Vec::new(), Vec::new());
            whole.on_input_end(0, &mut a).unwrap();
            restored.on_input_end(0, &mut b).unwrap();
            assert_eq!(rows(&a), rows(&b), "key {key:?}");
            assert!(!a.is_empty());
        }
    }

    #[test]
    fn restore_refuses_other_encodings_of_a_valid_state() {
        let (snap, op) = editable();
        let good = op.snapshot();
        assert_eq!(encode(&snap), good);
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(refusal(&longer), "1 trailing bytes");
        // `late` (0, one byte after the input watermark) written in two bytes: the same
        // value, which postcard reads.
        let at = 1 + 1 + postcard::to_allocvec(&snap.inputs[0]).unwrap().len();
        assert_eq!(good[at], 0, "late is 0");
        let mut overlong = good.clone();
        overlong.splice(at..at + 1, [0x80, 0x00]);
        let decoded: Snapshot = postcard::from_bytes(&overlong[1..]).unwrap();
        assert_eq!(decoded.late, 0, "postcard accepts an overlong integer");
        assert_eq!(
            refusal(&overlong),
            format!("not in canonical form ({} bytes, {} as written by weir)", good.len(), good.len() - 1)
        );
    }
}
