//! The key table: every key the window has seen, interned once to a small integer id, with
//! the open windows of each key. Strings of up to 7 bytes are packed into a `u64` (see
//! [`pack`]) so that the common short key costs an integer hash and no allocation. Keys as
//! read from a batch ([`KeyRef`], through a [`KeyColumn`]), as stored ([`Key`]), as
//! snapshotted ([`KeyValue`]) and as restored ([`KeyIn`]) are four small enums that convert
//! into each other.
//!
//! The lowest layer of the window: it knows nothing of slots, aggregates or snapshots.

use ahash::HashMap;
use serde::{Deserialize, Serialize};

use crate::batch::StrColumn;

/// Interned keys. A key's id is its index in `entries`; ids of dropped keys are reused. Ids
/// never reach the output or a snapshot, so their reuse changes nothing visible.
///
/// A key whose last window fired stays (*idle*) for its next record, so that a key that keeps
/// coming back costs no allocation per window. Keys idle for more than two window lengths of
/// event time are dropped by a sweep, which runs once per `max(1024, live keys / 4)` times a
/// key goes idle (amortized O(1) per key).
#[derive(Debug, Default)]
pub(super) struct Keys {
    /// Strings of up to 7 bytes, packed by [`pack`]: an integer hash and compare.
    short: HashMap<u64, u32>,
    strs: HashMap<Box<str>, u32>,
    ints: HashMap<i64, u32>,
    bools: [Option<u32>; 2],
    unit: Option<u32>,
    /// One compact entry per id: with many keys, a key's value and its windows cost one
    /// cache miss, not one per vector and pointer.
    pub(super) entries: Vec<KeyEntry>,
    free: Vec<u32>,
    /// Times a key went idle since the last sweep.
    went_idle: usize,
}

#[derive(Debug)]
pub(super) struct KeyEntry {
    /// `None` for a free id.
    key: Option<Key>,
    open: OpenList,
    /// The watermark when the key went idle.
    idle_since: i64,
}

/// A key as stored: a string of up to 7 bytes inline (see [`pack`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Key {
    Unit,
    Bool(bool),
    Int(i64),
    Short(u64),
    Str(Box<str>),
}

impl Key {
    pub(super) fn new(key: KeyRef<'_>) -> Key {
        match key {
            KeyRef::Unit => Key::Unit,
            KeyRef::Bool(b) => Key::Bool(b),
            KeyRef::Int(i) => Key::Int(i),
            KeyRef::Str(s) => match pack(s) {
                Some(packed) => Key::Short(packed),
                None => Key::Str(s.into()),
            },
        }
    }

    pub(super) fn to_value(&self) -> KeyValue {
        match self {
            Key::Unit => KeyValue::Unit,
            Key::Bool(b) => KeyValue::Bool(*b),
            Key::Int(i) => KeyValue::Int(*i),
            Key::Short(packed) => KeyValue::Str(unpack(*packed, &mut [0; 8]).into()),
            Key::Str(s) => KeyValue::Str(s.clone()),
        }
    }
}

/// A key as snapshotted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(super) enum KeyValue {
    /// The one key of a window without `key`.
    Unit,
    Bool(bool),
    Int(i64),
    Str(Box<str>),
}

/// A key as restored: [`KeyValue`]'s encoding, borrowing strings from the snapshot bytes
/// (no allocation per key; the variants must stay in `KeyValue`'s order). Serialized only to
/// measure its canonical size (see `snapshot::decode`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) enum KeyIn<'a> {
    Unit,
    Bool(bool),
    Int(i64),
    Str(&'a str),
}

impl<'a> KeyIn<'a> {
    pub(super) fn as_ref(self) -> KeyRef<'a> {
        match self {
            KeyIn::Unit => KeyRef::Unit,
            KeyIn::Bool(b) => KeyRef::Bool(b),
            KeyIn::Int(i) => KeyRef::Int(i),
            KeyIn::Str(s) => KeyRef::Str(s),
        }
    }
}

/// A key as read from a batch.
#[derive(Debug, Clone, Copy)]
pub(super) enum KeyRef<'a> {
    Unit,
    Bool(bool),
    Int(i64),
    Str(&'a str),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct OpenWindow {
    pub(super) start: i64,
    pub(super) slot: u32,
}

