//! `type = "filter"`: keep the records whose `condition` is true. Stateless; the output schema
//! is the input schema.

use crate::batch::{Batch, Column, SchemaRef, StrColumn};
use crate::operators::expr::{Expr, Selection};
use crate::operators::{BuildError, Operator, OperatorError, STATELESS_SNAPSHOT, restore_stateless};

/// The filter operator.
#[derive(Debug)]
pub struct Filter {
    node: String,
    condition: Expr,
    schema: SchemaRef,
}

impl Filter {
    /// A filter on `condition`, which must be a bool expression over `input`'s fields.
    pub fn new(node: &str, condition: &str, input: SchemaRef) -> Result<Filter, BuildError> {
        let expr = Expr::compile(condition, &input).map_err(|e| BuildError::new("condition", e.message))?;
        if expr.data_type() != crate::batch::DataType::Bool {
            return Err(BuildError::new(
                "condition",
                format!("condition must be a bool, {condition:?} is {}", expr.data_type()),
            ));
        }
        Ok(Filter { node: node.to_owned(), condition: expr, schema: input })
    }
}

impl Operator for Filter {
    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, _input: usize, batch: &Batch, out: &mut Vec<Batch>) -> Result<(), OperatorError> {
        debug_assert_eq!(batch.schema(), &self.schema, "{}: batch of another schema", self.node);
        if batch.is_empty() {
            return Ok(());
        }
        let columns: Vec<&Column> = batch.columns().iter().collect();
        let selection = self
            .condition
            .eval_selection(&columns, batch.len())
            .map_err(|e| OperatorError::Eval { operator: self.node.clone(), message: e.message })?;
        match selection {
            Selection::All => out.push(batch.clone()),
            Selection::None => {}
            Selection::Mask(mask) => {
                let kept = take(batch, &mask);
                if !kept.is_empty() {
                    out.push(kept);
                }
            }
        }
        Ok(())
    }

    fn on_input_end(&mut self, _input: usize, _out: &mut Vec<Batch>) -> Result<(), OperatorError> {
        Ok(())
    }

    fn snapshot(&self) -> Vec<u8> {
        STATELESS_SNAPSHOT.to_vec()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), OperatorError> {
        restore_stateless(&self.node, snapshot)
    }
}

/// The records of `batch` whose entry in `mask` is true, column by column.
pub(crate) fn take(batch: &Batch, mask: &[bool]) -> Batch {
    assert_eq!(mask.len(), batch.len(), "one mask entry per record");
    let kept = mask.iter().filter(|&&m| m).count();
    let columns = batch
        .columns()
        .iter()
        .map(|column| match column {
            Column::Bool(v) => Column::Bool(select(v, mask, kept)),
            Column::Int(v) => Column::Int(select(v, mask, kept)),
            Column::Float(v) => Column::Float(select(v, mask, kept)),
            Column::Str(v) => {
                let bytes_each =
                    if v.is_empty() { 0 } else { v.iter().map(str::len).sum::<usize>() / v.len() };
                let mut c = StrColumn::with_capacity(kept, bytes_each);
                for (s, &m) in v.iter().zip(mask) {
                    if m {
                        c.push(s);
                    }
                }
                Column::Str(c)
            }
        })
        .collect();
    Batch::new(batch.schema().clone(), columns)
}

fn select<T: Copy>(values: &[T], mask: &[bool], kept: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(kept);
    out.extend(values.iter().zip(mask).filter(|(_, m)| **m).map(|(v, _)| *v));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::testutil::sensor_batch;
    use crate::pipeline::spec::{TransformSpec, sensors_schema};

    fn filter(condition: &str) -> Result<Box<dyn Operator>, BuildError> {
        crate::operators::build(
            "hot",
            &TransformSpec::Filter { condition: condition.into() },
            sensors_schema(),
            1,
        )
    }

    #[test]
    fn keeps_the_records_whose_condition_is_true() {
        let input = sensor_batch(0..5000);
        let mut op = filter("value > 50.0 && sensor != \"s0001\"").unwrap();
        let mut out = Vec::new();
        op.process(0, &input, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        let expected: Vec<_> = (0..input.len())
            .map(|i| input.row(i))
            .filter(|row| {
                matches!((&row[0], &row[2]), (crate::batch::Value::Str(s), crate::batch::Value::Float(v)) if *v > 50.0 && s != "s0001")
            })
            .collect();
        assert!(!expected.is_empty() && expected.len() < input.len());
        assert_eq!((0..out[0].len()).map(|i| out[0].row(i)).collect::<Vec<_>>(), expected);
        assert_eq!(out[0].schema(), input.schema());
    }

    #[test]
    fn all_or_nothing_and_empty_batches() {
        let input = sensor_batch(0..10);
        let mut out = Vec::new();
        filter("ts >= 0").unwrap().process(0, &input, &mut out).unwrap();
        assert_eq!(out, vec![input.clone()]);
        out.clear();
        filter("ts < 0").unwrap().process(0, &input, &mut out).unwrap();
        filter("1 > 2").unwrap().process(0, &input, &mut out).unwrap();
        filter("true").unwrap().process(0, &sensor_batch(0..0), &mut out).unwrap();
        assert!(out.is_empty(), "no empty batches");
    }

    #[test]
    fn condition_errors_name_the_key() {
        let e = filter("valu > 1").err().unwrap();
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            ("condition", "unknown field \"valu\" (fields: sensor, ts, value)")
        );
        let e = filter("ts + 1").err().unwrap();
        assert_eq!(
            (e.key.as_str(), e.message.as_str()),
            ("condition", "condition must be a bool, \"ts + 1\" is int")
        );
    }

    #[test]
    fn division_by_zero_names_the_node() {
        let mut op = filter("ts / (ts - ts) > 1").unwrap();
        let e = op.process(0, &sensor_batch(0..3), &mut Vec::new()).unwrap_err();
        assert_eq!(e.to_string(), "hot: division by zero in \"ts / (ts - ts) > 1\"");
    }

    #[test]
    fn snapshot_is_a_version_byte() {
        let mut op = filter("true").unwrap();
        let s = op.snapshot();
        assert_eq!(s, vec![1]);
        op.restore(&s).unwrap();
        assert!(matches!(op.restore(&[2]), Err(OperatorError::Snapshot { .. })));
    }
}
