//! The `generator` source, `shape = "sensors"`: reading `i` (for `i` in `0..records`) is
//! `sensor = format!("s{:04}", i % sensors)`, `ts = i / 100 + (i * 37) % 50`,
//! `value = ((i * 7919 + 13) % 10007) as f64 / 100.0` (shared/workloads/sensor-window.md).
//! Its position is the next `i`, so it replays exactly.
//!
//! With `parallelism = n`, subtask `k` generates the readings of the sensors `s` with
//! `s % n == k`, in the same order: every sensor's readings are those of `parallelism = 1`,
//! in the same order, on one channel, so a window keyed by sensor sees what it sees at
//! `parallelism = 1` (and no reading is later than it is there, since each subtask's event
//! times are a subsequence of the whole). Its position is still the next `i` of its share.

use super::{Share, SourceError, SourceReader};
use crate::batch::{Batch, Column, SchemaRef};
use crate::pipeline::spec::{GeneratorSpec, sensors_schema};

/// The sensors generator.
pub struct Generator {
    records: u64,
    sensors: u64,
    share: Share,
    /// The next reading of the share, or `records`.
    next: u64,
    schema: SchemaRef,
}

impl Generator {
    /// A generator of `share`'s readings, at its first.
    pub fn new(spec: &GeneratorSpec, share: Share) -> Generator {
        let mut g = Generator {
            records: spec.records,
            sensors: spec.sensors.max(1),
            share,
            next: 0,
            schema: sensors_schema(),
        };
        g.next = g.owned_from(0);
        g
    }

