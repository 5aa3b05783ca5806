//! Aggregates: what each output column computes, and its accumulators, one per window slot,
//! in flat vectors by type ([`Cells`]). A batch's records reach them as [`Hit`]s (record,
//! slot), folded in one tight loop per aggregate; sessions that merge fold their accumulators
//! together; a firing reads them out as columns.
//!
//! Beside the key table, the lowest layer of the window: it knows nothing of keys, windows'
//! bounds or snapshots (a [`Cell`] is one accumulator as a snapshot holds it).

use serde::{Deserialize, Serialize};

use crate::batch::{Column, DataType, StrColumn};
use crate::pipeline::spec::AggregateFunction;

/// One record added to one window.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hit {
    pub(super) record: u32,
    pub(super) slot: u32,
    /// The window's first record: aggregates take its value instead of combining.
    pub(super) first: bool,
}

/// One aggregate: what it computes, the input column it reads, its accumulators per slot.
#[derive(Debug)]
pub(super) struct Aggregate {
    pub(super) function: AggregateFunction,
    pub(super) column: usize,
    pub(super) cells: Cells,
}

/// Accumulators per slot. `count` uses the slots' count and has none; `mean` of ints sums in
/// i128 so that it cannot overflow.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cells {
    None,
    Bool(Vec<bool>),
    Int(Vec<i64>),
    Wide(Vec<i128>),
    Float(Vec<f64>),
    Str(Vec<String>),
}

/// One accumulator, in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) enum Cell {
    None,
    Bool(bool),
    Int(i64),
    Wide(i128),
    Float(f64),
    Str(String),
}

impl Cells {
    pub(super) fn for_aggregate(function: AggregateFunction, input: Option<DataType>) -> Cells {
        use AggregateFunction::*;
        match (function, input) {
            (Count, _) => Cells::None,
            (Mean, Some(DataType::Int)) => Cells::Wide(Vec::new()),
            (Mean, _) => Cells::Float(Vec::new()),
            (_, Some(DataType::Bool)) => Cells::Bool(Vec::new()),
            (_, Some(DataType::Int)) => Cells::Int(Vec::new()),
            (_, Some(DataType::Float)) => Cells::Float(Vec::new()),
            (_, Some(DataType::Str)) => Cells::Str(Vec::new()),
            (_, None) => panic!("{function:?} without a field passed the build checks"),
        }
    }

    pub(super) fn reserve(&mut self, n: usize) {
        match self {
            Cells::None => {}
            Cells::Bool(v) => v.reserve(n),
            Cells::Int(v) => v.reserve(n),
            Cells::Wide(v) => v.reserve(n),
            Cells::Float(v) => v.reserve(n),
            Cells::Str(v) => v.reserve(n),
        }
    }

    #[inline]
    pub(super) fn push_default(&mut self) {
        match self {
            Cells::None => {}
            Cells::Bool(v) => v.push(false),
            Cells::Int(v) => v.push(0),
            Cells::Wide(v) => v.push(0),
            Cells::Float(v) => v.push(0.0),
            Cells::Str(v) => v.push(String::new()),
        }
    }

    /// Reset slot `s` for a new window (sums start at zero; the rest is set by the first
    /// record).
    #[inline]
    pub(super) fn reset(&mut self, s: usize) {
        match self {
            Cells::None => {}
            Cells::Bool(v) => v[s] = false,
            Cells::Int(v) => v[s] = 0,
            Cells::Wide(v) => v[s] = 0,
            Cells::Float(v) => v[s] = 0.0,
            Cells::Str(v) => v[s].clear(),
        }
    }

    pub(super) fn get(&self, s: usize) -> Cell {
        match self {
            Cells::None => Cell::None,
            Cells::Bool(v) => Cell::Bool(v[s]),
            Cells::Int(v) => Cell::Int(v[s]),
            Cells::Wide(v) => Cell::Wide(v[s]),
            Cells::Float(v) => Cell::Float(v[s]),
            Cells::Str(v) => Cell::Str(v[s].clone()),
        }
    }

    /// Set slot `s` (already allocated) from a snapshot; false if the cell has another type.
    pub(super) fn set(&mut self, s: usize, cell: Cell) -> bool {
        match (self, cell) {
            (Cells::None, Cell::None) => {}
            (Cells::Bool(v), Cell::Bool(x)) => v[s] = x,
            (Cells::Int(v), Cell::Int(x)) => v[s] = x,
            (Cells::Wide(v), Cell::Wide(x)) => v[s] = x,
            (Cells::Float(v), Cell::Float(x)) => v[s] = x,
            (Cells::Str(v), Cell::Str(x)) => v[s] = x,
            _ => return false,
        }
        true
    }

