//! Validation of a window snapshot as it is restored. The log lives on SD cards and eMMC, where
//! a flipped bit can turn a snapshot into another plausible one (a window split in two, a
//! negative start, a changed sum); so whatever the encoder guarantees, the decoder checks, and
//! a snapshot that breaks any of it is refused rather than restored as a wrong state.
//! [`decode`] also refuses every encoding but the one `Window::snapshot` writes, so that an
//! accepted snapshot re-encodes to the same bytes (the invariant a fuzz target checks).
//!
//! The checks are per window and allocation-free, so restore stays about as fast as before.

use std::cmp::Ordering;
use std::fmt;

use super::{Aggregate, Cell, InputWatermark, KeyIn, OpenList, SNAPSHOT_VERSION, Slots, SnapshotIn};
use super::{WindowSnapshot, clamp, watermark_of};
use crate::batch::Schema;
use crate::pipeline::spec::{AggregateFunction, WindowKind};

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

/// A window, for error messages: `window [0, 1000) of key "s0001"`.
#[derive(Clone, Copy)]
pub(super) struct At<'a> {
    pub(super) key: KeyIn<'a>,
    pub(super) start: i64,
    pub(super) end: i64,
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "window [{}, {}){}", self.start, self.end, OfKey(self.key))
    }
}

/// What every window of one snapshot is checked against: its shape, the watermark and event
/// time of the snapshot's inputs, its arrival numbers, its place in firing order.
pub(super) struct Bounds {
    kind: WindowKind,
    watermark: i64,
    /// The largest event time seen on any input: no window starts after it.
    latest: i64,
    next_arrival: u64,
    /// Most windows one record is counted in.
    per_record: u128,
    /// `(end, arrival)` of the window before, and the sum of counts so far.
    previous: Option<(i64, u64)>,
    counted: u128,
}

impl Bounds {
    pub(super) fn new(kind: WindowKind, inputs: &[InputWatermark], ooo: i64, next_arrival: u64) -> Bounds {
        let per_record = match kind {
            WindowKind::Hopping { size_ms, hop_ms } => (size_ms as u128).div_ceil(hop_ms as u128),
            WindowKind::Tumbling { .. } | WindowKind::Session { .. } => 1,
        };
        Bounds {
            kind,
            watermark: watermark_of(inputs, ooo),
            latest: inputs.iter().map(|i| i.max_ts).max().unwrap_or(i64::MIN),
            next_arrival,
            per_record,
            previous: None,
            counted: 0,
        }
    }

    /// Check the next window of the snapshot, `w` (of `at`).
    pub(super) fn check(&mut self, at: &At<'_>, w: &WindowSnapshot) -> Result<(), String> {
        self.check_shape(at)?;
        if w.end <= self.watermark {
            return Err(format!("{at} is still open at watermark {}, which closed it", self.watermark));
        }
        // Its records' times are at least `start`; a session's last is `end - gap`.
        let last_ts = match self.kind {
            WindowKind::Session { gap_ms } if w.end != i64::MAX => w.end - gap_ms,
            _ => w.start,
        };
        if last_ts > self.latest {
            return Err(format!("{at} is ahead of the latest event time seen, {}", self.latest));
        }
        self.check_arrivals(at, w)?;
        let here = (w.end, w.arrival);
        // Ties come only from hopping windows cut short at the end of time (one record, one
        // end); those keep their order, which restore preserves.
        let in_order = match (self.previous, self.kind) {
            (None, _) => true,
            (Some(before), WindowKind::Hopping { .. }) => before <= here,
            (Some(before), _) => before < here,
        };
        if !in_order {
            return Err(format!("{at} is out of firing order"));
        }
        self.previous = Some(here);
        self.counted += w.count as u128;
        if self.counted > u128::from(self.next_arrival) * self.per_record {
            return Err(format!("windows count more records than the {} that arrived", self.next_arrival));
        }
        Ok(())
    }

