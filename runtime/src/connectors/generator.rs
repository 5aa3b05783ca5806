//! The `generator` source, `shape = "sensors"`: reading `i` (for `i` in `0..records`) is
//! `sensor = format!("s{:04}", i % sensors)`, `ts = i / 100 + (i * 37) % 50`,
//! `value = ((i * 7919 + 13) % 10007) as f64 / 100.0` (shared/workloads/sensor-window.md).
//! Its position is the next `i`, so it replays exactly.

use std::fmt::Write as _;

use super::{SourceError, SourceReader};
use crate::batch::{Batch, Column, SchemaRef};
use crate::pipeline::spec::{GeneratorSpec, sensors_schema};

/// The sensors generator.
pub struct Generator {
    records: u64,
    sensors: u64,
    next: u64,
    schema: SchemaRef,
}

impl Generator {
    /// A generator at position 0.
    pub fn new(spec: &GeneratorSpec) -> Generator {
        Generator { records: spec.records, sensors: spec.sensors.max(1), next: 0, schema: sensors_schema() }
    }

    /// Reading `i`'s event time.
    pub fn ts(i: u64) -> i64 {
        (i / 100 + (i * 37) % 50) as i64
    }

    /// Reading `i`'s value.
    pub fn value(i: u64) -> f64 {
        ((i * 7919 + 13) % 10007) as f64 / 100.0
    }
}

impl SourceReader for Generator {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn next_batch(&mut self, max: usize) -> Result<Option<Batch>, SourceError> {
        if self.next >= self.records {
            return Ok(None);
        }
        let end = self.records.min(self.next + max as u64);
        let n = (end - self.next) as usize;
        let mut batch = Batch::with_capacity(self.schema.clone(), n);
        let [Column::Str(sensor), Column::Int(ts), Column::Float(value)] = batch.columns_mut() else {
            unreachable!("the sensors schema is (string, int, float)")
        };
        for i in self.next..end {
            sensor.push_with(|s| {
                let _ = write!(s, "s{:04}", i % self.sensors);
            });
            ts.push(Generator::ts(i));
            value.push(Generator::value(i));
        }
        batch.set_len(n);
        self.next = end;
        Ok(Some(batch))
    }

    fn position(&self) -> Vec<u8> {
        self.next.to_be_bytes().to_vec()
    }

    fn seek(&mut self, position: &[u8]) -> Result<(), SourceError> {
        let bytes: [u8; 8] = position.try_into().map_err(|_| {
            SourceError(format!("generator: bad position of {} bytes in snapshot", position.len()))
        })?;
        let next = u64::from_be_bytes(bytes);
        // `records` is where a finished generator stands; past it, a position is damaged.
        if next > self.records {
            return Err(SourceError(format!(
                "generator: position {next} in snapshot is past its {} records",
                self.records
            )));
        }
        self.next = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Value;

    fn spec(records: u64) -> GeneratorSpec {
        GeneratorSpec { records, sensors: 1000, rate: None, batch_size: 3 }
    }

    #[test]
    fn follows_the_workload_formula_and_replays_from_a_position() {
        let mut g = Generator::new(&spec(1002));
        let first = g.next_batch(2).unwrap().unwrap();
        assert_eq!(first.row(1), vec![Value::Str("s0001".into()), Value::Int(37), Value::Float(79.32)]);
        let pos = g.position();
        let rest: Vec<_> = std::iter::from_fn(|| g.next_batch(400).unwrap()).collect();
        assert_eq!(rest.iter().map(Batch::len).sum::<usize>(), 1000);
        assert_eq!(rest.last().unwrap().row(rest.last().unwrap().len() - 1)[0], Value::Str("s0001".into()));
        let mut h = Generator::new(&spec(1002));
        h.seek(&pos).unwrap();
        assert_eq!(h.next_batch(400).unwrap().unwrap(), rest[0]);
        assert!(h.seek(&[1, 2]).is_err());
    }

    #[test]
    fn a_position_past_the_end_is_refused() {
        let mut g = Generator::new(&spec(1002));
        g.seek(&500u64.to_be_bytes()).unwrap();
        assert_eq!(
            g.seek(&1003u64.to_be_bytes()).unwrap_err().to_string(),
            "generator: position 1003 in snapshot is past its 1002 records"
        );
        assert_eq!(g.position(), 500u64.to_be_bytes(), "a refused position changes nothing");
        assert!(g.seek(&[0; 9]).is_err());
        // The position of a finished generator is its end.
        g.seek(&1002u64.to_be_bytes()).unwrap();
        assert_eq!(g.next_batch(10).unwrap(), None);
        assert_eq!(g.position(), 1002u64.to_be_bytes());
    }
}
