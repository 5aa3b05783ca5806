//! A window's spec checked against its input schema, before any data flows: the columns it
//! reads, its sizes, its aggregates and the output schema, as a [`Shape`] and the aggregates'
//! empty accumulators; every mistake is a [`BuildError`] naming the config key. Also
//! [`check_parallelism`], the one rule about how many subtasks may run a window.
//!
//! Above the aggregates, which it creates; it knows nothing of keys, slots or state.

use std::sync::Arc;

use super::aggregates::{Aggregate, Cells, aggregate_name};
use crate::batch::{DataType, Field, Schema, SchemaRef};
use crate::operators::BuildError;
use crate::operators::expr::unknown_field;
use crate::pipeline::spec::{AggregateFunction, WindowKind, WindowSpec, aggregate_output_type};

/// What a window operator is, fixed when it is built: its names, schemas, kind and the
/// columns it reads.
#[derive(Debug)]
pub(super) struct Shape {
    /// The node's name, for messages.
    pub(super) node: String,
    pub(super) input: SchemaRef,
    pub(super) output: SchemaRef,
    pub(super) kind: WindowKind,
    pub(super) max_out_of_order_ms: i64,
    pub(super) key_column: Option<usize>,
    pub(super) key_type: Option<DataType>,
    pub(super) time_column: usize,
}

/// Output columns so far, each with the config key a duplicate of it is reported at.
type Output = Vec<(Field, &'static str)>;

/// The shape and the aggregates of window `spec` of node `node` over records of `input`,
/// arriving on `inputs` channels.
pub(super) fn shape(
    node: &str,
    spec: &WindowSpec,
    input: SchemaRef,
    inputs: usize,
) -> Result<(Shape, Vec<Aggregate>), BuildError> {
    if inputs == 0 {
        return Err(BuildError::new("inputs", "a window needs at least one input"));
    }
    let (time_column, time_type) = field(&input, "time_field", &spec.time_field)?;
    if time_type != DataType::Int {
        return Err(BuildError::new(
            "time_field",
            format!("time field {:?} is a {time_type}, it must be an int of milliseconds", spec.time_field),
        ));
    }
    let mut output = Vec::new();
    let (key_column, key_type) = key(spec, &input, &mut output)?;
    check_sizes(spec)?;
    output.push((Field::new("window_start", DataType::Int), "key"));
    if matches!(spec.kind, WindowKind::Session { .. }) {
        output.push((Field::new("window_end", DataType::Int), "key"));
    }
    let aggregates = aggregates(spec, &input, &mut output)?;
    check_unique(&output)?;

    let output = Arc::new(Schema::new(output.into_iter().map(|(f, _)| f).collect()));
    let shape = Shape {
        node: node.to_owned(),
        input,
        output,
        kind: spec.kind,
        max_out_of_order_ms: spec.max_out_of_order_ms,
        key_column,
        key_type,
        time_column,
    };
    Ok((shape, aggregates))
}

/// The column and type of field `name` of `input`, which config key `key` names.
fn field(input: &Schema, key: &'static str, name: &str) -> Result<(usize, DataType), BuildError> {
    match input.index_of(name) {
        Some(i) => Ok((i, input.fields()[i].ty)),
        None => Err(BuildError::new(key, unknown_field(name, input))),
    }
}

/// The key's column and type (none without `key`), its output column added to `output`.
fn key(
    spec: &WindowSpec,
    input: &Schema,
    output: &mut Output,
) -> Result<(Option<usize>, Option<DataType>), BuildError> {
    let Some(name) = &spec.key else { return Ok((None, None)) };
    let (i, ty) = field(input, "key", name)?;
    if !matches!(ty, DataType::Str | DataType::Int | DataType::Bool) {
        return Err(BuildError::new(
            "key",
            format!("key field {name:?} is a {ty}, it must be a string, int or bool"),
        ));
    }
    output.push((Field::new(name.clone(), ty), "key"));
    Ok((Some(i), Some(ty)))
}

/// Sizes are positive, a hop no longer than the window, out-of-orderness not negative.
fn check_sizes(spec: &WindowSpec) -> Result<(), BuildError> {
    let positive = |key: &'static str, value: i64| {
        if value > 0 {
            Ok(())
        } else {
            Err(BuildError::new(key, format!("{key} must be positive, not {value}")))
        }
    };
    match spec.kind {
        WindowKind::Tumbling { size_ms } => positive("size_ms", size_ms)?,
        WindowKind::Hopping { size_ms, hop_ms } => {
            positive("size_ms", size_ms)?;
            positive("hop_ms", hop_ms)?;
            if hop_ms > size_ms {
                return Err(BuildError::new(
                    "hop_ms",
                    format!(
                        "hop_ms ({hop_ms}) must not exceed size_ms ({size_ms}): records would fall between windows"
                    ),
                ));
            }
        }
        WindowKind::Session { gap_ms } => positive("gap_ms", gap_ms)?,
    }
    if spec.max_out_of_order_ms < 0 {
        return Err(BuildError::new(
            "max_out_of_order_ms",
            format!("max_out_of_order_ms must not be negative, not {}", spec.max_out_of_order_ms),
        ));
    }
    Ok(())
}

