//! Helpers of the window's tests: specs, input batches, running an operator over them, its
//! output as rows or lines, an independent computation of the sensor-window workload, and
//! snapshots decoded for editing.

use std::collections::BTreeMap;

use super::Window;
use super::snapshot::{SNAPSHOT_VERSION, Snapshot};
use crate::batch::{Batch, Value};
use crate::operators::testutil::{sensor_batch, sensor_batch_keys};
use crate::operators::{Operator, OperatorError};
use crate::pipeline::spec::{AggregateFunction, AggregateSpec, WindowKind, WindowSpec, sensors_schema};

pub(super) fn aggregates(list: &[&str]) -> Vec<AggregateSpec> {
    list.iter()
        .map(|a| {
            let (function, field) = match a.split_once('(') {
                None => (*a, None),
                Some((f, rest)) => (f, Some(rest.trim_end_matches(')').to_owned())),
            };
            let function = match function {
                "count" => AggregateFunction::Count,
                "sum" => AggregateFunction::Sum,
                "min" => AggregateFunction::Min,
                "max" => AggregateFunction::Max,
                "mean" => AggregateFunction::Mean,
                "first" => AggregateFunction::First,
                "last" => AggregateFunction::Last,
                other => panic!("{other}"),
            };
            AggregateSpec { function, field }
        })
        .collect()
}

pub(super) fn spec(kind: WindowKind, ooo: i64, list: &[&str]) -> WindowSpec {
    WindowSpec {
        key: Some("sensor".into()),
        time_field: "ts".into(),
        kind,
        max_out_of_order_ms: ooo,
        aggregates: aggregates(list),
    }
}

pub(super) fn sensor_window() -> WindowSpec {
    spec(
        WindowKind::Tumbling { size_ms: 1000 },
        100,
        &["count", "sum(value)", "min(value)", "max(value)", "mean(value)"],
    )
}

pub(super) fn window(spec: &WindowSpec, inputs: usize) -> Window {
    Window::new("windows", spec, sensors_schema(), inputs).unwrap()
}

pub(super) fn rows(out: &[Batch]) -> Vec<Vec<Value>> {
    out.iter().flat_map(|b| (0..b.len()).map(|i| b.row(i))).collect()
}

/// Readings as a batch of the sensors schema.
pub(super) fn readings(records: &[(&str, i64, f64)]) -> Batch {
    let mut b = Batch::with_capacity(sensors_schema(), records.len());
    for &(s, ts, v) in records {
        b.push_row(&[Value::Str(s.into()), Value::Int(ts), Value::Float(v)]);
    }
    b
}

/// Run `records` readings of the workload through `op` in batches of `batch`, then end.
pub(super) fn run_sensors(op: &mut Window, records: u64, batch: u64) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < records {
        let end = (i + batch).min(records);
        op.process(0, &sensor_batch(i..end), &mut out).unwrap();
        i = end;
    }
    op.on_input_end(0, &mut out).unwrap();
    out
}

pub(super) fn csv_lines(out: &[Batch]) -> Vec<String> {
    let float = |v: &Value| match v {
        Value::Float(f) => format!("{f:.3}"),
        other => panic!("{other:?}"),
    };
    rows(out)
        .iter()
        .map(|r| match &r[..] {
            [Value::Str(s), Value::Int(w), Value::Int(c), sum, min, max, mean] => {
                format!("{s},{w},{c},{},{},{},{}", float(sum), float(min), float(max), float(mean))
            }
            other => panic!("{other:?}"),
        })
        .collect()
}

