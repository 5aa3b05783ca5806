//! The `generator` source, `shape = "sensors"`: reading `i` (for `i` in `0..records`) is
//! `sensor = format!("s{:04}", i % sensors)`, `ts = i / 100 + (i * 37) % 50`,
//! `value = ((i * 7919 + 13) % 10007) as f64 / 100.0` (shared/workloads/sensor-window.md).
//! Its position is the next `i`, so it replays exactly.
//!
//! With `parallelism = n`, subtask `k` generates the readings of the sensors whose name a
//! keyed edge would send to channel `k` of `n` (`batch::key_channel`), in the same order:
//! every sensor's readings are those of `parallelism = 1`, in the same order, on one channel,
//! so a window keyed by sensor sees what it sees at `parallelism = 1` (and no reading is later
//! than it is there, since each subtask's event times are a subsequence of the whole). A
//! window keyed by `sensor` with the same parallelism therefore gets from subtask `k` exactly
//! the records it would route to its subtask `k`: the plan connects them one to one, with no
//! hashing between them (`pipeline/plan.rs`). Its position is still the next `i` of its share.

use super::{Share, SourceError, SourceReader};
use crate::batch::{Batch, Column, SchemaRef, key_channel};
use crate::pipeline::spec::{GeneratorSpec, sensors_schema};

/// A share lists its sensors up to this many sensors in all (8 bytes each, at most 16 MiB);
/// above, it tests each sensor's name as its readings come.
const MAX_LISTED: u64 = 1 << 21;

/// The sensors generator.
pub struct Generator {
    records: u64,
    sensors: u64,
    share: Share,
    /// The share's sensors, in order, when it is part of the whole and they are few enough
    /// to list (`MAX_LISTED`); otherwise every sensor is tested as its readings come.
    listed: Option<Vec<u64>>,
    /// Some sensor belongs to the share (a share of more subtasks than sensors may own none).
    owns_any: bool,
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
            listed: None,
            owns_any: true,
            next: 0,
            schema: sensors_schema(),
        };
        let mut name = SensorName::default();
        if share.count > 1 && g.sensors <= MAX_LISTED {
            let listed: Vec<u64> = (0..g.sensors).filter(|&s| g.owns(s, &mut name)).collect();
            g.owns_any = !listed.is_empty();
            g.listed = Some(listed);
        } else {
            // Stops at the first sensor of the share: with many sensors, within a few.
            g.owns_any = (0..g.sensors).any(|s| g.owns(s, &mut name));
        }
        g.next = g.owned_from(0);
        g
    }

    /// Whether sensor `s` belongs to this subtask's share.
    fn owns(&self, s: u64, name: &mut SensorName) -> bool {
        self.share.count == 1 || key_channel(name.of(s).as_bytes(), self.share.count) == self.share.index
    }

    /// The first reading at or after `i` whose sensor is in the share, or `records`.
    fn owned_from(&self, mut i: u64) -> u64 {
        if !self.owns_any || i >= self.records {
            return self.records;
        }
        if let Some(listed) = &self.listed {
            let s = i % self.sensors;
            let at = match listed.get(listed.partition_point(|&o| o < s)) {
                Some(&o) => i + (o - s),
                None => i + (self.sensors - s) + listed[0],
            };
            return at.min(self.records);
        }
        let mut name = SensorName::default();
        while i < self.records && !self.owns(i % self.sensors, &mut name) {
            i += 1;
        }
        i.min(self.records)
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

    fn skip(&mut self, n: usize) -> Result<usize, SourceError> {
        if self.share.count != 1 {
            // A share's readings are not contiguous: step through them.
            return Ok(self.next_batch(n)?.map_or(0, |b| b.len()));
        }
        let passed = (n as u64).min(self.records.saturating_sub(self.next));
        self.next += passed;
        Ok(passed as usize)
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
        let (mut i, mut n) = (self.next, 0);
        let mut s = i % self.sensors;
        let mut name = SensorName::default();
        if let Some(listed) = &self.listed {
            // `next` is a reading of the share: step from one of its sensors to the next.
            let mut j = listed.partition_point(|&o| o < s);
            while n < max && i < self.records {
                sensor.push(name.of(s));
                ts.push(Generator::ts(i));
                value.push(Generator::value(i));
                n += 1;
                let (after, wrap) = if j + 1 < listed.len() { (j + 1, 0) } else { (0, self.sensors) };
                i += wrap + listed[after] - s;
                (s, j) = (listed[after], after);
            }
            batch.set_len(n);
            self.next = i.min(self.records);
            return Ok(Some(batch));
        }
        let (whole, channels, mine) = (self.share.count == 1, self.share.count, self.share.index);
        while n < max && i < self.records {
            let sensor_name = name.of(s);
            if whole || key_channel(sensor_name.as_bytes(), channels) == mine {
                sensor.push(sensor_name);
                ts.push(Generator::ts(i));
                value.push(Generator::value(i));
                n += 1;
            }
            i += 1;
            s += 1;
            if s == self.sensors {
                s = 0;
            }
        }
        batch.set_len(n);
        // The position is always a reading of the share (or the end).
        self.next = self.owned_from(i);
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
        share_with(spec, share, max, false)
    }

    /// The share's readings, read `max` at a time, each batch by a new generator resumed at
    /// the last position; with `unlisted`, as a share of too many sensors to list does.
    fn share_with(spec: &GeneratorSpec, share: Share, max: usize, unlisted: bool) -> Vec<Vec<Value>> {
        let new = || {
            let mut g = Generator::new(spec, share);
            if unlisted {
                g.listed = None;
                g.next = g.owned_from(0);
            }
            g
        };
        let mut rows = Vec::new();
        let mut position = new().position();
        loop {
            let mut g = new();
            g.seek(&position).unwrap();
            let Some(batch) = g.next_batch(max).unwrap() else { break };
            assert!(batch.len() <= max);
            rows.extend((0..batch.len()).map(|i| batch.row(i)));
            position = g.position();
        }
        rows
    }

    #[test]
    fn a_share_of_too_many_sensors_to_list_reads_the_same_readings() {
        for (records, sensors, count) in [(1002, 1000, 2), (1000, 7, 3), (30, 2, 3)] {
            let spec = GeneratorSpec { records, sensors, rate: None, batch_size: 3 };
            for index in 0..count {
                let share = Share { index, count };
                assert_eq!(share_with(&spec, share, 5, true), share_of(&spec, share, 5), "{sensors} sensors");
            }
        }
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
                        key_channel(s.as_bytes(), count) == index
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
