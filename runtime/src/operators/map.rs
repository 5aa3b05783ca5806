//! `type = "map"`: reshape records. Applied in this order: `select` (keep only these fields, in
//! this order), `drop`, `rename`, then `compute`. Every `compute` expression reads the record
//! as it is after select, drop and rename (not the other computed fields); a computed field
//! with an existing name replaces it in place, a new one is appended in declaration order.
//! Stateless.

use std::sync::Arc;

use crate::batch::{Batch, Column, DataType, Field, Schema, SchemaRef};
use crate::operators::expr::{Expr, unknown_field};
use crate::operators::{BuildError, Operator, OperatorError, STATELESS_SNAPSHOT, restore_stateless};
use crate::pipeline::spec::MapSpec;

/// The map operator.
#[derive(Debug)]
pub struct Map {
    node: String,
    input: SchemaRef,
    output: SchemaRef,
    /// For each field of the record after select, drop and rename: its input column.
    reshaped: Vec<usize>,
    /// `(name, expression)`, evaluated over the reshaped record.
    compute: Vec<(String, Expr)>,
    /// Where each output column comes from.
    columns: Vec<Source>,
}

#[derive(Debug, Clone, Copy)]
enum Source {
    Input(usize),
    Computed(usize),
}

impl Map {
    /// A map from `spec` over records of `input`.
    pub fn new(node: &str, spec: &MapSpec, input: SchemaRef) -> Result<Map, BuildError> {
        // (name, input column, type) of the record as it is reshaped.
        let mut fields: Vec<(String, usize, DataType)> =
            input.fields().iter().enumerate().map(|(i, f)| (f.name.clone(), i, f.ty)).collect();
        let schema_of = |fields: &[(String, usize, DataType)]| {
            Schema::new(fields.iter().map(|(name, _, ty)| Field::new(name.clone(), *ty)).collect())
        };

        if let Some(select) = &spec.select {
            let mut selected = Vec::with_capacity(select.len());
            for name in select {
                let Some(i) = input.index_of(name) else {
                    return Err(BuildError::new("select", unknown_field(name, &input)));
                };
                if selected.iter().any(|(n, _, _): &(String, usize, DataType)| n == name) {
                    return Err(BuildError::new("select", format!("field {name:?} is selected twice")));
                }
                selected.push((name.clone(), i, input.fields()[i].ty));
            }
            fields = selected;
        }
        for name in &spec.drop {
            let Some(i) = fields.iter().position(|(n, _, _)| n == name) else {
                return Err(BuildError::new("drop", unknown_field(name, &schema_of(&fields))));
            };
            fields.remove(i);
        }
        for (old, new) in &spec.rename {
            let Some(i) = fields.iter().position(|(n, _, _)| n == old) else {
                return Err(BuildError::new("rename", unknown_field(old, &schema_of(&fields))));
            };
            if old != new && fields.iter().any(|(n, _, _)| n == new) {
                return Err(BuildError::new(
                    "rename",
                    format!("cannot rename {old:?} to {new:?}: field {new:?} exists"),
                ));
            }
            fields[i].0 = new.clone();
        }

        let reshaped_schema = schema_of(&fields);
        let mut columns: Vec<Source> = fields.iter().map(|(_, i, _)| Source::Input(*i)).collect();
        let mut output: Vec<Field> = reshaped_schema.fields().to_vec();
        let mut compute = Vec::with_capacity(spec.compute.len());
        for (k, (name, source)) in spec.compute.iter().enumerate() {
            let key = format!("compute.{name}");
            if spec.compute[..k].iter().any(|(n, _)| n == name) {
                return Err(BuildError::new(key, format!("field {name:?} is computed twice")));
            }
            let expr =
                Expr::compile(source, &reshaped_schema).map_err(|e| BuildError::new(&key, e.message))?;
            let field = Field::new(name.clone(), expr.data_type());
            match output.iter().position(|f| f.name == *name) {
                Some(i) => {
                    output[i] = field;
                    columns[i] = Source::Computed(k);
                }
                None => {
                    output.push(field);
                    columns.push(Source::Computed(k));
                }
            }
            compute.push((name.clone(), expr));
        }

        Ok(Map {
            node: node.to_owned(),
            input,
            output: Arc::new(Schema::new(output)),
            reshaped: fields.iter().map(|(_, i, _)| *i).collect(),
            compute,
            columns,
        })
    }
}