/// The aggregates of `spec`, with empty accumulators, their output columns added to `output`.
fn aggregates(spec: &WindowSpec, input: &Schema, output: &mut Output) -> Result<Vec<Aggregate>, BuildError> {
    let mut aggregates = Vec::with_capacity(spec.aggregates.len());
    for a in &spec.aggregates {
        let name = aggregate_name(a.function);
        let (column, input_type, output_name) = match (a.function, &a.field) {
            (AggregateFunction::Count, None) => (0, None, "count".to_owned()),
            (AggregateFunction::Count, Some(f)) => {
                return Err(BuildError::new("aggregates", format!("count takes no field, found count({f})")));
            }
            (_, None) => {
                return Err(BuildError::new(
                    "aggregates",
                    format!("{name} needs a field, as in {name}(value)"),
                ));
            }
            (_, Some(f)) => {
                let (i, ty) = field(input, "aggregates", f)?;
                (i, Some(ty), format!("{name}_{f}"))
            }
        };
        let Some(ty) = aggregate_output_type(a.function, input_type) else {
            let ty = input_type.expect("count has an output type");
            return Err(BuildError::new(
                "aggregates",
                format!("{name}({}) is not defined for a {ty} field", a.field.as_deref().unwrap_or("")),
            ));
        };
        output.push((Field::new(output_name, ty), "aggregates"));
        aggregates.push(Aggregate {
            function: a.function,
            column,
            cells: Cells::for_aggregate(a.function, input_type),
        });
    }
    Ok(aggregates)
}

/// No two output columns share a name.
fn check_unique(output: &Output) -> Result<(), BuildError> {
    for (i, (f, key)) in output.iter().enumerate() {
        if output[..i].iter().any(|(g, _)| g.name == f.name) {
            // A duplicate is reported at the later of the two: an aggregate, or the key
            // named like `window_start`.
            let key = if *key == "aggregates" { "aggregates" } else { "key" };
            return Err(BuildError::new(key, format!("output column {:?} appears twice", f.name)));
        }
    }
    Ok(())
}

/// Refuses a window without a key run by more than one subtask: records are spread over the
/// subtasks with nothing to keep a window's records together, so each subtask would emit its
/// own partial row for the same window.
pub fn check_parallelism(spec: &WindowSpec, parallelism: usize) -> Result<(), BuildError> {
    if spec.key.is_none() && parallelism > 1 {
        return Err(BuildError::new(
            "parallelism",
            format!(
                "a window without a key must have parallelism = 1 (each subtask would emit a partial \
                 window), found {parallelism}: add key = \"FIELD\" to window per key, or set parallelism = 1"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::operators::build;
    use crate::pipeline::spec::{TransformSpec, WindowKind, WindowSpec, sensors_schema};

    #[test]
    fn build_errors_name_key_and_thing() {
        let error = |spec: WindowSpec| {
            let e = build("w", &TransformSpec::Window(spec), sensors_schema(), 1).err().unwrap();
            (e.key, e.message)
        };
        let base = sensor_window;
        let e = |k: &str, m: &str| (k.to_owned(), m.to_owned());
        assert_eq!(
            error(WindowSpec { key: Some("sensr".into()), ..base() }),
            e("key", "unknown field \"sensr\" (fields: sensor, ts, value)")
        );
        assert_eq!(
            error(WindowSpec { key: Some("value".into()), ..base() }),
            e("key", "key field \"value\" is a float, it must be a string, int or bool")
        );
        assert_eq!(
            error(WindowSpec { time_field: "sensor".into(), ..base() }),
            e("time_field", "time field \"sensor\" is a string, it must be an int of milliseconds")
        );
        assert_eq!(
            error(WindowSpec { kind: WindowKind::Tumbling { size_ms: 0 }, ..base() }),
            e("size_ms", "size_ms must be positive, not 0")
        );
        assert_eq!(
            error(WindowSpec { kind: WindowKind::Hopping { size_ms: 10, hop_ms: 11 }, ..base() }),
            e("hop_ms", "hop_ms (11) must not exceed size_ms (10): records would fall between windows")
        );
        assert_eq!(
            error(WindowSpec { kind: WindowKind::Session { gap_ms: -5 }, ..base() }),
            e("gap_ms", "gap_ms must be positive, not -5")
        );
        assert_eq!(
            error(WindowSpec { max_out_of_order_ms: -1, ..base() }),
            e("max_out_of_order_ms", "max_out_of_order_ms must not be negative, not -1")
        );
        assert_eq!(
            error(WindowSpec { aggregates: aggregates(&["sum(sensor)"]), ..base() }),
            e("aggregates", "sum(sensor) is not defined for a string field")
        );
        assert_eq!(
            error(WindowSpec { aggregates: aggregates(&["mean(valu)"]), ..base() }),
            e("aggregates", "unknown field \"valu\" (fields: sensor, ts, value)")
        );
        assert_eq!(
            error(WindowSpec { aggregates: aggregates(&["count", "max(value)", "count"]), ..base() }),
            e("aggregates", "output column \"count\" appears twice")
        );
        assert_eq!(
            error(WindowSpec { aggregates: aggregates(&["count(value)"]), ..base() }),
            e("aggregates", "count takes no field, found count(value)")
        );
        assert_eq!(
            error(WindowSpec { aggregates: aggregates(&["max"]), ..base() }),
            e("aggregates", "max needs a field, as in max(value)")
        );
        let e = build("w", &TransformSpec::Window(base()), sensors_schema(), 0).err().unwrap();
        assert_eq!(e.key, "inputs");
    }
}
