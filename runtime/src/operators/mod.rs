//! The operator API and the built-in operators. Operators are I/O-free: a subtask actor feeds
//! them batches and carries their output, snapshots and restores them at checkpoints.
//!
//! - `filter`: keep the records for which an expression is true.
//! - `map`: select, rename, drop and compute fields.
//! - `window`: keyed event-time windows (tumbling, hopping, session) with aggregates.
//! - `expr`: the expression language of `filter` and `map`.
//!
//! [`build`] makes the operator of a `TransformSpec` and finds every type error (unknown
//! fields, a non-bool condition, `sum` of a string, a bad size) before any data flows, as a
//! [`BuildError`] naming the config key. [`check_parallelism`] refuses a node whose
//! parallelism would make its output wrong (a window without a key).
//!
//! Event time: an operator that needs a watermark (the window) derives it from its input, per
//! input channel (largest event time seen minus the bounded out-of-orderness), and takes the
//! smallest over the inputs that have not ended. Watermarks do not travel as messages.

use crate::batch::{Batch, SchemaRef};
use crate::pipeline::spec::TransformSpec;

pub mod expr;
pub mod filter;
pub mod map;
#[cfg(test)]
mod testutil;
pub mod window;

/// A transform spec that cannot run on its input: an unknown field, a type error, a bad size.
/// Found by [`build`], before any data flows.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{message}")]
pub struct BuildError {
    /// The config key the problem is about, relative to the transform's table (`"condition"`,
    /// `"compute.total"`, `"aggregates"`, `"key"`, `"time_field"`, `"size_ms"`, ...), so that
    /// the config layer can point at its line. A `String` because `compute.NAME` names a
    /// user's field.
    pub key: String,
    /// What is wrong, naming the thing (short, lowercase).
    pub message: String,
}

impl BuildError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> BuildError {
        BuildError { key: key.into(), message: message.into() }
    }
}

/// The operator for transform `spec` of node `node` (the name used in its run-time errors).
/// `input` is the schema of every input batch and `inputs` the number of input channels of
/// this subtask (at least 1).
pub fn build(
    node: &str,
    spec: &TransformSpec,
    input: SchemaRef,
    inputs: usize,
) -> Result<Box<dyn Operator>, BuildError> {
    if inputs == 0 {
        return Err(BuildError::new("inputs", "a transform needs at least one input"));
    }
    Ok(match spec {
        TransformSpec::Filter { condition } => Box::new(filter::Filter::new(node, condition, input)?),
        TransformSpec::Map(map) => Box::new(map::Map::new(node, map, input)?),
        TransformSpec::Window(window) => Box::new(window::Window::new(node, window, input, inputs)?),
    })
}

/// Refuses transform `spec` run by `parallelism` subtasks when that would give wrong output:
/// a window without a key, whose subtasks would each emit a partial window. The runtime calls
/// it once per node before building its operators, as the config layer does for each table.
pub fn check_parallelism(spec: &TransformSpec, parallelism: usize) -> Result<(), BuildError> {
    match spec {
        TransformSpec::Window(window) => window::check_parallelism(window, parallelism),
        TransformSpec::Filter { .. } | TransformSpec::Map(_) => Ok(()),
    }
}

/// The snapshot of an operator without state: its format version alone.
const STATELESS_SNAPSHOT: [u8; 1] = [1];

fn restore_stateless(operator: &str, snapshot: &[u8]) -> Result<(), OperatorError> {
    let message = match snapshot {
        _ if snapshot == STATELESS_SNAPSHOT => return Ok(()),
        [version] => format!("unknown format version {version} (expected 1)"),
        _ => format!("expected a stateless snapshot (1 byte), found {} bytes", snapshot.len()),
    };
    Err(OperatorError::Snapshot { operator: operator.to_owned(), message })
}

/// Restore `snapshot` into a fresh operator of transform `spec` (over `input`, with `inputs`
/// input channels) and return what that operator snapshots to. For fuzz targets and tests:
/// it never panics, whatever the bytes, and whatever it accepts re-encodes to the same bytes
/// (`Ok(b)` implies `b == snapshot`), because every decoder refuses all encodings but its
/// own. A spec that does not build is an error too (naming the spec's key).
pub fn check_snapshot(
    spec: &TransformSpec,
    input: SchemaRef,
    inputs: usize,
    snapshot: &[u8],
) -> Result<Vec<u8>, OperatorError> {
    let mut operator = build("check", spec, input, inputs).map_err(|e| OperatorError::Snapshot {
        operator: "check".into(),
        message: format!("the spec does not build: {}: {}", e.key, e.message),
    })?;
    operator.restore(snapshot)?;
    Ok(operator.snapshot())
}

/// An operator's failure on bad data or a damaged snapshot. One line, naming the problem.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum OperatorError {
    /// An expression could not be evaluated on a record (for example, division by zero).
    #[error("{operator}: {message}")]
    Eval {
        /// The operator's node name.
        operator: String,
        /// What went wrong.
        message: String,
    },
    /// A snapshot could not be decoded.
    #[error("{operator}: snapshot cannot be decoded: {message}")]
    Snapshot {
        /// The operator's node name.
        operator: String,
        /// What went wrong.
        message: String,
    },
}