/// The open windows of a key: nearly always one, kept inline (a handful at most: linear
/// search beats hashing).
#[derive(Debug)]
pub(super) struct OpenList {
    /// Holds a window whenever there is one (`slot == NO_SLOT` when empty).
    first: OpenWindow,
    more: Vec<OpenWindow>,
}

const NO_SLOT: u32 = u32::MAX;

impl OpenList {
    fn new() -> OpenList {
        OpenList { first: OpenWindow { start: 0, slot: NO_SLOT }, more: Vec::new() }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.first.slot == NO_SLOT
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &OpenWindow> {
        (!self.is_empty()).then_some(&self.first).into_iter().chain(&self.more)
    }

    /// The slot of the window that starts at `start`.
    #[inline]
    pub(super) fn find(&self, start: i64) -> Option<u32> {
        if self.first.start == start && !self.is_empty() {
            return Some(self.first.slot);
        }
        self.more.iter().find(|w| w.start == start).map(|w| w.slot)
    }

    pub(super) fn push(&mut self, window: OpenWindow) {
        if self.is_empty() {
            self.first = window;
        } else {
            self.more.push(window);
        }
    }

    pub(super) fn remove(&mut self, slot: u32) {
        if self.first.slot == slot {
            self.first = self.more.pop().unwrap_or(OpenWindow { start: 0, slot: NO_SLOT });
        } else {
            let i =
                self.more.iter().position(|w| w.slot == slot).expect("a live window is listed under its key");
            self.more.swap_remove(i);
        }
    }

    pub(super) fn set_start(&mut self, slot: u32, start: i64) {
        if self.first.slot == slot {
            self.first.start = start;
        } else if let Some(w) = self.more.iter_mut().find(|w| w.slot == slot) {
            w.start = start;
        }
    }
}

impl Keys {
    pub(super) fn find(&self, key: KeyRef<'_>) -> Option<u32> {
        match key {
            KeyRef::Unit => self.unit,
            KeyRef::Bool(b) => self.bools[usize::from(b)],
            KeyRef::Int(i) => self.ints.get(&i).copied(),
            KeyRef::Str(s) => match pack(s) {
                Some(packed) => self.short.get(&packed).copied(),
                None => self.strs.get(s).copied(),
            },
        }
    }

    /// Room for `keys` (restore): each map gets what it will hold, no rehashing on the way.
    pub(super) fn reserve_for(&mut self, keys: &[KeyIn<'_>]) {
        let (mut short, mut long, mut ints) = (0, 0, 0);
        for k in keys {
            match k {
                KeyIn::Str(s) if pack(s).is_some() => short += 1,
                KeyIn::Str(_) => long += 1,
                KeyIn::Int(_) => ints += 1,
                KeyIn::Unit | KeyIn::Bool(_) => {}
            }
        }
        self.entries.reserve(keys.len());
        self.short.reserve(short);
        self.strs.reserve(long);
        self.ints.reserve(ints);
    }

    pub(super) fn find_or_insert(&mut self, key: KeyRef<'_>) -> u32 {
        match self.find(key) {
            Some(id) => id,
            None => self.insert(Key::new(key)),
        }
    }

    /// A new key, without windows yet.
    pub(super) fn insert(&mut self, key: Key) -> u32 {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let id = u32::try_from(self.entries.len()).expect("fewer than 2^32 keys");
                self.entries.push(KeyEntry { key: None, open: OpenList::new(), idle_since: i64::MAX });
                id
            }
        };
        match &key {
            Key::Unit => self.unit = Some(id),
            Key::Bool(b) => self.bools[usize::from(*b)] = Some(id),
            Key::Int(i) => {
                self.ints.insert(*i, id);
            }
            Key::Short(packed) => {
                self.short.insert(*packed, id);
            }
            Key::Str(s) => {
                self.strs.insert(s.clone(), id);
            }
        }
        self.entries[id as usize].key = Some(key);
        id
    }

    /// The key of every id (`None`: a free id), for a snapshot's capture: a copy without the
    /// lookup maps and the open lists, which a snapshot does not hold.
    pub(super) fn capture(&self) -> Vec<Option<Key>> {
        self.entries.iter().map(|e| e.key.clone()).collect()
    }