    /// Whether `[start, end)` is a window that the assignment makes.
    fn check_shape(&self, at: &At<'_>) -> Result<(), String> {
        let (start, end) = (at.start, at.end);
        let (size, hop, what) = match self.kind {
            WindowKind::Tumbling { size_ms } => (size_ms, size_ms, "size_ms"),
            WindowKind::Hopping { size_ms, hop_ms } => (size_ms, hop_ms, "hop_ms"),
            WindowKind::Session { gap_ms } => {
                return if start > end
                    || (end != i64::MAX && i128::from(end) - i128::from(start) < gap_ms.into())
                {
                    Err(format!("{at} is shorter than gap_ms {gap_ms}"))
                } else {
                    Ok(())
                };
            }
        };
        // The exact (unclamped) start: bounds are clamped to the i64 range (see `clamp`).
        let exact = if end == i64::MAX { i128::from(start) } else { i128::from(end) - i128::from(size) };
        if clamp(exact) != start || exact + i128::from(size) < i128::from(end) {
            return Err(format!("{at} is not size_ms {size} long"));
        }
        if exact.rem_euclid(hop.into()) != 0 {
            return Err(format!("window start {start}{} is not aligned to {what} {hop}", OfKey(at.key)));
        }
        Ok(())
    }

    fn check_arrivals(&self, at: &At<'_>, w: &WindowSnapshot) -> Result<(), String> {
        let session = matches!(self.kind, WindowKind::Session { .. });
        if w.count <= 0 {
            return Err(format!("{at} has count {}", w.count));
        }
        if w.arrival > w.last_arrival || w.last_arrival >= self.next_arrival {
            return Err(format!(
                "{at} has records {} to {} of {} arrived",
                w.arrival, w.last_arrival, self.next_arrival
            ));
        }
        if !session && w.last_arrival != w.arrival {
            return Err(format!("{at} has a last arrival ({}), only sessions do", w.last_arrival));
        }
        // Every record of a window arrived at or after its first, and before the next.
        let span = if session { w.last_arrival - w.arrival + 1 } else { self.next_arrival - w.arrival };
        if w.count as u64 > span {
            return Err(format!("{at} has count {}, more than the {span} records since it opened", w.count));
        }
        Ok(())
    }
}

/// A window's key in a message: ` of key "s0001"`, ` of key 42`, nothing without `key`.
struct OfKey<'a>(KeyIn<'a>);

impl fmt::Display for OfKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            KeyIn::Unit => Ok(()),
            KeyIn::Bool(b) => write!(f, " of key {b}"),
            KeyIn::Int(i) => write!(f, " of key {i}"),
            KeyIn::Str(s) => write!(f, " of key {s:?}"),
        }
    }
}

/// Windows of one key never share a start (tumbling, hopping) and sessions never overlap:
/// a record finds its window by start, and merges every session it touches.
pub(super) fn check_apart(
    kind: WindowKind,
    at: &At<'_>,
    open: &OpenList,
    slots: &Slots,
) -> Result<(), String> {
    for w in open.iter() {
        let (start, end) = (slots.start[w.slot as usize], slots.end[w.slot as usize]);
        let clash = match kind {
            WindowKind::Session { .. } => start < at.end && at.start < end,
            WindowKind::Tumbling { .. } | WindowKind::Hopping { .. } => start == at.start,
        };
        if clash {
            return Err(format!("{at} overlaps the key's window [{start}, {end})"));
        }
    }
    Ok(())
}

/// How the accumulators of one input field bound each other.
struct FieldRule {
    field: String,
    min: Option<usize>,
    max: Option<usize>,
    /// Accumulators that hold one of the field's values (min, max, first, last): index, name.
    values: Vec<(usize, String)>,
    /// Accumulators that hold a sum of the window's values (sum, mean).
    sums: Vec<(usize, String)>,
}

/// The relations between a window's accumulators that hold whatever the data: `min <= max`,
/// `first` and `last` between them, a sum between `count * min` and `count * max` (within
/// float rounding), and with one record, every value accumulator equal.
pub(super) struct CellRules {
    fields: Vec<FieldRule>,
}

impl CellRules {
    pub(super) fn new(aggregates: &[Aggregate], input: &Schema) -> CellRules {
        use AggregateFunction::*;
        let mut fields: Vec<FieldRule> = Vec::new();
        for (i, a) in aggregates.iter().enumerate() {
            if a.function == Count {
                continue;
            }
            let field = &input.fields()[a.column].name;
            let rule = match fields.iter().position(|r| r.field == *field) {
                Some(r) => &mut fields[r],
                None => {
                    let empty = FieldRule {
                        field: field.clone(),
                        min: None,
                        max: None,
                        values: Vec::new(),
                        sums: Vec::new(),
                    };
                    fields.push(empty);
                    fields.last_mut().expect("just pushed")
                }
            };
            let name = format!("{}_{field}", super::aggregate_name(a.function));
            match a.function {
                Sum | Mean => rule.sums.push((i, name)),
                Min | Max | First | Last => {
                    match a.function {
                        Min => rule.min = Some(i),
                        Max => rule.max = Some(i),
                        _ => {}
                    }
                    rule.values.push((i, name));
                }
                Count => unreachable!("skipped above"),
            }
        }
        // One value accumulator alone bounds nothing, and sums need one.
        fields.retain(|r| r.values.len() > 1 || (r.values.len() == 1 && !r.sums.is_empty()));
        CellRules { fields }
    }