    /// The first reading at or after `i` whose sensor is in the share, or `records`.
    fn owned_from(&self, i: u64) -> u64 {
        let (k, n) = (self.share.index as u64, self.share.count as u64);
        if i >= self.records || k >= self.sensors {
            return self.records;
        }
        let sensor = i % self.sensors;
        // The next sensor `s >= sensor` with `s % n == k`, in this round of sensors or the next.
        let ahead = (k + n - sensor % n) % n;
        let at = if sensor + ahead < self.sensors { i + ahead } else { i - sensor + self.sensors + k };
        at.min(self.records)
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

/// Writes `s{:04}` names without the formatting machinery, which took a quarter of a
/// sensor-window run's time.
#[derive(Default)]
struct SensorName {
    buf: [u8; 21],
}

impl SensorName {
    /// `format!("s{n:04}")`.
    fn of(&mut self, mut n: u64) -> &str {
        self.buf = [b'0'; 21];
        let mut at = self.buf.len();
        loop {
            at -= 1;
            self.buf[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        at = at.min(self.buf.len() - 4) - 1;
        self.buf[at] = b's';
        std::str::from_utf8(&self.buf[at..]).expect("ASCII")
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
        let left = usize::try_from(self.records - self.next).unwrap_or(usize::MAX);
        let mut batch = Batch::with_capacity(self.schema.clone(), max.min(left));
        let [Column::Str(sensor), Column::Int(ts), Column::Float(value)] = batch.columns_mut() else {
            unreachable!("the sensors schema is (string, int, float)")
        };
        let step = self.share.count as u64;
        let (mut i, mut n) = (self.next, 0);
        let mut s = i % self.sensors;
        let mut name = SensorName::default();
        while n < max && i < self.records {
            sensor.push(name.of(s));
            ts.push(Generator::ts(i));
            value.push(Generator::value(i));
            n += 1;
            // The share's next sensor in this round of sensors, else its first in the next.
            if s + step < self.sensors {
                (i, s) = (i + step, s + step);
            } else {
                i = self.owned_from(i + 1);
                s = i % self.sensors;
            }
        }
        batch.set_len(n);
        self.next = i.min(self.records);
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
        // Where this share stands is always one of its readings (or the end).
        if self.owned_from(next) != next {
            return Err(SourceError(format!(
                "generator: position {next} in snapshot is not a reading of subtask {} of {}",
                self.share.index, self.share.count
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
        let mut g = Generator::new(&spec(1002), Share::WHOLE);
        let first = g.next_batch(2).unwrap().unwrap();
        assert_eq!(first.row(1), vec![Value::Str("s0001".into()), Value::Int(37), Value::Float(79.32)]);
        let pos = g.position();
        let rest: Vec<_> = std::iter::from_fn(|| g.next_batch(400).unwrap()).collect();
        assert_eq!(rest.iter().map(Batch::len).sum::<usize>(), 1000);
        assert_eq!(rest.last().unwrap().row(rest.last().unwrap().len() - 1)[0], Value::Str("s0001".into()));
        let mut h = Generator::new(&spec(1002), Share::WHOLE);
        h.seek(&pos).unwrap();
        assert_eq!(h.next_batch(400).unwrap().unwrap(), rest[0]);
        assert!(h.seek(&[1, 2]).is_err());
    }

    /// Every reading of `spec` in `share`, as `(i, row)`, read `max` at a time, resuming
    /// from each batch's position in a fresh generator.
    fn share_of(spec: &GeneratorSpec, share: Share, max: usize) -> Vec<Vec<Value>> {
        let mut rows = Vec::new();
        let mut position = Generator::new(spec, share).position();
        loop {
            let mut g = Generator::new(spec, share);
            g.seek(&position).unwrap();
            let Some(batch) = g.next_batch(max).unwrap() else { break };
            assert!(batch.len() <= max);
            rows.extend((0..batch.len()).map(|i| batch.row(i)));
            position = g.position();
        }
        rows
    }

    #[test]
    fn shares_split_the_readings_by_sensor_and_keep_each_sensors_order() {
        for (records, sensors, count) in [(1002, 1000, 2), (1000, 7, 3), (50, 10, 4), (30, 2, 3), (0, 5, 2)] {
            let spec = GeneratorSpec { records, sensors, rate: None, batch_size: 3 };
            let whole = share_of(&spec, Share::WHOLE, 7);
            assert_eq!(whole.len() as u64, records);
            let mut merged = Vec::new();
            for index in 0..count {
                let part = share_of(&spec, Share { index, count }, 5);
                // Its sensors only, each sensor's readings exactly as in the whole, in order.
                let mine: Vec<_> = (whole.iter())
                    .filter(|row| {
                        let Value::Str(s) = &row[0] else { panic!("a sensor name") };
                        s[1..].parse::<usize>().unwrap() % count == index
                    })
                    .cloned()
                    .collect();
                assert_eq!(part, mine, "{records} readings, {sensors} sensors, share {index} of {count}");
                merged.extend(part);
            }
            assert_eq!(merged.len(), whole.len(), "every reading in exactly one share");
        }
    }

    #[test]
    fn sensor_names_are_formatted_as_the_workload_says() {
        let mut name = SensorName::default();
        for n in [0, 7, 42, 999, 1000, 9999, 10_000, 123_456, u64::MAX] {
            assert_eq!(name.of(n), format!("s{n:04}"));
        }
    }

    #[test]
    fn a_position_not_in_the_share_is_refused() {
        let spec = spec(1002);
        let mut g = Generator::new(&spec, Share { index: 1, count: 2 });
        assert_eq!(g.position(), 1u64.to_be_bytes());
        g.seek(&999u64.to_be_bytes()).unwrap();
        assert_eq!(g.next_batch(10).unwrap().unwrap().len(), 2, "readings 999 and 1001");
        assert_eq!(
            g.seek(&4u64.to_be_bytes()).unwrap_err().to_string(),
            "generator: position 4 in snapshot is not a reading of subtask 1 of 2"
        );
        g.seek(&1002u64.to_be_bytes()).unwrap();
        assert_eq!(g.next_batch(10).unwrap(), None);
    }

    #[test]
    fn a_position_past_the_end_is_refused() {
        let mut g = Generator::new(&spec(1002), Share::WHOLE);
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