impl Operator for Map {
    fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    fn process(&mut self, _input: usize, batch: &Batch, out: &mut Vec<Batch>) -> Result<(), OperatorError> {
        debug_assert_eq!(batch.schema(), &self.input, "{}: batch of another schema", self.node);
        if batch.is_empty() {
            return Ok(());
        }
        let reshaped: Vec<&Column> = self.reshaped.iter().map(|&i| &batch.columns()[i]).collect();
        let mut computed = Vec::with_capacity(self.compute.len());
        for (name, expr) in &self.compute {
            let column = expr.eval_columns(&reshaped, batch.len()).map_err(|e| OperatorError::Eval {
                operator: self.node.clone(),
                message: format!("compute.{name}: {}", e.message),
            })?;
            computed.push(Some(column));
        }
        let columns = self
            .columns
            .iter()
            .map(|source| match *source {
                Source::Input(i) => batch.columns()[i].clone(),
                Source::Computed(k) => computed[k].take().expect("each computed field is output once"),
            })
            .collect();
        out.push(Batch::new(self.output.clone(), columns));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Value;
    use crate::operators::testutil::sensor_batch;
    use crate::pipeline::spec::{TransformSpec, sensors_schema};

    fn spec(
        select: Option<&[&str]>,
        drop: &[&str],
        rename: &[(&str, &str)],
        compute: &[(&str, &str)],
    ) -> MapSpec {
        let strings = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let pairs = |xs: &[(&str, &str)]| xs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        MapSpec {
            select: select.map(strings),
            drop: strings(drop),
            rename: pairs(rename),
            compute: pairs(compute),
        }
    }

    fn build(spec: MapSpec) -> Result<Box<dyn Operator>, BuildError> {
        crate::operators::build("shape", &TransformSpec::Map(spec), sensors_schema(), 1)
    }

    fn names(schema: &Schema) -> Vec<(&str, DataType)> {
        schema.fields().iter().map(|f| (f.name.as_str(), f.ty)).collect()
    }

    #[test]
    fn select_drop_rename_then_compute() {
        let mut op = build(spec(
            Some(&["value", "ts", "sensor"]),
            &["sensor"],
            &[("ts", "time")],
            &[("value", "value * 2"), ("second", "time / 1000"), ("hot", "value > 50.0")],
        ))
        .unwrap();
        let schema = op.output_schema();
        assert_eq!(
            names(&schema),
            vec![
                ("value", DataType::Float),
                ("time", DataType::Int),
                ("second", DataType::Int),
                ("hot", DataType::Bool)
            ]
        );
        let input = sensor_batch(0..3);
        let mut out = Vec::new();
        op.process(0, &input, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        // `hot` reads the input's value, not the doubled one.
        assert_eq!(
            (0..3).map(|i| out[0].row(i)).collect::<Vec<_>>(),
            vec![
                vec![Value::Float(0.26), Value::Int(0), Value::Int(0), Value::Bool(false)],
                vec![Value::Float(158.64), Value::Int(37), Value::Int(0), Value::Bool(true)],
                vec![Value::Float(116.88), Value::Int(24), Value::Int(0), Value::Bool(true)],
            ]
        );
    }

    #[test]
    fn a_replaced_field_may_change_type_in_place() {
        let mut op = build(spec(None, &[], &[], &[("ts", "ts > 30"), ("tag", "\"x\"")])).unwrap();
        assert_eq!(
            names(&op.output_schema()),
            vec![
                ("sensor", DataType::Str),
                ("ts", DataType::Bool),
                ("value", DataType::Float),
                ("tag", DataType::Str)
            ]
        );
        let mut out = Vec::new();
        op.process(0, &sensor_batch(0..2), &mut out).unwrap();
        assert_eq!(
            out[0].row(1),
            vec![Value::Str("s0001".into()), Value::Bool(true), Value::Float(79.32), Value::Str("x".into())]
        );
        op.process(0, &sensor_batch(0..0), &mut out).unwrap();
        assert_eq!(out.len(), 1, "no empty batches");
    }

    #[test]
    fn mistakes_name_their_key() {
        let error = |s: MapSpec| {
            let e = build(s).err().unwrap();
            (e.key, e.message)
        };
        assert_eq!(
            error(spec(Some(&["sensor", "valu"]), &[], &[], &[])),
            ("select".into(), "unknown field \"valu\" (fields: sensor, ts, value)".into())
        );
        assert_eq!(
            error(spec(Some(&["ts", "ts"]), &[], &[], &[])),
            ("select".into(), "field \"ts\" is selected twice".into())
        );
        assert_eq!(
            error(spec(Some(&["ts", "value"]), &["sensor"], &[], &[])),
            ("drop".into(), "unknown field \"sensor\" (fields: ts, value)".into())
        );
        assert_eq!(
            error(spec(None, &[], &[("ts", "value")], &[])),
            ("rename".into(), "cannot rename \"ts\" to \"value\": field \"value\" exists".into())
        );
        assert_eq!(
            error(spec(None, &[], &[("ts", "time")], &[("late", "ts > 5")])),
            ("compute.late".into(), "unknown field \"ts\" (fields: sensor, time, value)".into())
        );
        assert_eq!(
            error(spec(None, &[], &[], &[("a", "1"), ("a", "2")])),
            ("compute.a".into(), "field \"a\" is computed twice".into())
        );
    }

    #[test]
    fn evaluation_errors_name_node_and_field() {
        let mut op = build(spec(None, &[], &[], &[("bad", "ts % (ts - ts)")])).unwrap();
        let e = op.process(0, &sensor_batch(0..2), &mut Vec::new()).unwrap_err();
        assert_eq!(e.to_string(), "shape: compute.bad: modulo by zero in \"ts % (ts - ts)\"");
    }
}