    pub(super) fn key(&self, id: u32) -> &Key {
        self.entries[id as usize].key.as_ref().expect("a live key")
    }

    pub(super) fn open(&self, id: u32) -> &OpenList {
        &self.entries[id as usize].open
    }

    pub(super) fn open_mut(&mut self, id: u32) -> &mut OpenList {
        &mut self.entries[id as usize].open
    }

    pub(super) fn live(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// Window `slot` of key `id` fired at `watermark`.
    pub(super) fn close_window(&mut self, id: u32, slot: u32, watermark: i64) {
        let entry = &mut self.entries[id as usize];
        entry.open.remove(slot);
        if entry.open.is_empty() {
            entry.idle_since = watermark;
            self.went_idle += 1;
        }
    }

    /// If it is time, drop the keys idle for more than `horizon` at `watermark` (all idle
    /// keys once the watermark is `i64::MAX`).
    #[inline]
    pub(super) fn sweep(&mut self, watermark: i64, horizon: i64) {
        if watermark != i64::MAX && self.went_idle <= (self.live() / 4).max(1024) {
            return;
        }
        self.went_idle = 0;
        for id in 0..self.entries.len() {
            let entry = &self.entries[id];
            if entry.key.is_some()
                && entry.open.is_empty()
                && (watermark == i64::MAX || watermark.saturating_sub(entry.idle_since) > horizon)
            {
                self.remove(id as u32);
            }
        }
    }

    /// Drop key `id`, which has no open window.
    fn remove(&mut self, id: u32) {
        let entry = &mut self.entries[id as usize];
        debug_assert!(entry.open.is_empty());
        entry.open = OpenList::new();
        match entry.key.take().expect("a live key") {
            Key::Unit => self.unit = None,
            Key::Bool(b) => self.bools[usize::from(b)] = None,
            Key::Int(i) => {
                self.ints.remove(&i);
            }
            Key::Short(packed) => {
                self.short.remove(&packed);
            }
            Key::Str(s) => {
                self.strs.remove(&s);
            }
        }
        self.free.push(id);
    }
}

/// A string of up to 7 bytes as one integer: its bytes, then its length in the last byte
/// (so `"a"` and `"a\0"` differ).
#[inline]
fn pack(s: &str) -> Option<u64> {
    let bytes = s.as_bytes();
    if bytes.len() > 7 {
        return None;
    }
    // A loop, not `copy_from_slice`: a variable-length copy is a `memcpy` call.
    let mut packed = (bytes.len() as u64) << 56;
    for (i, &b) in bytes.iter().enumerate() {
        packed |= u64::from(b) << (8 * i);
    }
    Some(packed)
}

/// The string [`pack`] packed, written into `buffer`.
pub(super) fn unpack(packed: u64, buffer: &mut [u8; 8]) -> &str {
    *buffer = packed.to_le_bytes();
    let len = (packed >> 56) as usize;
    std::str::from_utf8(&buffer[..len]).expect("packed from a str")
}

/// A key column of one batch.
#[derive(Clone, Copy)]
pub(super) enum KeyColumn<'a> {
    Unit,
    Bool(&'a [bool]),
    Int(&'a [i64]),
    Str(&'a StrColumn),
}

impl<'a> KeyColumn<'a> {
    #[inline]
    pub(super) fn get(self, record: usize) -> KeyRef<'a> {
        match self {
            KeyColumn::Unit => KeyRef::Unit,
            KeyColumn::Bool(v) => KeyRef::Bool(v[record]),
            KeyColumn::Int(v) => KeyRef::Int(v[record]),
            KeyColumn::Str(v) => KeyRef::Str(v.get(record)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::testutil::*;
    use crate::batch::{Batch, DataType, Field, Schema, Value};
    use crate::operators::{Operator, build};
    use crate::pipeline::spec::{TransformSpec, WindowKind, WindowSpec};

    #[test]
    fn idle_keys_are_swept() {
        let mut op = window(&spec(WindowKind::Tumbling { size_ms: 10 }, 0, &["count"]), 1);
        let mut out = Vec::new();
        for round in 0..20 {
            // 500 new keys per round, each seen once.
            let names: Vec<String> = (0..500).map(|k| format!("k{round}-{k}")).collect();
            let records: Vec<(&str, i64, f64)> =
                names.iter().map(|n| (n.as_str(), round * 100, 0.0)).collect();
            op.process(0, &readings(&records), &mut out).unwrap();
            // 500 keys with a window, at most 1024 + 500 idle ones waiting for a sweep.
            assert!(op.state.keys.live() <= 500 + 1024 + 500, "round {round}: {} keys", op.state.keys.live());
        }
        assert_eq!(rows(&out).len(), 19 * 500);
        op.on_input_end(0, &mut out).unwrap();
        assert_eq!(op.state.keys.live(), 0);
    }

    #[test]
    fn global_int_and_bool_keys() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int),
            Field::new("ok", DataType::Bool),
            Field::new("t", DataType::Int),
            Field::new("n", DataType::Int),
        ]));
        let mut input = Batch::with_capacity(schema.clone(), 4);
        for (id, ok, t, n) in [(7, true, 1, 3), (-2, false, 2, i64::MAX), (7, false, 3, 4), (-2, false, 4, 1)]
        {
            input.push_row(&[Value::Int(id), Value::Bool(ok), Value::Int(t), Value::Int(n)]);
        }
        let run = |key: Option<&str>| {
            let spec = WindowSpec {
                key: key.map(Into::into),
                time_field: "t".into(),
                kind: WindowKind::Tumbling { size_ms: 100 },
                max_out_of_order_ms: 0,
                aggregates: aggregates(&["sum(n)", "mean(n)", "max(n)", "last(ok)"]),
            };
            let mut op = build("w", &TransformSpec::Window(spec), schema.clone(), 1).unwrap();
            let mut out = Vec::new();
            op.process(0, &input, &mut out).unwrap();
            op.on_input_end(0, &mut out).unwrap();
            (op.output_schema(), rows(&out))
        };
        let (schema_int, by_int) = run(Some("id"));
        assert_eq!(schema_int.fields()[0], Field::new("id", DataType::Int));
        assert_eq!(schema_int.fields()[3], Field::new("mean_n", DataType::Float));
        let big = (i64::MAX as i128 + 1) as f64 / 2.0;
        assert_eq!(
            by_int,
            vec![
                vec![
                    Value::Int(7),
                    Value::Int(0),
                    Value::Int(7),
                    Value::Float(3.5),
                    Value::Int(4),
                    Value::Bool(false)
                ],
                vec![
                    Value::Int(-2),
                    Value::Int(0),
                    Value::Int(i64::MIN),
                    Value::Float(big),
                    Value::Int(i64::MAX),
                    Value::Bool(false)
                ],
            ],
            "sums wrap; means do not"
        );
        let (_, by_bool) = run(Some("ok"));
        assert_eq!(
            by_bool.iter().map(|r| r[0].clone()).collect::<Vec<_>>(),
            vec![Value::Bool(true), Value::Bool(false)]
        );
        let (schema_global, global) = run(None);
        assert_eq!(schema_global.fields()[0].name, "window_start");
        assert_eq!(global.len(), 1);
        assert_eq!(global[0][1], Value::Int(i64::MAX.wrapping_add(8)));
    }

    #[test]
    fn short_long_and_multibyte_string_keys() {
        // Up to 7 bytes are stored inline, longer ones in the string map; "a" and "a\0"
        // are different keys.
        let keys = ["a", "a\0", "", "é-ü", "seven77", "eight888", "a much longer sensor name"];
        let mut op = window(&spec(WindowKind::Tumbling { size_ms: 10 }, 0, &["count"]), 1);
        let mut out = Vec::new();
        let records: Vec<(&str, i64, f64)> = keys.iter().chain(&keys).map(|k| (*k, 1, 0.0)).collect();
        op.process(0, &readings(&records), &mut out).unwrap();
        assert_eq!(op.state.keys.live(), keys.len());
        let snapshot = op.snapshot();
        let mut restored = window(&spec(WindowKind::Tumbling { size_ms: 10 }, 0, &["count"]), 1);
        restored.restore(&snapshot).unwrap();
        restored.on_input_end(0, &mut out).unwrap();
        let expected: Vec<Vec<Value>> =
            keys.iter().map(|k| vec![Value::Str((*k).into()), Value::Int(0), Value::Int(2)]).collect();
        assert_eq!(rows(&out), expected);
    }
}