/// An operator's state taken by [`Operator::capture`]: called once, on any thread, it encodes
/// the snapshot as it was at the capture.
pub type Capture = Box<dyn FnOnce() -> Vec<u8> + Send>;

/// A transform operator: one instance per subtask.
///
/// Calls come from one thread at a time, in this order: `restore` (optional, before anything
/// else), then any number of `process`, `on_input_end`, `snapshot` and `capture`. Output
/// batches are pushed onto `out` and must have the schema of `output_schema`; empty batches
/// should not be pushed. Output must depend only on the input and the restored state (no clock, no
/// randomness), so that replay after a failure reproduces it.
pub trait Operator: Send {
    /// The schema of every output batch.
    fn output_schema(&self) -> SchemaRef;

    /// Process `batch`, which arrived on input channel `input` (`0..inputs`).
    fn process(&mut self, input: usize, batch: &Batch, out: &mut Vec<Batch>) -> Result<(), OperatorError>;

    /// Input channel `input` has ended: nothing more will arrive on it. When every input has
    /// ended, an operator with pending state emits all of it (a window fires every window).
    fn on_input_end(&mut self, input: usize, out: &mut Vec<Batch>) -> Result<(), OperatorError>;

    /// The operator's state, encoded with postcard (with a format version first), for a
    /// checkpoint. Must not change the state.
    fn snapshot(&self) -> Vec<u8>;

    /// The state as it is now, for a checkpoint whose encoding runs later on another thread
    /// (the log's writer), so that a large state does not stall the other subtasks of this
    /// one's thread: encoding the capture gives exactly the bytes [`Operator::snapshot`] gives
    /// now, whatever the operator does meanwhile. Must not change the state, and should cost
    /// far less than `snapshot` (an operator with a large state copies it in bulk). The
    /// default encodes at once: right for a state of a few bytes.
    fn capture(&self) -> Capture {
        let bytes = self.snapshot();
        Box::new(move || bytes)
    }

    /// Replace the state with one produced by `snapshot` (possibly by an earlier run).
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), OperatorError>;

    /// Records dropped because they arrived after the watermark had passed their window.
    fn late_records(&self) -> u64 {
        0
    }

    /// Event time on input `input` has reached at least `floor` (a source's idle tick),
    /// though no record says so. Returns whether the floor holds for the output too (it
    /// is passed on downstream): true for operators that keep their input's event time
    /// (filter, map); a window takes it into its watermark, fires what it closes, and does
    /// not pass it on.
    fn advance_event_time(
        &mut self,
        input: usize,
        floor: i64,
        out: &mut Vec<Batch>,
    ) -> Result<bool, OperatorError> {
        let _ = (input, floor, out);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::spec::{MapSpec, WindowKind, WindowSpec, sensors_schema};

    // Stateless snapshots: only the one byte `[1]` is accepted, of every string of up to
    // two bytes, and it re-encodes to itself.
    #[test]
    fn stateless_operators_accept_their_one_snapshot_only() {
        let specs = [
            TransformSpec::Filter { condition: "ts > 3".into() },
            TransformSpec::Map(MapSpec { select: None, drop: vec![], rename: vec![], compute: vec![] }),
        ];
        for spec in &specs {
            let mut accepted = Vec::new();
            let short = (0..=255u8).map(|a| vec![a]);
            let pairs = (0..=255u8).flat_map(|a| (0..=255u8).map(move |b| vec![a, b]));
            for bytes in std::iter::once(vec![]).chain(short).chain(pairs) {
                if let Ok(again) = check_snapshot(spec, sensors_schema(), 1, &bytes) {
                    assert_eq!(again, bytes);
                    accepted.push(bytes);
                }
            }
            assert_eq!(accepted, vec![vec![1]]);
        }
        let e = check_snapshot(&specs[0], sensors_schema(), 1, &[2]).unwrap_err();
        assert_eq!(e.to_string(), "check: snapshot cannot be decoded: unknown format version 2 (expected 1)");
        let e = check_snapshot(&specs[0], sensors_schema(), 1, &[1, 0]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "check: snapshot cannot be decoded: expected a stateless snapshot (1 byte), found 2 bytes"
        );
    }

    #[test]
    fn check_snapshot_round_trips_a_window_and_names_a_bad_spec() {
        let window = WindowSpec {
            key: Some("sensor".into()),
            time_field: "ts".into(),
            kind: WindowKind::Tumbling { size_ms: 10 },
            max_out_of_order_ms: 0,
            aggregates: vec![],
        };
        let spec = TransformSpec::Window(window.clone());
        let mut op = build("w", &spec, sensors_schema(), 1).unwrap();
        op.process(0, &testutil::sensor_batch(0..50), &mut Vec::new()).unwrap();
        let snapshot = op.snapshot();
        assert_eq!(check_snapshot(&spec, sensors_schema(), 1, &snapshot).unwrap(), snapshot);
        assert!(check_snapshot(&spec, sensors_schema(), 2, &snapshot).is_err());
        let bad = TransformSpec::Window(WindowSpec { time_field: "tss".into(), ..window });
        let e = check_snapshot(&bad, sensors_schema(), 1, &snapshot).unwrap_err();
        assert_eq!(
            e.to_string(),
            "check: snapshot cannot be decoded: the spec does not build: time_field: unknown field \"tss\" (fields: sensor, ts, value)"
        );
    }
}