/// The workload's computation, written independently of the operator (as
/// `sensor_window_ref.py` does it).
pub(super) fn naive_sensor_window(records: u64) -> Vec<String> {
    let mut acc: BTreeMap<(String, i64), (i64, f64, f64, f64)> = BTreeMap::new();
    for i in 0..records {
        let ts = (i / 100 + (i * 37) % 50) as i64;
        let v = ((i * 7919 + 13) % 10007) as f64 / 100.0;
        let a = acc.entry((format!("s{:04}", i % 1000), ts - ts % 1000)).or_insert((
            0,
            0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ));
        a.0 += 1;
        a.1 += v;
        if v < a.2 {
            a.2 = v;
        }
        if v > a.3 {
            a.3 = v;
        }
    }
    let mut lines: Vec<String> = acc
        .iter()
        .map(|((s, w), (c, sum, min, max))| {
            format!("{s},{w},{c},{sum:.3},{min:.3},{max:.3},{:.3}", sum / *c as f64)
        })
        .collect();
    lines.sort();
    lines
}

pub(super) fn sorted_output(lines: &[String]) -> String {
    let mut lines = lines.to_vec();
    lines.sort();
    lines.join("\n") + "\n"
}

/// A scrambled stream: a few keys, times that wander back (some far enough to be late),
/// values with many bits.
pub(super) fn scrambled(records: usize, seed: u64) -> Vec<(String, i64, f64)> {
    let mut x = seed;
    let mut next = move || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        x >> 33
    };
    (0..records)
        .map(|i| {
            let key = format!("k{}", next() % 7);
            let back = if next() % 10 == 0 { (next() % 120) as i64 } else { (next() % 15) as i64 };
            let ts = (i as i64) * 3 - back;
            (key, ts, (next() % 100_000) as f64 / 7.0)
        })
        .collect()
}

pub(super) fn all_kinds() -> Vec<WindowSpec> {
    let list =
        ["count", "sum(value)", "min(value)", "max(value)", "mean(value)", "first(value)", "last(sensor)"];
    vec![
        spec(WindowKind::Tumbling { size_ms: 50 }, 20, &list),
        spec(WindowKind::Hopping { size_ms: 60, hop_ms: 25 }, 20, &list),
        spec(WindowKind::Session { gap_ms: 9 }, 20, &list),
    ]
}

pub(super) fn batches(records: &[(String, i64, f64)], size: usize) -> Vec<Batch> {
    records
        .chunks(size)
        .map(|c| readings(&c.iter().map(|(k, t, v)| (k.as_str(), *t, *v)).collect::<Vec<_>>()))
        .collect()
}

pub(super) fn run_batches(op: &mut Window, input: &[Batch]) -> Vec<Batch> {
    let mut out = Vec::new();
    for b in input {
        op.process(0, b, &mut out).unwrap();
    }
    op.on_input_end(0, &mut out).unwrap();
    out
}

/// A real snapshot of the sensor window (10 keys), decoded for editing.
pub(super) fn editable() -> (Snapshot, Window) {
    let mut op = window(&sensor_window(), 1);
    op.process(0, &sensor_batch_keys(0..2000, 10), &mut Vec::new()).unwrap();
    let snap: Snapshot = postcard::from_bytes(&op.snapshot()[1..]).unwrap();
    assert!(snap.windows.len() >= 10 && snap.windows.iter().all(|w| w.count > 1));
    (snap, op)
}

pub(super) fn encode(snap: &Snapshot) -> Vec<u8> {
    let mut bytes = vec![SNAPSHOT_VERSION];
    postcard::to_io(snap, &mut bytes).unwrap();
    bytes
}

/// The error of restoring `bytes` into a sensor window that holds a state already,
/// which must stay as it was.
pub(super) fn refusal(bytes: &[u8]) -> String {
    let mut op = window(&sensor_window(), 1);
    op.process(0, &sensor_batch(0..50), &mut Vec::new()).unwrap();
    let before = op.snapshot();
    let message = match op.restore(bytes) {
        Err(OperatorError::Snapshot { message, .. }) => message,
        other => panic!("{other:?}"),
    };
    assert_eq!(op.snapshot(), before, "a refused snapshot changes nothing");
    message
}