    pub(super) fn empty_like(&self) -> Cells {
        match self {
            Cells::None => Cells::None,
            Cells::Bool(_) => Cells::Bool(Vec::new()),
            Cells::Int(_) => Cells::Int(Vec::new()),
            Cells::Wide(_) => Cells::Wide(Vec::new()),
            Cells::Float(_) => Cells::Float(Vec::new()),
            Cells::Str(_) => Cells::Str(Vec::new()),
        }
    }
}

/// Apply `update(accumulator, value, first)` for every hit, in arrival order.
#[inline]
fn fold<T: Copy, V: Copy>(cells: &mut [T], values: &[V], hits: &[Hit], update: impl Fn(&mut T, V, bool)) {
    for h in hits {
        update(&mut cells[h.slot as usize], values[h.record as usize], h.first);
    }
}

impl Aggregate {
    /// Add the hits' records, taken from `columns`, to the accumulators.
    pub(super) fn apply(&mut self, columns: &[Column], hits: &[Hit]) {
        use AggregateFunction::*;
        if self.function == Count {
            return;
        }
        match (self.function, &mut self.cells, &columns[self.column]) {
            (Sum, Cells::Int(c), Column::Int(v)) => fold(c, v, hits, |a, x, _| *a = a.wrapping_add(x)),
            (Sum | Mean, Cells::Float(c), Column::Float(v)) => fold(c, v, hits, |a, x, _| *a += x),
            (Mean, Cells::Wide(c), Column::Int(v)) => fold(c, v, hits, |a, x, _| *a += i128::from(x)),
            (Min, Cells::Int(c), Column::Int(v)) => fold(c, v, hits, |a, x, first| {
                if first || x < *a {
                    *a = x
                }
            }),
            (Max, Cells::Int(c), Column::Int(v)) => fold(c, v, hits, |a, x, first| {
                if first || x > *a {
                    *a = x
                }
            }),
            (Min, Cells::Float(c), Column::Float(v)) => fold(c, v, hits, |a, x, first| {
                if first || x < *a {
                    *a = x
                }
            }),
            (Max, Cells::Float(c), Column::Float(v)) => fold(c, v, hits, |a, x, first| {
                if first || x > *a {
                    *a = x
                }
            }),
            (First, Cells::Bool(c), Column::Bool(v)) => fold(c, v, hits, |a, x, first| {
                if first {
                    *a = x
                }
            }),
            (First, Cells::Int(c), Column::Int(v)) => fold(c, v, hits, |a, x, first| {
                if first {
                    *a = x
                }
            }),
            (First, Cells::Float(c), Column::Float(v)) => fold(c, v, hits, |a, x, first| {
                if first {
                    *a = x
                }
            }),
            (Last, Cells::Bool(c), Column::Bool(v)) => fold(c, v, hits, |a, x, _| *a = x),
            (Last, Cells::Int(c), Column::Int(v)) => fold(c, v, hits, |a, x, _| *a = x),
            (Last, Cells::Float(c), Column::Float(v)) => fold(c, v, hits, |a, x, _| *a = x),
            (function, Cells::Str(c), Column::Str(v)) => {
                for h in hits {
                    let (a, x) = (&mut c[h.slot as usize], v.get(h.record as usize));
                    let take = match function {
                        Min => h.first || x < a.as_str(),
                        Max => h.first || x > a.as_str(),
                        First => h.first,
                        _ => true,
                    };
                    if take {
                        a.clear();
                        a.push_str(x);
                    }
                }
            }
            (function, cells, column) => panic!(
                "{function:?} accumulators {:?} do not fit a {} column",
                std::mem::discriminant(cells),
                column.data_type()
            ),
        }
    }