    /// Check the accumulators `cells` of window `at` with `count` records.
    pub(super) fn check(&self, at: &At<'_>, count: i64, cells: &[Cell]) -> Result<(), String> {
        for rule in &self.fields {
            let (mut lo, mut hi) = (rule.min, rule.max);
            if count == 1 {
                // One record: every value accumulator holds its value.
                let mut values = rule.values.iter();
                if let Some((first, first_name)) = values.next() {
                    for (i, name) in values {
                        if differ(&cells[*i], &cells[*first]) {
                            return Err(format!(
                                "{at} has one record but {first_name} {} and {name} {}",
                                Show(&cells[*first]),
                                Show(&cells[*i])
                            ));
                        }
                    }
                    (lo, hi) = (Some(*first), Some(*first));
                }
            }
            let (Some(lo), Some(hi)) = (lo, hi) else { continue };
            let (low, high) = (&cells[lo], &cells[hi]);
            for (i, name) in &rule.values {
                let v = &cells[*i];
                if order(v, low) == Some(Ordering::Less) || order(v, high) == Some(Ordering::Greater) {
                    return Err(format!(
                        "{at} has {name} {} outside its range [{}, {}]",
                        Show(v),
                        Show(low),
                        Show(high)
                    ));
                }
            }
            for (i, name) in &rule.sums {
                if !sum_fits(count, &cells[*i], low, high) {
                    return Err(format!(
                        "{at} has {name} {} for {count} values in [{}, {}]",
                        Show(&cells[*i]),
                        Show(low),
                        Show(high)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// How two accumulators of one field compare; `None` when they cannot (NaN, other types).
fn order(a: &Cell, b: &Cell) -> Option<Ordering> {
    match (a, b) {
        (Cell::Bool(a), Cell::Bool(b)) => Some(a.cmp(b)),
        (Cell::Int(a), Cell::Int(b)) => Some(a.cmp(b)),
        (Cell::Float(a), Cell::Float(b)) => a.partial_cmp(b),
        (Cell::Str(a), Cell::Str(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// Two values that are certainly different (NaN compares with nothing, so is never that).
fn differ(a: &Cell, b: &Cell) -> bool {
    order(a, b).is_some_and(|o| o != Ordering::Equal)
}

/// Whether `sum`, of `count` values between `low` and `high`, can be their sum. Float sums
/// get the bound of recursive summation in any order, `n^2 * eps * max |x|`; an int sum
/// wraps, so is checked only when no sum of such values can wrap; a mean of ints sums in
/// i128 and is checked exactly. NaN and infinities make every comparison pass.
fn sum_fits(count: i64, sum: &Cell, low: &Cell, high: &Cell) -> bool {
    match (sum, low, high) {
        (Cell::Float(s), Cell::Float(lo), Cell::Float(hi)) => {
            let n = count as f64;
            let slack = 2.0 * n * n * f64::EPSILON * lo.abs().max(hi.abs());
            !(*s < n * lo - slack || *s > n * hi + slack)
        }
        (Cell::Int(s), Cell::Int(lo), Cell::Int(hi)) => {
            let (a, b) = (i128::from(count) * i128::from(*lo), i128::from(count) * i128::from(*hi));
            a < i128::from(i64::MIN) || b > i128::from(i64::MAX) || (a..=b).contains(&i128::from(*s))
        }
        (Cell::Wide(s), Cell::Int(lo), Cell::Int(hi)) => {
            (i128::from(count) * i128::from(*lo)..=i128::from(count) * i128::from(*hi)).contains(s)
        }
        _ => true,
    }
}

/// An accumulator's value in a message.
struct Show<'a>(&'a Cell);

impl fmt::Display for Show<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Cell::None => f.write_str("-"),
            Cell::Bool(b) => write!(f, "{b}"),
            Cell::Int(i) => write!(f, "{i}"),
            Cell::Wide(i) => write!(f, "{i}"),
            Cell::Float(x) => write!(f, "{x}"),
            Cell::Str(s) => write!(f, "{s:?}"),
        }
    }
}