    /// Fold session `from` into session `into`. `from_first` says whether `from`'s first
    /// record arrived before `into`'s, `from_last` whether its last record arrived after.
    pub(super) fn merge(&mut self, into: usize, from: usize, from_first: bool, from_last: bool) {
        use AggregateFunction::*;
        /// Replace `into`'s value by `from`'s if `take(from's, into's)`.
        fn pick<T: Clone>(v: &mut [T], into: usize, from: usize, take: impl FnOnce(&T, &T) -> bool) {
            if take(&v[from], &v[into]) {
                v[into] = v[from].clone();
            }
        }
        match (self.function, &mut self.cells) {
            (Count, _) => {}
            (Sum, Cells::Int(v)) => v[into] = v[into].wrapping_add(v[from]),
            (Sum | Mean, Cells::Float(v)) => v[into] += v[from],
            (Mean, Cells::Wide(v)) => v[into] += v[from],
            (Min, Cells::Int(v)) => pick(v, into, from, |f, i| f < i),
            (Max, Cells::Int(v)) => pick(v, into, from, |f, i| f > i),
            (Min, Cells::Float(v)) => pick(v, into, from, |f, i| f < i),
            (Max, Cells::Float(v)) => pick(v, into, from, |f, i| f > i),
            (Min, Cells::Str(v)) => pick(v, into, from, |f, i| f < i),
            (Max, Cells::Str(v)) => pick(v, into, from, |f, i| f > i),
            (First | Last, cells) => {
                let take = if self.function == First { from_first } else { from_last };
                match cells {
                    Cells::Bool(v) => pick(v, into, from, |_, _| take),
                    Cells::Int(v) => pick(v, into, from, |_, _| take),
                    Cells::Float(v) => pick(v, into, from, |_, _| take),
                    Cells::Str(v) => pick(v, into, from, |_, _| take),
                    Cells::None | Cells::Wide(_) => panic!("{:?} with {cells:?}", self.function),
                }
            }
            (function, cells) => panic!("{function:?} with accumulators {cells:?}"),
        }
    }

    /// The output column of `slots` (in this order).
    pub(super) fn output(&self, slots: &[u32], count: &[i64]) -> Column {
        use AggregateFunction::*;
        let each = |s: &u32| *s as usize;
        match (self.function, &self.cells) {
            (Count, _) => Column::Int(slots.iter().map(|s| count[each(s)]).collect()),
            (Mean, Cells::Float(v)) => {
                Column::Float(slots.iter().map(|s| v[each(s)] / count[each(s)] as f64).collect())
            }
            (Mean, Cells::Wide(v)) => {
                Column::Float(slots.iter().map(|s| v[each(s)] as f64 / count[each(s)] as f64).collect())
            }
            (_, Cells::Bool(v)) => Column::Bool(slots.iter().map(|s| v[each(s)]).collect()),
            (_, Cells::Int(v)) => Column::Int(slots.iter().map(|s| v[each(s)]).collect()),
            (_, Cells::Float(v)) => Column::Float(slots.iter().map(|s| v[each(s)]).collect()),
            (_, Cells::Str(v)) => {
                let mut c = StrColumn::with_capacity(slots.len(), 8);
                for s in slots {
                    c.push(&v[each(s)]);
                }
                Column::Str(c)
            }
            (function, cells) => panic!("{function:?} with accumulators {cells:?}"),
        }
    }
}

/// The name of `function` in the config and in output columns (`sum` of `sum_value`).
pub(super) fn aggregate_name(function: AggregateFunction) -> &'static str {
    use AggregateFunction::*;
    match function {
        Count => "count",
        Sum => "sum",
        Min => "min",
        Max => "max",
        Mean => "mean",
        First => "first",
        Last => "last",
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::batch::Value;
    use crate::operators::Operator;
    use crate::pipeline::spec::{WindowKind, WindowSpec};

    #[test]
    fn string_min_max_first_last() {
        let spec = WindowSpec {
            key: None,
            time_field: "ts".into(),
            kind: WindowKind::Tumbling { size_ms: 1000 },
            max_out_of_order_ms: 0,
            aggregates: aggregates(&[
                "min(sensor)",
                "max(sensor)",
                "first(sensor)",
                "last(sensor)",
                "min(ts)",
            ]),
        };
        let mut op = window(&spec, 1);
        let mut out = Vec::new();
        op.process(0, &readings(&[("m", 5, 0.0), ("b", 3, 0.0)]), &mut out).unwrap();
        op.process(0, &readings(&[("z", 9, 0.0), ("k", 1, 0.0)]), &mut out).unwrap();
        op.on_input_end(0, &mut out).unwrap();
        let s = |x: &str| Value::Str(x.into());
        assert_eq!(rows(&out), vec![vec![Value::Int(0), s("b"), s("z"), s("m"), s("k"), Value::Int(1)]]);
    }
}
